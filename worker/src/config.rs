//! The worker's configuration and its validation.

use std::path::PathBuf;
use std::time::Duration;

use rota_shared::Subjects;
use rota_shared::subject::validate_token;
use rota_transport::NatsOptions;

use crate::error::WorkerError;

/// Everything a worker needs to know to join a Rota deployment. Its `Debug` never shows the
/// secret.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Where NATS is and how to log in to it.
    pub nats: NatsOptions,
    /// The subject prefix the servers use, `rota` by default.
    pub prefix: String,
    /// The app this worker serves.
    pub app: String,
    /// The app's secret. It never leaves the worker: the worker derives its keys from it.
    pub secret: String,
    /// A file whose first line is the app's secret, read instead of `secret`. It is read again
    /// at every re-acquire, so that a rotated secret reaches a running worker.
    pub secret_file: Option<PathBuf>,
    /// A stable id; generated (`w-` and 12 hex digits) when absent.
    pub worker_id: Option<String>,
    pub tags: Vec<String>,
    /// How many instances the worker runs at once at most.
    pub capacity: u32,
    /// How many fires handed over ahead of their instant it holds at once at most (they take
    /// no execution slot while they wait); `None` is four times `capacity`.
    pub max_held: Option<u32>,
    /// Registers the built-in `shell` processor. Off by default: it lets whoever can dispatch
    /// to this worker run any command on its machine.
    pub allow_shell: bool,
    /// Registers the built-in `http` processor.
    pub allow_http: bool,
    /// Registers the `container` processor, which runs the entries of container bundles. Off
    /// by default, like `shell`: a bundle is code from whoever may upload one.
    pub allow_containers: bool,
    /// The most bytes of bundles the container cache keeps (least recently used go first).
    pub container_cache_bytes: u64,
    pub heartbeat_interval: Duration,
    /// Where to serve `/metrics`, `/healthz` and `/readyz` (port 0: any free port); off when
    /// unset.
    pub http_listen: Option<std::net::SocketAddr>,
    pub reacquire_interval: Duration,
    /// How often a running instance reports RUNNING.
    pub progress_interval: Duration,
    /// How long a started instance waits before its first RUNNING report. A processor that ends
    /// sooner sends its terminal report alone, which halves the reports of short jobs; zero
    /// reports RUNNING at once.
    pub running_report_delay: Duration,
    pub log_flush_interval: Duration,
    /// A log batch is sent once this many lines have accumulated.
    pub log_batch_lines: usize,
    /// The bounded log buffer: the most lines held unsent, including those kept while the
    /// server cannot store them; lines that do not fit are dropped and counted.
    pub log_buffer_lines: usize,
    /// How long a graceful shutdown waits for running instances before it stops them.
    pub shutdown_grace: Duration,
    /// How long a shell process group gets between SIGTERM and SIGKILL.
    pub kill_grace: Duration,
    /// Where the worker keeps what must outlive it: the process groups of its running shell
    /// jobs, which a worker started again with the same id kills should they have outlived a
    /// crash. None keeps nothing (the watcher process still kills them when the worker dies).
    pub state_dir: Option<PathBuf>,
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("nats", &self.nats)
            .field("prefix", &self.prefix)
            .field("app", &self.app)
            .field("secret_file", &self.secret_file)
            .field("worker_id", &self.worker_id)
            .field("tags", &self.tags)
            .field("capacity", &self.capacity)
            .field("allow_shell", &self.allow_shell)
            .field("allow_http", &self.allow_http)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            nats: NatsOptions::new("nats://127.0.0.1:4222"),
            prefix: rota_shared::subject::DEFAULT_PREFIX.to_owned(),
            app: String::new(),
            secret: String::new(),
            secret_file: None,
            worker_id: None,
            tags: Vec::new(),
            capacity: 16,
            max_held: None,
            allow_shell: false,
            allow_http: true,
            allow_containers: false,
            container_cache_bytes: 1 << 30,
            heartbeat_interval: Duration::from_secs(3),
            http_listen: None,
            reacquire_interval: Duration::from_secs(10),
            progress_interval: Duration::from_secs(5),
            running_report_delay: Duration::from_millis(20),
            log_flush_interval: Duration::from_secs(1),
            log_batch_lines: 500,
            log_buffer_lines: 10_000,
            shutdown_grace: Duration::from_secs(30),
            kill_grace: Duration::from_secs(1),
            state_dir: None,
        }
    }
}

