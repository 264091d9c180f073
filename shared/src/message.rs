//! Messages between workers and servers (and between servers).

use serde::{Deserialize, Serialize};

use crate::status::InstanceStatus;
use crate::task::{Execution, TaskCounts};

/// `rota.discovery.{app}`: a worker asks which server owns its app. It is sealed with the app
/// key the worker derived from its secret (the secret itself never travels), and the reply is
/// sealed with the same key, which proves that a server of the deployment answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    pub worker_id: String,
    /// The server the worker talks to now, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_server: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireReply {
    pub server_id: String,
    pub app_id: i64,
    /// The app's ownership epoch: it rises every time another server takes the app over.
    pub epoch: i64,
}

/// What a worker's machine looks like, sent with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SystemMetrics {
    pub cpu_cores: u32,
    /// One-minute load average.
    pub load1: f64,
    pub memory_total_mb: u64,
    pub memory_used_mb: u64,
    pub disk_total_mb: u64,
    pub disk_free_mb: u64,
}

impl SystemMetrics {
    /// A score in `[0, 100]`, higher is healthier: free CPU, memory and disk in equal parts.
    /// Unknown figures (zero totals) count as fully free.
    pub fn health_score(&self) -> f64 {
        let cpu_free = if self.cpu_cores == 0 {
            1.0
        } else {
            (1.0 - self.load1 / f64::from(self.cpu_cores)).clamp(0.0, 1.0)
        };
        let mem_free = ratio_free(self.memory_total_mb, self.memory_used_mb);
        let disk_free = if self.disk_total_mb == 0 {
            1.0
        } else {
            (self.disk_free_mb as f64 / self.disk_total_mb as f64).clamp(0.0, 1.0)
        };
        100.0 * (cpu_free + mem_free + disk_free) / 3.0
    }
}

fn ratio_free(total: u64, used: u64) -> f64 {
    if total == 0 {
        1.0
    } else {
        (1.0 - used as f64 / total as f64).clamp(0.0, 1.0)
    }
}

/// `rota.app.{app}.srv.{sid}.heartbeat`: published by every worker on its interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerHeartbeat {
    pub worker_id: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// Names of the processors this worker can run.
    #[serde(default)]
    pub processors: Vec<String>,
    /// How many instances it runs at once at most.
    pub capacity: u32,
    /// Instances it runs now.
    #[serde(default)]
    pub running: Vec<i64>,
    /// Fires it holds for their instant (handed over ahead of it), which take no execution
    /// slot until then.
    #[serde(default)]
    pub held: Vec<i64>,
    /// Every attempt it has, running or held: an attempt the server has on this worker and the
    /// worker does not name is lost.
    #[serde(default)]
    pub attempts: Vec<AttemptRef>,
    /// Random, new each time the worker process starts: a restart under the same id is seen.
    #[serde(default)]
    pub incarnation: String,
    #[serde(default)]
    pub metrics: SystemMetrics,
    /// The worker's software version.
    #[serde(default)]
    pub version: String,
    /// Log lines it had to drop since it started (its buffer was full).
    #[serde(default)]
    pub dropped_log_lines: u64,
    /// The container bundles it has unpacked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<crate::container::DeployedContainer>,
}

/// `rota.app.{app}.owner`: a server took the app over. Sealed with the app key, so that only a
/// server of the deployment (or a worker of the app) can send it; a worker takes it as a hint
/// to ask discovery now, never as the answer itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerChanged {
    pub server_id: String,
    pub epoch: i64,
}

/// One attempt of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AttemptRef {
    pub instance_id: i64,
    pub attempt: i32,
}

/// `rota.app.{app}.srv.{sid}.status`: a task tracker's report on an instance it runs.
///
/// Progress reports are published; terminal reports are requests that the tracker repeats until
/// it gets a [`ReportAck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    pub instance_id: i64,
    /// The dispatch attempt this report is about.
    pub attempt: i32,
    /// Rises with every report of one attempt, from 1.
    pub seq: i64,
    pub worker_id: String,
    pub status: InstanceStatus,
    /// The processor's result message, or the reason of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// For frequent jobs: how many runs the tracker has made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs: Option<i64>,
    /// Ask the server to raise an alert.
    #[serde(default)]
    pub alert: bool,
    /// When the worker made the report (its clock).
    pub reported_at_ms: i64,
    /// When the processor started (the worker's clock); `None` until it has. The server keeps
    /// it as the run's start, so that a run shorter than the first RUNNING report does not look
    /// as if it started when it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at_ms: Option<i64>,
    /// A distributed instance's tasks, as its master counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<TaskCounts>,
}

