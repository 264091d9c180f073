//! Distributed execution with real `rota worker` processes (the SDK's example processors,
//! `--demo-processors`, and `shell`): broadcast, sharding, map and map-reduce over three or
//! four workers, task retries, and what a SIGKILL of a task worker or of the master does.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::*;
use rota_shared::task::{Execution, TaskCounts, TaskStatus, parse_shards};
use rota_tests::cluster::{Deployment, SECRET, shell_job};
use rota_tests::scrape::Scrape;
use rota_tests::wait;
use rota_tests::worker_process::WorkerProcess;
use tempfile::TempDir;

/// How long a distributed instance may take on this 2-core machine under the whole suite.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// The sum of the squares of 1..=n.
fn sum_of_squares(n: u64) -> u64 {
    n * (n + 1) * (2 * n + 1) / 6
}

fn rota() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rota"))
}

struct Cluster {
    d: Deployment,
    workers: Vec<(WorkerProcess, SocketAddr)>,
    _logs: TempDir,
}

impl Cluster {
    /// A server and `workers` worker processes of app `app` with the example processors, the
    /// shell, capacity 4 and `/metrics`; `tagged` of them (the first ones) carry tag `blue`.
    async fn start(workers: &[&str], tagged: usize) -> anyhow::Result<Self> {
        let d = Deployment::start().await?;
        d.create_app("app").await?;
        let logs = tempfile::Builder::new().prefix("rota-dist-").tempdir()?;
        let nats = d.nats.url();
        let mut started = Vec::new();
        for (i, id) in workers.iter().enumerate() {
            let addr: SocketAddr = format!("127.0.0.1:{}", rota_tests::free_port()?).parse()?;
            let addr_text = addr.to_string();
            let mut extra = vec![
                "--heartbeat-interval",
                "500ms",
                "--reacquire-interval",
                "2s",
                "--demo-processors",
                "--capacity",
                "4",
                "--http-listen",
                addr_text.as_str(),
            ];
            if i < tagged {
                extra.extend(["--tags", "blue"]);
            }
            let w = WorkerProcess::start_with(
                rota(),
                id,
                "app",
                SECRET,
                &nats,
                logs.path(),
                &d.admin,
                &extra,
            )
            .await?;
            started.push((w, addr));
        }
        Ok(Self {
            d,
            workers: started,
            _logs: logs,
        })
    }

    async fn job(
        &self,
        name: &str,
        processor: &str,
        edit: impl FnOnce(&mut JobSpec),
    ) -> anyhow::Result<i64> {
        let mut job = shell_job("app", name, "");
        job.spec.processor = processor.to_owned();
        edit(&mut job.spec);
        Ok(self.d.create_job(job).await?.id)
    }

    async fn run_with(&self, job_id: i64, params: &str) -> anyhow::Result<i64> {
        Ok(self
            .d
            .admin
            .call(&JobRun {
                id: job_id,
                params: Some(params.to_owned()),
                delay_ms: 0,
                idempotency_key: None,
            })
            .await?
            .instance_id)
    }

