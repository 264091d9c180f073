//! A whole Rota deployment in one test: a private nats-server, a fresh database, servers and
//! workers started in-process, and an admin client.
//!
//! Timings are shortened (heartbeats every 500 ms, a schedule pass every 200 ms) so that tests
//! wait on events in fractions of a second; the behaviour is the production code's.

use std::time::Duration;

use anyhow::Context;
use rota_client::AdminClient;
use rota_server::store::Store;
use rota_server::{Server, ServerConfig, ServerHandle};
use rota_shared::Subjects;
use rota_shared::admin::*;
use rota_transport::{AdminToken, NatsOptions};
use rota_worker::{ProcessorRegistry, Worker, WorkerConfig, WorkerHandle};

use crate::db::TestDatabase;
use crate::nats::NatsServer;
use crate::wait;

/// The secret of every app a [`Deployment`] creates.
pub const SECRET: &str = "test-secret";

pub struct Deployment {
    pub nats: NatsServer,
    pub db: TestDatabase,
    /// An admin client with an unscoped `admin` token.
    pub admin: AdminClient,
    /// That token, for the CLI (`ROTA_TOKEN`) and for clients the test makes.
    pub token: AdminToken,
    /// How every server, worker and client of the deployment reaches NATS and logs in.
    pub nats_options: NatsOptions,
    servers: Vec<ServerHandle>,
    workers: Vec<WorkerHandle>,
}

impl Deployment {
    /// NATS, a database and one server (`s1`).
    pub async fn start() -> anyhow::Result<Self> {
        let mut d = Self::start_without_servers().await?;
        d.start_server("s1").await?;
        Ok(d)
    }

    /// NATS and a database; servers are started by the test.
    pub async fn start_without_servers() -> anyhow::Result<Self> {
        crate::init_tracing();
        let nats = NatsServer::start()?;
        let options = NatsOptions::new(nats.url());
        Self::on(nats, options).await
    }

    /// A database and one server (`s1`) on a NATS the test configured (users, TLS …), which
    /// everything reaches with `options`.
    pub async fn start_with(nats: NatsServer, options: NatsOptions) -> anyhow::Result<Self> {
        crate::init_tracing();
        let mut d = Self::on(nats, options).await?;
        d.start_server("s1").await?;
        Ok(d)
    }

    /// A database and no server on a NATS the test configured; `nats_options` are the admin
    /// client's and, unless a test sets its own in a configuration, everyone's.
    pub async fn on(nats: NatsServer, nats_options: NatsOptions) -> anyhow::Result<Self> {
        crate::init_tracing();
        let db = TestDatabase::create().await?;
        let (_, token) = create_token(db.url(), Role::Admin, None).await?;
        let admin = AdminClient::connect(&nats_options, "rota", Some(&token)).await?;
        Ok(Self {
            nats,
            db,
            admin,
            token,
            nats_options,
            servers: Vec::new(),
            workers: Vec::new(),
        })
    }

    /// The configuration tests run servers with.
    pub fn server_config(&self, id: &str) -> ServerConfig {
        ServerConfig {
            nats: self.nats_options.clone(),
            database_url: self.db.url().to_owned(),
            server_id: Some(id.to_owned()),
            worker_timeout: Duration::from_secs(3),
            schedule_interval: Duration::from_millis(200),
            schedule_lookahead: Duration::from_millis(1500),
            dispatch_timeout: Duration::from_secs(2),
            dispatch_ahead: Duration::from_millis(500),
            presence_interval: Duration::from_secs(1),
            ownership_refresh: Duration::from_millis(500),
            reconcile_interval: Duration::from_secs(1),
            waiting_overdue: Duration::from_secs(5),
            unacknowledged_timeout: Duration::from_secs(5),
            report_timeout: Duration::from_secs(10),
            ..ServerConfig::default()
        }
    }

    pub async fn start_server(&mut self, id: &str) -> anyhow::Result<String> {
        self.start_server_with(self.server_config(id)).await
    }

    pub async fn start_server_with(&mut self, config: ServerConfig) -> anyhow::Result<String> {
        let id = config.server_id.clone().unwrap_or_default();
        let handle = Server::start(config)
            .await
            .with_context(|| format!("start server {id}"))?;
        let id = handle.id().to_owned();
        self.servers.push(handle);
        Ok(id)
    }

    /// Stops a server cleanly.
    pub async fn stop_server(&mut self, id: &str) {
        if let Some(pos) = self.servers.iter().position(|s| s.id() == id) {
            self.servers.remove(pos).shutdown().await;
        }
    }

