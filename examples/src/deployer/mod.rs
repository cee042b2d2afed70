//! ocurrent-deployer in Rust: the table of what is deployed ([`spec`]), the
//! three deployers' tables ([`flavours`]), the pipeline built from a table
//! ([`pipeline`]), and the services list ([`services`]). The `deployer` and
//! `deployer-local` binaries are glue around these.

pub mod cli;
pub mod counters;
pub mod flavours;
pub mod inventory;
pub mod logging;
pub mod overview;
pub mod pipeline;
pub mod services;
pub mod spec;
