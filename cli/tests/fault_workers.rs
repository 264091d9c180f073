//! Worker faults with real `rota worker` processes (DESIGN §5, §7): a worker SIGKILLed in the
//! middle of a run loses the run to reconcile ("worker lost"), which retries it on another worker
//! or fails it; a worker frozen with SIGSTOP never acknowledges a dispatch, the run goes to
//! another worker, and the frozen one, once thawed, does not run the stale dispatch.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rota_shared::InstanceStatus;
use rota_shared::admin::*;
use rota_tests::cluster::{Deployment, SECRET, shell_job};
use rota_tests::wait;
use rota_tests::worker_process::WorkerProcess;
use tempfile::TempDir;
use tokio::time::Instant;

/// How long after a SIGKILL the run must be handled: the worker timeout (3 s), a reconcile
/// interval (1 s), the retry delay (0.5 s) and a dispatch, with slack for a loaded machine.
const AFTER_KILL: Duration = Duration::from_secs(10);

fn rota() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rota"))
}

async fn repairs(d: &Deployment, server: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    Ok(d.admin
        .at_server(server)
        .call(&ServerStats {})
        .await?
        .repairs)
}

/// A directory the shell jobs write their process ids to (`pid-<instance>-<attempt>`). A killed
/// worker's shell jobs outlive it in their own process groups; dropping this kills every group
/// named in the directory, so that no `sleep 30` outlives the test, even one that fails.
struct PidDir {
    dir: TempDir,
}

impl PidDir {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new().prefix("rota-pids-").tempdir()?,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, instance: i64, attempt: i32) -> PathBuf {
        self.path().join(format!("pid-{instance}-{attempt}"))
    }

    /// Waits until the shell of an attempt has written its process id, the id of its process
    /// group, and returns it.
    async fn wait_pid(&self, instance: i64, attempt: i32) -> i32 {
        let path = self.file(instance, attempt);
        wait::until(
            &format!(
                "the shell of instance {instance} attempt {attempt} to write {}",
                path.display()
            ),
            Duration::from_secs(10),
            || async {
                let text = tokio::fs::read_to_string(&path).await.ok()?;
                text.trim().parse::<i32>().ok()
            },
        )
        .await
    }
}

impl Drop for PidDir {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.dir.path()) else {
            return;
        };
        for entry in entries.flatten() {
            let is_pid_file = entry.file_name().to_string_lossy().starts_with("pid-");
            let pgid = std::fs::read_to_string(entry.path())
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let (true, Some(pgid)) = (is_pid_file, pgid) {
                // Already gone (stopped by its worker) is fine.
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
        }
    }
}

/// Waits, at most a second, until no process of the group is alive.
async fn wait_group_gone(pgid: i32, what: &str) {
    rota_tests::groups::wait_gone(pgid, what, Duration::from_secs(1)).await;
}

