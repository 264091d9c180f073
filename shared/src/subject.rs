//! NATS subjects, all under a configurable prefix (default `rota`).
//!
//! Every subject that concerns one app carries the app, so that a NATS user can be given exactly
//! one app's worker rights (see [`Subjects::worker_permissions`]):
//!
//! | subject | from → to |
//! |---|---|
//! | `{p}.discovery.{app}` | a worker → any server (queue group) |
//! | `{p}.app.{app}.srv.{sid}.{heartbeat,status,reports,logs,cluster,container}` | a worker → its app's owner |
//! | `{p}.app.{app}.wrk.{wid}.{dispatch,stop,query}` | a server → a worker |
//! | `{p}.srv.{sid}.{ping,rpc}` | a server → another server |
//! | `{p}.admin.{area}.{verb}`, `{p}.srv.{sid}.admin.{area}.{verb}` | an administrator → any server, or one |
//! | `{p}.inbox.{srv.{sid},admin,app.{app}}.…` | replies to servers, administrators, an app's workers |

use thiserror::Error;

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "rota";

/// The queue group every server joins for requests that any server may answer.
pub const SERVER_QUEUE_GROUP: &str = "rota-servers";

/// A token (prefix part, app, server id or worker id) that cannot be used in a subject.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error(
    "invalid subject token {token:?}: use 1 to 128 letters, digits, '-' and '_' (and '.' in a prefix)"
)]
pub struct InvalidToken {
    pub token: String,
}

/// Checks that `token` is one subject token: non-empty, ASCII letters, digits, `-` and `_` only.
pub fn validate_token(token: &str) -> Result<(), InvalidToken> {
    let ok = !token.is_empty()
        && token.len() <= 128
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidToken {
            token: token.to_owned(),
        })
    }
}

/// What a worker sends to its app's owning server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServerEndpoint {
    Heartbeat,
    /// One status report (progress reports are published here).
    Status,
    /// Status reports in batches.
    Reports,
    Logs,
    Cluster,
    Container,
}

impl ServerEndpoint {
    pub const ALL: [ServerEndpoint; 6] = [
        Self::Heartbeat,
        Self::Status,
        Self::Reports,
        Self::Logs,
        Self::Cluster,
        Self::Container,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::Status => "status",
            Self::Reports => "reports",
            Self::Logs => "logs",
            Self::Cluster => "cluster",
            Self::Container => "container",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// What a server, or a distributed instance's master, sends to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerEndpoint {
    Dispatch,
    Stop,
    Query,
    /// A master's tasks for this worker ([`crate::task::TaskCall`]).
    Task,
    /// A task worker's results for this worker, the master ([`crate::task::TaskReport`]).
    TaskReport,
    /// A server asks a master for a page of its tasks (`rota instance tasks`).
    TaskList,
    /// A server asks a worker to fetch or drop a container bundle
    /// ([`crate::container::ContainerCall`]).
    Container,
}

impl WorkerEndpoint {
    pub const ALL: [WorkerEndpoint; 7] = [
        Self::Dispatch,
        Self::Stop,
        Self::Query,
        Self::Task,
        Self::TaskReport,
        Self::TaskList,
        Self::Container,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dispatch => "dispatch",
            Self::Stop => "stop",
            Self::Query => "query",
            Self::Task => "task",
            Self::TaskReport => "task_report",
            Self::TaskList => "task_list",
            Self::Container => "container",
        }
    }

