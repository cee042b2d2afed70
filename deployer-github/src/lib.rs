//! deployer-github: GitHub stages: branch and PR heads, commit statuses and check runs, and the webhook endpoint (signature-checked) that turns events into monitor refreshes.
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
