//! DESIGN §3 fencing under a forced split brain: two servers both believe they own one app for
//! several seconds, both schedule its CRON job and both dispatch. Still no fire time has two
//! instances, no instance runs twice, and reports from anything but an instance's current
//! tracker change nothing, on either server.

use std::collections::HashSet;
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::{JobDisable, JobId};
use rota_shared::message::{ReportAck, StatusReport};
use rota_shared::schedule::Schedule;
use rota_shared::subject::ServerEndpoint;
use rota_tests::bus::WorkerVoice;
use rota_tests::cluster::{Deployment, SECRET, shell_job};
use rota_tests::wait;
use rota_worker::ProcessorRegistry;
use sea_orm::{ConnectionTrait, Database};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_owners_never_double_fire_or_apply_stray_reports() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    // s1 never re-reads its ownerships (neither its schedule loop nor its reconcile loop, which
    // checks at the start of each iteration): once it owns the app it keeps believing so.
    let mut stubborn = d.server_config("s1");
    stubborn.ownership_refresh = Duration::from_secs(3600);
    stubborn.reconcile_interval = Duration::from_secs(3600);
    d.start_server_with(stubborn).await?;
    let app = d.create_app("app").await?;
    // w1 stays with the server it found first.
    let mut w1 = d.worker_config("app", "w1");
    w1.reacquire_interval = Duration::from_secs(3600);
    d.start_worker(w1, ProcessorRegistry::new()).await?;

    // s2 joins, and the database is changed under s1's feet: s2 now owns the app, s1 still
    // believes it does.
    d.start_server("s2").await?;
    let db = Database::connect(d.db.url()).await?;
    let moved = db
        .execute_unprepared(&format!(
            "UPDATE app SET current_server = 's2', epoch = epoch + 1 WHERE id = {}",
            app.id
        ))
        .await?;
    assert_eq!(moved.rows_affected(), 1);
    // A worker that starts now is sent to s2.
    d.start_worker(d.worker_config("app", "w2"), ProcessorRegistry::new())
        .await?;

    let mut spec = shell_job("app", "tick", "echo tick");
    spec.spec.schedule = Schedule::Cron {
        expression: "* * * * * *".into(),
        time_zone: None,
    };
    let job = d.create_job(spec).await?;
    // Both servers dispatch: each to the worker that heartbeats to it.
    let seen = wait::until(
        "both servers to dispatch fires",
        Duration::from_secs(20),
        || async {
            let list = d.instances_of(job.id).await.ok()?;
            let workers: HashSet<String> = list
                .iter()
                .filter(|i| i.instance.status == InstanceStatus::Succeeded)
                .filter_map(|i| i.instance.worker_id.clone())
                .collect();
            (workers.len() == 2 && list.len() >= 6).then_some(list)
        },
    )
    .await;
    assert!(seen.len() >= 6);

    // A long run, and forged reports about it sent to both servers while it runs.
    let long = d
        .create_job(shell_job("app", "long", "sleep 2; echo long-done"))
        .await?;
    let id = d.run(long.id).await?;
    let running = d
        .wait_status(id, InstanceStatus::Running, Duration::from_secs(10))
        .await;
    let tracker = running
        .instance
        .worker_id
        .clone()
        .expect("a running instance has a tracker");
    let other = if tracker == "w1" { "w2" } else { "w1" };
    let nats = async_nats::connect(d.nats.url()).await?;
    // Both workers hold the app's keys, so their reports pass authentication: what fences
    // them off here is the rules (another tracker, another attempt).
    for server in ["s1", "s2"] {
        for (attempt, worker) in [
            (running.instance.attempt, other),
            (running.instance.attempt + 1, tracker.as_str()),
        ] {
            let voice = WorkerVoice::new(nats.clone(), "app", worker, SECRET)?;
            let forged = StatusReport {
                instance_id: id,
                attempt,
                seq: 1_000_000,
                worker_id: worker.to_owned(),
                status: InstanceStatus::Failed,
                result: Some("forged".into()),
                runs: None,
                alert: false,
                reported_at_ms: 0,
                started_at_ms: None,
                tasks: None,
            };
            voice
                .request::<_, ReportAck>(server, ServerEndpoint::Status, &forged)
                .await?;
        }
    }
    let done = d.wait_terminal(id, Duration::from_secs(15)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    assert_eq!(done.instance.result.as_deref(), Some("long-done"));
    assert_eq!(
        (done.instance.attempt, done.instance.runs),
        (running.instance.attempt, 1)
    );

    d.admin.call(&JobDisable(JobId { id: job.id })).await?;
    let all = wait::until("every fire to finish", Duration::from_secs(15), || async {
        let list = d.instances_of(job.id).await.ok()?;
        list.iter()
            .all(|i| i.instance.status.is_terminal())
            .then_some(list)
    })
    .await;
    let fires: HashSet<Option<i64>> = all
        .iter()
        .map(|i| i.instance.expected_trigger_time_ms)
        .collect();
    assert_eq!(
        fires.len(),
        all.len(),
        "a fire time has two instances: {all:#?}"
    );
    for i in &all {
        // Ran at most once, and only one attempt was ever made.
        assert!(i.instance.runs <= 1 && i.instance.attempt <= 1, "{i:?}");
        assert!(
            i.instance.status == InstanceStatus::Succeeded
                || (i.instance.status == InstanceStatus::Canceled
                    && i.instance.result.as_deref() == Some("job was disabled")),
            "{i:?}"
        );
    }
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lost_an_app_answers_not_owner() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    let app = d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    d.start_server("s2").await?;
    let nats = async_nats::connect(d.nats.url()).await?;
    let voice = WorkerVoice::new(nats.clone(), "app", "w1", SECRET)?;
    let cluster = |server: &'static str| {
        let voice = &voice;
        async move {
            let query = rota_shared::message::ClusterQuery { job_id: None };
            match voice
                .request::<_, rota_shared::message::ClusterReply>(
                    server,
                    ServerEndpoint::Cluster,
                    &query,
                )
                .await
            {
                Ok(reply) => Some(Ok(reply)),
                Err(e) => e.code().map(Err),
            }
        }
    };
    // s1 owns the app: it answers with its workers.
    let workers = cluster("s1")
        .await
        .expect("s1 answers")
        .map_err(|code| anyhow::anyhow!("s1 refused: {code}"))?;
    assert_eq!(workers.workers.len(), 1);

    let db = Database::connect(d.db.url()).await?;
    db.execute_unprepared(&format!(
        "UPDATE app SET current_server = 's2', epoch = epoch + 1 WHERE id = {}",
        app.id
    ))
    .await?;
    // Within its ownership re-read interval, s1 lets go of the app.
    wait::until("s1 to answer NOT_OWNER", Duration::from_secs(5), || async {
        matches!(
            cluster("s1").await,
            Some(Err(rota_shared::ErrorCode::NotOwner))
        )
        .then_some(())
    })
    .await;
    // A report about one of the app's instances sent to s1 is refused the same way, so the
    // worker re-acquires and sends it to s2.
    let job = d.create_job(shell_job("app", "j", "true")).await?;
    let id = d.run(job.id).await?;
    d.wait_terminal(id, Duration::from_secs(15)).await;
    let report = StatusReport {
        instance_id: id,
        attempt: 1,
        seq: 99,
        worker_id: "w1".into(),
        status: InstanceStatus::Failed,
        result: None,
        runs: None,
        alert: false,
        reported_at_ms: 0,
        started_at_ms: None,
        tasks: None,
    };
    let refused = voice
        .request::<_, ReportAck>("s1", ServerEndpoint::Status, &report)
        .await
        .map_err(|e| e.code());
    assert_eq!(refused, Err(Some(rota_shared::ErrorCode::NotOwner)));
    d.shutdown().await;
    Ok(())
}