    /// Waits for the instance to end and returns it; every worker's log is shown when it does
    /// not succeed, or does not end in time.
    async fn finish(&self, id: i64) -> InstanceInfo {
        let ended = tokio::time::timeout(RUN_TIMEOUT, async {
            loop {
                if let Ok(info) = self.d.instance(id).await
                    && info.instance.status.is_terminal()
                {
                    return info;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        let show_logs = || {
            for (w, _) in &self.workers {
                eprintln!("--- {} ---\n{}", w.id(), w.log_tail());
            }
        };
        match ended {
            Ok(info) => {
                if info.instance.status != InstanceStatus::Succeeded {
                    show_logs();
                }
                info
            }
            Err(_) => {
                show_logs();
                panic!(
                    "instance {id} did not end within {RUN_TIMEOUT:?}: {:?}",
                    self.d.instance(id).await
                );
            }
        }
    }

    /// How many tasks each live worker process ran for a master, by its `/metrics`.
    async fn tasks_ran(&self) -> anyhow::Result<Vec<(String, f64)>> {
        let mut out = Vec::new();
        for (w, addr) in &self.workers {
            let answer =
                rota_observe::probe::get(*addr, "/metrics", Duration::from_secs(5)).await?;
            let scrape = Scrape::parse(&answer.body)?;
            out.push((
                w.id().to_owned(),
                scrape.sum("rota_worker_distributed_tasks_total", &[]),
            ));
        }
        Ok(out)
    }
}

fn counts(info: &InstanceInfo) -> TaskCounts {
    info.instance
        .tasks
        .clone()
        .unwrap_or_else(|| panic!("instance {} has no task counts: {info:?}", info.instance.id))
}

fn share(c: &TaskCounts, worker: &str) -> u64 {
    c.workers
        .iter()
        .find(|w| w.worker_id == worker)
        .map_or(0, |w| w.succeeded + w.failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_runs_once_on_every_eligible_worker_and_post_sees_every_result()
-> anyhow::Result<()> {
    // Three workers carry the job's tag; the fourth does not and must run nothing.
    let c = Cluster::start(&["wa", "wb", "wc", "wd"], 3).await?;
    let job = c
        .job("everyone", "demo-broadcast", |s| {
            s.execution = Execution::Broadcast;
            s.tags = vec!["blue".into()];
        })
        .await?;
    let id = c.d.run(job).await?;
    let info = c.finish(id).await;
    assert_eq!(info.instance.status, InstanceStatus::Succeeded, "{info:?}");
    assert_eq!(
        info.instance.result.as_deref(),
        Some("post saw 3: wa,wb,wc")
    );
    let t = counts(&info);
    assert_eq!(
        (t.total, t.succeeded, t.failed, t.running),
        (3, 3, 0, 0),
        "{t:?}"
    );
    for w in ["wa", "wb", "wc"] {
        assert_eq!(share(&t, w), 1, "{w} ran its one task: {t:?}");
    }
    assert_eq!(share(&t, "wd"), 0, "{t:?}");
    let ran = c.tasks_ran().await?;
    assert_eq!(
        ran,
        vec![
            ("wa".to_owned(), 1.0),
            ("wb".to_owned(), 1.0),
            ("wc".to_owned(), 1.0),
            ("wd".to_owned(), 0.0)
        ],
        "each eligible worker ran exactly one task, the other none"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharding_runs_each_item_once_with_its_index_and_parameter() -> anyhow::Result<()> {
    let c = Cluster::start(&["wa", "wb"], 0).await?;
    // The shell sees its shard in the environment; its output goes to the instance's log.
    let job = c
        .job("shards", "shell", |s| {
            s.config =
                r#"echo "item $ROTA_SHARD_INDEX/$ROTA_SHARD_TOTAL=$ROTA_SHARD_PARAM""#.into();
            s.execution = Execution::Sharding {
                shards: parse_shards("0=a,1=b,2=c,3=d,4=e").expect("valid shards"),
            };
        })
        .await?;
    let id = c.d.run(job).await?;
    let info = c.finish(id).await;
    assert_eq!(info.instance.status, InstanceStatus::Succeeded, "{info:?}");
    let t = counts(&info);
    assert_eq!((t.total, t.succeeded, t.failed), (5, 5, 0), "{t:?}");
    assert_eq!(share(&t, "wa") + share(&t, "wb"), 5, "{t:?}");
    let logs = c.d.logs(id).await?;
    for (index, param) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let line = format!("item {index}/5={param}");
        let seen = logs.iter().filter(|l| l.text.ends_with(&line)).count();
        assert_eq!(seen, 1, "{line:?} once in the log: {logs:#?}");
    }
    let ran: f64 = c.tasks_ran().await?.iter().map(|(_, n)| n).sum();
    assert_eq!(ran, 5.0, "every item ran once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_map_of_ten_thousand_uses_every_worker_and_reduces_exactly() -> anyhow::Result<()> {
    let c = Cluster::start(&["wa", "wb", "wc"], 0).await?;
    let job = c
        .job("squares", "demo-sum-squares", |s| {
            s.execution = Execution::MapReduce
        })
        .await?;

    // One level: the root maps 10,000 squares.
    let id = c.run_with(job, "10000").await?;
    let info = c.finish(id).await;
    assert_eq!(info.instance.status, InstanceStatus::Succeeded, "{info:?}");
    let expected = format!("sum={}", sum_of_squares(10_000));
    assert_eq!(info.instance.result.as_deref(), Some(expected.as_str()));
    let t = counts(&info);
    assert_eq!(
        (t.total, t.succeeded, t.failed),
        (10_000, 10_000, 0),
        "{t:?}"
    );
    for w in ["wa", "wb", "wc"] {
        assert!(share(&t, w) > 0, "{w} took part: {t:?}");
    }
    let ran: f64 = c.tasks_ran().await?.iter().map(|(_, n)| n).sum();
    assert_eq!(ran, 10_000.0, "each sub-task ran once");

    // Two levels: the root maps 10 ranges, each range maps its 1,000 squares.
    let id = c.run_with(job, "10000/1000").await?;
    let info = c.finish(id).await;
    assert_eq!(
        info.instance.result.as_deref(),
        Some(expected.as_str()),
        "{info:?}"
    );
    let t = counts(&info);
    assert_eq!((t.total, t.succeeded), (10_010, 10_010), "{t:?}");
    let ran: f64 = c.tasks_ran().await?.iter().map(|(_, n)| n).sum();
    assert_eq!(ran, 20_010.0, "each sub-task of both runs ran once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_task_is_retried_then_counted_failed() -> anyhow::Result<()> {
    let c = Cluster::start(&["wa", "wb", "wc"], 0).await?;
    let job = c
        .job("flaky", "demo-flaky", |s| {
            s.execution = Execution::Map;
            s.task_retries = 2;
        })
        .await?;
    // `fail-once` succeeds on its second attempt; `fail` fails all three.
    let id = c.run_with(job, "ok,fail-once,fail").await?;
    let info = c.finish(id).await;
    assert_eq!(info.instance.status, InstanceStatus::Failed, "{info:?}");
    assert_eq!(
        info.instance.result.as_deref(),
        Some("1 of 3 tasks failed (2 succeeded)")
    );
    let t = counts(&info);
    assert_eq!((t.total, t.succeeded, t.failed), (3, 2, 1), "{t:?}");
    let ran: f64 = c.tasks_ran().await?.iter().map(|(_, n)| n).sum();
    assert_eq!(
        ran,
        1.0 + 2.0 + 3.0,
        "ok once, fail-once twice, fail three times"
    );

    // Without retries the task that fails once fails the instance; with one it succeeds.
    let strict = c
        .job("strict", "demo-flaky", |s| s.execution = Execution::Map)
        .await?;
    let info =
        c.d.wait_terminal(c.run_with(strict, "ok,fail-once").await?, RUN_TIMEOUT)
            .await;
    assert_eq!(info.instance.status, InstanceStatus::Failed, "{info:?}");
    let lenient = c
        .job("lenient", "demo-flaky", |s| {
            s.execution = Execution::Map;
            s.task_retries = 1;
        })
        .await?;
    let info = c.finish(c.run_with(lenient, "ok,fail-once").await?).await;
    assert_eq!(info.instance.status, InstanceStatus::Succeeded, "{info:?}");
    assert_eq!(info.instance.result.as_deref(), Some("2 tasks succeeded"));
    Ok(())
}

/// Waits until the instance's master has finished some tasks and many are left.
async fn wait_mid_map(c: &Cluster, id: i64) -> String {
    wait::until(
        &format!("instance {id} to be in the middle of its map"),
        RUN_TIMEOUT,
        || async {
            let info = c.d.instance(id).await.ok()?;
            let master = info.instance.worker_id.clone()?;
            let page =
                c.d.admin
                    .call(&InstanceTasks {
                        id,
                        after: None,
                        limit: Some(1000),
                    })
                    .await
                    .ok()?;
            let done = page
                .items
                .iter()
                .filter(|t| t.status == TaskStatus::Succeeded)
                .count();
            (done >= 50 && page.next.is_some()).then_some(master)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_task_worker_loses_no_task_and_a_killed_master_loses_the_attempt()
-> anyhow::Result<()> {
    let mut c = Cluster::start(&["wa", "wb", "wc"], 0).await?;
    let n = 6_000;
    let expected = format!("sum={}", sum_of_squares(n));
    let job = c
        .job("slow-squares", "demo-sum-squares", |s| {
            s.execution = Execution::MapReduce;
            s.config = "sleep_ms=10".into();
            s.max_retries = 1;
            s.retry_delay_ms = 200;
        })
        .await?;

    // A task worker dies mid-map: its unfinished tasks run elsewhere.
    let id = c.run_with(job, &n.to_string()).await?;
    let master = wait_mid_map(&c, id).await;
    let victim = c
        .workers
        .iter()
        .position(|(w, _)| w.id() != master)
        .expect("a worker that is not the master");
    let victim_id = c.workers[victim].0.id().to_owned();
    c.workers[victim].0.kill().await;
    let info = c.finish(id).await;
    assert_eq!(info.instance.status, InstanceStatus::Succeeded, "{info:?}");
    assert_eq!(info.instance.result.as_deref(), Some(expected.as_str()));
    assert_eq!(info.instance.attempt, 1, "the master kept its attempt");
    let t = counts(&info);
    assert_eq!((t.total, t.succeeded, t.failed), (n, n, 0), "{t:?}");
    assert!(
        share(&t, &victim_id) < n / 2,
        "the killed worker finished only what it reported before it died: {t:?}"
    );
    c.workers.remove(victim);

    // Now the master dies mid-map: its attempt is lost, and the server's retry completes it.
    let id = c.run_with(job, &n.to_string()).await?;
    let master = wait_mid_map(&c, id).await;
    let index = c
        .workers
        .iter()
        .position(|(w, _)| w.id() == master)
        .expect("the master is one of the workers");
    c.workers[index].0.kill().await;
    let info = c.finish(id).await;
    assert_eq!(info.instance.status, InstanceStatus::Succeeded, "{info:?}");
    assert_eq!(info.instance.result.as_deref(), Some(expected.as_str()));
    assert_eq!(info.instance.attempt, 2, "a second attempt ran: {info:?}");
    assert_ne!(info.instance.worker_id.as_deref(), Some(master.as_str()));
    assert_eq!(counts(&info).succeeded, n);
    Ok(())
}

/// Runs the `rota` CLI against the deployment; returns its exit code, stdout and stderr.
async fn cli(d: &Deployment, args: &[&str]) -> (i32, String, String) {
    d.cli(rota(), args).await
}

/// A refused command: a non-zero exit and one line naming the problem.
async fn refused(d: &Deployment, args: &[&str], says: &str) {
    let (code, _, stderr) = cli(d, args).await;
    assert_ne!(code, 0, "rota {args:?} was accepted");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.contains(says),
        "rota {args:?} said {stderr:?}, not {says:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_makes_distributed_jobs_shows_their_tasks_and_stops_them() -> anyhow::Result<()> {
    let c = Cluster::start(&["wa", "wb"], 0).await?;
    let d = &c.d;
    let base = [
        "job",
        "create",
        "--app",
        "app",
        "--api",
        "--processor",
        "shell",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    refused(
        d,
        &with(&["--name", "gap", "--shards", "0=a,2=b"]),
        "shard indexes must run from 0",
    )
    .await;
    refused(
        d,
        &with(&["--name", "odd", "--execution", "fan-out"]),
        "unknown execution",
    )
    .await;
    refused(
        d,
        &with(&[
            "--name",
            "mixed",
            "--execution",
            "map",
            "--shard-count",
            "3",
        ]),
        "are for --execution sharding",
    )
    .await;
    refused(
        d,
        &[
            "job",
            "create",
            "--app",
            "app",
            "--name",
            "often",
            "--fixed-rate",
            "1s",
            "--processor",
            "shell",
            "--execution",
            "broadcast",
        ],
        "cannot run at a fixed rate",
    )
    .await;

    // A sharded shell job, made by the CLI: instance show has its counts and shares.
    let (code, out, err) = cli(
        d,
        &with(&[
            "--name",
            "pair",
            "--shards",
            "0=a,1=b",
            "--script",
            "echo \"$ROTA_SHARD_PARAM\"",
            "--json",
        ]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let job: serde_json::Value = serde_json::from_str(&out)?;
    let job_id = job["id"].as_i64().expect("a job id");
    assert_eq!(job["execution"]["type"], "sharding");
    let id = d.run(job_id).await?;
    let info = c.finish(id).await;
    assert_eq!(info.instance.status, InstanceStatus::Succeeded, "{info:?}");
    let (code, out, err) = cli(d, &["instance", "show", &id.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("tasks: 2 total, 2 succeeded, 0 failed, 0 running"),
        "{out}"
    );
    assert!(out.contains("SHARE"), "each worker's share: {out}");
    // Once it ended, its master has let its tasks go.
    refused(
        d,
        &["instance", "tasks", &id.to_string()],
        "only while it runs",
    )
    .await;

    // A long map-reduce: its tasks are listed a page at a time while it runs, and a stop ends
    // the tasks on every worker.
    let slow = c
        .job("slow", "demo-sum-squares", |s| {
            s.execution = Execution::MapReduce;
            s.config = "sleep_ms=50".into();
        })
        .await?;
    let id = c.run_with(slow, "2000").await?;
    wait_mid_map(&c, id).await;
    let (code, out, err) = cli(d, &["instance", "tasks", &id.to_string(), "--limit", "3"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains("ID") && lines[0].contains("ATTEMPTS"),
        "{out}"
    );
    assert_eq!(lines.len(), 1 + 3, "a header and three tasks: {out}");
    assert!(err.contains("more exist: add --after 3"), "{err}");
    let (code, _, err) = cli(d, &["instance", "stop", &id.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    // 2,000 squares of 50 ms on 8 slots take 12.5 s; stopped after a few hundred, the workers
    // must not run the rest.
    let info = c.finish(id).await;
    assert_eq!(info.instance.status, InstanceStatus::Stopped);
    wait::until(
        "every worker to drop the stopped instance's tasks",
        RUN_TIMEOUT,
        || async {
            let mut running = 0.0;
            for (_, addr) in &c.workers {
                let answer = rota_observe::probe::get(*addr, "/metrics", Duration::from_secs(5))
                    .await
                    .ok()?;
                running += Scrape::parse(&answer.body)
                    .ok()?
                    .sum("rota_worker_distributed_tasks_running", &[]);
            }
            (running == 0.0).then_some(())
        },
    )
    .await;
    let ran: f64 = c.tasks_ran().await?.iter().map(|(_, n)| n).sum();
    assert!(
        ran < 2_000.0,
        "{ran} tasks ran: the stop did not reach the workers"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_task_whose_worker_dies_fails_and_is_not_run_elsewhere() -> anyhow::Result<()> {
    let mut c = Cluster::start(&["wa", "wb", "wc"], 0).await?;
    // Each worker's share writes a file when it starts and then runs until it is killed, or
    // for 3 s (long enough for the master to see one of the workers gone).
    let marks = tempfile::tempdir()?;
    let script = format!(
        "touch '{}/'\"$ROTA_WORKER_ID\"; sleep 3; echo done",
        marks.path().display()
    );
    let job = c
        .job("everyone", "shell", |s| {
            s.execution = Execution::Broadcast;
            s.config = script;
            s.task_retries = 3;
        })
        .await?;
    let id = c.d.run(job).await?;
    let master = wait::until("every share to start", RUN_TIMEOUT, || async {
        let started = ["wa", "wb", "wc"]
            .iter()
            .all(|w| marks.path().join(w).exists());
        let info = c.d.instance(id).await.ok()?;
        started.then_some(info.instance.worker_id?)
    })
    .await;
    let victim = c
        .workers
        .iter()
        .position(|(w, _)| w.id() != master)
        .expect("a worker that is not the master");
    let victim_id = c.workers[victim].0.id().to_owned();
    c.workers[victim].0.kill().await;
    let info = c.finish(id).await;
    assert_eq!(info.instance.status, InstanceStatus::Failed, "{info:?}");
    assert_eq!(
        info.instance.result.as_deref(),
        Some("1 of 3 tasks failed (2 succeeded)")
    );
    let t = counts(&info);
    assert_eq!((t.total, t.succeeded, t.failed), (3, 2, 1), "{t:?}");
    let lost = t
        .workers
        .iter()
        .find(|w| w.worker_id == victim_id)
        .expect("the lost worker's share");
    assert_eq!((lost.succeeded, lost.failed), (0, 1), "{t:?}");
    // No other worker ran the lost share: each ran its own task once.
    c.workers.remove(victim);
    let ran: f64 = c.tasks_ran().await?.iter().map(|(_, n)| n).sum();
    assert_eq!(ran, 2.0);
    Ok(())
}
