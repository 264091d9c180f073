//! Server configuration.

use std::time::Duration;

use rota_transport::NatsOptions;

/// Everything a server needs to run. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The clock the server reads the time from: the system's, unless a test gives one that
    /// follows tokio's (paused) time.
    pub clock: crate::clock::Clock,
    /// Where NATS is and how to log in to it.
    pub nats: NatsOptions,
    /// The subject prefix shared by a deployment's servers and workers.
    pub prefix: String,
    /// `sqlite://path`, `postgres://…` or `mysql://…`.
    pub database_url: String,
    /// A stable id for this server; generated when not set. Use a fixed one for servers that
    /// restart, so they rejoin under the same name.
    pub server_id: Option<String>,
    /// A worker not heard from for this long is not live (three heartbeat intervals).
    pub worker_timeout: Duration,
    /// How often the schedule loop looks for due jobs.
    pub schedule_interval: Duration,
    /// How far ahead of their fire time instances are created and put on the timer.
    pub schedule_lookahead: Duration,
    /// A fire more than this late when the loop first sees it counts as missed: it fires once,
    /// now, and the job's schedule resumes from the present.
    pub misfire_threshold: Duration,
    /// How long a worker has to acknowledge a dispatch.
    pub dispatch_timeout: Duration,
    /// How long before its instant a scheduled fire is handed to its worker, which starts it at
    /// the instant: the dispatch's cost is paid ahead, so thousands of fires due at one instant
    /// all start on time. Zero dispatches at the instant. The default is a second and a half:
    /// CRON fires cluster on whole seconds, and hand-overs half a second off them do not compete
    /// with the starts. It should stay below `schedule_lookahead`, or fires are handed over later.
    pub dispatch_ahead: Duration,
    /// How long an instance waits for a live worker before it fails.
    pub no_worker_timeout: Duration,
    /// How often the server re-reads which apps it owns. An app another server took over stops
    /// being scheduled here at the next re-read.
    pub ownership_refresh: Duration,
    /// How often the server refreshes its presence row.
    pub presence_interval: Duration,
    /// How long a call forwarded to an app's owner may take.
    pub rpc_timeout: Duration,
    /// How often the server checks that the database answers (its readiness).
    pub health_interval: Duration,
    /// How often reconcile looks for what events missed (DESIGN §7).
    pub reconcile_interval: Duration,
    /// A WAITING_DISPATCH instance this late is put back on the timer.
    pub waiting_overdue: Duration,
    /// A dispatch not acknowledged (no first report) for this long has failed; the instance is
    /// dispatched again.
    pub unacknowledged_timeout: Duration,
    /// A RUNNING instance with no report for this long has lost its worker.
    pub report_timeout: Duration,
    /// How often finished instances older than `retention` are deleted.
    pub clean_up_interval: Duration,
    /// How long finished instances and their logs are kept.
    pub retention: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (port 0: any free port); off when
    /// unset.
    pub http_listen: Option<std::net::SocketAddr>,
    /// An admin token the deployment declares: created at start when it does not exist.
    pub admin_token: Option<rota_transport::AdminToken>,
    /// Apps the deployment declares: created at start when they do not exist.
    pub apps: Vec<crate::bootstrap::DeclaredApp>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            clock: crate::clock::Clock::system(),
            nats: NatsOptions::new("nats://127.0.0.1:4222"),
            prefix: rota_shared::subject::DEFAULT_PREFIX.to_owned(),
            database_url: "sqlite://rota.db".to_owned(),
            server_id: None,
            worker_timeout: Duration::from_secs(9),
            schedule_interval: Duration::from_millis(500),
            schedule_lookahead: Duration::from_secs(3),
            misfire_threshold: Duration::from_secs(5),
            dispatch_timeout: Duration::from_secs(3),
            dispatch_ahead: Duration::from_millis(1500),
            no_worker_timeout: Duration::from_secs(60),
            ownership_refresh: Duration::from_secs(1),
            presence_interval: Duration::from_secs(5),
            rpc_timeout: Duration::from_secs(10),
            health_interval: Duration::from_secs(1),
            reconcile_interval: Duration::from_secs(3),
            waiting_overdue: Duration::from_secs(30),
            unacknowledged_timeout: Duration::from_secs(60),
            report_timeout: Duration::from_secs(60),
            clean_up_interval: Duration::from_secs(3600),
            retention: Duration::from_secs(7 * 24 * 3600),
            http_listen: None,
            admin_token: None,
            apps: Vec::new(),
        }
    }
}

impl ServerConfig {
    /// Checks every value, so that a bad one is a one-line error at start and never a loop that
    /// panics later (a zero period) or a timing that cannot work.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("worker_timeout", self.worker_timeout),
            ("schedule_interval", self.schedule_interval),
            ("schedule_lookahead", self.schedule_lookahead),
            ("dispatch_timeout", self.dispatch_timeout),
            ("no_worker_timeout", self.no_worker_timeout),
            ("ownership_refresh", self.ownership_refresh),
            ("presence_interval", self.presence_interval),
            ("rpc_timeout", self.rpc_timeout),
            ("health_interval", self.health_interval),
            ("reconcile_interval", self.reconcile_interval),
            ("waiting_overdue", self.waiting_overdue),
            ("unacknowledged_timeout", self.unacknowledged_timeout),
            ("report_timeout", self.report_timeout),
            ("clean_up_interval", self.clean_up_interval),
            ("retention", self.retention),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{name} must be above zero"));
        }
        if self.dispatch_ahead >= self.schedule_lookahead {
            return Err(format!(
                "dispatch_ahead ({:?}) must be shorter than schedule_lookahead ({:?}): fires are \
                 created no earlier than the lookahead",
                self.dispatch_ahead, self.schedule_lookahead
            ));
        }
        if self.nats.url.trim().is_empty() {
            return Err("the NATS URL is empty".to_owned());
        }
        if self.database_url.trim().is_empty() {
            return Err("the database URL is empty".to_owned());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(ServerConfig::default().validate(), Ok(()));
        let zero = ServerConfig {
            reconcile_interval: Duration::ZERO,
            ..ServerConfig::default()
        };
        assert_eq!(
            zero.validate(),
            Err("reconcile_interval must be above zero".to_owned())
        );
        let ahead = ServerConfig {
            dispatch_ahead: Duration::from_secs(5),
            ..ServerConfig::default()
        };
        assert!(ahead.validate().unwrap_err().starts_with("dispatch_ahead"));
    }
}
