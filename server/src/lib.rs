//! The Rota scheduler server.
//!
//! A server owns apps, schedules their jobs, dispatches instances to the apps' workers over NATS,
//! applies the workers' status reports by the rules in `rota_shared::rules`, stores logs, and
//! answers administrators. Start one with [`Server::start`].
#![forbid(unsafe_code)]

mod admin;
mod bootstrap;
mod bundles;
mod clock;
mod config;
mod core;
mod dispatch;
mod gate;
mod inserts;
mod job_cache;
mod metrics;
mod ownership;
mod readiness;
mod reconcile;
mod registry;
mod repairs;
mod reports;
mod scheduler;
mod server;
pub mod service;
pub mod store;
mod timer;
mod worker_calls;

pub use admin::create_token;
pub use bootstrap::{BootstrapError, DeclaredApp};
pub use config::ServerConfig;
pub use server::{SERVICE_NAME, Server, ServerError, ServerHandle, VERSION};
