//! deployer-docker: Docker stages: build, pull, push, tag, run and swarm service updates, through the Docker Engine API (bollard). Each operation is one cache operation on the core's build and output caches.
//!
//! This crate is a placeholder until its issue lands: it depends only on
//! `deployer-core` and adds nodes to a pipeline through the core's extension
//! points ([`deployer_core::Current::primitive`], monitors, caches).
//!
//! ```
//! // Plugins build on the core's `Current`; nothing else is needed to depend on one.
//! let stage = deployer_core::Current::constant("nothing yet");
//! let _ = stage;
//! ```
