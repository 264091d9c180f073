//! The server's metrics (`/metrics`): what its parts measure as they work (dispatch and
//! schedule-lateness histograms, reports applied and refused, instances finished), and what is
//! read off the parts at each scrape (repairs, refusals, live workers, ownership, services,
//! readiness, the database pool), so that nothing is counted in two places.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use rota_observe::prometheus_client::collector::Collector;
use rota_observe::prometheus_client::encoding::DescriptorEncoder;
use rota_observe::prometheus_client::metrics::counter::Counter;
use rota_observe::prometheus_client::metrics::family::Family;
use rota_observe::prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use rota_observe::prometheus_client::registry::Unit;
use rota_observe::{Rows, encode_counters, encode_gauges};
use rota_shared::InstanceStatus;

use crate::core::Core;
use crate::gate::Gate;
use crate::service::{Every, ScheduledService, ServiceError, ServiceState};

type Labels = Vec<(&'static str, String)>;

/// The metric families the server's parts record into.
pub struct ServerMetrics {
    /// Names the apps in labels.
    gate: Arc<Gate>,
    registry: rota_observe::Metrics,
    dispatch: Family<Labels, Histogram>,
    lateness: Family<Labels, Histogram>,
    finished: Family<Labels, Counter>,
    reports_applied: Family<Labels, Counter>,
    reports_refused: Family<Labels, Counter>,
    /// Non-terminal instances of the owned apps, by app and status, as last counted.
    instances: Mutex<Rows>,
}

/// A status as a label value: `succeeded`.
pub fn status_label(status: InstanceStatus) -> String {
    status.as_str().to_ascii_lowercase()
}

fn seconds_buckets() -> Family<Labels, Histogram> {
    // 1 ms to about 33 s, doubling.
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)))
}

impl ServerMetrics {
    pub fn new(gate: Arc<Gate>) -> Self {
        let metrics = Self {
            gate,
            registry: rota_observe::Metrics::with_prefix("rota"),
            dispatch: seconds_buckets(),
            lateness: seconds_buckets(),
            finished: Family::default(),
            reports_applied: Family::default(),
            reports_refused: Family::default(),
            instances: Mutex::default(),
        };
        metrics.registry.register(|r| {
            r.register_with_unit(
                "dispatch_duration",
                "From sending a dispatch to the worker's acknowledgement",
                Unit::Seconds,
                metrics.dispatch.clone(),
            );
            r.register_with_unit(
                "schedule_lateness",
                "How long after its scheduled instant a fire started (the worker's start time)",
                Unit::Seconds,
                metrics.lateness.clone(),
            );
            r.register(
                "instances_finished",
                "Instances that ended, by app and final status",
                metrics.finished.clone(),
            );
            r.register(
                "reports_applied",
                "Instance changes made by worker status reports (reports of one instance in one batch make one change)",
                metrics.reports_applied.clone(),
            );
            r.register(
                "reports_refused",
                "Worker status reports that changed nothing, by reason",
                metrics.reports_refused.clone(),
            );
        });
        metrics
    }

    /// An app's name for a label (its id while the gate does not know it yet).
    fn app(&self, app_id: i64) -> String {
        self.gate
            .app_by_id(app_id)
            .map_or_else(|| app_id.to_string(), |a| a.name.clone())
    }

    /// A worker took a dispatch `took` after it was sent.
    pub fn dispatched(&self, app_id: i64, took: Duration) {
        self.dispatch
            .get_or_create(&vec![("app", self.app(app_id))])
            .observe(took.as_secs_f64());
    }

    /// A scheduled fire started `late_ms` after its instant (zero or less: on time).
    pub fn started_late(&self, app_id: i64, late_ms: i64) {
        let seconds = late_ms.max(0) as f64 / 1000.0;
        self.lateness
            .get_or_create(&vec![("app", self.app(app_id))])
            .observe(seconds);
    }

    /// A report changed an instance of the app to `status`.
    pub fn report_applied(&self, app_id: i64, status: InstanceStatus) {
        self.reports_applied
            .get_or_create(&vec![("app", self.app(app_id))])
            .inc();
        if status.is_terminal() {
            self.finished(app_id, status);
        }
    }

    /// An instance of the app ended with `status`.
    pub fn finished(&self, app_id: i64, status: InstanceStatus) {
        self.finished
            .get_or_create(&vec![
                ("app", self.app(app_id)),
                ("status", status_label(status)),
            ])
            .inc();
    }

    pub fn report_refused(&self, reason: &str) {
        self.reports_refused
            .get_or_create(&vec![("reason", reason.to_owned())])
            .inc();
    }

    fn set_instances(&self, rows: Rows) {
        *self.instances.lock().unwrap_or_else(|e| e.into_inner()) = rows;
    }

    /// Adds what is read off the running server at each scrape.
    pub fn watch(&self, core: &Arc<Core>) {
        self.registry.add_collector(Box::new(CoreCollector {
            core: Arc::downgrade(core),
        }));
    }

    /// Everything, in the Prometheus text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.registry.encode()
    }
}

/// Reads the parts of a running server at scrape time. Weak, so that a stopped server's core
/// is not kept alive by its own metrics.
struct CoreCollector {
    core: Weak<Core>,
}

