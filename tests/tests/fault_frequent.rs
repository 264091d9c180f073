//! A FIXED_RATE job at 100 ms runs as one long-lived instance, keeps running across the death
//! of its worker (reconcile starts it again on another), and stops at its lifecycle end.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::ServerStats;
use rota_shared::schedule::{Lifecycle, Schedule};
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_worker::{ProcessResult, ProcessorRegistry, processor_fn};

/// Counts runs per worker.
fn counting(counts: Arc<Mutex<HashMap<String, u64>>>) -> ProcessorRegistry {
    let mut registry = ProcessorRegistry::new();
    registry.register(
        "count",
        processor_fn(move |ctx| {
            let counts = counts.clone();
            async move {
                *counts
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(ctx.worker_id.clone())
                    .or_default() += 1;
                ProcessResult::ok("counted")
            }
        }),
    );
    registry
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frequent_job_outlives_its_worker_and_stops_at_lifecycle_end() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let counts = Arc::new(Mutex::new(HashMap::new()));
    d.start_worker(d.worker_config("app", "w1"), counting(counts.clone()))
        .await?;
    d.start_worker(d.worker_config("app", "w2"), counting(counts.clone()))
        .await?;
    let end_ms = rota_transport::wall_ms() + 14_000;
    let mut spec = shell_job("app", "every-100ms", "");
    spec.spec.processor = "count".into();
    spec.spec.schedule = Schedule::FixedRate { interval_ms: 100 };
    spec.spec.lifecycle = Lifecycle {
        start_ms: None,
        end_ms: Some(end_ms),
    };
    let job = d.create_job(spec).await?;

    // One instance runs on one worker and reports its runs.
    let first = wait::until(
        "the frequent instance to report runs",
        Duration::from_secs(10),
        || async {
            let list = d.instances_of(job.id).await.ok()?;
            list.into_iter()
                .find(|i| i.instance.status == InstanceStatus::Running && i.instance.runs >= 5)
        },
    )
    .await;
    let first_worker = first
        .instance
        .worker_id
        .clone()
        .expect("a running instance has a worker");
    assert_eq!(
        d.instances_of(job.id).await?.len(),
        1,
        "a frequent job runs as one instance"
    );

    // Its worker dies. Within the worker timeout and a reconcile interval the job runs again,
    // as a new instance on the other worker.
    d.abort_worker(&first_worker);
    let second = wait::until(
        "the job to run again elsewhere",
        Duration::from_secs(15),
        || async {
            let list = d.instances_of(job.id).await.ok()?;
            list.into_iter().find(|i| {
                i.instance.id != first.instance.id
                    && i.instance.status == InstanceStatus::Running
                    && i.instance.runs >= 5
            })
        },
    )
    .await;
    assert_ne!(
        second.instance.worker_id.as_deref(),
        Some(first_worker.as_str())
    );
    let lost = d.instance(first.instance.id).await?;
    assert_eq!(lost.instance.status, InstanceStatus::Failed);
    assert!(
        lost.instance
            .result
            .as_deref()
            .is_some_and(|r| r.contains("worker lost")),
        "{lost:?}"
    );

    // At its lifecycle end it stops, successfully, and nothing starts it again.
    let done = d
        .wait_terminal(second.instance.id, Duration::from_secs(25))
        .await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    let finished = done.instance.finished_at_ms.unwrap_or_default();
    assert!(
        finished >= end_ms && finished < end_ms + 5_000,
        "finished {} ms after the end",
        finished - end_ms
    );
    assert!(
        done.instance.runs >= 20,
        "only {} runs at 100 ms",
        done.instance.runs
    );
    let at_end = d.instances_of(job.id).await?.len();
    // Two more reconcile iterations after the end start nothing.
    let s1 = d.admin.at_server("s1");
    let before = reconcile_iterations(&s1).await?;
    wait::until(
        "two reconcile iterations",
        Duration::from_secs(10),
        || async { (reconcile_iterations(&s1).await.ok()? >= before + 2).then_some(()) },
    )
    .await;
    assert_eq!(d.instances_of(job.id).await?.len(), at_end);
    let ran_on: Vec<String> = counts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .keys()
        .cloned()
        .collect();
    assert_eq!(ran_on.len(), 2, "the processor ran on {ran_on:?}");

    let stats = s1.call(&ServerStats {}).await?;
    assert!(
        stats.repairs.get("worker_lost").is_some_and(|n| *n >= 1),
        "{:?}",
        stats.repairs
    );
    assert!(
        stats
            .repairs
            .get("frequent_started")
            .is_some_and(|n| *n >= 1),
        "{:?}",
        stats.repairs
    );
    d.shutdown().await;
    Ok(())
}

async fn reconcile_iterations(admin: &rota_client::AdminClient) -> anyhow::Result<u64> {
    let stats = admin.call(&ServerStats {}).await?;
    Ok(stats
        .services
        .iter()
        .find(|s| s.name == "reconcile")
        .map_or(0, |s| s.iterations))
}
