//! The scenarios. Each returns one JSON object: the figures and what they were measured on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use rota_client::AdminClient;
use rota_server::store::{Job, Store};
use rota_server::{Server, ServerConfig, ServerHandle};
use rota_shared::InstanceStatus;
use rota_shared::admin::*;
use rota_shared::message::{SystemMetrics, WorkerHeartbeat};
use rota_shared::schedule::Schedule;
use rota_shared::subject::ServerEndpoint;
use rota_tests::bus::WorkerVoice;
use rota_tests::cluster::{create_token, shell_job};
use rota_tests::db::{Backend, TestDatabase};
use rota_tests::nats::NatsServer;
use rota_transport::NatsOptions;
use rota_worker::{ProcessResult, ProcessorRegistry, Worker, WorkerConfig, WorkerHandle};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::stats::{cpu_seconds, memory_mb, percentiles};

pub struct Env {
    pub backend: Backend,
    pub rota_bin: PathBuf,
}

const APP: &str = "bench";
const SECRET: &str = "bench-secret";

/// Benchmarks measure latencies below a millisecond, finer than `rota_transport::wall_ms`.
#[allow(clippy::disallowed_methods)]
fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// Processor starts, by instance: wall-clock µs, and the fire time the instance was for.
type Starts = Arc<Mutex<HashMap<i64, (i64, Option<i64>)>>>;

/// A no-op processor that records when each instance started and reports it on `started`.
fn noop(starts: Starts, started: Option<mpsc::UnboundedSender<i64>>) -> ProcessorRegistry {
    let mut registry = ProcessorRegistry::new();
    registry.register(
        "noop",
        rota_worker::processor_fn(move |ctx| {
            let (starts, started) = (starts.clone(), started.clone());
            async move {
                let at = now_us();
                starts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ctx.instance_id, (at, ctx.expected_trigger_time_ms));
                if let Some(tx) = started {
                    let _ = tx.send(ctx.instance_id);
                }
                ProcessResult::ok("")
            }
        }),
    );
    registry
}

/// NATS, a database, and what runs on them.
struct Stand {
    nats: NatsServer,
    db: TestDatabase,
    admin: AdminClient,
    server: Option<ServerHandle>,
    worker: Option<WorkerHandle>,
}

impl Stand {
    async fn new(backend: Backend) -> anyhow::Result<Self> {
        let nats = NatsServer::start()?;
        let db = TestDatabase::create_with(backend).await?;
        let (_, token) = create_token(db.url(), Role::Admin, None).await?;
        let admin =
            AdminClient::connect(&NatsOptions::new(nats.url()), "rota", Some(&token)).await?;
        Ok(Self {
            nats,
            db,
            admin,
            server: None,
            worker: None,
        })
    }

    async fn start_server(&mut self) -> anyhow::Result<()> {
        let server = Server::start(ServerConfig {
            nats: NatsOptions::new(self.nats.url()),
            database_url: self.db.url().to_owned(),
            server_id: Some("s1".into()),
            ..ServerConfig::default()
        })
        .await?;
        self.server = Some(server);
        Ok(())
    }

    async fn start_worker(&mut self, registry: ProcessorRegistry) -> anyhow::Result<()> {
        let worker = Worker::start(
            WorkerConfig {
                nats: NatsOptions::new(self.nats.url()),
                app: APP.into(),
                secret: SECRET.into(),
                worker_id: Some("w1".into()),
                capacity: 100_000,
                ..WorkerConfig::default()
            },
            registry,
        )
        .await?;
        self.worker = Some(worker);
        Ok(())
    }

    async fn noop_job(&self) -> anyhow::Result<i64> {
        let mut job = shell_job(APP, "noop", "");
        job.spec.processor = "noop".into();
        Ok(self.admin.call(&job).await?.id)
    }

    async fn stop(mut self) {
        if let Some(w) = self.worker.take() {
            w.shutdown().await;
        }
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }
}