/// What changes of an instance a test follows.
fn snapshot(i: &InstanceInfo) -> (InstanceStatus, i32, Option<String>, Option<String>) {
    (
        i.instance.status,
        i.instance.attempt,
        i.instance.worker_id.clone(),
        i.instance.result.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_mid_run_is_retried_elsewhere_or_fails_with_worker_lost() -> anyhow::Result<()>
{
    let d = Deployment::start().await?;
    d.create_app("app").await?;
    let logs = tempfile::tempdir()?;
    let pids = PidDir::new()?;
    let nats = d.nats.url();
    let mut workers = vec![
        WorkerProcess::start(rota(), "wa", "app", SECRET, &nats, logs.path(), &d.admin).await?,
        WorkerProcess::start(rota(), "wb", "app", SECRET, &nats, logs.path(), &d.admin).await?,
    ];
    let script = format!(
        "echo $$ > '{}/pid-'$ROTA_INSTANCE_ID-$ROTA_ATTEMPT; sleep 30",
        pids.path().display()
    );

    // --- Job 1: one retry left. Its run is lost with its worker and goes to the other one.
    let mut spec = shell_job("app", "retried", &script);
    spec.spec.max_retries = 1;
    spec.spec.retry_delay_ms = 500;
    spec.spec.dispatch = DispatchStrategy::RoundRobin;
    let job1 = d.create_job(spec).await?;
    let id1 = d.run(job1.id).await?;
    let first = d
        .wait_status(id1, InstanceStatus::Running, Duration::from_secs(15))
        .await;
    assert_eq!(first.instance.attempt, 1, "{first:?}");
    let first_group = pids.wait_pid(id1, 1).await;
    assert!(
        !rota_tests::groups::live_members(first_group).is_empty(),
        "the run's shell and its sleep are alive"
    );
    let victim = first
        .instance
        .worker_id
        .clone()
        .expect("a running instance has a worker");
    let survivor = if victim == "wa" { "wb" } else { "wa" };

    let pos = workers
        .iter()
        .position(|w| w.id() == victim)
        .expect("the instance runs on one of our workers");
    let mut killed = workers.remove(pos);
    let killed_at = Instant::now();
    killed.kill().await;
    // The run dies with its worker, or it would go on beside its retry.
    wait_group_gone(first_group, "the killed worker's run").await;

    // Every state the instance passes through is recorded, so the reason reconcile gave can be
    // checked even though the instance moves on from the state that shows it.
    let seen = Mutex::new(Vec::new());
    let again = wait::until(
        &format!("instance {id1} to run again, attempt 2 on {survivor}"),
        AFTER_KILL,
        || async {
            let i = d.instance(id1).await.ok()?;
            {
                let mut seen = seen.lock().unwrap();
                if seen.last() != Some(&snapshot(&i)) {
                    seen.push(snapshot(&i));
                }
            }
            (i.instance.status == InstanceStatus::Running && i.instance.attempt == 2).then_some(i)
        },
    )
    .await;
    let took = killed_at.elapsed();
    let seen = seen.into_inner().unwrap();
    eprintln!(
        "job 1 running again {} ms after the SIGKILL of {victim}; states seen: {seen:?}",
        took.as_millis()
    );
    assert_eq!(
        again.instance.worker_id.as_deref(),
        Some(survivor),
        "{again:?}"
    );
    assert_eq!(
        again.instance.runs, 2,
        "the lost run and the retry: {again:?}"
    );
    // The retry really runs: its shell saw attempt 2.
    pids.wait_pid(id1, 2).await;
    // Reconcile said why the first attempt ended, naming the lost worker.
    let lost = seen.iter().find(|(status, attempt, _, result)| {
        *status == InstanceStatus::WaitingDispatch
            && *attempt == 1
            && result.as_deref().is_some_and(|r| r.contains("worker lost"))
    });
    let (_, _, _, reason) = lost.unwrap_or_else(|| {
        panic!("instance {id1} was never seen waiting for its retry with \"worker lost\": {seen:?}")
    });
    let reason = reason.clone().unwrap_or_default();
    assert!(
        reason.contains(&victim),
        "the reason names the lost worker: {reason:?}"
    );

    let stopped = d.admin.call(&InstanceStop(InstanceId { id: id1 })).await?;
    assert_eq!(
        stopped.instance.status,
        InstanceStatus::Stopped,
        "{stopped:?}"
    );

    // --- Job 2: no retries. Its run is lost with its worker and the instance fails.
    let mut spec = shell_job("app", "final", &script);
    spec.spec.max_retries = 0;
    let job2 = d.create_job(spec).await?;
    let id2 = d.run(job2.id).await?;
    let running = d
        .wait_status(id2, InstanceStatus::Running, Duration::from_secs(15))
        .await;
    assert_eq!(
        running.instance.worker_id.as_deref(),
        Some(survivor),
        "only {survivor} is alive: {running:?}"
    );
    let second_group = pids.wait_pid(id2, 1).await;
    let mut last = workers.pop().expect("the survivor");
    let killed_at = Instant::now();
    last.kill().await;
    wait_group_gone(second_group, "the last worker's run").await;
    let failed = d.wait_terminal(id2, AFTER_KILL).await;
    let took = killed_at.elapsed();
    eprintln!(
        "job 2 failed {} ms after the SIGKILL of {survivor}: {failed:?}",
        took.as_millis()
    );
    assert_eq!(failed.instance.status, InstanceStatus::Failed, "{failed:?}");
    let result = failed.instance.result.clone().unwrap_or_default();
    assert!(
        result.contains("worker lost") && result.contains(survivor),
        "the result says the worker was lost: {result:?}"
    );
    assert_eq!(
        (failed.instance.attempt, failed.instance.runs),
        (1, 1),
        "{failed:?}"
    );

    let repairs = repairs(&d, "s1").await?;
    eprintln!("repairs at s1: {repairs:?}");
    let worker_lost = repairs.get("worker_lost").copied().unwrap_or(0);
    assert!(
        worker_lost >= 2,
        "two runs were lost with their workers: {repairs:?}"
    );

    drop(pids);
    d.shutdown().await;
    Ok(())
}

/// The lines the job script wrote: `(worker, instance, attempt)`.
fn runs_in(file: &Path) -> Vec<(String, i64, i32)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .map(|line| {
            let mut parts = line.split_whitespace();
            let worker = parts.next().unwrap_or_default().to_owned();
            let instance = parts.next().and_then(|p| p.parse().ok()).unwrap_or(-1);
            let attempt = parts.next().and_then(|p| p.parse().ok()).unwrap_or(-1);
            (worker, instance, attempt)
        })
        .collect()
}

/// The worker's entry in the server's worker list, if it is live.
async fn live_entry(d: &Deployment, worker: &str) -> Option<rota_shared::message::WorkerSummary> {
    d.admin
        .call(&WorkerList {
            app: Some("app".into()),
            ..Default::default()
        })
        .await
        .ok()?
        .items
        .into_iter()
        .find(|w| w.worker_id == worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_never_acknowledges_and_the_run_goes_elsewhere() -> anyhow::Result<()> {
    const RUNS: usize = 4;
    let d = Deployment::start().await?;
    d.create_app("app").await?;
    let logs = tempfile::tempdir()?;
    let out = tempfile::tempdir()?;
    let file = out.path().join("runs");
    let nats = d.nats.url();
    let mut wa =
        WorkerProcess::start(rota(), "wa", "app", SECRET, &nats, logs.path(), &d.admin).await?;
    let wb =
        WorkerProcess::start(rota(), "wb", "app", SECRET, &nats, logs.path(), &d.admin).await?;

    let mut spec = shell_job(
        "app",
        "where",
        &format!(
            "echo \"$ROTA_WORKER_ID $ROTA_INSTANCE_ID $ROTA_ATTEMPT\" >> '{}'",
            file.display()
        ),
    );
    spec.spec.dispatch = DispatchStrategy::RoundRobin;
    let job = d.create_job(spec).await?;

    // Frozen now, wa still counts as live until it misses three heartbeats (1.5 s and more):
    // the runs asked for right away are dispatched in that window, and round robin sends every
    // other one to wa first.
    wa.freeze()?;
    let frozen_at = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..RUNS {
        ids.push(d.run(job.id).await?);
    }
    let asked_in = frozen_at.elapsed();
    let mut before = Vec::new();
    for &id in &ids {
        before.push(d.wait_terminal(id, Duration::from_secs(30)).await);
    }
    eprintln!(
        "runs asked for {} ms after the freeze; outcomes: {:?}",
        asked_in.as_millis(),
        before.iter().map(snapshot).collect::<Vec<_>>()
    );
    for i in &before {
        assert_eq!(i.instance.status, InstanceStatus::Succeeded, "{i:?}");
        assert_eq!(i.instance.worker_id.as_deref(), Some("wb"), "{i:?}");
        assert_eq!(i.instance.runs, 1, "{i:?}");
    }
    let tried_wa_first = before.iter().filter(|i| i.instance.attempt >= 2).count();
    assert!(
        tried_wa_first >= 1,
        "no run was dispatched to the frozen worker first (the test did not test anything): \
         {before:?}"
    );
    // Every instance ran once, on wb, with the attempt the server recorded.
    let mut lines = runs_in(&file);
    lines.sort();
    let mut expected: Vec<(String, i64, i32)> = before
        .iter()
        .map(|i| ("wb".to_owned(), i.instance.id, i.instance.attempt))
        .collect();
    expected.sort();
    assert_eq!(lines, expected, "what the job script recorded");
    let stats = d.admin.at_server("s1").call(&ServerStats {}).await?;
    eprintln!(
        "repairs at s1 (a dispatch timeout needs none; dispatch_unacknowledged if reconcile \
         took the run back): {:?}",
        stats.repairs
    );

    // Thawed, wa reads the dispatches that waited for it, finds them past their deadline and
    // refuses them; then it heartbeats again.
    wa.thaw()?;
    let stale: i32 = before.iter().map(|i| i.instance.attempt - 1).sum();
    let refused = wait::until(
        &format!("wa to refuse the {stale} dispatch(es) that expired while it was frozen"),
        Duration::from_secs(15),
        || async {
            let n = wa
                .log_text()
                .matches("dispatch arrived after its deadline")
                .count();
            (n >= usize::try_from(stale).unwrap_or(usize::MAX)).then_some(n)
        },
    )
    .await;
    wait::until("wa to be live again", Duration::from_secs(15), || {
        live_entry(&d, "wa")
    })
    .await;
    // Two more heartbeats: the time since wa was last heard drops twice.
    let previous = Cell::new(None::<u64>);
    let heard = Cell::new(0);
    wait::until(
        "two more heartbeats from wa",
        Duration::from_secs(10),
        || {
            let (d, previous, heard) = (&d, &previous, &heard);
            async move {
                let ago = live_entry(d, "wa").await?.last_seen_ago_ms;
                if previous.get().is_some_and(|p| ago < p) {
                    heard.set(heard.get() + 1);
                }
                previous.set(Some(ago));
                (heard.get() >= 2).then_some(())
            }
        },
    )
    .await;
    eprintln!("wa refused {refused} stale dispatch(es) after the thaw");

    for b in &before {
        let now = d.instance(b.instance.id).await?;
        assert_eq!(
            now, *b,
            "instance {} changed after wa was thawed",
            b.instance.id
        );
    }
    let lines = runs_in(&file);
    assert!(
        lines.iter().all(|(worker, _, _)| worker == "wb"),
        "the thawed worker ran a stale dispatch: {lines:?}"
    );
    assert_eq!(lines.len(), RUNS, "{lines:?}");
    // The worker logs "finished: …" for every run it ends; wa ended none.
    assert!(
        !wa.log_text().contains("finished:"),
        "wa ran something: {}",
        wa.log_tail()
    );

    drop(wb);
    drop(wa);
    d.shutdown().await;
    Ok(())
}

/// A worker killed mid-run and started again at once under the same id heartbeats at once, so
/// it is never "lost"; its new process names none of the old one's attempts, and the server
/// ends them as soon as it hears that heartbeat, instead of after the report timeout (60 s by
/// default; the server here runs with its defaults).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_restarted_under_its_id_has_its_lost_run_retried_at_once() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    d.start_server_with(rota_server::ServerConfig {
        nats: d.nats_options.clone(),
        database_url: d.db.url().to_owned(),
        server_id: Some("s1".to_owned()),
        ..rota_server::ServerConfig::default()
    })
    .await?;
    d.create_app("app").await?;
    let logs = tempfile::tempdir()?;
    let pids = PidDir::new()?;
    let nats = d.nats.url();
    let mut worker =
        WorkerProcess::start(rota(), "wr", "app", SECRET, &nats, logs.path(), &d.admin).await?;
    let script = format!(
        "echo $$ > '{}/pid-'$ROTA_INSTANCE_ID-$ROTA_ATTEMPT; sleep 30",
        pids.path().display()
    );
    let mut spec = shell_job("app", "restarted", &script);
    spec.spec.max_retries = 1;
    spec.spec.retry_delay_ms = 500;
    let job = d.create_job(spec).await?;
    let id = d.run(job.id).await?;
    d.wait_status(id, InstanceStatus::Running, Duration::from_secs(15))
        .await;
    let first_group = pids.wait_pid(id, 1).await;

    worker.kill().await;
    let killed_at = Instant::now();
    wait_group_gone(first_group, "the killed worker's run").await;
    let _restarted =
        WorkerProcess::start(rota(), "wr", "app", SECRET, &nats, logs.path(), &d.admin).await?;
    let again = wait::until(
        &format!("instance {id} to run again as attempt 2"),
        Duration::from_secs(15),
        || async {
            let i = d.instance(id).await.ok()?;
            (i.instance.status == InstanceStatus::Running && i.instance.attempt == 2).then_some(i)
        },
    )
    .await;
    eprintln!(
        "retried {} ms after the SIGKILL and restart: {again:?}",
        killed_at.elapsed().as_millis()
    );
    assert_eq!(again.instance.runs, 2, "{again:?}");
    pids.wait_pid(id, 2).await;
    let repairs = repairs(&d, "s1").await?;
    assert_eq!(
        repairs.get("attempt_not_on_worker").copied(),
        Some(1),
        "the restart, not a timeout, ended the first attempt: {repairs:?}"
    );
    d.admin.call(&InstanceStop(InstanceId { id })).await?;
    drop(pids);
    d.shutdown().await;
    Ok(())
}

