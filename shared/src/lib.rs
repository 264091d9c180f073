//! The Rota protocol and pure domain rules.
//!
//! This crate is the contract between servers, workers and administrators: the NATS subjects,
//! the messages that travel on them, the reply envelope with its stable error codes, the instance
//! status codes, next-fire-time computation and the rules by which a server applies a status
//! report.
//!
//! **Architecture Invariant:** this crate does no I/O. No NATS, no database, no clock reads: the
//! current time always arrives as an argument, so every rule here is a pure function that tests
//! can drive with fixed times.
#![forbid(unsafe_code)]

pub mod admin;
pub mod admission;
pub mod container;
pub mod envelope;
pub mod fires;
pub mod instance;
pub mod job;
pub mod limits;
pub mod message;
pub mod repair;
pub mod rules;
pub mod schedule;
pub mod status;
pub mod subject;
pub mod task;

pub use envelope::{ErrorBody, ErrorCode, Reply, Retry};
pub use instance::{Instance, Trigger};
pub use status::InstanceStatus;
pub use subject::Subjects;

/// The protocol version every Rota message is sent with (in the [`PROTOCOL_HEADER`] header).
pub const PROTOCOL_VERSION: u32 = 2;

/// The NATS header that carries [`PROTOCOL_VERSION`]. A message without it is taken to be of the
/// current version, so that standard NATS tooling (`nats req`) can talk to Rota.
pub const PROTOCOL_HEADER: &str = "Rota-Protocol";

/// The largest payload a Rota endpoint accepts. Larger requests are answered `PAYLOAD_TOO_LARGE`.
/// It is kept below NATS' default `max_payload` (1 MiB) so that the error can be answered at all.
pub const MAX_PAYLOAD_BYTES: usize = 512 * 1024;