/// Waits until every instance in `ids` is terminal, and returns them (read from the database).
async fn wait_all_terminal(
    store: &Store,
    ids: &[i64],
    timeout: Duration,
) -> anyhow::Result<Vec<rota_shared::Instance>> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut all = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(5_000) {
            all.extend(store.instances_by_ids(chunk).await?);
        }
        let done = all.iter().filter(|m| m.status.is_terminal()).count();
        if done == ids.len() {
            return Ok(all);
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "only {done} of {} instances finished within {timeout:?}",
                ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Watches a server's view of the bench app's workers while a scenario runs: every 250 ms it
/// asks how many are live and how long the longest-silent one has been silent. A worker that
/// heartbeats on time and is still counted not live is a false alarm of the worker timeout.
struct LivenessWatch {
    task: tokio::task::JoinHandle<LivenessSeen>,
    stop: tokio::sync::watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct LivenessSeen {
    samples: u64,
    /// Samples in which fewer than `expected` workers were live.
    short_samples: u64,
    fewest_live: Option<u64>,
    /// The longest silence seen of any worker (only read where the app has at most
    /// [`MAX_PAGE`] workers).
    longest_silence_ms: u64,
}

impl LivenessWatch {
    fn start(admin: AdminClient, server: &str, expected: u64, list_workers: bool) -> Self {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let server = server.to_owned();
        let task = tokio::spawn(async move {
            let mut seen = LivenessSeen::default();
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => return seen,
                }
                let Ok(stats) = admin.at_server(&server).call(&ServerStats {}).await else {
                    continue;
                };
                seen.samples += 1;
                if stats.live_workers < expected {
                    seen.short_samples += 1;
                }
                seen.fewest_live = Some(
                    seen.fewest_live
                        .map_or(stats.live_workers, |f| f.min(stats.live_workers)),
                );
                if list_workers {
                    let list = WorkerList {
                        app: Some(APP.into()),
                        limit: Some(MAX_PAGE),
                        ..Default::default()
                    };
                    if let Ok(page) = admin.call(&list).await {
                        for w in page.items {
                            seen.longest_silence_ms =
                                seen.longest_silence_ms.max(w.last_seen_ago_ms);
                        }
                    }
                }
            }
        });
        Self { task, stop }
    }

    /// Stops watching and reads the server's `worker_lost` repairs: the figures as JSON.
    async fn finish(self, admin: &AdminClient, server: &str) -> anyhow::Result<Value> {
        let _ = self.stop.send(true);
        let seen = self.task.await?;
        let stats = admin.at_server(server).call(&ServerStats {}).await?;
        Ok(json!({
            "samples": seen.samples,
            "samples_with_a_worker_not_live": seen.short_samples,
            "fewest_live_workers": seen.fewest_live,
            "longest_silence_ms": seen.longest_silence_ms,
            "worker_lost_repairs": stats.repairs.get("worker_lost").copied().unwrap_or(0),
            "repairs": stats.repairs,
        }))
    }
}
/// A server and a worker in this process, the app and a no-op job: what `latency` and
/// `throughput` run on. Returns the stand, the processor's start records and the job.
async fn noop_stand(
    env: &Env,
    started: Option<mpsc::UnboundedSender<i64>>,
) -> anyhow::Result<(Stand, Starts, i64)> {
    let mut stand = Stand::new(env.backend).await?;
    stand.start_server().await?;
    stand.admin.app_create(APP, SECRET).await?;
    let starts: Starts = Arc::default();
    stand.start_worker(noop(starts.clone(), started)).await?;
    let job = stand.noop_job().await?;
    Ok((stand, starts, job))
}