impl WorkerConfig {
    /// How many fires it holds for their instant at once at most.
    pub fn max_held(&self) -> u32 {
        self.max_held
            .unwrap_or_else(|| self.capacity.saturating_mul(4))
    }

    /// Checks the configuration and returns the worker id to use (the configured one or a new
    /// one) and the subject set, so that a bad value fails at start and never later.
    pub(crate) fn validate(&self) -> Result<(String, Subjects), WorkerError> {
        let invalid = |msg: String| Err(WorkerError::InvalidConfig(msg));
        if self.nats.url.split(',').all(|u| u.trim().is_empty()) {
            return invalid("the NATS URL is empty".to_owned());
        }
        validate_token(&self.app).map_err(|e| WorkerError::InvalidConfig(format!("app: {e}")))?;
        if self.secret.is_empty() && self.secret_file.is_none() {
            return invalid("give the app's secret, or a file that holds it".to_owned());
        }
        if self.capacity == 0 {
            return invalid("capacity must be at least 1".to_owned());
        }
        if self.log_batch_lines == 0 || self.log_buffer_lines == 0 {
            return invalid("log_batch_lines and log_buffer_lines must be at least 1".to_owned());
        }
        let intervals = [
            ("heartbeat_interval", self.heartbeat_interval),
            ("reacquire_interval", self.reacquire_interval),
            ("progress_interval", self.progress_interval),
            ("log_flush_interval", self.log_flush_interval),
        ];
        // A zero period would make `tokio::time::interval` panic, so it is refused here.
        if let Some((name, _)) = intervals.iter().find(|(_, d)| d.is_zero()) {
            return invalid(format!("{name} must be above zero"));
        }
        let subjects =
            Subjects::new(&self.prefix).map_err(|e| WorkerError::InvalidConfig(e.to_string()))?;
        let worker_id = match &self.worker_id {
            Some(id) => {
                validate_token(id).map_err(|e| WorkerError::InvalidConfig(e.to_string()))?;
                id.clone()
            }
            None => generate_worker_id(),
        };
        Ok((worker_id, subjects))
    }
}

/// A fresh worker id: `w-` and the first 12 hex digits of a random uuid.
pub(crate) fn generate_worker_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("w-{}", &hex[..12])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> WorkerConfig {
        WorkerConfig {
            app: "demo".to_owned(),
            secret: "s".to_owned(),
            ..WorkerConfig::default()
        }
    }

    #[test]
    fn generated_ids_are_valid_tokens() {
        let (id, subjects) = valid().validate().unwrap();
        assert!(id.starts_with("w-") && id.len() == 14, "{id}");
        assert_eq!(subjects.prefix(), "rota");
        assert_ne!(generate_worker_id(), generate_worker_id());
    }

    #[test]
    fn the_secret_never_shows() {
        let config = WorkerConfig {
            secret: "hunter2-secret".to_owned(),
            ..valid()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = [
            WorkerConfig::default(),
            WorkerConfig {
                worker_id: Some("a.b".to_owned()),
                ..valid()
            },
            WorkerConfig {
                capacity: 0,
                ..valid()
            },
            WorkerConfig {
                prefix: "a b".to_owned(),
                ..valid()
            },
            WorkerConfig {
                heartbeat_interval: Duration::ZERO,
                ..valid()
            },
            WorkerConfig {
                nats: NatsOptions::new(" , "),
                ..valid()
            },
            WorkerConfig {
                app: "a.b".to_owned(),
                ..valid()
            },
            WorkerConfig {
                secret: String::new(),
                ..valid()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(WorkerError::InvalidConfig(_))),
                "{config:?}"
            );
        }
    }
}
