//! A test plugin built only on the core's public extension points
//! (`Current::primitive`, `Source`, `Config`): its jobs finish when the test
//! says so, like OCurrent's test plugins.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use deployer_core::{ActiveState, Config, Current, Engine, Error, Expanded, Level, Output, Source, Value};

/// Fake jobs, keyed by their description (`"build src-123"`).
#[derive(Clone)]
pub struct Fake {
    jobs: Arc<Mutex<BTreeMap<String, Job>>>,
    pub config: Config,
}

#[derive(Clone)]
struct Job {
    source: Source<String>,
    level: Level,
    starts: usize,
}

impl Fake {
    pub fn new(config: Config) -> Fake {
        Fake { jobs: Arc::default(), config }
    }

    /// A stage named `label` running the job `"<label> <input>"` at `level`.
    pub fn op(&self, label: &str, level: Level, input: &Current<String>) -> Current<String> {
        let jobs = self.jobs.clone();
        let config = self.config.clone();
        let name = label.to_owned();
        input.primitive(label, move |value, _cx| {
            let key = format!("{name} {value}");
            let mut jobs = jobs.lock().unwrap();
            let job = jobs.entry(key).or_insert_with(|| Job {
                source: Source::new(Output::Active(ActiveState::Running)),
                level,
                starts: 0,
            });
            job.starts += 1;
            if job.source.get().is_ok() || job.source.get().err().is_some() {
                return job.source.clone();
            }
            let state =
                if config.is_confirmed(level) { ActiveState::Running } else { ActiveState::WaitingForConfirmation };
            job.source.set(Output::Active(state));
            job.source.clone()
        })
    }

    pub fn fetch(&self, commit: &Current<String>) -> Current<String> {
        self.op("fetch", Level::MostlyHarmless, commit).map(|s| s.replace("fetch ", "src-"))
    }

    /// Re-checks waiting jobs after the confirmation threshold changed.
    pub fn recheck(&self) {
        for job in self.jobs.lock().unwrap().values() {
            if job.source.get() == Output::Active(ActiveState::WaitingForConfirmation)
                && self.config.is_confirmed(job.level)
            {
                job.source.set(Output::Active(ActiveState::Running));
            }
        }
    }

    /// Finishes the job `key` with `result`.
    pub fn complete(&self, key: &str, result: Result<&str, &str>) {
        let jobs = self.jobs.lock().unwrap();
        let job =
            jobs.get(key).unwrap_or_else(|| panic!("no job {key:?}; jobs: {:?}", jobs.keys().collect::<Vec<_>>()));
        job.source.set(match result {
            Ok(v) => Output::Ok(v.to_owned()),
            Err(e) => Output::Err(Error::msg(e)),
        });
    }

    /// How many times the job `key` was started.
    pub fn starts(&self, key: &str) -> usize {
        self.jobs.lock().unwrap().get(key).map_or(0, |j| j.starts)
    }

    /// Descriptions of the jobs that have no result yet.
    pub fn pending(&self) -> Vec<String> {
        self.jobs
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, j)| !j.source.get().is_ok() && j.source.get().err().is_none())
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// Checks the engine's diagram against `expected` (see `Diagram::summary`).
#[track_caller]
pub fn check_diagram<T: Value>(engine: &Engine<T>, expected: &str) {
    check_text(&engine.diagram(&Expanded::none()).summary(), expected);
}

#[track_caller]
pub fn check_text(actual: &str, expected: &str) {
    let norm = |s: &str| s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join("\n");
    let (a, e) = (norm(actual), norm(expected));
    if a != e {
        panic!("diagram differs\n--- expected\n{e}\n--- actual\n{a}\n");
    }
}
