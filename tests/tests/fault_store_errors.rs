//! A statement the database refuses is a bug, not an outage: the server answers it `INTERNAL`
//! (not `UNAVAILABLE`) and stays ready, and a worker stops sending what will never be stored
//! after a few tries, says so, and goes on working. The outage itself (`UNAVAILABLE`, retried for
//! as long as it lasts) is `fault_database.rs`.

use std::collections::HashMap;
use std::time::Duration;

use rota_shared::admin::{LogsGet, ServerStats};
use rota_shared::message::LogBatch;
use rota_shared::subject::ServerEndpoint;
use rota_shared::{ErrorCode, InstanceStatus};
use rota_tests::bus::Sniffer;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_worker::ProcessorRegistry;
use sea_orm::{ConnectionTrait, Database};

/// How often the worker sends a batch that meets an unclear answer (`INTERNAL`) before it gives
/// the batch up: the worker's documented retry policy for log batches.
const UNCLEAR_TRIES: usize = 5;

fn batch_of(msg: &async_nats::Message) -> Option<LogBatch> {
    serde_json::from_slice(&msg.payload).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_statement_is_internal_and_is_not_retried_for_ever() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let job = d
        .create_job(shell_job("app", "talk", "echo first-line"))
        .await?;
    let before = d.run(job.id).await?;
    d.wait_terminal(before, Duration::from_secs(15)).await;

    // The schema no longer matches what the server was built for: its log table is gone.
    let db = Database::connect(d.db.url()).await?;
    db.execute_unprepared("ALTER TABLE instance_log RENAME TO instance_log_away")
        .await?;

    // An admin read of the log is answered INTERNAL, and the server still says it is ready:
    // the database answers, it is the statement that fails.
    let err = d
        .admin
        .call(&LogsGet {
            instance_id: before,
            after_id: 0,
            limit: None,
        })
        .await
        .expect_err("the log table is gone");
    assert_eq!(err.code(), Some(ErrorCode::Internal), "{err}");
    let stats = d.admin.call(&ServerStats {}).await?;
    assert!(stats.ready, "a failing statement made the server not ready");

    // A run's log batch meets the same failure: the worker tries it a few times, then drops it
    // and tells the server how many lines it dropped; the run itself ends as it should.
    let nats = async_nats::connect(d.nats.url()).await?;
    let logs_subject = d
        .subjects()
        .to_server("app", d.server_id(), ServerEndpoint::Logs);
    let sniffer = Sniffer::start(&nats, &logs_subject).await?;
    let id = d.run(job.id).await?;
    let done = d.wait_terminal(id, Duration::from_secs(30)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    sniffer
        .wait_for(
            "the worker to tell the server it dropped the batch",
            Duration::from_secs(30),
            |m| batch_of(m).is_some_and(|b| b.lines.is_empty() && b.dropped >= 1),
        )
        .await;
    // Each batch of the run's lines (one, or two if the flusher ticked between them) was sent
    // exactly as often as the policy allows, and no more.
    let mut tries: HashMap<Vec<(i64, String)>, usize> = HashMap::new();
    for batch in sniffer.seen().iter().filter_map(batch_of) {
        let lines: Vec<(i64, String)> = batch
            .lines
            .iter()
            .filter(|l| l.instance_id == id)
            .map(|l| (l.ts_ms, l.text.clone()))
            .collect();
        if !lines.is_empty() {
            *tries.entry(lines).or_default() += 1;
        }
    }
    assert!(!tries.is_empty(), "no log batch of run {id} was seen");
    assert!(
        tries.values().all(|n| *n == UNCLEAR_TRIES),
        "a batch was not sent the {UNCLEAR_TRIES} times of the retry policy: {tries:?}"
    );

    // Once the schema is repaired, the same worker's next run is logged: it kept working.
    db.execute_unprepared("ALTER TABLE instance_log_away RENAME TO instance_log")
        .await?;
    let after = d.run(job.id).await?;
    d.wait_terminal(after, Duration::from_secs(15)).await;
    let lines = wait::until(
        "the run after the repair to be logged",
        Duration::from_secs(15),
        || async {
            let lines = d.logs(after).await.ok()?;
            lines
                .iter()
                .any(|l| l.text.contains("first-line"))
                .then_some(lines)
        },
    )
    .await;
    assert!(!lines.is_empty());
    // The dropped batch stays dropped: it is not sent again after the repair.
    let lost = d.logs(id).await?;
    assert!(
        !lost.iter().any(|l| l.text.contains("first-line")),
        "a given-up batch was stored after all: {lost:?}"
    );

    d.shutdown().await;
    Ok(())
}
