//! The parts of a running server, wired together once by `Server::start`.
//!
//! `Core` is a bundle of parts, not a place for state: every field is either a value fixed at
//! start (the id, the configuration) or a part that owns its state behind methods (the
//! dispatcher, the worker registry, ownership, the job cache, readiness, the repair counts).
//! Nothing is ever assigned through it.

use std::sync::Arc;

use rota_shared::Subjects;
use rota_transport::Transport;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::dispatch::Dispatcher;
use crate::gate::Gate;
use crate::inserts::InsertQueue;
use crate::job_cache::JobCache;
use crate::metrics::ServerMetrics;
use crate::ownership::Ownership;
use crate::readiness::Readiness;
use crate::registry::WorkerRegistry;
use crate::repairs::Repairs;
use crate::service::ServiceBoard;
use crate::store::Store;
use crate::timer::TimerHandle;
use crate::worker_calls::WorkerCalls;

pub struct Core {
    pub id: String,
    /// The one clock every part reads the time from.
    pub clock: Clock,
    pub started_at_ms: i64,
    pub config: ServerConfig,
    pub transport: Transport,
    pub subjects: Subjects,
    pub store: Store,
    /// Every key the server checks and seals messages with.
    pub gate: Arc<Gate>,
    pub workers: Arc<WorkerRegistry>,
    pub ownership: Arc<Ownership>,
    pub timer: TimerHandle,
    /// Creates API runs' instances in batches.
    pub inserts: InsertQueue,
    pub jobs: Arc<JobCache>,
    /// The one client of workers' endpoints.
    pub calls: WorkerCalls,
    /// The only part that hands instances to workers.
    pub dispatcher: Arc<Dispatcher>,
    pub readiness: Arc<Readiness>,
    pub repairs: Repairs,
    /// What `/metrics` shows.
    pub metrics: Arc<ServerMetrics>,
    pub services: ServiceBoard,
    pub shutdown: CancellationToken,
}
