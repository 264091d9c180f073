//! Administrative requests on `rota.admin.{area}.{verb}` and their replies.
//!
//! Each request type names its subject through [`AdminRequest`], so that a client cannot send a
//! request to the wrong subject or expect the wrong reply.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::instance::Instance;
pub use crate::job::{DispatchStrategy, JobSpec, MisfirePolicy, OverlapPolicy, PatchError};
use crate::message::LogLevel;
use crate::status::InstanceStatus;

/// What an admin token may do. Each role may do everything the ones before it may.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read: lists, shows, logs, statistics.
    #[default]
    Viewer,
    /// Act on what exists: run, stop and retry instances, enable and disable jobs.
    Operator,
    /// Everything: apps and their secrets, tokens, and defining jobs (shell jobs among them).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request with a fixed admin subject, the role it needs, and its reply type.
pub trait AdminRequest: Serialize {
    const AREA: &'static str;
    const VERB: &'static str;
    /// The least role a caller needs.
    const ROLE: Role;
    type Reply: DeserializeOwned + Serialize;
}

macro_rules! admin_request {
    ($ty:ty, $area:literal, $verb:literal, $role:ident, $reply:ty) => {
        impl AdminRequest for $ty {
            const AREA: &'static str = $area;
            const VERB: &'static str = $verb;
            const ROLE: Role = Role::$role;
            type Reply = $reply;
        }
    };
}

/// An empty reply.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// One page of a list, and where the next one begins. A page ends at its `limit` or where its
/// reply would grow too large for NATS, whichever comes first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; `None` on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The most items a page may be asked for.
pub const MAX_PAGE: u64 = 1_000;

// === Apps ===

/// `app.create`. The secret never travels: the CLI derives the app key from it and sends that,
/// encrypted with its token's key (see `rota_transport::keys::seal_secret`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppCreate {
    pub name: String,
    /// The app key workers derive from the secret, encrypted for the server.
    pub sealed_key: String,
}

/// `app.rotate_secret`: a new secret for an app. Workers that still use a previous one keep
/// working for `grace_ms`; a worker given its secret in a file picks the new one up by itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppRotateSecret {
    pub name: String,
    /// The new app key, encrypted for the server like [`AppCreate::sealed_key`].
    pub sealed_key: String,
    /// How long the previous secrets stay valid; `0` ends them now.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
}

fn default_grace_ms() -> u64 {
    3_600_000
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppList {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppInfo {
    pub id: i64,
    pub name: String,
    pub current_server: Option<String>,
    pub epoch: i64,
    pub created_at_ms: i64,
}

admin_request!(AppCreate, "app", "create", Admin, AppInfo);
admin_request!(AppRotateSecret, "app", "rotate_secret", Admin, AppInfo);
admin_request!(AppList, "app", "list", Viewer, Vec<AppInfo>);

// === Jobs ===

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    pub id: i64,
    pub app_id: i64,
    /// The app's name.
    pub app: String,
    #[serde(flatten)]
    pub spec: JobSpec,
    pub next_trigger_time_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// What the server noticed about the job as it was created or changed (no live worker offers
    /// its processor, say); the job is stored all the same.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// `job.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCreate {
    /// The app's name.
    pub app: String,
    #[serde(flatten)]
    pub spec: JobSpec,
}

/// `job.update`: changes to the job's [`JobSpec`] as a JSON object of its fields (see
/// [`JobSpec::patched`]): a field given replaces the job's, `null` resets it to its default, and
/// an unknown field is refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobUpdate {
    pub id: i64,
    pub changes: serde_json::Map<String, serde_json::Value>,
}

/// `job.list`: jobs in the order they were made, a page at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    /// Only the jobs of this app (by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many (default 100, at most [`MAX_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

/// `job.show`, `job.enable`, `job.disable` and `job.delete` name one job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobId {
    pub id: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobShow(pub JobId);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobEnable(pub JobId);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDisable(pub JobId);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobDelete(pub JobId);