pub async fn latency(env: &Env, rate: u32, seconds: u64, warmup: u64) -> anyhow::Result<Value> {
    let (stand, starts, job) = noop_stand(env, None).await?;

    // Offered load: one trigger every 1/rate s on a fixed schedule, each in its own task so a
    // slow answer does not hold up the next trigger. The first `warmup` seconds' triggers are
    // not measured.
    let triggers: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let unmeasured = u64::from(rate) * warmup;
    let total = u64::from(rate) * seconds;
    let mut tasks = Vec::with_capacity((unmeasured + total) as usize);
    let mut began = Instant::now();
    for n in 0..unmeasured + total {
        ticker.tick().await;
        if n == unmeasured {
            began = Instant::now();
        }
        let measured = n >= unmeasured;
        let (admin, triggers) = (stand.admin.clone(), triggers.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = now_us();
            let run = JobRun {
                id: job,
                params: None,
                delay_ms: 0,
                idempotency_key: None,
            };
            if let (Ok(started), true) = (admin.call(&run).await, measured) {
                triggers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((started.instance_id, t0));
            }
        }));
    }
    let offered_for = began.elapsed();
    for t in tasks {
        let _ = t.await;
    }
    let triggers = std::mem::take(&mut *triggers.lock().unwrap_or_else(|e| e.into_inner()));
    let ids: Vec<i64> = triggers.iter().map(|(id, _)| *id).collect();
    let store = Store::connect(stand.db.url()).await?;
    let done = wait_all_terminal(&store, &ids, Duration::from_secs(120)).await?;
    let finished: HashMap<i64, Option<i64>> =
        done.iter().map(|m| (m.id, m.finished_at_ms)).collect();
    let starts = starts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut to_start = Vec::new();
    let mut to_stored = Vec::new();
    for (id, t0) in &triggers {
        if let Some((at, _)) = starts.get(id) {
            to_start.push((at - t0) as f64 / 1000.0);
        }
        if let Some(Some(ms)) = finished.get(id) {
            to_stored.push((ms * 1000 - t0) as f64 / 1000.0);
        }
    }
    let succeeded = done
        .iter()
        .filter(|m| m.status == InstanceStatus::Succeeded)
        .count();
    stand.stop().await;
    Ok(json!({
        "system": "rota",
        "scenario": "latency",
        "db": env.backend.to_string(),
        "offered_rate_per_s": rate,
        "warmup_seconds": warmup,
        "achieved_rate_per_s": triggers.len() as f64 / offered_for.as_secs_f64(),
        "instances": triggers.len(),
        "succeeded": succeeded,
        "latency_ms": {
            "trigger_to_start": percentiles(to_start),
            "trigger_to_stored": percentiles(to_stored),
        },
    }))
}

