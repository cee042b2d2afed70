//! Albatross for the deployer: MirageOS unikernels deployed to an
//! albatross daemon, over its local socket or its TLS endpoint.
//!
//! (Work in progress: the wire protocol.)
//!
//! ```
//! use deployer_albatross::message::{Command, Header, Name, Payload, UnikernelCmd, InfoVersion, Wire};
//!
//! let info = Wire {
//!     header: Header::new(Name::unikernel("hello").unwrap()),
//!     payload: Payload::Command(Command::Unikernel(UnikernelCmd::Info(InfoVersion::V27))),
//! };
//! let bytes = info.encode();
//! assert_eq!(Wire::decode(&bytes).unwrap(), info);
//! ```

pub mod message;
mod wire;

pub use wire::DecodeError;