/// What the worker should do after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReportAction {
    /// Go on (or, after a terminal report, it is recorded: stop retrying it).
    Continue,
    /// Stop the work now: the server no longer wants this attempt to run.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    pub action: ReportAction,
}

/// Reports sent together (`rota.app.{app}.srv.{sid}.reports`): a worker gathers the terminal reports that
/// are ready at the same moment into one request. At most [`MAX_REPORTS_PER_BATCH`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReportBatch {
    pub reports: Vec<StatusReport>,
}

/// The most reports one [`StatusReportBatch`] may carry.
pub const MAX_REPORTS_PER_BATCH: usize = 1_000;

/// The answer to each report of a [`StatusReportBatch`], in the batch's order: what a single
/// report on `rota.srv.{sid}.status` would have been answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusBatchAck {
    pub results: Vec<crate::envelope::Reply<ReportAck>>,
}

/// Stored as its upper-case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(
    feature = "sea-orm",
    derive(sea_orm::EnumIter, sea_orm::DeriveActiveEnum),
    sea_orm(
        rs_type = "String",
        db_type = "String(sea_orm::sea_query::StringLen::None)"
    )
)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    #[cfg_attr(feature = "sea-orm", sea_orm(string_value = "DEBUG"))]
    Debug,
    #[cfg_attr(feature = "sea-orm", sea_orm(string_value = "INFO"))]
    Info,
    #[cfg_attr(feature = "sea-orm", sea_orm(string_value = "WARN"))]
    Warn,
    #[cfg_attr(feature = "sea-orm", sea_orm(string_value = "ERROR"))]
    Error,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "DEBUG",
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s.to_ascii_uppercase().as_str() {
            "DEBUG" => Self::Debug,
            "WARN" => Self::Warn,
            "ERROR" => Self::Error,
            _ => Self::Info,
        }
    }
}

/// One line of an instance's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub instance_id: i64,
    pub attempt: i32,
    pub ts_ms: i64,
    pub level: LogLevel,
    pub text: String,
}

/// `rota.app.{app}.srv.{sid}.logs`: a batch of log lines, acknowledged by [`LogAck`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    pub worker_id: String,
    pub lines: Vec<LogLine>,
    /// Lines dropped since the last batch because the worker's buffer was full.
    #[serde(default)]
    pub dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogAck {
    pub stored: u64,
    /// Lines refused because their instance is not one dispatched to the sender (they are
    /// dropped; sending them again changes nothing).
    #[serde(default)]
    pub refused: u64,
}

/// `rota.app.{app}.srv.{sid}.cluster`: which live workers of the app may run a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterReply {
    pub workers: Vec<WorkerSummary>,
}

/// A live worker as a server sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerSummary {
    pub worker_id: String,
    pub app_id: i64,
    pub tags: Vec<String>,
    pub processors: Vec<String>,
    pub capacity: u32,
    pub running: u32,
    /// Fires it holds for their instant.
    #[serde(default)]
    pub held: u32,
    /// Dispatches this server handed it since its last heartbeat, which `running` does not
    /// count yet.
    #[serde(default)]
    pub handed: u32,
    pub health: f64,
    pub metrics: SystemMetrics,
    pub version: String,
    /// Milliseconds since the server last heard from it.
    pub last_seen_ago_ms: u64,
    /// The container bundles it has unpacked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<crate::container::DeployedContainer>,
}

