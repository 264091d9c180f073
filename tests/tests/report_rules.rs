//! DESIGN §4 end to end: status reports sent by hand, as a confused or malicious worker of the
//! app would send them (with the app's keys, so they pass authentication), change nothing unless
//! they come from the instance's current tracker, for its current attempt, in sequence, before
//! the instance is terminal. (Reports without the keys are the attack suite's.)

use std::time::Duration;

use rota_shared::admin::InstanceInfo;
use rota_shared::message::{ReportAck, ReportAction, StatusReport};
use rota_shared::subject::ServerEndpoint;
use rota_shared::{ErrorBody, InstanceStatus};
use rota_tests::bus::WorkerVoice;
use rota_tests::cluster::{Deployment, SECRET, hold_registry, shell_job};

/// What an unchanged instance must keep. `last_seq` is not exposed and moves with the real
/// worker's progress reports, which is fine: those come from the current tracker.
fn essence(
    i: &InstanceInfo,
) -> (
    InstanceStatus,
    i32,
    i64,
    Option<String>,
    Option<String>,
    Option<i64>,
) {
    (
        i.instance.status,
        i.instance.attempt,
        i.instance.runs,
        i.instance.worker_id.clone(),
        i.instance.result.clone(),
        i.instance.finished_at_ms,
    )
}

/// Sends a report as the worker it names, to `server`.
async fn send(
    nats: &async_nats::Client,
    server: &str,
    report: &StatusReport,
) -> anyhow::Result<Result<ReportAck, ErrorBody>> {
    let voice = WorkerVoice::new(nats.clone(), "app", &report.worker_id, SECRET)?;
    match voice.request(server, ServerEndpoint::Status, report).await {
        Ok(ack) => Ok(Ok(ack)),
        Err(e) => match e.remote() {
            Some(body) => Ok(Err(body.clone())),
            None => Err(e.into()),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_out_of_turn_change_nothing() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    // A processor that runs until the test releases it, so the instance stays RUNNING while
    // the forged reports arrive.
    let (registry, release) = hold_registry();
    let worker = d
        .start_worker(d.worker_config("app", "w1"), registry)
        .await?;
    let mut spec = shell_job("app", "hold", "");
    spec.spec.processor = "hold".into();
    let job = d.create_job(spec).await?;
    let id = d.run(job.id).await?;
    let running = d
        .wait_status(id, InstanceStatus::Running, Duration::from_secs(10))
        .await;
    assert_eq!(running.instance.worker_id.as_deref(), Some(worker.as_str()));
    let attempt = running.instance.attempt;
    let before = essence(&running);

    let nats = async_nats::connect(d.nats.url()).await?;
    let subject = d.server_id().to_owned();
    let forged = |attempt: i32, seq: i64, worker_id: &str, status: InstanceStatus| StatusReport {
        instance_id: id,
        attempt,
        seq,
        worker_id: worker_id.to_owned(),
        status,
        result: Some("forged".into()),
        runs: None,
        alert: false,
        reported_at_ms: 0,
        started_at_ms: None,
        tasks: None,
    };

    // Stale: the tracker's first report (seq 1) was applied when the instance became RUNNING.
    let ack = send(
        &nats,
        &subject,
        &forged(attempt, 1, &worker, InstanceStatus::Succeeded),
    )
    .await??;
    assert_eq!(ack.action, ReportAction::Continue);
    assert_eq!(
        essence(&d.instance(id).await?),
        before,
        "a stale report changed the instance"
    );

    // Another worker, with a sequence number far ahead.
    let ack = send(
        &nats,
        &subject,
        &forged(attempt, 1_000_000, "w-impostor", InstanceStatus::Succeeded),
    )
    .await??;
    assert_eq!(ack.action, ReportAction::Continue);
    let ack = send(
        &nats,
        &subject,
        &forged(attempt, 1_000_001, "w-impostor", InstanceStatus::Running),
    )
    .await??;
    assert_eq!(
        ack.action,
        ReportAction::Stop,
        "a stray tracker is told to stop"
    );
    assert_eq!(
        essence(&d.instance(id).await?),
        before,
        "a report from another worker changed the instance"
    );

    // The right worker, but another attempt (an older and a future one).
    for other in [attempt - 1, attempt + 1] {
        let ack = send(
            &nats,
            &subject,
            &forged(other, 1_000_000, &worker, InstanceStatus::Failed),
        )
        .await??;
        assert_eq!(ack.action, ReportAction::Continue);
        assert_eq!(
            essence(&d.instance(id).await?),
            before,
            "a report for attempt {other} changed the instance"
        );
    }

    // The instance is unaffected by all of that: released, it ends as its real tracker says.
    release.notify_one();
    let done = d.wait_terminal(id, Duration::from_secs(10)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded);
    assert_eq!(done.instance.result.as_deref(), Some("released"));
    assert_eq!(done.instance.runs, 1);
    let after = essence(&done);

    // Terminal is final, even for the right tracker and attempt.
    let ack = send(
        &nats,
        &subject,
        &forged(attempt, 2_000_000, &worker, InstanceStatus::Failed),
    )
    .await??;
    assert_eq!(ack.action, ReportAction::Continue);
    let ack = send(
        &nats,
        &subject,
        &forged(attempt, 2_000_001, &worker, InstanceStatus::Running),
    )
    .await??;
    assert_eq!(
        ack.action,
        ReportAction::Stop,
        "a RUNNING report for a terminal instance is told to stop"
    );
    assert_eq!(
        essence(&d.instance(id).await?),
        after,
        "a report after terminal changed the instance"
    );

    // A report about an instance that does not exist is acknowledged and changes nothing.
    let mut unknown = forged(1, 1, &worker, InstanceStatus::Succeeded);
    unknown.instance_id = id + 1_000_000;
    let ack = send(&nats, &subject, &unknown).await??;
    assert_eq!(ack.action, ReportAction::Continue);

    d.shutdown().await;
    Ok(())
}