pub async fn throughput(env: &Env, seconds: u64, in_flight: usize) -> anyhow::Result<Value> {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let (stand, _starts, job) = noop_stand(env, Some(started_tx)).await?;
    let watch = LivenessWatch::start(stand.admin.clone(), "s1", 1, true);

    // Closed loop: at most `in_flight` instances triggered and not yet started.
    let permits = Arc::new(tokio::sync::Semaphore::new(in_flight));
    let release = {
        let permits = permits.clone();
        tokio::spawn(async move {
            while started_rx.recv().await.is_some() {
                permits.add_permits(1);
            }
        })
    };
    let ids: Arc<Mutex<Vec<i64>>> = Arc::default();
    let began_us = now_us();
    let stop_at = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    while Instant::now() < stop_at {
        let Ok(permit) =
            tokio::time::timeout(Duration::from_secs(5), permits.clone().acquire_owned()).await
        else {
            anyhow::bail!("no instance started for 5 s");
        };
        permit?.forget();
        let (admin, ids) = (stand.admin.clone(), ids.clone());
        tasks.push(tokio::spawn(async move {
            let run = JobRun {
                id: job,
                params: None,
                delay_ms: 0,
                idempotency_key: None,
            };
            if let Ok(started) = admin.call(&run).await {
                ids.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(started.instance_id);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let ids = std::mem::take(&mut *ids.lock().unwrap_or_else(|e| e.into_inner()));
    let store = Store::connect(stand.db.url()).await?;
    let done = wait_all_terminal(&store, &ids, Duration::from_secs(300)).await?;
    release.abort();
    let last_ms = done
        .iter()
        .filter_map(|m| m.finished_at_ms)
        .max()
        .unwrap_or(0);
    let elapsed_s = (last_ms * 1000 - began_us) as f64 / 1e6;
    let succeeded = done
        .iter()
        .filter(|m| m.status == InstanceStatus::Succeeded)
        .count();
    let liveness = watch.finish(&stand.admin, "s1").await?;
    stand.stop().await;
    Ok(json!({
        "system": "rota",
        "scenario": "throughput",
        "db": env.backend.to_string(),
        "in_flight": in_flight,
        "instances": ids.len(),
        "succeeded": succeeded,
        "seconds": elapsed_s,
        "rate_per_s": succeeded as f64 / elapsed_s,
        "liveness": liveness,
    }))
}

/// A `rota server` process for the scenarios that measure the server alone.
struct ServerProcess {
    /// Held so that dropping the handle kills the server (`kill_on_drop`).
    _child: tokio::process::Child,
    pid: u32,
}

async fn spawn_server(env: &Env, stand: &Stand) -> anyhow::Result<ServerProcess> {
    let child = tokio::process::Command::new(&env.rota_bin)
        .args(["server", "--server-id", "s1"])
        .env("ROTA_NATS_URL", stand.nats.url())
        .env("ROTA_DATABASE_URL", stand.db.url())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "start {} (build it: cargo build --release -p rota)",
                env.rota_bin.display()
            )
        })?;
    let pid = child.id().context("the server exited at once")?;
    // Ready when it answers an admin call.
    let deadline = Instant::now() + Duration::from_secs(30);
    while stand
        .admin
        .at_server("s1")
        .call(&ServerStats {})
        .await
        .is_err()
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server did not start within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(ServerProcess { _child: child, pid })
}

pub async fn cron(env: &Env, jobs: usize, seconds: u64) -> anyhow::Result<Value> {
    let mut stand = Stand::new(env.backend).await?;
    let server = spawn_server(env, &stand).await?;
    let app = stand.admin.app_create(APP, SECRET).await?;
    let store = Store::connect(stand.db.url()).await?;
    // Job i fires once a minute, at second i % 60: the load is spread evenly.
    let now_ms = rota_transport::wall_ms();
    let created = Instant::now();
    let mut batch = Vec::with_capacity(jobs);
    for i in 0..jobs {
        let mut spec = shell_job(APP, &format!("cron-{i}"), "").spec;
        spec.processor = "noop".into();
        spec.schedule = Schedule::Cron {
            expression: format!("{} * * * * *", i % 60),
            time_zone: None,
        };
        let mut job = Job::new(spec, app.id, now_ms);
        job.next_trigger_time_ms = job
            .spec
            .schedule
            .next_fire_after(now_ms + 5_000, job.spec.lifecycle)?;
        batch.push(job);
    }
    store.insert_jobs(&batch).await?;
    let load_s = created.elapsed().as_secs_f64();
    let starts: Starts = Arc::default();
    stand.start_worker(noop(starts.clone(), None)).await?;

    let cpu0 = cpu_seconds(server.pid).unwrap_or(0.0);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = cpu_seconds(server.pid).unwrap_or(0.0) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let peak_mb = memory_mb(server.pid, "VmHWM");
    let lateness: Vec<f64> = starts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(|(at, fire)| fire.map(|f| (at - f * 1000) as f64 / 1000.0))
        .collect();
    let fired = lateness.len();
    drop(server);
    stand.stop().await;
    Ok(json!({
        "system": "rota",
        "scenario": "cron",
        "db": env.backend.to_string(),
        "jobs": jobs,
        "job_load_seconds": load_s,
        "window_seconds": wall,
        "fires_started": fired,
        "expected_fires": (jobs as f64 * wall / 60.0).round(),
        "lateness_ms": percentiles(lateness),
        "server_cpu_percent_of_a_core": 100.0 * cpu / wall,
        "server_peak_memory_mb": peak_mb,
    }))
}

pub async fn every_second(
    env: &Env,
    jobs: usize,
    workers: usize,
    seconds: u64,
    hogs: usize,
) -> anyhow::Result<Value> {
    let mut stand = Stand::new(env.backend).await?;
    stand.start_server().await?;
    stand.admin.app_create(APP, SECRET).await?;
    let starts: Starts = Arc::default();
    let mut handles = Vec::new();
    for w in 0..workers {
        handles.push(
            Worker::start(
                WorkerConfig {
                    nats: NatsOptions::new(stand.nats.url()),
                    app: APP.into(),
                    secret: SECRET.into(),
                    worker_id: Some(format!("w{w}")),
                    ..WorkerConfig::default()
                },
                noop(starts.clone(), None),
            )
            .await?,
        );
    }
    let mut ids = Vec::new();
    for i in 0..jobs {
        let mut job = shell_job(APP, &format!("every-second-{i}"), "");
        job.spec.processor = "noop".into();
        job.spec.schedule = Schedule::Cron {
            expression: "* * * * * *".into(),
            time_zone: None,
        };
        ids.push(stand.admin.call(&job).await?.id);
    }
    let watch = LivenessWatch::start(stand.admin.clone(), "s1", workers as u64, true);
    let _hogs = cpu_hogs(hogs)?;
    // The window opens once the first fires are planned and handed over.
    let first_ms = (rota_transport::wall_ms() / 1000 + 4) * 1000;
    let last_ms = first_ms + i64::try_from(seconds)? * 1000 - 1000;
    tokio::time::sleep(Duration::from_millis(
        u64::try_from(last_ms - rota_transport::wall_ms())? + 3_000,
    ))
    .await;
    let in_window = |fire: i64| (first_ms..=last_ms).contains(&fire);
    let samples: Vec<(i64, i64)> = starts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter_map(|(at, fire)| fire.filter(|f| in_window(*f)).map(|f| (*at, f)))
        .collect();
    let lateness: Vec<f64> = samples
        .iter()
        .map(|(at, fire)| (at - fire * 1000) as f64 / 1000.0)
        .collect();
    let within_50ms = lateness.iter().filter(|l| **l <= 50.0).count();
    let mut refused = 0;
    let mut share: HashMap<String, u64> = HashMap::new();
    for id in ids {
        let page = stand
            .admin
            .call(&InstanceList {
                job_id: Some(id),
                limit: Some(MAX_PAGE),
                ..Default::default()
            })
            .await?;
        for i in page.items {
            if i.instance.expected_trigger_time_ms.is_some_and(in_window) {
                refused += u64::try_from(i.instance.attempt.saturating_sub(1)).unwrap_or(0);
                *share
                    .entry(i.instance.worker_id.unwrap_or_default())
                    .or_default() += 1;
            }
        }
    }
    let liveness = watch.finish(&stand.admin, "s1").await?;
    drop(_hogs);
    for h in handles {
        h.shutdown().await;
    }
    stand.stop().await;
    Ok(json!({
        "system": "rota",
        "scenario": "every_second",
        "db": env.backend.to_string(),
        "jobs": jobs,
        "workers": workers,
        "window_seconds": seconds,
        "cpu_hogs": hogs,
        "expected_fires": jobs as u64 * seconds,
        "fires_started": lateness.len(),
        "started_within_50ms": within_50ms,
        "refused_dispatches": refused,
        "share": share,
        "lateness_ms": percentiles(lateness),
        "liveness": liveness,
    }))
}

/// `n` processes that each keep a core busy until they are dropped: load for the scenarios
/// that measure what the worker timeout does under it.
fn cpu_hogs(n: usize) -> anyhow::Result<Vec<tokio::process::Child>> {
    (0..n)
        .map(|_| {
            tokio::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("start a CPU hog (sh)")
        })
        .collect()
}

pub async fn heartbeat(
    env: &Env,
    workers: usize,
    period: Duration,
    seconds: u64,
) -> anyhow::Result<Value> {
    let stand = Stand::new(env.backend).await?;
    let server = spawn_server(env, &stand).await?;
    let app = stand.admin.app_create(APP, SECRET).await?;
    // The server must own the app to keep its workers; an acquire does that.
    let nats = async_nats::connect(stand.nats.url()).await?;
    let acquire = rota_shared::message::AcquireRequest {
        worker_id: "w0".into(),
        current_server: None,
    };
    WorkerVoice::new(nats.clone(), APP, "w0", SECRET)?
        .discover::<rota_shared::message::AcquireReply>(&acquire)
        .await?;
    let _ = app;
    let subject = rota_shared::Subjects::default().to_server(APP, "s1", ServerEndpoint::Heartbeat);
    // Every simulated worker heartbeats once a `period`; they are spread over its 100 ms slots,
    // sent in ten bursts a second. Each is sealed with its worker's key when it is sent, as a real
    // worker's is (a seal is good for one message).
    let app_key = rota_transport::keys::app_key(APP, SECRET)?;
    let stamper = Arc::new(rota_transport::Stamper::new());
    let sims: Vec<(rota_transport::Credential, WorkerHeartbeat)> = (0..workers)
        .map(|i| {
            let id = format!("sim-{i}");
            let credential = rota_transport::Credential::new(
                rota_transport::Scope::Worker {
                    key_id: app_key.id(),
                },
                rota_transport::keys::worker_key(&app_key, APP, &id),
                id.clone(),
                stamper.clone(),
            );
            let hb = WorkerHeartbeat {
                worker_id: id,
                tags: vec![],
                processors: vec!["noop".into()],
                capacity: 16,
                running: vec![],
                held: vec![],
                attempts: vec![],
                incarnation: String::new(),
                metrics: SystemMetrics {
                    cpu_cores: 2,
                    ..SystemMetrics::default()
                },
                version: "bench".into(),
                dropped_log_lines: 0,
                containers: Vec::new(),
            };
            (credential, hb)
        })
        .collect();
    let sender = {
        let (transport, subject) = (
            rota_transport::Transport::new(nats.clone()),
            subject.clone(),
        );
        let slots = usize::try_from(period.as_millis() / 100)?.max(1);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            let mut slot = 0usize;
            loop {
                tick.tick().await;
                for (credential, hb) in sims.iter().skip(slot % slots).step_by(slots) {
                    let _ = transport
                        .publish(&subject, hb, Some(credential), None)
                        .await;
                }
                slot += 1;
            }
        })
    };
    // One full period (and a little) so every simulated worker is known, then measure.
    tokio::time::sleep(period + Duration::from_secs(1)).await;
    let listed = stand
        .admin
        .at_server("s1")
        .call(&ServerStats {})
        .await?
        .live_workers;
    let watch = LivenessWatch::start(stand.admin.clone(), "s1", workers as u64, false);
    let cpu0 = cpu_seconds(server.pid).unwrap_or(0.0);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let cpu = cpu_seconds(server.pid).unwrap_or(0.0) - cpu0;
    let wall = t0.elapsed().as_secs_f64();
    let liveness = watch.finish(&stand.admin, "s1").await?;
    sender.abort();
    let rss = memory_mb(server.pid, "VmRSS");
    drop(server);
    stand.stop().await;
    Ok(json!({
        "system": "rota",
        "scenario": "heartbeat",
        "workers": workers,
        "period_seconds": period.as_secs_f64(),
        "workers_listed_live": listed,
        "window_seconds": wall,
        "server_cpu_percent_of_a_core": 100.0 * cpu / wall,
        "server_rss_mb": rss,
        "liveness": liveness,
    }))
}

