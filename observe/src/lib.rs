//! What operators and Kubernetes look at: one small HTTP endpoint per process serving
//! `/metrics` (the Prometheus text format), `/healthz` (the process is alive) and `/readyz` (it
//! can do its work), and the helpers servers and workers build their metrics with.
//!
//! The endpoint never changes the process it watches: it only reads, through a [`Site`].
#![forbid(unsafe_code)]

mod endpoint;
pub mod probe;
mod registry;
mod snapshot;

pub use endpoint::{Endpoint, EndpointError, Site};
pub use prometheus_client;
pub use registry::Metrics;
pub use snapshot::{Rows, encode_counters, encode_gauges};
