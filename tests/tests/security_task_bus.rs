//! The attack suite, distributed execution: the subjects a master and its task workers use
//! (`rota.app.{app}.wrk.{wid}.task` and `.task_report`). A task call runs code, so it must come
//! from a worker of the app (sealed with the receiver's worker key, which only the app key
//! gives) naming itself as the master; a task report must name its sender; and a task call
//! cannot run a processor the worker was not allowed to offer.

use rota_shared::envelope::decode_reply;
use rota_shared::subject::WorkerEndpoint;
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::{InstanceId, InstanceShow, JobRun};
use rota_shared::task::{
    Execution, Task, TaskBatch, TaskBatchAck, TaskCall, TaskMap, TaskReport, TaskReportAck,
    TaskResult,
};
use rota_shared::{ErrorCode, Subjects};
use rota_tests::bus::{raw_request, server_credential};
use rota_tests::cluster::{Deployment, SECRET, shell_job};
use rota_worker::ProcessorRegistry;

/// The error code a reply carries (panics on a success: an attack must not succeed).
fn refusal(msg: &async_nats::Message) -> ErrorCode {
    match decode_reply::<serde_json::Value>(&msg.payload) {
        Ok(v) => panic!("the attack succeeded: {v}"),
        Err(e) => e.code,
    }
}

fn evil_tasks(master: &str, script: String) -> TaskCall {
    TaskCall::Run(Box::new(TaskBatch {
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
        container: None,
        tasks: vec![Task {
            id: 1,
            attempt: 1,
            name: "SHARD".into(),
            payload: String::new(),
            shard: None,
        }],
    }))
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

    // The control: the same call sealed by the master it names is taken, and its command runs.
    let control = dir.path().join("control");
    let payload = serde_json::to_vec(&evil_tasks("w3", format!("touch '{}'", control.display())))?;
    let reply = raw_request(&attacker, &subject, payload, Some(&w3), None).await?;
    let ack: TaskBatchAck = decode_reply(&reply.payload).expect("the control is taken");
    assert_eq!(ack.accepted, 1);
    rota_tests::wait::until(
        "the control task to run",
        Duration::from_secs(10),
        || async { control.exists().then_some(()) },
    )
    .await;
    // The refused calls came first, and none of them ran.
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
        seq: 1,
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_master_takes_nothing_from_a_worker_it_gave_no_task() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let mut registry = ProcessorRegistry::new();
    rota_worker::demo::register(&mut registry);
    d.start_worker(d.worker_config("app", "w1"), registry.clone())
        .await?;
    d.start_worker(d.worker_config("app", "w2"), registry)
        .await?;
    let mut job = shell_job("app", "squares", "sleep_ms=20");
    job.spec.processor = "demo-sum-squares".into();
    job.spec.execution = Execution::MapReduce;
    let job = d.create_job(job).await?;
    let n: u64 = 800;
    let id = d
        .admin
        .call(&JobRun {
            id: job.id,
            params: Some(n.to_string()),
            delay_ms: 0,
            idempotency_key: None,
        })
        .await?
        .instance_id;
    let master =
        rota_tests::wait::until("the instance's master", Duration::from_secs(20), || async {
            let info = d.admin.call(&InstanceShow(InstanceId { id })).await.ok()?;
            (info.instance.status == InstanceStatus::Running)
                .then_some(info.instance.worker_id)
                .flatten()
        })
        .await;
    let attacker = async_nats::connect(d.nats.url()).await?;
    let subject = Subjects::default().to_worker("app", &master, WorkerEndpoint::TaskReport);
    // "w-evil" holds the app key, so its seal verifies; it was given no task.
    let evil = server_credential("app", SECRET, &master, "w-evil")?;
    let forged = |seq, results: Vec<TaskResult>, maps: Vec<TaskMap>| TaskReport {
        worker_id: "w-evil".into(),
        instance_id: id,
        attempt: 1,
        seq,
        results,
        maps,
        logs: Vec::new(),
    };
    // Sub-tasks "emitted" by a task it does not run are refused.
    let maps = vec![TaskMap {
        parent: 1,
        parent_attempt: 1,
        name: "square".into(),
        payloads: vec!["1000000".into()],
    }];
    let payload = serde_json::to_vec(&forged(1, Vec::new(), maps))?;
    let reply = raw_request(&attacker, &subject, payload, Some(&evil), None).await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);
    // Results for tasks given to others change nothing.
    let results = (1..=n)
        .map(|task| TaskResult {
            id: task,
            attempt: 1,
            success: true,
            result: "0".into(),
        })
        .collect();
    let payload = serde_json::to_vec(&forged(2, results, Vec::new()))?;
    let reply = raw_request(&attacker, &subject, payload, Some(&evil), None).await?;
    let ack: TaskReportAck = decode_reply(&reply.payload).expect("an answer");
    assert!(!ack.stop);

    let info = d.wait_terminal(id, Duration::from_secs(60)).await;
    assert_eq!(info.instance.status, InstanceStatus::Succeeded, "{info:?}");
    let expected = n * (n + 1) * (2 * n + 1) / 6;
    assert_eq!(info.instance.result, Some(format!("sum={expected}")));
    let tasks = info.instance.tasks.expect("task counts");
    assert_eq!((tasks.total, tasks.succeeded), (n, n));
    assert!(
        tasks.workers.iter().all(|w| w.worker_id != "w-evil"),
        "{tasks:?}"
    );
    assert!(
        tasks.workers.iter().all(|w| w.succeeded > 0),
        "both workers took part: {tasks:?}"
    );
    Ok(())
}