pub async fn footprint(env: &Env) -> anyhow::Result<Value> {
    let mut stand = Stand::new(env.backend).await?;
    stand.start_server().await?;
    stand.admin.app_create(APP, SECRET).await?;
    let mut child = spawn_worker(env, &stand.nats.url(), "idle", &[])?;
    let pid = child.id().context("the worker exited at once")?;
    wait_live(&stand, &["idle".to_owned()]).await?;
    // Idle for a while (a heartbeat or two) before reading its memory.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let rss = memory_mb(pid, "VmRSS");
    let hwm = memory_mb(pid, "VmHWM");
    let _ = child.kill().await;
    stand.stop().await;
    Ok(json!({
        "system": "rota",
        "scenario": "footprint",
        "worker_rss_mb": rss,
        "worker_peak_rss_mb": hwm,
    }))
}

/// A `rota worker` process of the bench's app, with `extra` arguments; its output is dropped.
fn spawn_worker(
    env: &Env,
    nats: &str,
    id: &str,
    extra: &[&str],
) -> anyhow::Result<tokio::process::Child> {
    tokio::process::Command::new(&env.rota_bin)
        .args([
            "worker",
            "--app",
            APP,
            "--secret",
            SECRET,
            "--worker-id",
            id,
        ])
        .args(extra)
        .env("ROTA_NATS_URL", nats)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("start {}", env.rota_bin.display()))
}

