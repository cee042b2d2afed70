//! `Current::run`: a builder written as a closure.

use std::future::Future;
use std::marker::PhantomData;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::driver::{Cache, Operation, RunFuture};
use super::Schedule;
use crate::config::Level;
use crate::context::Context;
use crate::job::{Job, Pool};
use crate::output::Error;
use crate::term::{Current, Value};

/// A closure seen by the driver: a builder whose store id is its label.
struct Closure<A, B, F> {
    id: String,
    level: Level,
    f: F,
    _types: PhantomData<fn(A) -> B>,
}

impl<A, B, F, Fut> Operation for Closure<A, B, F>
where
    A: Value + Serialize,
    B: Value + Serialize + DeserializeOwned,
    F: FnOnce(Job, A) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<B, Error>> + Send + 'static,
{
    type Key = A;
    type Value = ();
    type Outcome = B;
    const STORES_VALUE: bool = false;

    fn id(&self) -> &str {
        &self.id
    }
    fn describe(&self, key: &A, _: &()) -> Option<String> {
        // The label and the input, short: "build 4f2a9c1…".
        let input = serde_json::to_string(key).ok()?;
        let input = input.strip_prefix('"').and_then(|s| s.strip_suffix('"')).unwrap_or(&input);
        let mut short: String = input.chars().take(60).collect();
        if short.len() < input.len() {
            short.push('…');
        }
        Some(format!("{} {short}", self.id))
    }
    fn level(&self, _: &A) -> Level {
        self.level
    }
    fn auto_cancel(&self) -> bool {
        true
    }
    fn latched(&self) -> bool {
        false
    }
    fn idempotent(&self) -> bool {
        true
    }
    fn pool(&self) -> Option<Pool> {
        None
    }
    fn timeout(&self) -> Option<Duration> {
        None
    }
    fn run<'a>(&'a self, job: &'a Job, key: &'a A, _: &'a ()) -> RunFuture<'a, B> {
        Box::pin((self.f.clone())(job.clone(), key.clone()))
    }
}

impl<A: Value + Serialize> Current<A> {
    /// `x.run(ctx, label, level, f)` is a stage labelled `label` that runs
    /// the async function `f` as a job on each new value of `x`: a builder
    /// written as a closure, with everything a cached operation has.
    ///
    /// Each run is a job at `level` (it waits for confirmation when the
    /// level is at or above the threshold) with a log (`f` gets the
    /// [`Job`]), and leaves a history row. Results are remembered per value
    /// of `x`, across restarts too: the label is the stage's id in the
    /// store, so give different closures different labels. A run no longer
    /// wanted (`x` changed) is asked to stop ([`Job::cancelled`]). A panic
    /// in `f` becomes an error on this stage.
    ///
    /// `f` is cloned for each run and called once, so it can move what it
    /// captured into its future: `move |job, commit| async move { … }`
    /// needs no clones inside.
    ///
    /// For something that sets state outside (a deploy), where setting the
    /// same value again after another one must run again, write a
    /// [`Publisher`](crate::cache::Publisher) instead.
    ///
    /// ```
    /// use deployer_core::{Config, Context, Current, Engine, Level, Output};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = std::env::temp_dir().join(format!("deployer-run-doc-{}", std::process::id()));
    /// let ctx = Context::open(&dir, Config::default())?;
    /// let doubled = Current::constant(21u64).run(&ctx, "double", Level::Harmless, |job, n| async move {
    ///     job.log(&format!("doubling {n}"));
    ///     Ok(n * 2)
    /// });
    /// let engine = Engine::new(doubled);
    /// engine.step();
    /// while !engine.output().is_ok() {
    ///     engine.next().await;
    /// }
    /// assert_eq!(engine.output(), Output::Ok(42));
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn run<B, F, Fut>(&self, ctx: &Context, label: &str, level: Level, f: F) -> Current<B>
    where
        B: Value + Serialize + DeserializeOwned,
        F: FnOnce(Job, A) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<B, Error>> + Send + 'static,
    {
        let op = Closure { id: label.to_owned(), level, f, _types: PhantomData };
        Cache::stage(&Cache::new(ctx, op), label, self, &Current::constant(()), Schedule::never())
    }
}
