//! The Rota testkit: what every end-to-end test uses to stand up real infrastructure.
//!
//! Rota's servers and workers talk only over NATS and keep their state in a database, so an
//! end-to-end test needs both, for real and private to the test:
//!
//! - [`nats::NatsServer`] starts a `nats-server` (with JetStream) on a free port of 127.0.0.1, with
//!   its store in a temporary directory, and can stop and restart it on the same port to test
//!   reconnection. It never touches a NATS that happens to run on the machine.
//! - [`db::TestDatabase`] creates a fresh, empty database: a SQLite file in a temporary directory,
//!   or a newly created PostgreSQL database that is dropped again afterwards. Which one is chosen
//!   by `ROTA_TEST_DB`, so the same tests run on every backend.
//! - [`wait`] holds the bounded waiting helpers. Tests wait for a condition with a deadline and a
//!   clear message, never by sleeping for a guessed time.
//!
//! The environment the testkit reads:
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `ROTA_NATS_SERVER_BIN` | the nats-server binary (2.10 or newer) | `<repo>/.tools/bin/nats-server`, then `nats-server` on `PATH` |
//! | `ROTA_TEST_DB` | `sqlite` or `postgres` | `sqlite` |
//! | `ROTA_TEST_POSTGRES_URL` | a PostgreSQL database to connect to for `CREATE DATABASE` | `postgres://postgres@127.0.0.1:5432/postgres` |
//! | `RUST_LOG` | the log filter of [`init_tracing`] | `warn` |
//!
//! `scripts/install-nats.sh` installs the pinned nats-server into `.tools/`, and `scripts/test.sh`
//! runs the whole suite on SQLite and then on PostgreSQL with these variables set.

#![forbid(unsafe_code)]

pub mod bus;
pub mod cluster;
pub mod db;
pub mod groups;
pub mod nats;
pub mod process;
pub mod proxy;
pub mod scrape;
pub mod tools;
pub mod wait;
pub mod worker_process;

/// Sends `tracing` output to the test harness's captured output, filtered by `RUST_LOG` (default
/// `warn`), so a failing test shows what the servers and workers it started were doing.
///
/// Every test may call it: only the first call in a process installs the subscriber.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour codes would only clutter captured output and CI logs.
    let result = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(false)
        .try_init();
    // An error only means a subscriber is already installed, by an earlier call or by the test
    // itself, which is exactly the state this function is meant to reach.
    drop(result);
}

/// A port of 127.0.0.1 nothing listens on now, for a process told where to listen (a worker's
/// `/metrics`, a container's port). Another process may take it before it is used; tests
/// that start many listeners should let them bind port 0 instead where they can.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