    /// Whether workers of the app send it to each other (a master and its task workers); the
    /// others only servers send.
    pub fn between_workers(self) -> bool {
        matches!(self, Self::Task | Self::TaskReport)
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

/// What one kind of NATS user may publish and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// May answer requests it received (NATS' `allow_responses`).
    pub allow_responses: bool,
}

/// Builds every subject Rota uses, under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Subjects {
    /// A subject set under `prefix`, which may hold several dot-separated tokens.
    pub fn new(prefix: &str) -> Result<Self, InvalidToken> {
        for part in prefix.split('.') {
            validate_token(part).map_err(|_| InvalidToken {
                token: prefix.to_owned(),
            })?;
        }
        Ok(Self {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Strips `{prefix}.` from a subject.
    fn local<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')
    }

    // === Discovery ===

    /// Server discovery: a worker of `app` asks any server which server owns the app.
    pub fn discovery(&self, app: &str) -> String {
        format!("{}.discovery.{app}", self.prefix)
    }

    /// Discovery for every app, for the servers' queue subscription.
    pub fn discovery_all(&self) -> String {
        format!("{}.discovery.*", self.prefix)
    }

    /// The app of a discovery subject.
    pub fn parse_discovery<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let app = self.local(subject)?.strip_prefix("discovery.")?;
        validate_token(app).is_ok().then_some(app)
    }

    // === Workers to servers, and servers to workers ===

    /// What a worker of `app` sends to server `server_id`.
    pub fn to_server(&self, app: &str, server_id: &str, endpoint: ServerEndpoint) -> String {
        format!(
            "{}.app.{app}.srv.{server_id}.{}",
            self.prefix,
            endpoint.as_str()
        )
    }

    /// What the workers of every app send to server `server_id` on `endpoint`.
    pub fn to_server_all(&self, server_id: &str, endpoint: ServerEndpoint) -> String {
        format!(
            "{}.app.*.srv.{server_id}.{}",
            self.prefix,
            endpoint.as_str()
        )
    }

    /// Splits a subject sent to server `server_id` into the app and the endpoint.
    pub fn parse_to_server<'a>(
        &self,
        server_id: &str,
        subject: &'a str,
    ) -> Option<(&'a str, ServerEndpoint)> {
        let rest = self.local(subject)?.strip_prefix("app.")?;
        let (app, rest) = rest.split_once('.')?;
        let rest = rest.strip_prefix("srv.")?.strip_prefix(server_id)?;
        let endpoint = ServerEndpoint::parse(rest.strip_prefix('.')?)?;
        validate_token(app).is_ok().then_some((app, endpoint))
    }

    /// What a server sends to worker `worker_id` of `app`.
    pub fn to_worker(&self, app: &str, worker_id: &str, endpoint: WorkerEndpoint) -> String {
        format!(
            "{}.app.{app}.wrk.{worker_id}.{}",
            self.prefix,
            endpoint.as_str()
        )
    }

