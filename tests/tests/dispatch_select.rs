//! DESIGN §5 end to end: which worker an instance is dispatched to. Only a live worker that has
//! the job's processor, all its tags and (when the job names workers) is named may run it; among
//! those, the job's strategy picks; and an instance no worker may run waits until one arrives.
//!
//! Where a test checks that a worker is *not* chosen, the job uses round robin: with two
//! eligible workers it alternates for certain, so a filter that let the wrong worker through
//! would be caught on the second run, not by chance. `attempt == 1` further shows that the
//! first worker asked took the instance, so no wrong worker was tried and refused it.

use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::{DispatchStrategy, InstanceInfo, JobCreate, WorkerList};
use rota_shared::message::WorkerSummary;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_worker::{ProcessResult, ProcessorRegistry, TaskContext, processor_fn};

/// How long one quick instance may take from run to final on a loaded machine.
const FINISH: Duration = Duration::from_secs(15);

/// Runs a job now and returns the new instance's id.
async fn run(d: &Deployment, job_id: i64) -> anyhow::Result<i64> {
    d.run(job_id).await
}

/// Runs a job `n` times at once and returns every instance once it is final.
async fn run_many(d: &Deployment, job_id: i64, n: usize) -> anyhow::Result<Vec<InstanceInfo>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(run(d, job_id).await?);
    }
    let mut done = Vec::with_capacity(n);
    for id in ids {
        done.push(d.wait_terminal(id, FINISH).await);
    }
    Ok(done)
}

/// The live workers of an app as the server sees them.
async fn workers(d: &Deployment, app: &str) -> anyhow::Result<Vec<WorkerSummary>> {
    Ok(d.admin
        .call(&WorkerList {
            app: Some(app.to_owned()),
            ..Default::default()
        })
        .await?
        .items)
}

/// Asserts that every instance succeeded on `worker` at its first dispatch.
fn assert_all_on(instances: &[InstanceInfo], worker: &str) {
    for i in instances {
        assert_eq!(i.instance.status, InstanceStatus::Succeeded, "{i:?}");
        assert_eq!(
            i.instance.worker_id.as_deref(),
            Some(worker),
            "instance {} ran on the wrong worker: {i:?}",
            i.instance.id
        );
        assert_eq!(
            i.instance.attempt, 1,
            "another worker was tried first: {i:?}"
        );
    }
}

