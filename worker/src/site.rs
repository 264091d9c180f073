//! What `/metrics`, `/healthz` and `/readyz` show of a worker: the processor durations and the
//! dispatches it took or refused as they happen, and at each scrape what it runs and holds, its
//! capacity, the log lines it dropped and its NATS reconnects.

use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::Client;
use rota_observe::prometheus_client::collector::Collector;
use rota_observe::prometheus_client::encoding::DescriptorEncoder;
use rota_observe::prometheus_client::metrics::counter::Counter;
use rota_observe::prometheus_client::metrics::family::Family;
use rota_observe::prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rota_observe::prometheus_client::registry::Unit;
use rota_observe::{encode_counters, encode_gauges};
use rota_shared::InstanceStatus;

use crate::agent::Agent;

type Labels = Vec<(&'static str, String)>;

/// The families the worker's parts record into.
pub(crate) struct WorkerMetrics {
    app: String,
    registry: rota_observe::Metrics,
    durations: Family<Labels, Histogram>,
    dispatches: Family<Labels, Counter>,
    refused: Family<Labels, Counter>,
    tasks: Family<Labels, Counter>,
}

impl WorkerMetrics {
    pub(crate) fn new(app: &str) -> Self {
        let metrics = Self {
            app: app.to_owned(),
            registry: rota_observe::Metrics::with_prefix("rota"),
            // 10 ms to about 45 min, quadrupling.
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.01, 4.0, 14))
            }),
            dispatches: Family::default(),
            refused: Family::default(),
            tasks: Family::default(),
        };
        metrics.registry.register(|r| {
            r.register_with_unit(
                "worker_processor_duration",
                "How long processors ran, by processor and how the run ended",
                Unit::Seconds,
                metrics.durations.clone(),
            );
            r.register(
                "worker_dispatches",
                "Dispatches this worker took or refused",
                metrics.dispatches.clone(),
            );
            r.register(
                "worker_distributed_tasks",
                "Tasks of distributed instances this worker ran for a master, by outcome \
                 (each worker's share, and with rate() the tasks per second)",
                metrics.tasks.clone(),
            );
            r.register(
                "worker_refused_messages",
                "Messages this worker refused as not authenticated or replayed, by reason",
                metrics.refused.clone(),
            );
        });
        metrics
    }

    /// A processor run ended with `status` after `took`.
    pub(crate) fn processed(&self, processor: &str, status: InstanceStatus, took: Duration) {
        let labels = vec![
            ("app", self.app.clone()),
            ("processor", processor.to_owned()),
            ("outcome", status.as_str().to_ascii_lowercase()),
        ];
        self.durations
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// A dispatch was taken (`accepted`) or refused.
    pub(crate) fn dispatch(&self, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "refused" };
        self.dispatches
            .get_or_create(&vec![
                ("app", self.app.clone()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// A task a master gave this worker ended.
    pub(crate) fn task(&self, success: bool) {
        let outcome = if success { "succeeded" } else { "failed" };
        self.tasks
            .get_or_create(&vec![
                ("app", self.app.clone()),
                ("outcome", outcome.to_owned()),
            ])
            .inc();
    }

    /// A message was refused: `unauthenticated` (no or a bad seal) or `replay`.
    pub(crate) fn refused(&self, reason: &'static str) {
        self.refused
            .get_or_create(&vec![
                ("app", self.app.clone()),
                ("reason", reason.to_owned()),
            ])
            .inc();
    }

    /// Adds what is read off the running worker at each scrape.
    pub(crate) fn watch(&self, agent: &Arc<Agent>, client: Client) {
        self.registry.add_collector(Box::new(AgentCollector {
            agent: Arc::downgrade(agent),
            client,
        }));
    }

    fn encode(&self) -> Result<String, std::fmt::Error> {
        self.registry.encode()
    }
}

struct AgentCollector {
    agent: Weak<Agent>,
    client: Client,
}

impl std::fmt::Debug for AgentCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AgentCollector")
    }
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(agent) = self.agent.upgrade() else {
            return Ok(());
        };
        let e = &mut encoder;
        let app = || vec![("app", agent.config.app.clone())];
        let gauge = |e: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64| {
            encode_gauges(e, name, help, &vec![(app(), v)])
        };
        gauge(
            e,
            "worker_running_tasks",
            "Instances running on this worker",
            agent.instances.running_ids().len() as u64,
        )?;
        gauge(
            e,
            "worker_distributed_tasks_running",
            "Tasks of distributed instances running on this worker for a master",
            agent.task_runs.running() as u64,
        )?;
        gauge(
            e,
            "worker_master_of",
            "Distributed instances this worker is the master of",
            agent.masters.len() as u64,
        )?;
        gauge(
            e,
            "worker_held_fires",
            "Fires held for their instant",
            agent.instances.held_ids().len() as u64,
        )?;
        gauge(
            e,
            "worker_capacity",
            "Instances this worker runs at once at most",
            u64::from(agent.config.capacity),
        )?;
        encode_counters(
            e,
            "worker_log_lines_dropped",
            "Log lines dropped because the buffer was full or a batch could not be sent",
            &vec![(app(), agent.logs.dropped())],
        )?;
        if let Some(containers) = &agent.containers {
            use std::sync::atomic::Ordering::Relaxed;
            let c = &containers.counts;
            let by = |result: &str, n: u64| {
                let mut labels = app();
                labels.push(("result", result.to_owned()));
                (labels, n)
            };
            encode_counters(
                e,
                "worker_container_fetches",
                "Container bundles this worker needed, by result: downloaded (and checked), \
                 cache_hit, or refused (a download, digest, archive or manifest failure)",
                &vec![
                    by("downloaded", c.downloads.load(Relaxed)),
                    by("cache_hit", c.cache_hits.load(Relaxed)),
                    by("refused", c.refusals.load(Relaxed)),
                ],
            )?;
        }
        encode_counters(
            e,
            "nats_reconnects",
            "Times the NATS connection was re-established",
            &vec![(vec![], rota_transport::options::reconnects(&self.client))],
        )?;
        Ok(())
    }
}

/// Why the worker cannot take work now; empty when it can.
pub(crate) fn not_ready(agent: &Agent, client: &Client) -> Vec<String> {
    let mut reasons = Vec::new();
    if client.connection_state() != async_nats::connection::State::Connected {
        reasons.push("NATS is not connected".to_owned());
    }
    if !agent.accepting() {
        reasons.push("the worker is shutting down".to_owned());
    }
    reasons
}

/// The worker's side of `rota_observe`.
pub(crate) struct WorkerSite {
    pub agent: Arc<Agent>,
    pub client: Client,
}

impl rota_observe::Site for WorkerSite {
    fn metrics(&self) -> Result<String, std::fmt::Error> {
        self.agent.metrics.encode()
    }

    fn not_ready(&self) -> Vec<String> {
        not_ready(&self.agent, &self.client)
    }
}
