//! Starting a worker, and the handle that shuts it down.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use rota_shared::subject::WorkerEndpoint;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::agent::Agent;
use crate::builtin::{HttpProcessor, ShellProcessor};
use crate::config::WorkerConfig;
use crate::error::WorkerError;
use crate::instances::{Instances, StopCause};
use crate::link::{self, Link};
use crate::logs::{LogFlusher, LogSink};
use crate::processor::ProcessorRegistry;
use crate::reaper::Reaper;
use crate::{acks, announcements, dedupe, endpoints, heartbeat};

/// After the shutdown grace, how long stopped instances get to end and report.
const STOP_REPORT_WAIT: Duration = Duration::from_secs(10);

/// How long shutdown waits for the last log batches.
const FINAL_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// How long shutdown waits for NATS to take the last messages and close.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// Where the process groups of this worker's shell runs are recorded: a file of the state
/// directory named after the app and the worker id, so that the same worker started again
/// finds it (and no other worker does).
fn process_group_record(
    config: &WorkerConfig,
    worker_id: &str,
) -> Result<Option<std::path::PathBuf>, String> {
    let Some(dir) = &config.state_dir else {
        return Ok(None);
    };
    std::fs::create_dir_all(dir).map_err(|e| format!("state directory {}: {e}", dir.display()))?;
    Ok(Some(dir.join(format!(
        "process-groups-{}-{worker_id}",
        config.app
    ))))
}

/// The worker agent.
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// Connects to NATS, acquires the server that owns the app, subscribes to the worker's
    /// subjects and sends a first heartbeat. When this returns the worker can take work.
    pub async fn start(
        config: WorkerConfig,
        registry: ProcessorRegistry,
    ) -> Result<WorkerHandle, WorkerError> {
        let (worker_id, subjects) = config.validate()?;
        let mut registry = registry;
        // A user's processor of the same name wins over a built-in.
        if config.allow_shell && !registry.contains("shell") {
            let reaper = Arc::new(Reaper::start(
                process_group_record(&config, &worker_id).map_err(WorkerError::InvalidConfig)?,
            ));
            registry.register(
                "shell",
                ShellProcessor::new(config.kill_grace).watched_by(reaper),
            );
        }
        if config.allow_http && !registry.contains("http") {
            registry.register("http", HttpProcessor::new());
        }

        let reacquire = Arc::new(Notify::new());
        let client = link::connect(&config, &subjects, &worker_id, Arc::clone(&reacquire)).await?;
        let subscribe = |subject: String| {
            let client = client.clone();
            async move {
                client.subscribe(subject.clone()).await.map_err(|e| {
                    WorkerError::Connect(format!("cannot subscribe to {subject}: {e}"))
                })
            }
        };
        // The worker listens before it announces itself, so that no dispatch finds it deaf.
        let mut requests = Vec::new();
        for endpoint in WorkerEndpoint::ALL {
            requests.push(subscribe(subjects.to_worker(&config.app, &worker_id, endpoint)).await?);
        }
        let ack_inbox = client.new_inbox();
        let acks_sub = subscribe(format!("{ack_inbox}.>")).await?;
        let owner_sub = subscribe(subjects.app_owner(&config.app)).await?;

        let link = Arc::new(
            Link::establish(
                client.clone(),
                subjects,
                &config,
                worker_id.clone(),
                reacquire,
            )
            .await?,
        );
        let logs = LogSink::new(config.log_buffer_lines, config.log_batch_lines);
        let flusher = LogFlusher::new(
            Arc::clone(&link),
            worker_id.clone(),
            logs.clone(),
            config.log_flush_interval,
        );
        let reacquire_every = config.reacquire_interval;
        let containers = if config.allow_containers {
            let dir = config
                .state_dir
                .clone()
                .unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("rota-{}-{worker_id}", config.app))
                })
                // Its own directory: workers sharing a state directory must not sweep or
                // evict each other's bundles.
                .join("containers")
                .join(format!("{}-{worker_id}", config.app));
            let http = crate::builtin::http_client()
                .map_err(|e| WorkerError::InvalidConfig(format!("HTTP client: {e}")))?;
            let containers = Arc::new(crate::containers::Containers::new(
                Arc::clone(&link),
                client.clone(),
                {
                    let cache = crate::bundle::BundleCache::new(dir, config.container_cache_bytes);
                    cache.sweep();
                    cache
                },
                http,
            ));
            if !registry.contains(rota_shared::container::CONTAINER_PROCESSOR) {
                let reaper = Arc::new(Reaper::start(
                    process_group_record(&config, &format!("{worker_id}-containers"))
                        .map_err(WorkerError::InvalidConfig)?,
                ));
                registry.register(
                    rota_shared::container::CONTAINER_PROCESSOR,
                    crate::builtin::ContainerProcessor {
                        containers: Arc::clone(&containers),
                        kill_grace: config.kill_grace,
                        reaper,
                    },
                );
            }
            Some(containers)
        } else {
            None
        };
        let agent = Arc::new(Agent::new(
            config,
            worker_id,
            Arc::clone(&link),
            registry,
            Instances::new(dedupe::DEFAULT_MEMORY),
            logs,
            ack_inbox,
            containers,
        ));

        heartbeat::send(&agent).await;
        // The subscriptions and the first heartbeat are on the server once the flush returns.
        if let Err(e) = client.flush().await {
            return Err(WorkerError::Connect(format!("cannot flush: {e}")));
        }

        let serve = tokio::spawn(endpoints::serve(Arc::clone(&agent), requests));
        let background = vec![
            tokio::spawn(heartbeat::run(Arc::clone(&agent))),
            tokio::spawn(Arc::clone(&link).run_reacquire(reacquire_every)),
            tokio::spawn(acks::run(Arc::clone(&agent), acks_sub)),
            tokio::spawn(announcements::run(Arc::clone(&agent), owner_sub)),
            tokio::spawn(flusher.run()),
        ];
        agent.metrics.watch(&agent, client.clone());
        let endpoint = match agent.config.http_listen {
            Some(addr) => {
                let site = crate::site::WorkerSite {
                    agent: Arc::clone(&agent),
                    client: client.clone(),
                };
                Some(
                    rota_observe::Endpoint::bind(addr, Arc::new(site))
                        .await
                        .map_err(|e| WorkerError::InvalidConfig(e.to_string()))?,
                )
            }
            None => None,
        };
        info!(
            worker = %agent.worker_id,
            server = %link.owner().server_id,
            app = %agent.config.app,
            processors = ?agent.registry.names(),
            "worker started"
        );
        Ok(WorkerHandle {
            agent,
            client,
            serve: Some(serve),
            background,
            endpoint,
        })
    }
}