/// A quick shell job that picks workers by round robin.
fn quick_job(app: &str, name: &str) -> JobCreate {
    let mut spec = shell_job(app, name, "echo ok");
    spec.spec.dispatch = DispatchStrategy::RoundRobin;
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_route_jobs_to_matching_workers() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let mut gpu = d.worker_config("app", "w-gpu");
    gpu.tags = vec!["gpu".to_owned()];
    d.start_worker(gpu, ProcessorRegistry::new()).await?;
    d.start_worker(d.worker_config("app", "w-cpu"), ProcessorRegistry::new())
        .await?;
    // Both are live and both can run shell, so only the tag can keep the job off w-cpu.
    let live = workers(&d, "app").await?;
    let tags: Vec<(&str, &[String])> = live
        .iter()
        .map(|w| (w.worker_id.as_str(), w.tags.as_slice()))
        .collect();
    assert_eq!(
        tags,
        vec![("w-cpu", &[][..]), ("w-gpu", &["gpu".to_owned()][..])]
    );
    assert!(
        live.iter()
            .all(|w| w.processors.iter().any(|p| p == "shell"))
    );

    let mut spec = quick_job("app", "needs-gpu");
    spec.spec.tags = vec!["gpu".to_owned()];
    let job = d.create_job(spec).await?;
    let done = run_many(&d, job.id, 5).await?;
    assert_all_on(&done, "w-gpu");

    // The same job without the tag does reach the untagged worker, which shows that w-cpu was
    // a real alternative above.
    let untagged = d.create_job(quick_job("app", "any")).await?;
    let done = run_many(&d, untagged.id, 2).await?;
    assert!(
        done.iter()
            .any(|i| i.instance.worker_id.as_deref() == Some("w-cpu")),
        "an untagged job never ran on w-cpu: {done:?}"
    );

    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn designated_workers_only() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    d.start_worker(d.worker_config("app", "w2"), ProcessorRegistry::new())
        .await?;

    let mut spec = quick_job("app", "only-w2");
    spec.spec.designated_workers = vec!["w2".to_owned()];
    let job = d.create_job(spec).await?;
    let done = run_many(&d, job.id, 5).await?;
    assert_all_on(&done, "w2");

    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_alternates() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    d.start_worker(d.worker_config("app", "w2"), ProcessorRegistry::new())
        .await?;
    let job = d.create_job(quick_job("app", "rr")).await?;

    // One at a time, so that each dispatch sees both workers idle and only the strategy
    // decides.
    let mut order = Vec::new();
    for _ in 0..6 {
        let id = run(&d, job.id).await?;
        let done = d.wait_terminal(id, FINISH).await;
        assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
        assert_eq!(
            done.instance.attempt, 1,
            "a worker refused the dispatch: {done:?}"
        );
        order.push(done.instance.worker_id.unwrap_or_default());
    }
    let on = |w: &str| order.iter().filter(|o| *o == w).count();
    assert_eq!((on("w1"), on("w2")), (3, 3), "runs per worker: {order:?}");
    assert!(
        order.windows(2).all(|p| p[0] != p[1]),
        "round robin did not alternate: {order:?}"
    );

    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_routing() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let mut registry = ProcessorRegistry::new();
    registry.register(
        "only-a",
        processor_fn(|_ctx: TaskContext| async { ProcessResult::ok("ran only-a") }),
    );
    let mut a = d.worker_config("app", "w-a");
    a.allow_shell = false;
    d.start_worker(a, registry).await?;
    d.start_worker(d.worker_config("app", "w-b"), ProcessorRegistry::new())
        .await?;
    let live = workers(&d, "app").await?;
    let offers = |id: &str, p: &str| {
        live.iter()
            .any(|w| w.worker_id == id && w.processors.iter().any(|x| x == p))
    };
    assert!(
        offers("w-a", "only-a") && !offers("w-a", "shell"),
        "{live:?}"
    );
    assert!(
        offers("w-b", "shell") && !offers("w-b", "only-a"),
        "{live:?}"
    );

    let mut spec = quick_job("app", "sdk");
    spec.spec.processor = "only-a".into();
    let job = d.create_job(spec).await?;
    let done = run_many(&d, job.id, 4).await?;
    assert_all_on(&done, "w-a");
    assert!(
        done.iter()
            .all(|i| i.instance.result.as_deref() == Some("ran only-a"))
    );

    // The other way round: shell is only on w-b.
    let shell = d.create_job(quick_job("app", "shell")).await?;
    let done = run_many(&d, shell.id, 4).await?;
    assert_all_on(&done, "w-b");

    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_worker_for_the_job_keeps_it_waiting_then_dispatches_when_one_arrives()
-> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w-plain"), ProcessorRegistry::new())
        .await?;
    let mut spec = quick_job("app", "late");
    spec.spec.tags = vec!["late".to_owned()];
    let late = d.create_job(spec).await?;
    let waiting = run(&d, late.id).await?;
    let created = d.instance(waiting).await?.instance.created_at_ms;

    // Meanwhile other work runs on the untagged worker: a job that takes 2.5 s. When it has
    // succeeded, the server has been dispatching all along and has looked at the waiting
    // instance again several times (a schedule pass every 200 ms, a dispatch retry every
    // second); it must still not have handed it to the untagged worker.
    let control = d
        .create_job(shell_job("app", "control", "sleep 2.5; echo done"))
        .await?;
    let control_id = run(&d, control.id).await?;
    let control_done = wait::until(
        "the control instance to finish while the tagged one keeps waiting",
        Duration::from_secs(20),
        || async {
            let w = d.instance(waiting).await.ok()?;
            assert!(
                w.instance.status == InstanceStatus::WaitingDispatch
                    && w.instance.attempt == 0
                    && w.instance.worker_id.is_none(),
                "the instance that no live worker may run left WAITING_DISPATCH: {w:?}"
            );
            d.instance(control_id)
                .await
                .ok()
                .filter(|c| c.instance.status.is_terminal())
        },
    )
    .await;
    assert_eq!(
        control_done.instance.status,
        InstanceStatus::Succeeded,
        "{control_done:?}"
    );
    assert_eq!(control_done.instance.worker_id.as_deref(), Some("w-plain"));
    let finished = control_done.instance.finished_at_ms.expect("finished");
    assert!(
        finished - created >= 2_500,
        "the window was only {} ms",
        finished - created
    );
    let live = workers(&d, "app").await?;
    assert!(
        live.iter().all(|w| w.tags.is_empty()) && !live.is_empty(),
        "only untagged workers are live: {live:?}"
    );
    let still = d.instance(waiting).await?;
    assert_eq!(
        still.instance.status,
        InstanceStatus::WaitingDispatch,
        "{still:?}"
    );

    // A worker with the tag arrives and gets the instance.
    let mut late_worker = d.worker_config("app", "w-late");
    late_worker.tags = vec!["late".to_owned()];
    d.start_worker(late_worker, ProcessorRegistry::new())
        .await?;
    let done = d.wait_terminal(waiting, FINISH).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    assert_eq!(
        done.instance.worker_id.as_deref(),
        Some("w-late"),
        "{done:?}"
    );
    assert_eq!(done.instance.attempt, 1, "{done:?}");
    assert_eq!(done.instance.runs, 1, "{done:?}");

    d.shutdown().await;
    Ok(())
}

/// A job whose processor no live worker offers: `job create` says so, and its instance fails
/// after `no_worker_timeout` with a reason that names the processor, instead of waiting forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_processor_is_warned_about_and_fails_with_its_name() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    let mut config = d.server_config("s1");
    config.no_worker_timeout = Duration::from_secs(2);
    d.start_server_with(config).await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let mut spec = shell_job("app", "typo", "");
    spec.spec.processor = "sehll".into();
    let job = d.create_job(spec).await?;
    assert_eq!(job.warnings.len(), 1, "{job:?}");
    assert!(
        job.warnings[0].contains("\"sehll\"") && job.warnings[0].contains("shell"),
        "{:?}",
        job.warnings
    );
    // A job whose processor is offered gets no warning.
    assert!(
        d.create_job(shell_job("app", "fine", "true"))
            .await?
            .warnings
            .is_empty()
    );
    let id = run(&d, job.id).await?;
    let done = d.wait_terminal(id, Duration::from_secs(15)).await;
    assert_eq!(done.instance.status, InstanceStatus::Failed, "{done:?}");
    let reason = done.instance.result.unwrap_or_default();
    assert!(reason.contains("\"sehll\""), "{reason}");
    d.shutdown().await;
    Ok(())
}
