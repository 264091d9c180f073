//! Scheduled fires are handed to their worker ahead of their instant (`dispatch_ahead`) and
//! start at the instant, never before it; a fire handed over ahead and then cancelled by a
//! disable never runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::{JobDisable, JobId};
use rota_shared::schedule::Schedule;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_worker::{ProcessResult, ProcessorRegistry, TaskContext, processor_fn};

/// `(instance id, wall-clock start in ms)` of every processor run.
type Starts = Arc<Mutex<Vec<(i64, i64)>>>;

fn recording(starts: Starts) -> ProcessorRegistry {
    let mut registry = ProcessorRegistry::new();
    registry.register(
        "record",
        processor_fn(move |ctx: TaskContext| {
            let starts = starts.clone();
            async move {
                let now = rota_transport::wall_ms();
                starts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((ctx.instance_id, now));
                ProcessResult::ok("recorded")
            }
        }),
    );
    registry
}

/// A whole second at least `secs` ahead.
fn instant_in(secs: i64) -> i64 {
    (rota_transport::wall_ms() / 1000 + secs + 1) * 1000
}

/// A deployment whose server hands fires over `ahead` early, with a lookahead that creates
/// them before then.
async fn deployment(ahead: Duration, starts: Starts) -> anyhow::Result<Deployment> {
    let mut d = Deployment::start_without_servers().await?;
    let mut config = d.server_config("s1");
    config.dispatch_ahead = ahead;
    config.schedule_lookahead = ahead + Duration::from_secs(1);
    d.start_server_with(config).await?;
    d.create_app("app").await?;
    // Fires held for their instant take a slot each: room for all of them.
    let mut worker = d.worker_config("app", "w1");
    worker.capacity = 100;
    d.start_worker(worker, recording(starts)).await?;
    Ok(d)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fires_due_at_one_instant_are_handed_over_early_and_start_on_time() -> anyhow::Result<()> {
    const JOBS: usize = 50;
    let starts: Starts = Arc::default();
    let d = deployment(Duration::from_secs(2), starts.clone()).await?;
    let at_ms = instant_in(5);
    let mut job_ids = Vec::new();
    for n in 0..JOBS {
        let mut spec = shell_job("app", &format!("at-{n}"), "");
        spec.spec.processor = "record".into();
        spec.spec.schedule = Schedule::At { at_ms };
        job_ids.push(d.create_job(spec).await?.id);
    }

    // Before the instant, the fires already sit with the worker, acknowledged and waiting.
    let handed = wait::until(
        "a fire handed to the worker before its instant",
        Duration::from_secs(10),
        || async {
            let list = d.instances_of(job_ids[0]).await.ok()?;
            let now = rota_transport::wall_ms();
            list.into_iter()
                .find(|i| i.instance.status != InstanceStatus::WaitingDispatch)
                .map(|i| (i, now))
        },
    )
    .await;
    assert_eq!(
        handed.0.instance.status,
        InstanceStatus::WaitingWorkerReceive
    );
    assert!(
        handed.1 < at_ms,
        "the fire was handed over only {} ms after its instant",
        handed.1 - at_ms
    );

    // Every fire runs once, and none before its instant.
    let started = wait::until("every fire to start", Duration::from_secs(20), || async {
        let started = starts.lock().unwrap_or_else(|e| e.into_inner()).clone();
        (started.len() >= JOBS).then_some(started)
    })
    .await;
    assert_eq!(started.len(), JOBS, "a fire ran twice: {started:?}");
    for (instance, start) in &started {
        assert!(
            *start >= at_ms,
            "instance {instance} started {} ms before its instant",
            at_ms - start
        );
    }
    for job_id in &job_ids {
        let list = d.instances_of(*job_id).await?;
        assert_eq!(list.len(), 1, "job {job_id}: {list:?}");
        let done = d
            .wait_terminal(list[0].instance.id, Duration::from_secs(10))
            .await;
        assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
        assert!(
            done.instance.started_at_ms.is_some_and(|t| t >= at_ms),
            "RUNNING was stored before the instant: {done:?}"
        );
    }
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fire_handed_over_early_and_then_disabled_never_runs() -> anyhow::Result<()> {
    let starts: Starts = Arc::default();
    let d = deployment(Duration::from_secs(3), starts.clone()).await?;
    let at_ms = instant_in(5);
    let mut spec = shell_job("app", "at", "");
    spec.spec.processor = "record".into();
    spec.spec.schedule = Schedule::At { at_ms };
    let job = d.create_job(spec).await?;

    let handed = wait::until(
        "the fire to be handed to the worker",
        Duration::from_secs(10),
        || async {
            let list = d.instances_of(job.id).await.ok()?;
            list.into_iter()
                .find(|i| i.instance.status == InstanceStatus::WaitingWorkerReceive)
        },
    )
    .await;
    assert!(
        rota_transport::wall_ms() < at_ms - 500,
        "the fire was handed over too late to test a disable before its instant"
    );
    d.admin.call(&JobDisable(JobId { id: job.id })).await?;
    let cancelled = d.instance(handed.instance.id).await?;
    assert_eq!(
        cancelled.instance.status,
        InstanceStatus::Canceled,
        "{cancelled:?}"
    );
    assert_eq!(
        cancelled.instance.result.as_deref(),
        Some("job was disabled")
    );

    // The instant passes (the scenario itself: what must not happen is a run at the instant).
    wait::until(
        "the fire's instant to pass",
        Duration::from_secs(10),
        || async { (rota_transport::wall_ms() > at_ms + 1_000).then_some(()) },
    )
    .await;
    let started = starts.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(started.is_empty(), "a disabled fire ran: {started:?}");
    let after = d.instance(handed.instance.id).await?;
    assert_eq!(after.instance.status, InstanceStatus::Canceled, "{after:?}");
    d.shutdown().await;
    Ok(())
}