    /// Splits a subject sent to a worker into its app, worker id and endpoint.
    pub fn parse_to_worker<'a>(
        &self,
        subject: &'a str,
    ) -> Option<(&'a str, &'a str, WorkerEndpoint)> {
        let rest = self.local(subject)?.strip_prefix("app.")?;
        let (app, rest) = rest.split_once('.')?;
        let (worker, endpoint) = rest.strip_prefix("wrk.")?.split_once('.')?;
        Some((app, worker, WorkerEndpoint::parse(endpoint)?))
    }

    /// What the owner of `app` tells all of the app's workers at once: that it took the app
    /// over ([`crate::message::OwnerChanged`]).
    pub fn app_owner(&self, app: &str) -> String {
        format!("{}.app.{app}.owner", self.prefix)
    }

    // === Servers ===

    pub fn server_ping(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.ping", self.prefix)
    }

    pub fn server_rpc(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.rpc", self.prefix)
    }

    // === Admin ===

    /// An administrative request, `rota.admin.{area}.{verb}`.
    pub fn admin(&self, area: &str, verb: &str) -> String {
        format!("{}.admin.{area}.{verb}", self.prefix)
    }

    /// Every administrative subject, for the servers' queue subscription.
    pub fn admin_all(&self) -> String {
        format!("{}.admin.>", self.prefix)
    }

    /// Splits an admin subject into `(area, verb)`, or `None` if it is not one of ours.
    pub fn parse_admin<'a>(&self, subject: &'a str) -> Option<(&'a str, &'a str)> {
        let rest = self.local(subject)?.strip_prefix("admin.")?;
        let (area, verb) = rest.split_once('.')?;
        (!verb.contains('.')).then_some((area, verb))
    }

    /// An admin request addressed to one server: `rota.srv.{sid}.admin.{area}.{verb}`.
    pub fn server_admin(&self, server_id: &str, area: &str, verb: &str) -> String {
        format!("{}.srv.{server_id}.admin.{area}.{verb}", self.prefix)
    }

    /// Every admin subject addressed to one server.
    pub fn server_admin_all(&self, server_id: &str) -> String {
        format!("{}.srv.{server_id}.admin.>", self.prefix)
    }

    /// Splits a server-addressed admin subject into `(area, verb)`.
    pub fn parse_server_admin<'a>(
        &self,
        server_id: &str,
        subject: &'a str,
    ) -> Option<(&'a str, &'a str)> {
        let rest = self.local(subject)?.strip_prefix("srv.")?;
        let rest = rest.strip_prefix(server_id)?.strip_prefix(".admin.")?;
        let (area, verb) = rest.split_once('.')?;
        (!verb.contains('.')).then_some((area, verb))
    }

    // === Reply inboxes, one prefix per role ===

    pub fn server_inbox(&self, server_id: &str) -> String {
        format!("{}.inbox.srv.{server_id}", self.prefix)
    }

    pub fn admin_inbox(&self) -> String {
        format!("{}.inbox.admin", self.prefix)
    }

    pub fn worker_inbox(&self, app: &str) -> String {
        format!("{}.inbox.app.{app}", self.prefix)
    }

    // === Object store buckets ===

    /// The prefix as a bucket name may hold it (letters, digits, `-` and `_`: its dots
    /// become `_`), so that deployments with different prefixes on one NATS keep their
    /// bundles apart (but for prefixes that differ only in a `.` against a `_`).
    fn bucket_stem(&self) -> String {
        self.prefix.replace('.', "_")
    }

    /// The object store bucket an app's container bundles are kept in: only servers write
    /// it, and only the app's workers (and servers) read it. One bucket per app, because NATS
    /// permissions match whole subject tokens: a bucket is one token of its stream's subjects.
    pub fn container_bucket(&self, app: &str) -> String {
        format!("{}-containers-{app}", self.bucket_stem())
    }

    /// The bucket `rota container upload` puts a bundle in before the server, having checked
    /// the caller's token, moves it into its app's bucket.
    pub fn upload_bucket(&self) -> String {
        format!("{}-container-uploads", self.bucket_stem())
    }

    // === What each role may do, for NATS permissions ===

    /// A server: everything under the prefix, the NATS service API, JetStream (it moves
    /// uploaded bundles into their apps' buckets), and replies.
    pub fn server_permissions(&self) -> Permissions {
        let all = format!("{}.>", self.prefix);
        Permissions {
            publish: vec![
                all.clone(),
                "$SRV.>".to_owned(),
                "$JS.API.>".to_owned(),
                "$JS.FC.>".to_owned(),
                "$O.>".to_owned(),
            ],
            subscribe: vec![all, "$SRV.>".to_owned()],
            allow_responses: true,
        }
    }

    /// An administrator: admin requests, the replies to them, and writing bundles to the
    /// upload bucket (never to an app's bucket: the server moves them there once it has
    /// checked the caller's token).
    pub fn admin_permissions(&self) -> Permissions {
        let mut publish = vec![self.admin_all(), format!("{}.srv.*.admin.>", self.prefix)];
        let upload = self.upload_bucket();
        publish.extend(object_store_read(&upload));
        // Not the stream's creation: whoever creates a stream chooses its sources and
        // subjects, so servers create it (and recreate one configured otherwise).
        publish.extend([
            format!("$JS.API.STREAM.PURGE.OBJ_{upload}"),
            format!("$O.{upload}.>"),
        ]);
        Permissions {
            publish,
            subscribe: vec![format!("{}.>", self.admin_inbox())],
            allow_responses: false,
        }
    }

    /// The workers of one app: their own discovery, what they send to servers, what servers
    /// send them, the tasks and task reports a master and its task workers exchange, and
    /// reading their app's container bucket; answers only to requests they received.
    pub fn worker_permissions(&self, app: &str) -> Permissions {
        let mut publish = vec![
            self.discovery(app),
            format!("{}.app.{app}.srv.*.*", self.prefix),
        ];
        publish.extend(
            WorkerEndpoint::ALL
                .into_iter()
                .filter(|e| e.between_workers())
                .map(|e| format!("{}.app.{app}.wrk.*.{}", self.prefix, e.as_str())),
        );
        publish.extend(object_store_read(&self.container_bucket(app)));
        Permissions {
            publish,
            subscribe: vec![
                format!("{}.app.{app}.wrk.*.*", self.prefix),
                self.app_owner(app),
                format!("{}.>", self.worker_inbox(app)),
            ],
            allow_responses: true,
        }
    }
}