    /// Stops a server at once, as a crash would.
    pub fn abort_server(&mut self, id: &str) {
        if let Some(pos) = self.servers.iter().position(|s| s.id() == id) {
            self.servers.remove(pos).abort();
        }
    }

    /// A running server of the deployment.
    pub fn server(&self, id: &str) -> Option<&ServerHandle> {
        self.servers.iter().find(|s| s.id() == id)
    }

    /// A running worker of the deployment.
    pub fn worker(&self, id: &str) -> Option<&WorkerHandle> {
        self.workers.iter().find(|w| w.worker_id() == id)
    }

    /// The id of the first server.
    pub fn server_id(&self) -> &str {
        self.servers.first().map_or("", |s| s.id())
    }

    pub fn subjects(&self) -> Subjects {
        Subjects::default()
    }

    /// The configuration tests run workers with.
    pub fn worker_config(&self, app: &str, worker_id: &str) -> WorkerConfig {
        WorkerConfig {
            nats: self.nats_options.clone(),
            app: app.to_owned(),
            secret: SECRET.to_owned(),
            worker_id: Some(worker_id.to_owned()),
            allow_shell: true,
            heartbeat_interval: Duration::from_millis(500),
            reacquire_interval: Duration::from_secs(2),
            progress_interval: Duration::from_millis(500),
            log_flush_interval: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(5),
            kill_grace: Duration::from_millis(500),
            ..WorkerConfig::default()
        }
    }

    pub async fn create_app(&self, name: &str) -> anyhow::Result<AppInfo> {
        Ok(self.admin.app_create(name, SECRET).await?)
    }

    /// A new token with `role`, scoped to `app` when given, made in the database.
    pub async fn token(&self, role: Role, app: Option<&str>) -> anyhow::Result<AdminToken> {
        Ok(create_token(self.db.url(), role, app).await?.1)
    }

    /// An admin client with `token`, on its own connection.
    pub async fn client_with(&self, token: &AdminToken) -> anyhow::Result<AdminClient> {
        Ok(AdminClient::connect(&self.nats_options, "rota", Some(token)).await?)
    }

