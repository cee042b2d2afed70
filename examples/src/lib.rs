//! Deployers written with the deployer crates, and the pieces they share.
//!
//! - [`tiny_plugin`]: a complete small plugin (a monitor, a builder on a
//!   pool, a latched publisher with a secret, per-use labels, a web route),
//!   the one `ARCHITECTURE.md` walks through in "Writing a plugin".
//! - [`deployer`]: ocurrent-deployer's three flavours (`tarides`, `ocaml`,
//!   `mirage`) as tables and the pipeline built from them; the `deployer`
//!   and `deployer-local` binaries run them.
//! - `src/bin/demo.rs`: a fully local deployer to a Docker swarm (`./scripts/demo`).
//!
//! ```
//! // The plugin's stages are ordinary `Current`s.
//! use deployer_examples::tiny_plugin::Releases;
//! let version = Releases::monitor("/src/app".into());
//! assert_eq!(version.users(), 0);
//! ```

pub mod deployer;
pub mod tiny_plugin;