/// `job.run`: start an instance now (or after a delay), with optional instance parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRun {
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
    #[serde(default)]
    pub delay_ms: u64,
    /// Makes the request safe to repeat: another request with this key for the same job, while
    /// the instance it created is kept, returns that instance instead of creating one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStarted {
    pub instance_id: i64,
    /// The request repeated an idempotency key: this instance was created by an earlier one.
    #[serde(default)]
    pub reused: bool,
}

admin_request!(JobCreate, "job", "create", Admin, JobInfo);
admin_request!(JobUpdate, "job", "update", Admin, JobInfo);
admin_request!(JobList, "job", "list", Viewer, Page<JobInfo>);
admin_request!(JobShow, "job", "show", Viewer, JobInfo);
admin_request!(JobEnable, "job", "enable", Operator, JobInfo);
admin_request!(JobDisable, "job", "disable", Operator, JobInfo);
admin_request!(JobDelete, "job", "delete", Admin, Done);
admin_request!(JobRun, "job", "run", Operator, RunStarted);

// === Instances ===

/// An instance as `instance show` and `instance list` give it: with its job's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    #[serde(flatten)]
    pub instance: Instance,
    pub job_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<InstanceStatus>,
    /// Newest first; at most this many (default 50, at most [`MAX_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceId {
    pub id: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceShow(pub InstanceId);
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceStop(pub InstanceId);
/// `instance.retry`: a new instance of the same job with the same parameters. The old one keeps
/// its terminal status (a terminal instance never changes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRetry(pub InstanceId);

admin_request!(InstanceList, "instance", "list", Viewer, Page<InstanceInfo>);
admin_request!(InstanceShow, "instance", "show", Viewer, InstanceInfo);
admin_request!(InstanceStop, "instance", "stop", Operator, InstanceInfo);
admin_request!(InstanceRetry, "instance", "retry", Operator, RunStarted);