/// With every setting at its default (heartbeats every 3 s, a worker lost after 9 s, reconcile
/// every 3 s), a worker SIGKILLed mid-run has its run retried on another worker within 15 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_default_settings_a_killed_workers_run_is_retried_within_15_s() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    d.start_server_with(rota_server::ServerConfig {
        nats: d.nats_options.clone(),
        database_url: d.db.url().to_owned(),
        server_id: Some("s1".to_owned()),
        ..rota_server::ServerConfig::default()
    })
    .await?;
    d.create_app("app").await?;
    let logs = tempfile::tempdir()?;
    let pids = PidDir::new()?;
    let nats = d.nats.url();
    let start = |id: &'static str| {
        let (logs, nats, admin) = (logs.path().to_owned(), nats.clone(), d.admin.clone());
        async move {
            WorkerProcess::start_with(rota(), id, "app", SECRET, &nats, &logs, &admin, &[]).await
        }
    };
    let mut workers = vec![start("wa").await?, start("wb").await?];
    let script = format!(
        "echo $$ > '{}/pid-'$ROTA_INSTANCE_ID-$ROTA_ATTEMPT; sleep 30",
        pids.path().display()
    );
    let mut spec = shell_job("app", "retried", &script);
    spec.spec.max_retries = 1;
    spec.spec.retry_delay_ms = 500;
    let job = d.create_job(spec).await?;
    let id = d.run(job.id).await?;
    let first = d
        .wait_status(id, InstanceStatus::Running, Duration::from_secs(15))
        .await;
    pids.wait_pid(id, 1).await;
    let victim = first.instance.worker_id.clone().expect("a worker");
    let pos = workers
        .iter()
        .position(|w| w.id() == victim)
        .expect("one of ours");
    let killed_at = Instant::now();
    workers.remove(pos).kill().await;
    let again = wait::until(
        &format!("instance {id} to run again elsewhere"),
        Duration::from_secs(15),
        || async {
            let i = d.instance(id).await.ok()?;
            (i.instance.status == InstanceStatus::Running && i.instance.attempt == 2).then_some(i)
        },
    )
    .await;
    eprintln!(
        "with default settings, retried {} ms after the SIGKILL",
        killed_at.elapsed().as_millis()
    );
    assert_ne!(again.instance.worker_id, Some(victim), "{again:?}");
    d.admin.call(&InstanceStop(InstanceId { id })).await?;
    drop(pids);
    d.shutdown().await;
    Ok(())
}
