//! The state one running worker shares between its tasks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rota_transport::ReplayGuard;
use tokio_util::task::TaskTracker;

use crate::config::WorkerConfig;
use crate::instances::Instances;
use crate::link::Link;
use crate::logs::LogSink;
use crate::processor::ProcessorRegistry;
use crate::reporter::Reporter;

/// Everything the endpoints, the heartbeat and the task trackers of one worker need.
pub(crate) struct Agent {
    pub config: WorkerConfig,
    pub worker_id: String,
    /// New each time this process starts (see `WorkerHeartbeat::incarnation`).
    pub incarnation: String,
    pub link: Arc<Link>,
    pub registry: ProcessorRegistry,
    pub instances: Instances,
    /// The instances' log buffer; `logs.flush(..)` sends what it holds.
    pub logs: LogSink,
    /// The subject prefix under which the owner answers progress reports (see `acks`).
    pub ack_inbox: String,
    /// The task trackers, so that shutdown can wait for them.
    pub trackers: TaskTracker,
    /// Sends terminal reports in batches.
    pub reporter: Reporter,
    /// The stamps of the servers' messages taken so far: a copy is refused.
    pub replay: ReplayGuard,
    /// The same for what other workers of the app send (tasks and task reports), kept apart
    /// so that a worker naming itself after a server cannot make that server's messages look
    /// like replays.
    pub peer_replay: ReplayGuard,
    /// What `/metrics` shows.
    pub metrics: crate::site::WorkerMetrics,
    /// The distributed instances this worker is the master of.
    pub masters: crate::master::Masters,
    /// The tasks masters gave this worker.
    pub task_runs: crate::tasks::TaskRuns,
    /// Container bundles, when containers are allowed.
    pub containers: Option<Arc<crate::containers::Containers>>,
    accepting: AtomicBool,
}

impl Agent {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        config: WorkerConfig,
        worker_id: String,
        link: Arc<Link>,
        registry: ProcessorRegistry,
        instances: Instances,
        logs: LogSink,
        ack_inbox: String,
        containers: Option<Arc<crate::containers::Containers>>,
    ) -> Self {
        let reporter = Reporter::start(Arc::clone(&link));
        let metrics = crate::site::WorkerMetrics::new(&config.app);
        Self {
            metrics,
            config,
            worker_id,
            incarnation: uuid::Uuid::new_v4().simple().to_string(),
            link,
            registry,
            instances,
            logs,
            ack_inbox,
            trackers: TaskTracker::new(),
            reporter,
            replay: ReplayGuard::new(crate::context::now_ms()),
            peer_replay: ReplayGuard::new(crate::context::now_ms()),
            masters: Default::default(),
            task_runs: Default::default(),
            containers,
            accepting: AtomicBool::new(true),
        }
    }

    /// Whether new dispatches are accepted (false once shutdown has begun).
    pub(crate) fn accepting(&self) -> bool {
        self.accepting.load(Ordering::SeqCst)
    }

    pub(crate) fn stop_accepting(&self) {
        self.accepting.store(false, Ordering::SeqCst);
    }

    /// The reply subject for one progress report.
    pub(crate) fn ack_subject(&self, instance_id: i64, attempt: i32, seq: i64) -> String {
        crate::acks::ack_subject(&self.ack_inbox, instance_id, attempt, seq)
    }
}
