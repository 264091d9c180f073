//! Rota's one NATS transport, used by servers, workers, the CLI, the benchmarks and the testkit.
//!
//! - [`options`]: where NATS is and every way to log in to it (user and password, token, NKey,
//!   credentials file, TLS), turned into a connection with a per-role inbox prefix.
//! - [`protocol`]: the `Rota-Protocol` header, its version check, and decoding with limits.
//! - [`keys`], [`seal`], [`replay`]: message authentication. Every message that concerns an app
//!   or a server is sealed with a key only its legitimate senders hold (HMAC-SHA256), stamped so
//!   that a copy is refused, and replies are sealed with the request's key, so that nothing that
//!   arrives on the bus is trusted for what it claims.
//! - [`transport`]: requests, publishes and replies, with errors whose [`RequestErrorKind`] says
//!   what happened.
//!
//! **Architecture Invariant:** no Rota process builds NATS options, protocol headers or message
//! seals anywhere else.
#![forbid(unsafe_code)]

pub mod keys;
pub mod options;
pub mod protocol;
pub mod replay;
pub mod seal;
pub mod token;
pub mod transport;

pub use keys::Key;
pub use options::{ConnectError, ConnectErrorKind, Connection, NatsOptions};
pub use protocol::{check_version, decode_message, protocol_headers};
pub use replay::{ReplayError, ReplayGuard, Stamper};
pub use seal::{Credential, Scope, Seal};
pub use token::AdminToken;
pub use transport::{Incoming, RequestError, RequestErrorKind, Transport, open_reply, wall_ms};
