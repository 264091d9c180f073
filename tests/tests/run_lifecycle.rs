//! DESIGN §4 end to end: what happens to one instance from the moment it is run until it is
//! final. Parameters reach the processor, a failing job is retried at its delay and then fails
//! for good, a timeout and an operator's stop kill the whole shell process group, and
//! `max_instances` either cancels or queues the extra instance, as the job's overlap policy says.

use std::future::Future;
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::{InstanceId, InstanceStop, JobRun, OverlapPolicy, WorkerList};
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::groups::{self, live_members, read_pid_file};
use rota_tests::wait::{self, POLL_INTERVAL};
use rota_worker::{ProcessResult, ProcessorRegistry, TaskContext, processor_fn};
use tokio::sync::watch;
use tokio::time::Instant;

/// Runs a job now and returns the new instance's id.
async fn run(d: &Deployment, job_id: i64, params: Option<&str>) -> anyhow::Result<i64> {
    Ok(d.admin
        .call(&JobRun {
            id: job_id,
            params: params.map(str::to_owned),
            delay_ms: 0,
            idempotency_key: None,
        })
        .await?
        .instance_id)
}

/// Checks `probe` every [`POLL_INTERVAL`] for the whole of `window` and panics with its message
/// the first time it fails. This observes that something does *not* happen for a while (an
/// instance that must not be dispatched); the window is chosen to span several of the server's
/// dispatch retries, so a wrong dispatch would be seen.
async fn holds_for<F, Fut>(what: &str, window: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let end = Instant::now() + window;
    loop {
        if let Err(why) = probe().await {
            panic!("{what} stopped holding: {why}");
        }
        if Instant::now() >= end {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Waits until the worker reports that it runs nothing. A tracker only leaves the worker's
/// list once its terminal report has been acknowledged, so afterwards every report about the
/// instances the worker ran has reached the server.
async fn wait_worker_idle(d: &Deployment, app: &str, worker_id: &str) {
    wait::until(
        &format!("worker {worker_id} to run nothing"),
        Duration::from_secs(15),
        || async {
            let list = d
                .admin
                .call(&WorkerList {
                    app: Some(app.to_owned()),
                    ..Default::default()
                })
                .await
                .ok()?
                .items;
            list.iter()
                .any(|w| w.worker_id == worker_id && w.running == 0)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_run_parameters_reach_the_processor() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    // The processor logs the parameters verbatim (not Debug-escaped) and returns them, so both
    // the result and the log show exactly what it received.
    let mut registry = ProcessorRegistry::new();
    registry.register(
        "echo",
        processor_fn(|ctx: TaskContext| async move {
            let params = ctx.instance_params.clone().unwrap_or_default();
            ctx.info(format!("params {params}"));
            ProcessResult::ok(params)
        }),
    );
    d.start_worker(d.worker_config("app", "w1"), registry)
        .await?;
    let mut spec = shell_job("app", "echo", "");
    spec.spec.processor = "echo".into();
    let job = d.create_job(spec).await?;

    let id = run(&d, job.id, Some(r#"{"n":42}"#)).await?;
    let done = d.wait_terminal(id, Duration::from_secs(15)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    assert_eq!(
        done.instance.result.as_deref(),
        Some(r#"{"n":42}"#),
        "{done:?}"
    );
    assert_eq!(
        done.instance.instance_params.as_deref(),
        Some(r#"{"n":42}"#)
    );
    assert_eq!(done.instance.worker_id.as_deref(), Some("w1"));
    assert_eq!(done.instance.runs, 1);

    // The tracker flushes the log before its terminal report, so the line is stored by now.
    let logs = d.logs(id).await?;
    assert!(
        logs.iter().any(|l| l.text.contains(r#"params {"n":42}"#)),
        "no log line shows the parameters: {logs:?}"
    );

    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_job_retries_at_its_delay_and_ends_failed_after_three_runs() -> anyhow::Result<()> {
    const DELAY_MS: i64 = 1_500;
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let mut spec = shell_job("app", "fails", r#"echo "run $ROTA_ATTEMPT"; exit 3"#);
    spec.spec.max_retries = 2;
    spec.spec.retry_delay_ms = DELAY_MS as u64;
    let job = d.create_job(spec).await?;

    let id = run(&d, job.id, None).await?;
    let done = d.wait_terminal(id, Duration::from_secs(30)).await;
    assert_eq!(done.instance.status, InstanceStatus::Failed, "{done:?}");
    assert_eq!(done.instance.runs, 3, "one run and two retries: {done:?}");
    let result = done.instance.result.clone().unwrap_or_default();
    assert!(
        result.starts_with("exit status 3"),
        "unexpected result {result:?}"
    );

    // Each run logged one "run N" line, tagged with its own attempt; the script printed the
    // attempt it was given, which must agree with the attempt the log line is stored under.
    let mut runs: Vec<_> = d
        .logs(id)
        .await?
        .into_iter()
        .filter(|l| l.text.starts_with("run "))
        .collect();
    assert_eq!(runs.len(), 3, "expected three runs in the log: {runs:?}");
    runs.sort_by_key(|l| l.ts_ms);
    for line in &runs {
        assert_eq!(
            line.text,
            format!("run {}", line.attempt),
            "the script saw another attempt than the log line records"
        );
    }
    let mut attempts: Vec<i32> = runs.iter().map(|l| l.attempt).collect();
    attempts.dedup();
    assert_eq!(attempts.len(), 3, "three distinct attempts: {runs:?}");
    assert!(
        attempts.windows(2).all(|w| w[0] < w[1]),
        "attempts rise run by run: {runs:?}"
    );
    assert_eq!(
        done.instance.attempt, attempts[2],
        "the final attempt is the last run's"
    );

    // A retry fires its delay after the failure was reported, and the failure is reported after
    // the run's line was written, so consecutive runs are at least the delay apart; the upper
    // bound allows for a loaded machine but would catch a retry that waited for anything else
    // (a reconcile pass, a second delay).
    for pair in runs.windows(2) {
        let gap = pair[1].ts_ms - pair[0].ts_ms;
        assert!(
            (DELAY_MS..=DELAY_MS + 2_500).contains(&gap),
            "runs {} ms apart, expected {DELAY_MS}..={} ms: {runs:?}",
            gap,
            DELAY_MS + 2_500
        );
    }

    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_whole_process_group() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("pid");
    // The background sleep is a grandchild the shell does not wait for: only killing the whole
    // group ends it.
    let script = format!("echo $$ > '{}'; sleep 600 & sleep 600", pid_file.display());
    let mut spec = shell_job("app", "slow", &script);
    spec.spec.timeout_ms = 1_000;
    let job = d.create_job(spec).await?;

    let id = run(&d, job.id, None).await?;
    let pgid = read_pid_file(&pid_file).await;
    // The background sleep runs in the group besides the shell (or the foreground sleep, should
    // the shell exec it), so the check below that the group is gone is about more than the one
    // process the worker waits for.
    let members = wait::until(
        &format!("process group {pgid} to hold the shell's processes"),
        Duration::from_secs(5),
        || async move {
            let members = live_members(pgid);
            (members.len() >= 2).then_some(members)
        },
    )
    .await;

    let done = d.wait_terminal(id, Duration::from_secs(15)).await;
    assert_eq!(done.instance.status, InstanceStatus::Failed, "{done:?}");
    assert_eq!(
        done.instance.result.as_deref(),
        Some("timeout: exceeded 1000 ms"),
        "{done:?}"
    );
    let started = done
        .instance
        .started_at_ms
        .expect("a run that started has a start time");
    let finished = done
        .instance
        .finished_at_ms
        .expect("a final instance has a finish time");
    assert!(
        finished - started <= 3_000,
        "a 1 s timeout took {} ms to end the instance",
        finished - started
    );

    groups::wait_gone(pgid, "the timed-out run", Duration::from_secs(5)).await;
    assert!(
        members.iter().all(|pid| !live_members(pgid).contains(pid)),
        "a member of {members:?} is still alive"
    );

    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_kills_a_running_shell_job() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let dir = tempfile::tempdir()?;
    let pid_file = dir.path().join("pid");
    let script = format!(
        "echo $$ > '{}'; echo started; sleep 600",
        pid_file.display()
    );
    let job = d.create_job(shell_job("app", "forever", &script)).await?;

    let id = run(&d, job.id, None).await?;
    d.wait_status(id, InstanceStatus::Running, Duration::from_secs(15))
        .await;
    let pgid = read_pid_file(&pid_file).await;
    assert!(
        !groups::is_gone(pgid),
        "the script's group runs before the stop"
    );

    let stopped = d.admin.call(&InstanceStop(InstanceId { id })).await?;
    assert_eq!(
        stopped.instance.status,
        InstanceStatus::Stopped,
        "{stopped:?}"
    );
    assert!(stopped.instance.finished_at_ms.is_some(), "{stopped:?}");

    groups::wait_gone(pgid, "the stopped run", Duration::from_secs(10)).await;
    // The worker sends its own terminal report after killing the group; once it runs nothing,
    // that report has been acknowledged, so the re-read below sees whatever it did.
    wait_worker_idle(&d, "app", "w1").await;
    let after = d.instance(id).await?;
    assert_eq!(after.instance.status, InstanceStatus::Stopped, "{after:?}");
    assert_eq!(
        (
            &after.instance.result,
            after.instance.finished_at_ms,
            after.instance.attempt,
            after.instance.runs
        ),
        (
            &stopped.instance.result,
            stopped.instance.finished_at_ms,
            stopped.instance.attempt,
            stopped.instance.runs
        ),
        "the worker's later report changed a stopped instance"
    );

    d.shutdown().await;
    Ok(())
}

/// A registry with the processor "wait": it runs until the instance is cancelled (by a stop or
/// a timeout), so that the instance stays RUNNING as long as a test needs.
fn registry_waiting_for_cancellation() -> ProcessorRegistry {
    let mut registry = ProcessorRegistry::new();
    registry.register(
        "wait",
        processor_fn(|ctx: TaskContext| async move {
            ctx.cancellation().cancelled().await;
            ProcessResult::failed("cancelled")
        }),
    );
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_instances_skip_cancels_the_extra_fire() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(
        d.worker_config("app", "w1"),
        registry_waiting_for_cancellation(),
    )
    .await?;
    let mut spec = shell_job("app", "single", "");
    spec.spec.processor = "wait".into();
    spec.spec.max_instances = 1;
    spec.spec.overlap = OverlapPolicy::Skip;
    let job = d.create_job(spec).await?;

    let first = run(&d, job.id, None).await?;
    d.wait_status(first, InstanceStatus::Running, Duration::from_secs(15))
        .await;
    let second = run(&d, job.id, None).await?;
    let skipped = d.wait_terminal(second, Duration::from_secs(15)).await;
    assert_eq!(
        skipped.instance.status,
        InstanceStatus::Canceled,
        "{skipped:?}"
    );
    let reason = skipped.instance.result.clone().unwrap_or_default();
    assert!(
        reason.contains("max_instances"),
        "the reason should name max_instances: {reason:?}"
    );
    assert_eq!(
        (
            skipped.instance.attempt,
            skipped.instance.runs,
            skipped.instance.worker_id.as_deref()
        ),
        (0, 0, None),
        "the skipped instance was never dispatched: {skipped:?}"
    );
    let still = d.instance(first).await?;
    assert_eq!(
        still.instance.status,
        InstanceStatus::Running,
        "the first instance is untouched by the skip: {still:?}"
    );

    let stopped = d
        .admin
        .call(&InstanceStop(InstanceId { id: first }))
        .await?;
    assert_eq!(
        stopped.instance.status,
        InstanceStatus::Stopped,
        "{stopped:?}"
    );
    wait_worker_idle(&d, "app", "w1").await;

    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_instances_queue_waits_for_a_free_slot() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    // The gate is a watch rather than a Notify, so that it stays open once released: the
    // queued instance, which starts only after the release, must pass it too.
    let (release, gate) = watch::channel(false);
    let mut registry = ProcessorRegistry::new();
    registry.register(
        "gate",
        processor_fn(move |ctx: TaskContext| {
            let mut gate = gate.clone();
            async move {
                let cancel = ctx.cancellation();
                tokio::select! {
                    open = gate.wait_for(|open| *open) => match open {
                        Ok(_) => ProcessResult::ok("released"),
                        Err(_) => ProcessResult::failed("the test dropped the gate"),
                    },
                    () = cancel.cancelled() => ProcessResult::failed("cancelled"),
                }
            }
        }),
    );
    d.start_worker(d.worker_config("app", "w1"), registry)
        .await?;
    let mut spec = shell_job("app", "queued", "");
    spec.spec.processor = "gate".into();
    spec.spec.max_instances = 1;
    spec.spec.overlap = OverlapPolicy::Queue;
    let job = d.create_job(spec).await?;

    // The second run is asked for once the first holds the only slot, so which of the two
    // waits is certain. (Two runs asked for at the same moment are the next test's subject.)
    let first = run(&d, job.id, None).await?;
    let running = d
        .wait_status(first, InstanceStatus::Running, Duration::from_secs(15))
        .await;
    assert_eq!(running.instance.worker_id.as_deref(), Some("w1"));
    let second = run(&d, job.id, None).await?;

    // The server looks at a queued instance again every second; over three seconds it has
    // several chances to dispatch the second instance wrongly, and must not.
    holds_for(
        "the second instance waiting while the first runs",
        Duration::from_secs(3),
        || async {
            let s = d.instance(second).await.map_err(|e| e.to_string())?;
            let f = d.instance(first).await.map_err(|e| e.to_string())?;
            if f.instance.status != InstanceStatus::Running {
                return Err(format!("the first is not RUNNING: {f:?}"));
            }
            if s.instance.status != InstanceStatus::WaitingDispatch || s.instance.attempt != 0 {
                return Err(format!("the second left WAITING_DISPATCH: {s:?}"));
            }
            Ok(())
        },
    )
    .await;

    release.send(true)?;
    let first_done = d.wait_terminal(first, Duration::from_secs(15)).await;
    let second_done = d.wait_terminal(second, Duration::from_secs(15)).await;
    for done in [&first_done, &second_done] {
        assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
        assert_eq!(
            done.instance.result.as_deref(),
            Some("released"),
            "{done:?}"
        );
        assert_eq!(done.instance.runs, 1, "{done:?}");
    }
    let first_finished = first_done.instance.finished_at_ms.expect("finished");
    let second_started = second_done.instance.started_at_ms.expect("started");
    assert!(
        second_started >= first_finished,
        "the queued instance started at {second_started}, before the first finished at \
         {first_finished}"
    );

    d.shutdown().await;
    Ok(())
}

/// Whether an instance holds one of its job's `max_instances` slots.
fn is_live(status: InstanceStatus) -> bool {
    matches!(
        status,
        InstanceStatus::WaitingWorkerReceive | InstanceStatus::Running
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_instances_holds_for_runs_asked_for_at_the_same_moment() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(
        d.worker_config("app", "w1"),
        registry_waiting_for_cancellation(),
    )
    .await?;

    // Two runs asked for together are dispatched by two tasks at once; the limit must hold
    // all the same. One round may get lucky with the interleaving, so there are several, on
    // fresh jobs, for both overlap policies.
    for round in 0..3 {
        for overlap in [OverlapPolicy::Skip, OverlapPolicy::Queue] {
            let mut spec = shell_job("app", &format!("pair-{round}-{}", overlap.as_str()), "");
            spec.spec.processor = "wait".into();
            spec.spec.max_instances = 1;
            spec.spec.overlap = overlap;
            let job = d.create_job(spec).await?;
            let (a, b) = tokio::join!(run(&d, job.id, None), run(&d, job.id, None));
            let (a, b) = (a?, b?);

            // One of the two gets the slot; which one is not specified.
            let (holder, other) = wait::until(
                &format!("one of instances {a} and {b} to run ({overlap:?})"),
                Duration::from_secs(15),
                || async {
                    let ia = d.instance(a).await.ok()?;
                    let ib = d.instance(b).await.ok()?;
                    match (ia.instance.status, ib.instance.status) {
                        (InstanceStatus::Running, _) => Some((a, b)),
                        (_, InstanceStatus::Running) => Some((b, a)),
                        _ => None,
                    }
                },
            )
            .await;
            // Over a window that spans the other's first dispatch and a requeue, never both
            // hold a slot.
            holds_for(
                &format!("at most one live instance of {a} and {b} ({overlap:?})"),
                Duration::from_millis(1_500),
                || async {
                    let ia = d.instance(a).await.map_err(|e| e.to_string())?;
                    let ib = d.instance(b).await.map_err(|e| e.to_string())?;
                    if is_live(ia.instance.status) && is_live(ib.instance.status) {
                        return Err(format!("both are live: {ia:?} / {ib:?}"));
                    }
                    Ok(())
                },
            )
            .await;

            d.admin
                .call(&InstanceStop(InstanceId { id: holder }))
                .await?;
            match overlap {
                OverlapPolicy::Skip => {
                    let skipped = d.wait_terminal(other, Duration::from_secs(15)).await;
                    assert_eq!(
                        skipped.instance.status,
                        InstanceStatus::Canceled,
                        "{skipped:?}"
                    );
                }
                OverlapPolicy::Queue => {
                    // The queued one takes the freed slot.
                    d.wait_status(other, InstanceStatus::Running, Duration::from_secs(15))
                        .await;
                    d.admin
                        .call(&InstanceStop(InstanceId { id: other }))
                        .await?;
                }
            }
        }
    }
    wait_worker_idle(&d, "app", "w1").await;

    d.shutdown().await;
    Ok(())
}

/// A run shorter than the first RUNNING report (20 ms) reports once, when it ends; its start is
/// still the moment the worker started it, before its own first log line, not when it ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_starts_when_the_worker_started_it() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let mut registry = ProcessorRegistry::new();
    registry.register(
        "brief",
        processor_fn(|ctx: TaskContext| async move {
            ctx.info("first line");
            tokio::time::sleep(Duration::from_millis(15)).await;
            ProcessResult::ok("done")
        }),
    );
    d.start_worker(d.worker_config("app", "w1"), registry)
        .await?;
    let mut spec = shell_job("app", "brief", "");
    spec.spec.processor = "brief".into();
    let job = d.create_job(spec).await?;
    let id = run(&d, job.id, None).await?;
    let done = d.wait_terminal(id, Duration::from_secs(10)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    let (started, finished) = (
        done.instance.started_at_ms.expect("a started run"),
        done.instance.finished_at_ms.expect("a finished run"),
    );
    assert!(
        finished - started >= 15,
        "started {started}, finished {finished}"
    );
    let first_line = d.logs(id).await?[0].ts_ms;
    assert!(
        started <= first_line,
        "started {started}, first line {first_line}"
    );
    d.shutdown().await;
    Ok(())
}
