//! The state every part of a running server shares.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::Client;
use rota_shared::Subjects;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::ownership::Ownership;
use crate::registry::WorkerRegistry;
use crate::service::ServiceProbe;
use crate::store::Store;
use crate::timer::TimerHandle;

pub struct Core {
    pub id: String,
    pub started_at_ms: i64,
    pub config: ServerConfig,
    pub client: Client,
    pub subjects: Subjects,
    pub store: Store,
    pub workers: WorkerRegistry,
    pub ownership: Ownership,
    pub timer: TimerHandle,
    /// Instances a dispatch task is working on now, so that the timer and the waiting scan
    /// never run two dispatches of one instance in this process.
    pub dispatching: Mutex<HashSet<i64>>,
    /// One lock per job with a concurrency limit: counting a job's live instances and handing
    /// one more to a worker must not interleave with another dispatch of the same job.
    pub job_slots: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
    /// Repairs and clean-ups done, by reason, for operators (`rota server stats`).
    pub repairs: Mutex<BTreeMap<String, u64>>,
    /// Whether the database answered the last health check.
    pub ready: AtomicBool,
    /// The background services, for their states in `rota server stats`.
    pub services: Mutex<Vec<ServiceProbe>>,
    /// When this server's NATS connection was last (re)established: heartbeats missed while the
    /// server itself was cut off say nothing about the workers.
    pub connected_since: Arc<Mutex<tokio::time::Instant>>,
    /// Since when the database has answered without a break: reports that arrived while it did
    /// not could not be stored, so their absence from the database is not silence.
    pub ready_since: Mutex<tokio::time::Instant>,
    pub shutdown: CancellationToken,
}

impl Core {
    /// Marks an instance as being dispatched; `false` if it already is.
    pub fn begin_dispatch(&self, id: i64) -> bool {
        self.dispatching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
    }

    /// Counts `n` repairs of `reason`.
    pub fn repaired(&self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        tracing::info!(reason, n, "repaired");
        *self
            .repairs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason.to_owned())
            .or_default() += n;
    }

    /// How long this server has been connected to NATS without a break.
    pub fn connected_for(&self) -> std::time::Duration {
        self.connected_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// How long the database has answered without a break (zero while it does not).
    pub fn ready_for(&self) -> std::time::Duration {
        if !self.is_ready() {
            return std::time::Duration::ZERO;
        }
        self.ready_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The lock that serializes the dispatches of one job.
    pub fn job_slot(&self, job_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        self.job_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(job_id)
            .or_default()
            .clone()
    }

    pub fn end_dispatch(&self, id: i64) {
        self.dispatching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}
