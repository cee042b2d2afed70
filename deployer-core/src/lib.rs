//! The core of the deployer: a typed pipeline language with an incremental
//! engine, and the caches, jobs and store that every piece of external work
//! goes through.
//!
//! A pipeline is a value of type [`Current<T>`], built from combinators the
//! way an OCurrent user writes `pipeline.ml`. An [`Engine`] evaluates it, runs
//! its jobs and monitors, and when an input changes re-evaluates only what
//! depends on that input. The pipeline is also a diagram: its static shape is
//! known before anything runs ([`analysis`]).
//!
//! ```
//! use deployer_core::{ActiveState, Current, Engine, Output, Var};
//!
//! // An input set from outside (a webhook, a test).
//! let head = Var::new("head", "abc123".to_string());
//! // A stage derived from it, and a gate that holds the deploy until tests pass.
//! let image = head.current().map(|commit| format!("registry/app:{commit}"));
//! let tests = Var::with_output("tests", Output::<()>::Active(ActiveState::Running));
//! let deploy = image.gate(&tests.current());
//!
//! let engine = Engine::new(deploy);
//! engine.step();
//! assert_eq!(engine.output(), Output::Active(ActiveState::Running));
//!
//! tests.set(());
//! engine.step(); // re-evaluates only the gate
//! assert_eq!(engine.output(), Output::Ok("registry/app:abc123".to_string()));
//! ```
//!
//! # Map of the crate, in pipeline order
//! - Settings: [`Level`] (how risky an operation is) and [`Config`] (the
//!   confirmation threshold operators change at run time); [`Clock`].
//! - Values: [`Current`] and its combinators — applicative (`map`, `pair`,
//!   [`Join`], `all`, `gate`, `list_map`, `option_map`), diagram control
//!   (`state`, `catch`, `collapse`, [`with_context`]) and the dynamic
//!   `bind`/`and_then`, whose body cannot be drawn before it runs.
//! - Inputs: [`Var`] (set from outside) and [`Monitor`] (ref-counted watches,
//!   or [`Monitor::poll`]).
//! - Work: [`cache`] — [`Builder`]s and [`Publisher`]s run through
//!   [`BuildCache`] and [`OutputCache`], or a closure with
//!   [`Current::run`]. Every run is a [`Job`] with a log, a confirmation
//!   level, a [`Pool`] slot if asked, and a history row in the [`store`].
//!   Processes run through [`Job::exec`] and friends.
//! - [`Engine`]: evaluation steps, event-driven running, observing stages
//!   ([`Engine::watch`]), [`Stats`] and the [`Diagram`].
//! - [`Context`]: the store, the jobs and the configuration under one state
//!   directory; [`Secret`]s are kept out of logs.
//! - [`primitive`]: the low-level extension point the caches and monitors
//!   are built on.
//!
//! How to write a plugin on these pieces is shown, with a complete small
//! plugin, in `ARCHITECTURE.md` ("Writing a plugin") and the `tiny_plugin`
//! module of the `deployer-examples` crate.

pub mod analysis;
pub mod cache;
mod clock;
mod config;
mod context;
mod current;
mod engine;
pub mod job;
pub mod monitor;
mod node;
mod nodes;
mod output;
pub mod primitive;
mod secret;
pub mod store;
mod term;
mod var;

pub use analysis::{Diagram, Expanded, Stats};
pub use cache::{BuildCache, Builder, OutputCache, Publisher, Schedule};
pub use clock::{Clock, ManualClock};
pub use config::{Config, Level, UnknownLevel};
pub use context::Context;
pub use current::{with_context, Join};
pub use engine::{Engine, EngineHandle, StepReport, Timings};
pub use job::{Job, JobStatus, Jobs, Pool, Priority};
pub use monitor::{BoxFuture, Monitor};
pub use node::Metadata;
pub use output::{ActiveState, Error, ErrorKind, NodeState, Output, ResultExt};
pub use primitive::{Hooks, Source};
pub use secret::{register_secret, scrub_secrets, Secret};
pub use store::StoreError;
pub use term::{Current, TermId, Value};
pub use var::Var;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