impl std::fmt::Debug for CoreCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CoreCollector")
    }
}

fn by_reason(map: std::collections::BTreeMap<String, u64>) -> Rows {
    map.into_iter()
        .map(|(reason, n)| (vec![("reason", reason)], n))
        .collect()
}

impl Collector for CoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(core) = self.core.upgrade() else {
            return Ok(());
        };
        let e = &mut encoder;
        encode_counters(
            e,
            "repairs",
            "Repairs and clean-ups done by reconcile, by reason",
            &by_reason(core.repairs.snapshot()),
        )?;
        encode_counters(
            e,
            "refused_messages",
            "Bus messages and requests refused as not authenticated, by reason",
            &by_reason(core.gate.refusals()),
        )?;
        let owned = core.ownership.app_ids();
        let counts = core.workers.live_counts();
        let live: Rows = owned
            .iter()
            .map(|app| {
                let n = counts.get(app).copied().unwrap_or(0);
                (vec![("app", core.metrics.app(*app))], n)
            })
            .collect();
        encode_gauges(
            e,
            "live_workers",
            "Live workers of the apps this server owns",
            &live,
        )?;
        encode_gauges(
            e,
            "owned_apps",
            "Apps this server owns",
            &vec![(vec![], owned.len() as u64)],
        )?;
        let (acquired, released) = core.ownership.changes();
        encode_counters(
            e,
            "ownership_changes",
            "Apps this server took or gave up",
            &vec![
                (vec![("change", "acquired".to_owned())], acquired),
                (vec![("change", "released".to_owned())], released),
            ],
        )?;
        encode_counters(
            e,
            "nats_reconnects",
            "Times the NATS connection was re-established",
            &vec![(
                vec![],
                rota_transport::options::reconnects(core.transport.client()),
            )],
        )?;
        let services: Rows = core
            .services
            .probes()
            .iter()
            .map(|p| {
                let running = u64::from(p.state() == ServiceState::Running);
                (vec![("service", p.name.to_owned())], running)
            })
            .collect();
        encode_gauges(
            e,
            "service_running",
            "1 when the background service is RUNNING",
            &services,
        )?;
        let ready = u64::from(not_ready(&core).is_empty());
        encode_gauges(
            e,
            "ready",
            "1 when /readyz answers 200",
            &vec![(vec![], ready)],
        )?;
        let pool = core.store.pool_use();
        encode_gauges(
            e,
            "db_pool_connections",
            "Database connections, by state",
            &vec![
                (vec![("state", "idle".to_owned())], pool.idle),
                (vec![("state", "in_use".to_owned())], pool.in_use),
            ],
        )?;
        encode_gauges(
            e,
            "db_pool_max_connections",
            "The most connections the database pool opens",
            &vec![(vec![], pool.max)],
        )?;
        let instances = core
            .metrics
            .instances
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        encode_gauges(
            e,
            "instances",
            "Instances not finished yet of the apps this server owns, by app and status",
            &instances,
        )?;
        Ok(())
    }
}

/// Why the server cannot do its work now; empty when it can: the database answers, NATS is
/// connected and every background service runs.
pub fn not_ready(core: &Core) -> Vec<String> {
    let mut reasons = Vec::new();
    if !core.readiness.is_ready() {
        reasons.push("the database does not answer".to_owned());
    }
    if core.transport.client().connection_state() != async_nats::connection::State::Connected {
        reasons.push("NATS is not connected".to_owned());
    }
    let probes = core.services.probes();
    if probes.is_empty() {
        reasons.push("the background services have not started".to_owned());
    }
    for p in probes {
        let state = p.state();
        if state != ServiceState::Running {
            reasons.push(format!("service {} is {state}", p.name));
        }
    }
    reasons
}

/// What `/metrics`, `/healthz` and `/readyz` show of a server.
pub struct ServerSite {
    pub core: Arc<Core>,
}

impl rota_observe::Site for ServerSite {
    fn metrics(&self) -> Result<String, std::fmt::Error> {
        self.core.metrics.encode()
    }

    fn not_ready(&self) -> Vec<String> {
        not_ready(&self.core)
    }
}

/// Counts the owned apps' unfinished instances by status for the `rota_instances` gauge, one
/// grouped query each time.
pub struct InstanceCounts {
    pub core: Arc<Core>,
}

impl ScheduledService for InstanceCounts {
    fn name(&self) -> &'static str {
        "instance-counts"
    }

    fn every(&self) -> Every {
        Every::FixedDelay(self.core.config.health_interval.max(Duration::from_secs(1)))
    }

    async fn run_one_iteration(&mut self) -> Result<(), ServiceError> {
        let core = &self.core;
        let apps = core.ownership.app_ids();
        let counts = core.store.count_unfinished(&apps).await?;
        let rows = counts
            .into_iter()
            .map(|(app, status, n)| {
                (
                    vec![
                        ("app", core.metrics.app(app)),
                        ("status", status_label(status)),
                    ],
                    n,
                )
            })
            .collect();
        core.metrics.set_instances(rows);
        Ok(())
    }
}