    /// Starts a worker and waits until a server lists it as live.
    pub async fn start_worker(
        &mut self,
        config: WorkerConfig,
        registry: ProcessorRegistry,
    ) -> anyhow::Result<String> {
        let app = config.app.clone();
        let handle = Worker::start(config, registry).await?;
        let id = handle.worker_id().to_owned();
        self.workers.push(handle);
        let admin = &self.admin;
        wait::until(
            &format!("worker {id} to be live"),
            Duration::from_secs(10),
            || async {
                let list = admin
                    .call(&WorkerList {
                        app: Some(app.clone()),
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                list.items.iter().any(|w| w.worker_id == id).then_some(())
            },
        )
        .await;
        Ok(id)
    }

    /// Stops a worker abruptly, as a crash would.
    pub fn abort_worker(&mut self, worker_id: &str) {
        if let Some(pos) = self.workers.iter().position(|w| w.worker_id() == worker_id) {
            self.workers.remove(pos).abort();
        }
    }

    pub async fn create_job(&self, job: JobCreate) -> anyhow::Result<JobInfo> {
        Ok(self.admin.call(&job).await?)
    }

    /// Runs a job now (as `rota job run` does) and returns the new instance's id.
    pub async fn run(&self, job_id: i64) -> anyhow::Result<i64> {
        let run = JobRun {
            id: job_id,
            params: None,
            delay_ms: 0,
            idempotency_key: None,
        };
        Ok(self.admin.call(&run).await?.instance_id)
    }

    /// All of a job's instances, newest first (every page).
    pub async fn instances_of(&self, job_id: i64) -> anyhow::Result<Vec<InstanceInfo>> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self
                .admin
                .call(&InstanceList {
                    job_id: Some(job_id),
                    limit: Some(MAX_PAGE),
                    after,
                    ..Default::default()
                })
                .await?;
            all.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    pub async fn instance(&self, id: i64) -> anyhow::Result<InstanceInfo> {
        Ok(self.admin.call(&InstanceShow(InstanceId { id })).await?)
    }

    /// Waits until an instance is terminal and returns it.
    pub async fn wait_terminal(&self, id: i64, timeout: Duration) -> InstanceInfo {
        wait::until(&format!("instance {id} to finish"), timeout, || async {
            self.instance(id)
                .await
                .ok()
                .filter(|i| i.instance.status.is_terminal())
        })
        .await
    }

    /// Waits until an instance has `status`.
    pub async fn wait_status(
        &self,
        id: i64,
        status: rota_shared::InstanceStatus,
        timeout: Duration,
    ) -> InstanceInfo {
        wait::until(
            &format!("instance {id} to be {status}"),
            timeout,
            || async {
                self.instance(id)
                    .await
                    .ok()
                    .filter(|i| i.instance.status == status)
            },
        )
        .await
    }

    /// Runs the `rota` binary at `bin` against this deployment with the admin token; returns
    /// its exit code, standard output and standard error.
    pub async fn cli(&self, bin: &std::path::Path, args: &[&str]) -> (i32, String, String) {
        let out = tokio::process::Command::new(bin)
            .args(args)
            .env("ROTA_NATS_URL", self.nats.url())
            .env("ROTA_TOKEN", self.token.reveal())
            .env_remove("ROTA_CONFIG")
            .env_remove("ROTA_PREFIX")
            .output()
            .await
            .expect("the rota binary runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Every stored log line of an instance.
    pub async fn logs(&self, id: i64) -> anyhow::Result<Vec<LogEntry>> {
        Ok(self
            .admin
            .call(&LogsGet {
                instance_id: id,
                after_id: 0,
                limit: Some(10_000),
            })
            .await?
            .lines)
    }

    /// What server `server` refused as unauthenticated since it started, by reason.
    pub async fn refusals(
        &self,
        server: &str,
    ) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        Ok(self
            .admin
            .at_server(server)
            .call(&ServerStats {})
            .await?
            .refused)
    }

    /// Waits until server `server` has refused at least `n` messages for `reason`: the proof
    /// that a message it was sent arrived and was turned away (not merely lost).
    pub async fn wait_refused(&self, server: &str, reason: &str, n: u64) {
        wait::until(
            &format!("server {server} to refuse {n} message(s) for {reason}"),
            Duration::from_secs(10),
            || async {
                let refused = self.refusals(server).await.ok()?;
                (refused.get(reason).copied().unwrap_or(0) >= n).then_some(())
            },
        )
        .await
    }

    /// Stops every worker and server cleanly.
    pub async fn shutdown(mut self) {
        for w in self.workers.drain(..) {
            w.shutdown().await;
        }
        for s in self.servers.drain(..) {
            s.shutdown().await;
        }
    }
}

/// Makes an admin token in the database at `database_url` (migrating it first when it is new),
/// as `rota token create --database-url` does.
pub async fn create_token(
    database_url: &str,
    role: Role,
    app: Option<&str>,
) -> anyhow::Result<(TokenInfo, AdminToken)> {
    let store = Store::connect(database_url).await?;
    Ok(rota_server::create_token(&store, role, app, "test kit").await?)
}

/// A registry with one processor, `hold`, that runs until the returned `Notify` is notified and
/// then succeeds with "released": for tests that need an instance to stay RUNNING.
pub fn hold_registry() -> (ProcessorRegistry, std::sync::Arc<tokio::sync::Notify>) {
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut registry = ProcessorRegistry::new();
    let gate = release.clone();
    registry.register(
        "hold",
        rota_worker::processor_fn(move |_ctx| {
            let gate = gate.clone();
            async move {
                gate.notified().await;
                rota_worker::ProcessResult::ok("released")
            }
        }),
    );
    (registry, release)
}

/// A job of `app` with the defaults tests start from: API-triggered, the shell processor.
pub fn shell_job(app: &str, name: &str, script: &str) -> JobCreate {
    let spec = JobSpec {
        name: name.to_owned(),
        description: String::new(),
        schedule: rota_shared::schedule::Schedule::Api,
        lifecycle: Default::default(),
        processor: "shell".to_owned(),
        config: script.to_owned(),
        params: None,
        enabled: true,
        max_instances: 0,
        overlap: OverlapPolicy::Skip,
        max_retries: 0,
        retry_delay_ms: 1_000,
        timeout_ms: 0,
        dispatch: DispatchStrategy::HealthFirst,
        tags: Vec::new(),
        designated_workers: Vec::new(),
        misfire: MisfirePolicy::FireOnce,
        execution: Default::default(),
        task_retries: 0,
        container: None,
    };
    JobCreate {
        app: app.to_owned(),
        spec,
    }
}