/// Waits, at most 30 s, until the server lists every worker of `ids` as live.
async fn wait_live(stand: &Stand, ids: &[String]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let live = stand
            .admin
            .call(&WorkerList {
                app: Some(APP.into()),
                ..Default::default()
            })
            .await?
            .items;
        let missing = ids
            .iter()
            .filter(|id| !live.iter().any(|w| &w.worker_id == *id))
            .count();
        if missing == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{missing} of {} workers did not join within 30 s",
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn mapreduce(env: &Env, tasks: u64, workers: usize) -> anyhow::Result<Value> {
    let mut stand = Stand::new(env.backend).await?;
    stand.start_server().await?;
    stand.admin.app_create(APP, SECRET).await?;
    let mut children = Vec::new();
    let mut pids = HashMap::new();
    for w in 0..workers {
        let id = format!("w{w}");
        let child = spawn_worker(env, &stand.nats.url(), &id, &["--demo-processors"])?;
        pids.insert(id, child.id().context("a worker exited at once")?);
        children.push(child);
    }
    let ids: Vec<String> = pids.keys().cloned().collect();
    wait_live(&stand, &ids).await?;
    let mut job = shell_job(APP, "mapreduce", "");
    job.spec.processor = "demo-sum-squares".into();
    job.spec.execution = rota_shared::task::Execution::MapReduce;
    let job_id = stand.admin.call(&job).await?.id;
    let began = Instant::now();
    let id = stand
        .admin
        .call(&JobRun {
            id: job_id,
            params: Some(tasks.to_string()),
            delay_ms: 0,
            idempotency_key: None,
        })
        .await?
        .instance_id;
    // The master is the worker the instance went to; its peak memory is read at the end.
    let info = loop {
        let info = stand.admin.call(&InstanceShow(InstanceId { id })).await?;
        if info.instance.status.is_terminal() {
            break info;
        }
        anyhow::ensure!(
            began.elapsed() < Duration::from_secs(600),
            "the map-reduce did not end in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let wall = began.elapsed().as_secs_f64();
    let master = info.instance.worker_id.clone().unwrap_or_default();
    let master_peak_mb = pids.get(&master).and_then(|pid| memory_mb(*pid, "VmHWM"));
    let peaks: HashMap<&String, Option<f64>> = pids
        .iter()
        .map(|(w, pid)| (w, memory_mb(*pid, "VmHWM")))
        .collect();
    let expected = u128::from(tasks) * u128::from(tasks + 1) * u128::from(2 * tasks + 1) / 6;
    let exact = info.instance.result.as_deref() == Some(format!("sum={expected}").as_str());
    let counts = info.instance.tasks.clone().unwrap_or_default();
    for mut child in children {
        let _ = child.kill().await;
    }
    stand.stop().await;
    anyhow::ensure!(
        info.instance.status == InstanceStatus::Succeeded && exact,
        "the map-reduce ended {} with {:?}",
        info.instance.status,
        info.instance.result
    );
    Ok(json!({
        "system": "rota",
        "scenario": "mapreduce",
        "db": env.backend.to_string(),
        "tasks": tasks,
        "workers": workers,
        "seconds": wall,
        "tasks_per_second": counts.total as f64 / wall,
        "result_exact": exact,
        "master": master,
        "master_peak_rss_mb": master_peak_mb,
        "workers_peak_rss_mb": peaks,
        "share": counts.workers.iter().map(|w| (w.worker_id.clone(), w.succeeded)).collect::<HashMap<_, _>>(),
    }))
}