/// `instance.tasks`: a page of a distributed instance's tasks, in id order, as its master
/// keeps them (only while the instance runs: a master keeps its tasks for the attempt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceTasks {
    pub id: i64,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many (default 50, at most [`crate::task::MAX_TASK_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

admin_request!(
    InstanceTasks,
    "instance",
    "tasks",
    Viewer,
    Page<crate::task::TaskInfo>
);

// === Containers ===

/// `container.create`: records a version of a container whose bundle was uploaded to the
/// object store (`rota container upload`) or is served at a URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerCreate {
    pub app: String,
    pub name: String,
    pub version: String,
    /// The bundle's sha256, in hexadecimal.
    pub sha256: String,
    pub size: u64,
    pub source: crate::container::ContainerSource,
}

/// `container.list`: the versions of an app's containers, and the live workers that have
/// each unpacked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerList {
    pub app: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerListing {
    #[serde(flatten)]
    pub container: crate::container::ContainerInfo,
    /// Live workers that have this version unpacked.
    pub workers: Vec<String>,
}

/// `container.deploy`: asks the app's live workers to fetch a version now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDeploy {
    pub app: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `container.destroy`: forgets a version, and asks the live workers to drop it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerDestroy {
    pub app: String,
    pub name: String,
    pub version: String,
}

/// How one worker answered a deploy or destroy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerOutcome {
    pub worker_id: String,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRollout {
    pub container: crate::container::ContainerInfo,
    pub workers: Vec<WorkerOutcome>,
}

admin_request!(
    ContainerCreate,
    "container",
    "create",
    Admin,
    crate::container::ContainerInfo
);
admin_request!(
    ContainerList,
    "container",
    "list",
    Viewer,
    Vec<ContainerListing>
);
admin_request!(
    ContainerDeploy,
    "container",
    "deploy",
    Admin,
    ContainerRollout
);
admin_request!(
    ContainerDestroy,
    "container",
    "destroy",
    Admin,
    ContainerRollout
);

// === Logs ===

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsGet {
    pub instance_id: i64,
    /// Only lines stored after this line id (for `--follow`).
    #[serde(default)]
    pub after_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "sea-orm", derive(sea_orm::FromQueryResult))]
pub struct LogEntry {
    pub id: i64,
    pub attempt: i32,
    pub ts_ms: i64,
    pub level: LogLevel,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogPage {
    pub lines: Vec<LogEntry>,
    /// Pass as `after_id` to get the lines stored after these.
    pub last_id: i64,
    /// Whether the instance is terminal (a follower may stop once it has read everything).
    pub finished: bool,
    /// More lines are stored after these: ask again from `last_id`.
    #[serde(default)]
    pub more: bool,
}

admin_request!(LogsGet, "logs", "get", Viewer, LogPage);

// === Workers and servers ===

/// `worker.list`: live workers by app and id, a page at a time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many (default 100, at most [`MAX_PAGE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerList {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: String,
    pub version: String,
    pub started_at_ms: i64,
    pub last_seen_ms: i64,
    pub alive: bool,
}

admin_request!(
    WorkerList,
    "worker",
    "list",
    Viewer,
    Page<crate::message::WorkerSummary>
);
admin_request!(ServerList, "server", "list", Viewer, Vec<ServerInfo>);

/// `server.stats`: one server's health and what its repair loops did. Answered from memory, so
/// it works while the database does not.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatsInfo {
    pub server_id: String,
    /// The database answered the last health check.
    pub ready: bool,
    pub owned_apps: Vec<i64>,
    /// Live workers of the apps this server owns.
    #[serde(default)]
    pub live_workers: u64,
    /// Repairs and clean-ups since start, by reason.
    pub repairs: std::collections::BTreeMap<String, u64>,
    /// Messages and requests refused since start because they were not authenticated (no or a
    /// bad seal, a replay, an unknown key or token), by reason.
    #[serde(default)]
    pub refused: std::collections::BTreeMap<String, u64>,
    /// The background services and their states (`RUNNING`, `FAILED` …).
    pub services: Vec<ServiceInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub state: String,
    pub iterations: u64,
    pub failed_iterations: u64,
}

admin_request!(ServerStats, "server", "stats", Viewer, ServerStatsInfo);

// === Tokens ===

/// `token.create`: a new admin token. Only an admin token that is not scoped to an app may make
/// tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreate {
    pub role: Role,
    /// Scope the token to this app: it then sees and touches nothing of other apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    #[serde(default)]
    pub description: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    pub app: Option<String>,
    pub description: String,
    pub created_at_ms: i64,
    pub revoked_at_ms: Option<i64>,
}

/// The new token, shown once. On the bus it travels encrypted with the caller's token key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub info: TokenInfo,
    pub sealed_token: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenList {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRevoke {
    pub id: String,
}

admin_request!(TokenCreate, "token", "create", Admin, TokenCreated);
admin_request!(TokenList, "token", "list", Admin, Vec<TokenInfo>);
admin_request!(TokenRevoke, "token", "revoke", Admin, TokenInfo);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_spec_defaults_make_a_small_request_enough() {
        let spec: JobSpec = serde_json::from_str(
            r#"{"app":"a","name":"n","schedule":{"type":"api"},"processor":"shell"}"#,
        )
        .unwrap();
        assert!(spec.enabled);
        assert_eq!(spec.retry_delay_ms, 10_000);
        assert_eq!(spec.dispatch, DispatchStrategy::HealthFirst);
        assert_eq!(spec.overlap, OverlapPolicy::Skip);
    }

    #[test]
    fn newtype_id_requests_are_plain_objects() {
        let s = serde_json::to_string(&JobShow(JobId { id: 7 })).unwrap();
        assert_eq!(s, r#"{"id":7}"#);
        assert_eq!(<JobRun as AdminRequest>::VERB, "run");
    }
}