/// `rota.app.{app}.wrk.{wid}.dispatch`: run this attempt of an instance. The worker answers
/// [`DispatchAck`] or an error reply (`REJECTED`) with the reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchRequest {
    pub server_id: String,
    pub app_id: i64,
    pub job_id: i64,
    pub job_name: String,
    pub instance_id: i64,
    pub attempt: i32,
    /// Name of the processor in the worker's registry (`shell`, `http`, or a user's).
    pub processor: String,
    /// The processor's configuration: a script for `shell`, a JSON request for `http`.
    #[serde(default)]
    pub config: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_params: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_params: Option<String>,
    /// Kill the work after this long; `0` means no limit.
    #[serde(default)]
    pub timeout_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_trigger_time_ms: Option<i64>,
    /// A frequent job: the worker runs the processor again and again on a frequent tracker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frequent: Option<Frequent>,
    /// The server stops waiting for the acknowledgement at this time (its clock). A worker that
    /// gets the dispatch later (it was frozen, or the message was held up) must not run it: the
    /// server has handed the instance to someone else by then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<i64>,
    /// Start the processor at this time (the server's clock), not before. A scheduled fire is
    /// dispatched ahead of its instant so that it starts on time however many fires share that
    /// instant; the worker holds it, and a stop before then cancels it unstarted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<i64>,
    /// How the work is spread: anything but standalone makes the worker the instance's master,
    /// which splits it into tasks across the app's workers.
    #[serde(default, skip_serializing_if = "is_standalone")]
    pub execution: Execution,
    /// Runs after the first that a failing task gets.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub task_retries: u32,
    /// For the `container` processor: the container and the entry it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::container::ContainerJob>,
}

fn is_standalone(execution: &Execution) -> bool {
    !execution.is_distributed()
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// How a frequent job repeats on its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frequent {
    pub mode: FrequentMode,
    pub interval_ms: u64,
    /// Stop (and report SUCCEEDED) at this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_end_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrequentMode {
    /// Runs start every interval, measured start to start; a run that overruns delays the next.
    FixedRate,
    /// Each run starts an interval after the previous one ended.
    FixedDelay,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchAck {
    /// `false` when the worker had already accepted this attempt: a duplicate, ignored.
    pub accepted: bool,
}

/// `rota.app.{app}.wrk.{wid}.stop`: stop an instance's work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    pub instance_id: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopAck {
    /// Whether the worker was running it.
    pub was_running: bool,
}

/// `rota.app.{app}.wrk.{wid}.query`: what a worker knows about an instance it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueryRequest {
    pub instance_id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRuntime {
    pub instance_id: i64,
    pub attempt: i32,
    pub status: InstanceStatus,
    pub started_at_ms: i64,
    pub last_seq: i64,
}

/// `rota.srv.{sid}.ping` and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Ping {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub server_id: String,
    pub started_at_ms: i64,
    pub version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_prefers_idle_machines() {
        let idle = SystemMetrics {
            cpu_cores: 4,
            load1: 0.0,
            memory_total_mb: 1000,
            memory_used_mb: 100,
            disk_total_mb: 1000,
            disk_free_mb: 900,
        };
        let busy = SystemMetrics {
            load1: 4.0,
            memory_used_mb: 900,
            disk_free_mb: 100,
            ..idle.clone()
        };
        assert!(idle.health_score() > busy.health_score());
        assert!((0.0..=100.0).contains(&busy.health_score()));
        assert_eq!(SystemMetrics::default().health_score(), 100.0);
    }
}

/// `rota.srv.{sid}.rpc`: an admin operation that needs the owning server's memory, forwarded
/// to it by the server that received it. The owner answers with the operation's own reply type;
/// a server that does not own the app answers `NOT_OWNER` and never forwards again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum RemoteCall {
    JobRun(crate::admin::JobRun),
    InstanceStop(crate::admin::InstanceId),
    InstanceRetry(crate::admin::InstanceId),
    /// The live workers the owner knows, of one app or of every app it owns: a page of them,
    /// after `after` (a worker cursor), at most `limit`.
    WorkerList {
        app_id: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<String>,
        #[serde(default)]
        limit: u64,
    },
}

#[cfg(test)]
mod remote_call_tests {
    use super::*;

    #[test]
    fn remote_calls_are_tagged_objects() {
        let call = RemoteCall::InstanceStop(crate::admin::InstanceId { id: 4 });
        let json = serde_json::to_string(&call).unwrap();
        assert_eq!(json, r#"{"call":"instance_stop","id":4}"#);
        assert_eq!(serde_json::from_str::<RemoteCall>(&json).unwrap(), call);
        let list: RemoteCall = serde_json::from_str(r#"{"call":"worker_list"}"#).unwrap();
        assert_eq!(
            list,
            RemoteCall::WorkerList {
                app_id: None,
                after: None,
                limit: 0
            }
        );
    }
}
