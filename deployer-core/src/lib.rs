//! The core of the deployer: a typed pipeline language with an incremental
//! engine.
//!
//! A pipeline is a value of type [`Current<T>`], built from combinators the
//! way an OCurrent user writes `pipeline.ml`. An [`Engine`] evaluates it, runs
//! its primitives (jobs, monitors), and when an input changes re-evaluates
//! only what depends on that input. The pipeline is also a diagram: its static
//! shape is known before anything runs ([`analysis`]).
//!
//! ```
//! use deployer_core::{ActiveState, Current, Engine, Output, Var};
//!
//! // An input set from outside (a webhook, a test).
//! let head = Var::new("head", Output::Ok("abc123".to_string()));
//! // A stage derived from it, and a gate that holds the deploy until tests pass.
//! let image = head.current().map(|commit| format!("registry/app:{commit}"));
//! let tests = Var::new("tests", Output::<()>::Active(ActiveState::Running));
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
//! # Map of the crate
//! - [`Current`] and its combinators: `constant`, `fail`, `active`, `map`,
//!   `map_err`, `pair`, `all`, `all_labelled`, `gate`, `state`, `catch`,
//!   `and_then`/`bind` (dynamic), `list_map`, `option_map`, `collapse`,
//!   [`with_context`].
//! - Inputs: [`Var`] (set from outside) and [`Monitor`] (ref-counted watches).
//! - Primitives: [`Current::primitive`] (low level, with [`Source`]) and
//!   [`Current::run`] (an async function).
//! - [`Engine`]: evaluation steps, event-driven running, [`Stats`] and the
//!   [`Diagram`].

pub mod analysis;
pub mod cache;
mod config;
mod context;
mod current;
mod engine;
pub mod job;
pub mod monitor;
mod nodes;
mod output;
pub mod primitive;
mod secret;
pub mod store;
mod term;
mod var;

pub use analysis::{Diagram, Expanded, Stats};
pub use cache::{BuildCache, Builder, OutputCache, Publisher, Schedule};
pub use config::{Config, Level, UnknownLevel};
pub use context::Context;
pub use current::{with_context, Current, Value};
pub use engine::{Engine, EngineHandle, Metadata, StepReport};
pub use job::{Job, Jobs, Pool, Priority};
pub use monitor::Monitor;
pub use output::{ActiveState, Error, NodeState, Output};
pub use primitive::{PrimitiveContext, Source};
pub use secret::Secret;
pub use term::TermId;
pub use var::Var;

/// The README's examples, compiled as doctests so they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
