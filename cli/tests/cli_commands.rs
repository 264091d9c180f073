//! The `rota` binary as an operator uses it, against a real deployment: NATS, a database, a
//! server and a worker. Every command runs as a separate process with `ROTA_NATS_URL` and an admin
//! `ROTA_TOKEN` set.

use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::{InstanceInfo, JobInfo};
use rota_tests::cluster::{Deployment, SECRET};
use rota_tests::groups;
use rota_tests::wait;
use rota_worker::ProcessorRegistry;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn rota(d: &Deployment, args: &[&str]) -> Output {
    let (code, stdout, stderr) = d
        .cli(std::path::Path::new(env!("CARGO_BIN_EXE_rota")), args)
        .await;
    Output {
        code,
        stdout,
        stderr,
    }
}

/// Runs a command that must succeed and returns its standard output.
async fn ok(d: &Deployment, args: &[&str]) -> String {
    let out = rota(d, args).await;
    assert_eq!(out.code, 0, "rota {args:?} failed: {}", out.stderr);
    out.stdout
}

async fn show(d: &Deployment, id: i64) -> InstanceInfo {
    let json = ok(d, &["--json", "instance", "show", &id.to_string()]).await;
    serde_json::from_str(&json).expect("instance show --json prints an instance")
}

/// A deployment with app `app` created through the CLI and one worker.
async fn deployment() -> anyhow::Result<Deployment> {
    let mut d = Deployment::start().await?;
    ok(&d, &["app", "create", "app", "--secret", SECRET]).await;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    Ok(d)
}

