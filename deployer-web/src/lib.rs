//! deployer-web: the web UI and HTTP API: the pipeline diagram as SVG, job logs streamed live, history queries, Prometheus metrics, roles and CSRF-protected actions. It shows the engine's graph (`deployer_core::Diagram`), never plugin internals; plugins mount their own routes (webhooks, login) through it.
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