/// The JetStream API calls that read one object store bucket (`OBJ_{bucket}` is its stream):
/// the stream's info and single messages (an object's metadata, its chunks one by one). Not
/// consumers: whoever creates a push consumer chooses the subject JetStream delivers it to,
/// which NATS does not check against their permissions. Nothing here writes, purges or deletes.
fn object_store_read(bucket: &str) -> [String; 4] {
    let stream = format!("OBJ_{bucket}");
    [
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a role may publish to JetStream (and the object store).
    fn jetstream_publish(p: &Permissions) -> Vec<&str> {
        p.publish
            .iter()
            .filter(|s| s.starts_with('$'))
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn subjects_use_the_prefix_and_carry_the_app() {
        let s = Subjects::new("acme.rota").unwrap();
        assert_eq!(s.discovery("billing"), "acme.rota.discovery.billing");
        assert_eq!(
            s.parse_discovery("acme.rota.discovery.billing"),
            Some("billing")
        );
        assert_eq!(s.parse_discovery("acme.rota.discovery.a.b"), None);
        assert_eq!(
            s.to_server("billing", "s1", ServerEndpoint::Heartbeat),
            "acme.rota.app.billing.srv.s1.heartbeat"
        );
        assert_eq!(
            s.parse_to_server("s1", "acme.rota.app.billing.srv.s1.reports"),
            Some(("billing", ServerEndpoint::Reports))
        );
        assert_eq!(
            s.parse_to_server("s1", "acme.rota.app.billing.srv.s2.reports"),
            None
        );
        assert_eq!(
            s.parse_to_server("s1", "acme.rota.app.billing.srv.s1.nope"),
            None
        );
        assert_eq!(
            s.to_server_all("s1", ServerEndpoint::Logs),
            "acme.rota.app.*.srv.s1.logs"
        );
        assert_eq!(
            s.to_worker("billing", "w-1", WorkerEndpoint::Dispatch),
            "acme.rota.app.billing.wrk.w-1.dispatch"
        );
        assert_eq!(
            s.parse_to_worker("acme.rota.app.billing.wrk.w-1.stop"),
            Some(("billing", "w-1", WorkerEndpoint::Stop))
        );
        assert_eq!(s.admin("job", "run"), "acme.rota.admin.job.run");
        assert_eq!(
            s.parse_admin("acme.rota.admin.job.run"),
            Some(("job", "run"))
        );
        assert_eq!(s.parse_admin("acme.rota.admin.job"), None);
        assert_eq!(s.parse_admin("other.admin.job.run"), None);
        assert_eq!(
            s.parse_server_admin("s1", "acme.rota.srv.s1.admin.job.run"),
            Some(("job", "run"))
        );
        assert_eq!(
            s.parse_server_admin("s1", "acme.rota.srv.s2.admin.job.run"),
            None
        );
        assert_eq!(s.worker_inbox("billing"), "acme.rota.inbox.app.billing");
        assert_eq!(
            s.container_bucket("billing"),
            "acme_rota-containers-billing"
        );
        assert_eq!(s.upload_bucket(), "acme_rota-container-uploads");
    }

    #[test]
    fn a_workers_permissions_cover_its_app_only() {
        let s = Subjects::default();
        let p = s.worker_permissions("a");
        assert!(p.publish.contains(&"rota.discovery.a".to_owned()));
        assert!(p.subscribe.contains(&"rota.app.a.wrk.*.*".to_owned()));
        assert!(
            p.publish
                .iter()
                .chain(&p.subscribe)
                .all(|s| !s.contains(".b."))
        );
        // They read their app's bucket only, and write no object store.
        let jetstream = jetstream_publish(&p);
        assert_eq!(
            jetstream,
            [
                "$JS.API.STREAM.INFO.OBJ_rota-containers-a",
                "$JS.API.DIRECT.GET.OBJ_rota-containers-a",
                "$JS.API.DIRECT.GET.OBJ_rota-containers-a.>",
                "$JS.API.STREAM.MSG.GET.OBJ_rota-containers-a",
            ]
        );
        // Workers send each other tasks and task reports, never what servers send.
        let to_workers: Vec<&String> = p.publish.iter().filter(|s| s.contains("wrk")).collect();
        assert_eq!(
            to_workers,
            vec!["rota.app.a.wrk.*.task", "rota.app.a.wrk.*.task_report"],
            "{p:?}"
        );
    }

    #[test]
    fn administrators_write_the_upload_bucket_but_never_create_it() {
        let p = Subjects::default().admin_permissions();
        let jetstream = jetstream_publish(&p);
        assert_eq!(
            jetstream,
            [
                "$JS.API.STREAM.INFO.OBJ_rota-container-uploads",
                "$JS.API.DIRECT.GET.OBJ_rota-container-uploads",
                "$JS.API.DIRECT.GET.OBJ_rota-container-uploads.>",
                "$JS.API.STREAM.MSG.GET.OBJ_rota-container-uploads",
                "$JS.API.STREAM.PURGE.OBJ_rota-container-uploads",
                "$O.rota-container-uploads.>",
            ]
        );
    }

    #[test]
    fn invalid_tokens_are_rejected() {
        assert!(Subjects::new("").is_err());
        assert!(Subjects::new("a..b").is_err());
        assert!(Subjects::new("a b").is_err());
        assert!(Subjects::new("a.*").is_err());
        assert!(validate_token("w>1").is_err());
        assert!(validate_token("worker-01_a").is_ok());
    }
}
