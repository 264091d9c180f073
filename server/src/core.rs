//! The state every part of a running server shares.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rota_shared::Subjects;
use rota_transport::Transport;
use tokio_util::sync::CancellationToken;

use crate::config::ServerConfig;
use crate::gate::Gate;
use crate::ownership::Ownership;
use crate::registry::WorkerRegistry;
use crate::service::ServiceProbe;
use crate::store::{Job, Store, StoreError};
use crate::timer::TimerHandle;

/// How long a cached job is used before it is read again.
pub const JOB_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Above this many entries, stale ones are dropped.
const JOB_CACHE_MAX: usize = 100_000;

pub struct Core {
    pub id: String,
    /// The one clock every part reads the time from.
    pub clock: crate::clock::Clock,
    pub started_at_ms: i64,
    pub config: ServerConfig,
    pub transport: Transport,
    pub subjects: Subjects,
    pub store: Store,
    /// Every key the server checks and seals messages with.
    pub gate: Gate,
    pub workers: WorkerRegistry,
    pub ownership: Ownership,
    pub timer: TimerHandle,
    /// Creates API runs' instances in batches.
    pub inserts: crate::inserts::InsertQueue,
    /// API runs created already handed to a worker go here, for the dispatcher to send.
    pub handed: tokio::sync::mpsc::UnboundedSender<crate::dispatch::Handed>,
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
    /// Jobs read in the last second: dispatches and report batches need them for every
    /// instance, and they change rarely. A change made on this server drops its entry at once; one
    /// made on another server is seen within `JOB_CACHE_TTL`.
    pub job_cache: Mutex<HashMap<i64, (tokio::time::Instant, Arc<Job>)>>,
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

    /// Jobs by id, from the cache where fresh; jobs that do not exist are left out.
    pub async fn jobs(&self, ids: &[i64]) -> Result<HashMap<i64, Arc<Job>>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        {
            let cache = self.job_cache.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                match cache.get(id) {
                    Some((at, job)) if at.elapsed() < JOB_CACHE_TTL => {
                        found.insert(*id, job.clone());
                    }
                    _ => missing.push(*id),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let loaded = self.store.jobs_by_ids(&missing).await?;
            let now = tokio::time::Instant::now();
            let mut cache = self.job_cache.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() > JOB_CACHE_MAX {
                cache.retain(|_, (at, _)| at.elapsed() < JOB_CACHE_TTL);
            }
            for job in loaded {
                let job = Arc::new(job);
                cache.insert(job.id, (now, job.clone()));
                found.insert(job.id, job);
            }
        }
        Ok(found)
    }

    /// One job, from the cache where fresh.
    pub async fn job(&self, id: i64) -> Result<Arc<Job>, StoreError> {
        self.jobs(&[id])
            .await?
            .remove(&id)
            .ok_or_else(|| StoreError::NotFound(format!("job {id}")))
    }

    /// Puts an instance due at `due_ms` on the timer, `dispatch_ahead` early: a plain instance
    /// is handed to its worker then and starts at `due_ms`; one that needs care (a concurrency
    /// limit, a frequent job) waits on the timer again until `due_ms`.
    pub fn schedule_dispatch(&self, instance_id: i64, due_ms: i64) -> bool {
        let ahead = crate::clock::millis(self.config.dispatch_ahead);
        self.timer
            .schedule(instance_id, due_ms.saturating_sub(ahead))
    }

    /// Drops a job from the cache after this server changed it.
    pub fn forget_job(&self, id: i64) {
        self.job_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
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
