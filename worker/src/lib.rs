//! The Rota worker: the SDK (the [`Processor`] trait and its [`ProcessorRegistry`]) and the
//! agent that runs processors for a Rota server over NATS.
//!
//! A worker only ever opens an outbound NATS connection. It asks discovery which server owns its
//! app, heartbeats to that server, takes dispatches on `{prefix}.wrk.{worker_id}.dispatch`, runs
//! each accepted attempt under a task tracker that reports its status (a frequent job's tracker
//! runs the processor again and again, on a fixed rate or delay, until it is stopped or its
//! lifecycle ends), and batches the instances' logs to the server.
//!
//! ```no_run
//! use rota_worker::{ProcessResult, ProcessorRegistry, TaskContext, Worker, WorkerConfig};
//!
//! # async fn example() -> Result<(), rota_worker::WorkerError> {
//! let mut registry = ProcessorRegistry::new();
//! registry.register(
//!     "hello",
//!     rota_worker::processor_fn(|ctx: TaskContext| async move {
//!         ctx.info("hello from a processor");
//!         ProcessResult::ok("done")
//!     }),
//! );
//! let config = WorkerConfig {
//!     app: "demo".into(),
//!     secret: "s3cret".into(),
//!     ..WorkerConfig::default()
//! };
//! let worker = Worker::start(config, registry).await?;
//! // … on SIGTERM:
//! worker.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod acks;
mod agent;
mod announcements;
pub mod builtin;
mod config;
mod context;
mod dedupe;
pub mod demo;
mod endpoints;
mod error;
mod frequent;
mod heartbeat;
mod instances;
mod link;
mod logs;
mod master;
mod metrics;
mod processor;
mod reaper;
mod reporter;
mod retry;
mod site;
mod task_store;
mod tasks;
#[cfg(test)]
mod test_support;
mod tracker;
mod worker;

pub use config::WorkerConfig;
pub use context::{MapError, TaskContext, TaskPart};
pub use error::WorkerError;
pub use processor::{ProcessResult, Processor, ProcessorRegistry, by_counts, processor_fn};
/// A shard item's index, the total and its parameter (see [`TaskContext::shard`]).
pub use rota_shared::task::Shard;
pub use task_store::{StoreError, TaskOutput, TaskResults};
pub use worker::{Worker, WorkerHandle};

/// The level of a [`TaskContext::log`] line, re-exported so that processors need not name the
/// protocol crate.
pub use rota_shared::message::LogLevel;