/// A running worker. Dropping it aborts the worker like [`WorkerHandle::abort`].
pub struct WorkerHandle {
    agent: Arc<Agent>,
    client: Client,
    serve: Option<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    /// `/metrics`, `/healthz` and `/readyz`, when `http_listen` is set.
    endpoint: Option<rota_observe::Endpoint>,
}

impl std::fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("worker_id", &self.agent.worker_id)
            .field("server_id", &self.server_id())
            .finish_non_exhaustive()
    }
}

impl WorkerHandle {
    pub fn worker_id(&self) -> &str {
        &self.agent.worker_id
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, when they are.
    pub fn http_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint
            .as_ref()
            .map(rota_observe::Endpoint::local_addr)
    }

    /// The server the worker currently talks to.
    pub fn server_id(&self) -> String {
        self.agent.link.owner().server_id
    }

    /// Shuts down gracefully: rejects new dispatches, stops frequent jobs at once (they report
    /// FAILED, "worker shutting down", so that the server runs them elsewhere), waits up to
    /// `shutdown_grace` for the other running instances, stops (and reports) those still
    /// running, flushes the logs and drains the NATS connection.
    pub async fn shutdown(mut self) {
        let agent = Arc::clone(&self.agent);
        let config = &agent.config;
        agent.stop_accepting();
        agent.trackers.close();
        // Tasks masters gave this worker are dropped: their masters run them elsewhere once
        // this worker leaves the cluster.
        agent.task_runs.stop_all();
        // A frequent job's tracker never ends by itself, so it is not waited for: it is stopped
        // now and reports FAILED ("worker shutting down"), so that the server can start the
        // instance again on another worker without waiting out the grace.
        for state in agent.instances.all() {
            if state.frequent {
                state.stop(StopCause::Shutdown);
            }
        }
        let running = agent.instances.len();
        if running > 0 {
            info!(
                running,
                grace = ?config.shutdown_grace,
                "shutting down; waiting for running instances"
            );
        }
        if tokio::time::timeout(config.shutdown_grace, agent.trackers.wait())
            .await
            .is_err()
        {
            let left = agent.instances.all();
            warn!(
                left = left.len(),
                "shutdown grace over; stopping the instances still running"
            );
            for state in &left {
                state.stop(StopCause::Shutdown);
            }
            let wait = config.kill_grace + STOP_REPORT_WAIT;
            if tokio::time::timeout(wait, agent.trackers.wait())
                .await
                .is_err()
            {
                warn!("instances still unreported after {wait:?}; abandoning them");
                for state in agent.instances.all() {
                    state.abort_tracker();
                }
            }
        }
        if !agent.logs.flush(FINAL_FLUSH_WAIT).await {
            warn!("the last log lines could not be sent");
        }
        for task in self.background.drain(..) {
            task.abort();
        }
        // Draining unsubscribes, lets the dispatches already delivered be answered ("shutting
        // down"), sends what is buffered and closes the connection; the serve loop ends with
        // its subscriptions.
        let drained = async {
            if let Err(e) = self.client.flush().await {
                warn!("cannot flush NATS: {e}");
            }
            if let Err(e) = self.client.drain().await {
                warn!("cannot drain NATS: {e}");
            }
            if let Some(serve) = self.serve.as_mut() {
                let _ = serve.await;
            }
        };
        if tokio::time::timeout(DRAIN_WAIT, drained).await.is_err() {
            warn!("NATS did not drain in {DRAIN_WAIT:?}");
        }
        if let Some(endpoint) = self.endpoint.take() {
            endpoint.shutdown().await;
        }
        info!(worker = %agent.worker_id, "worker stopped");
    }

    /// Ends the worker at once, as a crash would: every task is aborted, the shell processes
    /// are killed, nothing is reported and the connection is dropped.
    pub fn abort(self) {
        // Dropping does it; see `Drop`.
    }

    fn abort_all(&mut self) {
        self.agent.stop_accepting();
        for state in self.agent.instances.all() {
            state.abort_tracker();
        }
        if let Some(serve) = self.serve.take() {
            serve.abort();
        }
        for task in self.background.drain(..) {
            task.abort();
        }
        if let Some(endpoint) = self.endpoint.take() {
            // A crashed worker answers no probe either.
            endpoint.stop();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.abort_all();
    }
}
