//! The attack suite, distributed execution: the subjects a master and its task workers use
//! (`rota.app.{app}.wrk.{wid}.task` and `.task_report`). A task call runs code, so it must come
//! from a worker of the app (sealed with the receiver's worker key, which only the app key
//! gives) naming itself as the master; a task report must name its sender; and a task call
//! cannot run a processor the worker was not allowed to offer.

use rota_shared::envelope::decode_reply;
use rota_shared::subject::WorkerEndpoint;
use rota_shared::task::{Task, TaskBatch, TaskCall, TaskReport, TaskReportAck, TaskResult};
use rota_shared::{ErrorCode, Subjects};
use rota_tests::bus::{raw_request, server_credential};
use rota_tests::cluster::{Deployment, SECRET};
use rota_worker::ProcessorRegistry;

/// The error code a reply carries (panics on a success: an attack must not succeed).
fn refusal(msg: &async_nats::Message) -> ErrorCode {
    match decode_reply::<serde_json::Value>(&msg.payload) {
        Ok(v) => panic!("the attack succeeded: {v}"),
        Err(e) => e.code,
    }
}

fn evil_tasks(master: &str, script: String) -> TaskCall {
    TaskCall::Run(TaskBatch {
        master: master.into(),
        instance_id: 999,
        attempt: 1,
        job_id: 1,
        job_name: "evil".into(),
        processor: "shell".into(),
        config: script,
        job_params: None,
        instance_params: None,
        task_timeout_ms: 0,
        map: false,
        tasks: vec![Task {
            id: 1,
            attempt: 1,
            name: "SHARD".into(),
            payload: String::new(),
            shard: None,
        }],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_call_not_sealed_by_the_master_it_names_runs_nothing() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    // The worker allows shell: a task call that got through would run any command.
    let worker = d
        .start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("pwned");
    let script = format!("touch '{}'", marker.display());
    let attacker = async_nats::connect(d.nats.url()).await?;
    let subject = Subjects::default().to_worker("app", &worker, WorkerEndpoint::Task);
    let payload = serde_json::to_vec(&evil_tasks("w2", script.clone()))?;

    // Unsealed.
    let reply = raw_request(&attacker, &subject, payload.clone(), None, None).await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);
    // Sealed with a key from a guessed secret.
    let guessed = server_credential("app", "not-the-secret", &worker, "w2")?;
    let reply = raw_request(&attacker, &subject, payload.clone(), Some(&guessed), None).await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);
    // Sealed by one worker of the app, naming another as the master.
    let w3 = server_credential("app", SECRET, &worker, "w3")?;
    let reply = raw_request(&attacker, &subject, payload, Some(&w3), None).await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);

    // The worker took none of them: a task it takes starts before the answer is sent.
    assert!(!marker.exists(), "a refused task call ran its command");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_call_cannot_run_a_processor_the_worker_does_not_offer() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let mut config = d.worker_config("app", "w1");
    config.allow_shell = false;
    let worker = d.start_worker(config, ProcessorRegistry::new()).await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("pwned");
    let attacker = async_nats::connect(d.nats.url()).await?;
    let subject = Subjects::default().to_worker("app", &worker, WorkerEndpoint::Task);
    // Properly sealed by a worker of the app: the worker's allow-list still decides.
    let w2 = server_credential("app", SECRET, &worker, "w2")?;
    let payload = serde_json::to_vec(&evil_tasks("w2", format!("touch '{}'", marker.display())))?;
    let reply = raw_request(&attacker, &subject, payload, Some(&w2), None).await?;
    assert_eq!(refusal(&reply), ErrorCode::Rejected);
    assert!(!marker.exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_report_must_name_its_sender_and_an_attempt_the_worker_masters() -> anyhow::Result<()>
{
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let worker = d
        .start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let attacker = async_nats::connect(d.nats.url()).await?;
    let subject = Subjects::default().to_worker("app", &worker, WorkerEndpoint::TaskReport);
    let report = |worker_id: &str| TaskReport {
        worker_id: worker_id.into(),
        instance_id: 999,
        attempt: 1,
        results: vec![TaskResult {
            id: 1,
            attempt: 1,
            success: true,
            result: "forged".into(),
        }],
        maps: Vec::new(),
        logs: Vec::new(),
    };
    // Unsealed, and sealed by one worker naming another.
    let payload = serde_json::to_vec(&report("w2"))?;
    let reply = raw_request(&attacker, &subject, payload, None, None).await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);
    let w3 = server_credential("app", SECRET, &worker, "w3")?;
    let payload = serde_json::to_vec(&report("w2"))?;
    let reply = raw_request(&attacker, &subject, payload, Some(&w3), None).await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);
    // A well-sealed report about an attempt this worker is not the master of is told that the
    // attempt is over, and changes nothing.
    let payload = serde_json::to_vec(&report("w3"))?;
    let reply = raw_request(&attacker, &subject, payload, Some(&w3), None).await?;
    let ack: TaskReportAck = decode_reply(&reply.payload).expect("an answer");
    assert!(ack.stop);
    Ok(())
}