async fn create_job(d: &Deployment, extra: &[&str]) -> JobInfo {
    let mut args = vec![
        "--json",
        "job",
        "create",
        "--app",
        "app",
        "--processor",
        "shell",
    ];
    args.extend_from_slice(extra);
    let json = ok(d, &args).await;
    serde_json::from_str(&json).expect("job create --json prints the job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cron_job_output_shows_in_rota_logs() -> anyhow::Result<()> {
    let d = deployment().await?;
    let job = create_job(
        &d,
        &[
            "--name",
            "tick",
            "--cron",
            "* * * * * *",
            "--script",
            r#"echo "tick $ROTA_INSTANCE_ID""#,
        ],
    )
    .await;
    let id = job.id.to_string();
    let done = wait::until("four succeeded runs", Duration::from_secs(20), || async {
        let json = ok(
            &d,
            &[
                "--json",
                "instance",
                "list",
                "--job",
                &id,
                "--status",
                "succeeded",
            ],
        )
        .await;
        let page: rota_shared::admin::Page<InstanceInfo> = serde_json::from_str(&json).ok()?;
        (page.items.len() >= 4).then_some(page.items)
    })
    .await;
    ok(&d, &["job", "disable", &id]).await;
    for i in &done {
        let logs = ok(&d, &["logs", &i.instance.id.to_string()]).await;
        assert!(
            logs.contains(&format!("tick {}", i.instance.id)),
            "rota logs {} does not show the run's output: {logs}",
            i.instance.id
        );
    }
    // The human table lists the job with its schedule.
    let table = ok(&d, &["job", "list", "--app", "app"]).await;
    assert!(
        table.contains("cron * * * * * *") && table.contains("tick"),
        "{table}"
    );
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_run_parameters_reach_the_processor_and_the_result_shows() -> anyhow::Result<()> {
    let d = deployment().await?;
    let job = create_job(
        &d,
        &[
            "--name",
            "echo",
            "--api",
            "--script",
            r#"echo "got $ROTA_INSTANCE_PARAMS""#,
        ],
    )
    .await;
    let out = ok(
        &d,
        &["job", "run", &job.id.to_string(), "--params", "color=blue"],
    )
    .await;
    let id: i64 = out
        .trim()
        .strip_prefix("started instance ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected output of job run: {out:?}"));
    wait::until("the run to finish", Duration::from_secs(15), || async {
        show(&d, id)
            .await
            .instance
            .status
            .is_terminal()
            .then_some(())
    })
    .await;
    let inst = show(&d, id).await;
    assert_eq!(inst.instance.status, InstanceStatus::Succeeded);
    assert_eq!(inst.instance.instance_params.as_deref(), Some("color=blue"));
    assert_eq!(inst.instance.result.as_deref(), Some("got color=blue"));
    let table = ok(&d, &["instance", "show", &id.to_string()]).await;
    assert!(
        table.contains("got color=blue") && table.contains("SUCCEEDED"),
        "{table}"
    );
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_stop_kills_the_process_group() -> anyhow::Result<()> {
    let d = deployment().await?;
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("pid");
    let script = format!("echo $$ > {}; sleep 600 & sleep 600", pid_file.display());
    let job = create_job(&d, &["--name", "sleeper", "--api", "--script", &script]).await;
    let out = ok(&d, &["job", "run", &job.id.to_string()]).await;
    let id = out
        .trim()
        .trim_start_matches("started instance ")
        .to_owned();
    let pgid = groups::read_pid_file(&pid_file).await;
    wait::until(
        "the instance to be RUNNING",
        Duration::from_secs(10),
        || async {
            (show(&d, id.parse().ok()?).await.instance.status == InstanceStatus::Running)
                .then_some(())
        },
    )
    .await;
    assert!(!groups::is_gone(pgid));

    let stopped = ok(&d, &["--json", "instance", "stop", &id]).await;
    let stopped: InstanceInfo = serde_json::from_str(&stopped)?;
    assert_eq!(stopped.instance.status, InstanceStatus::Stopped);
    groups::wait_gone(pgid, "the stopped run", Duration::from_secs(10)).await;
    // The worker's own report of the stop came later and changed nothing.
    assert_eq!(
        show(&d, stopped.instance.id).await.instance.status,
        InstanceStatus::Stopped
    );
    let again = rota(&d, &["instance", "stop", &id]).await;
    assert_eq!(again.code, 1);
    assert!(again.stderr.contains("CONFLICT"), "{}", again.stderr);
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_one_clear_line_and_a_nonzero_exit() -> anyhow::Result<()> {
    let d = Deployment::start().await?;
    let cases: &[(&[&str], i32, &str)] = &[
        (&["job", "show", "424242"], 1, "NOT_FOUND"),
        (
            &[
                "job",
                "create",
                "--app",
                "nope",
                "--name",
                "x",
                "--api",
                "--processor",
                "shell",
            ],
            1,
            "NOT_FOUND",
        ),
        (
            &["app", "create", "bad name", "--secret", "s"],
            1,
            "INVALID_ARGUMENT",
        ),
        (
            &["instance", "list", "--status", "dancing"],
            2,
            "unknown status",
        ),
        (
            &[
                "job",
                "create",
                "--app",
                "a",
                "--name",
                "x",
                "--api",
                "--processor",
                "shell",
                "--misfire",
                "sometimes",
            ],
            2,
            "invalid --misfire",
        ),
        (&["job", "run", "seven"], 2, "invalid value"),
        (&["job", "create", "--app", "a"], 2, "--name"),
        (
            &["--config", "/nonexistent/rota.toml", "app", "list"],
            1,
            "cannot read config file",
        ),
        (
            &["--nats-url", "nats://127.0.0.1:1", "app", "list"],
            1,
            "cannot connect to NATS",
        ),
    ];
    ok(&d, &["app", "create", "a", "--secret", "s"]).await;
    let bad_cron = rota(
        &d,
        &[
            "job",
            "create",
            "--app",
            "a",
            "--name",
            "x",
            "--cron",
            "61 * * * * *",
            "--processor",
            "shell",
        ],
    )
    .await;
    assert_eq!(bad_cron.code, 1);
    assert!(
        bad_cron.stderr.contains("INVALID_ARGUMENT") && bad_cron.stderr.contains("CRON"),
        "{}",
        bad_cron.stderr
    );
    for (args, code, needle) in cases {
        let out = rota(&d, args).await;
        assert_eq!(out.code, *code, "rota {args:?}: {}", out.stderr);
        assert_eq!(
            out.stderr.trim_end().lines().count(),
            1,
            "rota {args:?} printed more than one line: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(needle),
            "rota {args:?}: {:?} lacks {needle:?}",
            out.stderr
        );
    }
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stats_show_readiness_services_and_repairs() -> anyhow::Result<()> {
    let d = deployment().await?;
    let table = ok(&d, &["server", "stats"]).await;
    assert!(table.contains("server s1: ready"), "{table}");
    for service in ["schedule", "presence", "health", "reconcile", "clean_up"] {
        assert!(table.contains(service), "{service} missing from: {table}");
    }
    let json = ok(&d, &["--json", "server", "stats"]).await;
    let stats: Vec<rota_shared::admin::ServerStatsInfo> = serde_json::from_str(&json)?;
    assert_eq!(stats.len(), 1);
    assert!(stats[0].ready);
    assert!(
        stats[0].services.iter().all(|s| s.state == "RUNNING"),
        "{stats:?}"
    );
    d.shutdown().await;
    Ok(())
}

/// Output for people: a worker's app by name, its health in per cent and when it was last seen
/// in seconds; a retried instance's log under one header per attempt, each with how it ended;
/// `server stats` without an empty table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_reads_well_for_people() -> anyhow::Result<()> {
    let d = deployment().await?;
    let workers = ok(&d, &["worker", "list"]).await;
    let row = workers
        .lines()
        .find(|l| l.starts_with("w1"))
        .unwrap_or_else(|| panic!("{workers}"));
    assert!(
        row.contains(" app ") && row.contains(" %") && row.contains(" s ago"),
        "{row}"
    );
    let job = create_job(
        &d,
        &[
            "--name",
            "twice",
            "--api",
            "--script",
            "echo try-$ROTA_ATTEMPT; exit 3",
            "--max-retries",
            "1",
            "--retry-delay",
            "100ms",
        ],
    )
    .await;
    let started = ok(&d, &["--json", "job", "run", &job.id.to_string()]).await;
    let id = serde_json::from_str::<serde_json::Value>(&started)?["instance_id"]
        .as_i64()
        .unwrap_or_default();
    let done = wait::until(
        "the retried run to fail",
        Duration::from_secs(20),
        || async { Some(show(&d, id).await).filter(|i| i.instance.status.is_terminal()) },
    )
    .await;
    assert_eq!(done.instance.runs, 2, "{done:?}");
    let logs = ok(&d, &["logs", &id.to_string()]).await;
    let headers: Vec<&str> = logs
        .lines()
        .filter(|l| l.starts_with("--- attempt"))
        .collect();
    assert_eq!(
        headers,
        vec!["--- attempt 1 ---", "--- attempt 2 ---"],
        "{logs}"
    );
    assert_eq!(logs.matches("exit status 3").count(), 2, "{logs}");
    // Lists come a page at a time, and say when more exist.
    create_job(&d, &["--name", "second", "--api", "--script", "true"]).await;
    let first = rota(&d, &["job", "list", "--limit", "1"]).await;
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert_eq!(first.stdout.lines().count(), 2, "{}", first.stdout);
    assert!(
        first.stderr.contains("more exist: add --after"),
        "{}",
        first.stderr
    );
    let all = ok(&d, &["job", "list", "--limit", "1", "--all"]).await;
    assert!(all.contains("twice") && all.contains("second"), "{all}");
    // A table header is always followed by a row: no repairs is said in words.
    let stats = ok(&d, &["server", "stats"]).await;
    let lines: Vec<&str> = stats.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("REPAIR") {
            let next = lines.get(i + 1).copied().unwrap_or_default();
            assert!(
                !next.is_empty() && !next.starts_with("SERVICE") && !next.starts_with("REFUSED"),
                "{stats}"
            );
        }
    }
    assert!(
        stats.contains("no repairs") || stats.contains("REPAIR"),
        "{stats}"
    );
    d.shutdown().await;
    Ok(())
}

/// `job update` changes only what its flags name: the rest of the job, its lifecycle and schedule
/// among them, stays as it was; an empty `--params` clears the parameters; an update without a
/// change is a usage error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_update_changes_only_what_it_names() -> anyhow::Result<()> {
    let d = deployment().await?;
    let job = create_job(
        &d,
        &[
            "--name",
            "upd",
            "--cron",
            "0 30 2 * * *",
            "--tz",
            "Europe/Berlin",
            "--script",
            "echo one",
            "--params",
            "p=1",
            "--tag",
            "eu",
            "--max-retries",
            "1",
            "--ends-at",
            "2099-01-01T00:00:00Z",
        ],
    )
    .await;
    let id = job.id.to_string();
    let json = ok(
        &d,
        &[
            "--json",
            "job",
            "update",
            &id,
            "--max-retries",
            "4",
            "--params",
            "",
            "--description",
            "now documented",
        ],
    )
    .await;
    let updated: JobInfo = serde_json::from_str(&json).expect("job update --json prints the job");
    let mut expected = job.spec.clone();
    expected.max_retries = 4;
    expected.params = None;
    expected.description = "now documented".into();
    assert_eq!(updated.spec, expected);
    assert_eq!(
        updated.next_trigger_time_ms, job.next_trigger_time_ms,
        "the schedule did not change, so neither does the next fire"
    );
    let json = ok(&d, &["--json", "job", "show", &id]).await;
    let shown: JobInfo = serde_json::from_str(&json).expect("job show --json prints the job");
    assert_eq!(shown.spec, expected, "the change is stored");

    let nothing = rota(&d, &["job", "update", &id]).await;
    assert_eq!(nothing.code, 2, "{}", nothing.stderr);
    assert!(
        nothing.stderr.contains("say what changes"),
        "{}",
        nothing.stderr
    );
    d.shutdown().await;
    Ok(())
}
