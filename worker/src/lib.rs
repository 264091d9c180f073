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
//!
//! A job whose execution is broadcast, map, map-reduce or sharding spreads its work over the
//! app's workers (see [`Processor`] for which method runs where). A map-reduce processor:
//!
//! ```no_run
//! use futures::FutureExt;
//! use futures::future::BoxFuture;
//! use rota_worker::{ProcessResult, Processor, TaskContext, TaskResults};
//!
//! struct WordCount;
//!
//! impl Processor for WordCount {
//!     fn process(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
//!         async move {
//!             if ctx.is_root() {
//!                 // The root task, on the master: one sub-task per line of the parameters.
//!                 let lines: Vec<String> = ctx.instance_params.clone().unwrap_or_default()
//!                     .lines().map(str::to_owned).collect();
//!                 return match ctx.map(lines, "line").await {
//!                     Ok(()) => ProcessResult::ok("mapped"),
//!                     Err(e) => ProcessResult::failed(e.to_string()),
//!                 };
//!             }
//!             // A sub-task, on any worker.
//!             ProcessResult::ok(ctx.task.payload.split_whitespace().count().to_string())
//!         }
//!         .boxed()
//!     }
//!
//!     fn reduce(&self, _ctx: TaskContext, results: TaskResults) -> BoxFuture<'static, ProcessResult> {
//!         async move {
//!             let words: u64 = results.iter().filter_map(|r| r.result.parse::<u64>().ok()).sum();
//!             ProcessResult::ok(words.to_string())
//!         }
//!         .boxed()
//!     }
//! }
//! ```
//!
//! [`demo`] has an example processor for each kind.

mod acks;
mod agent;
mod announcements;
pub mod builtin;
mod bundle;
mod config;
mod containers;
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
/// Downloads a bundle served over HTTP(S) (the CLI checks one with it before recording it).
pub use containers::fetch_bundle_url;
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
