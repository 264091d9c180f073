//! TEMPORARY smoke test against a real nats-server and a fake Rota server. Not to be committed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use rota_shared::message::*;
use rota_shared::{ErrorBody, ErrorCode, InstanceStatus, Reply};
use rota_worker::*;

struct Fake {
    reports: Mutex<Vec<(String, StatusReport)>>,
    logs: Mutex<Vec<(String, LogLine)>>,
    heartbeats: Mutex<Vec<(String, WorkerHeartbeat)>>,
    owner: Mutex<String>,
    stop_running_of: Mutex<Option<i64>>,
    headers_ok: Mutex<bool>,
}

async fn fake_server(client: async_nats::Client, fake: Arc<Fake>) {
    let mut acq = client.subscribe("rota.discovery.acquire").await.unwrap();
    let mut srv = client.subscribe("rota.srv.*.>").await.unwrap();
    loop {
        tokio::select! {
            Some(msg) = acq.next() => {
                let req: AcquireRequest = serde_json::from_slice(&msg.payload).unwrap();
                let body = if req.secret != "good" {
                    Reply::<()>::err(ErrorBody::new(ErrorCode::Unauthorized, "wrong secret")).to_bytes()
                } else if req.app != "demo" {
                    Reply::<()>::err(ErrorBody::not_found("no app")).to_bytes()
                } else {
                    let sid = fake.owner.lock().unwrap().clone();
                    Reply::ok(AcquireReply { server_id: sid, app_id: 1, epoch: 1 }).to_bytes()
                };
                client.publish(msg.reply.unwrap(), body.into()).await.unwrap();
            }
            Some(msg) = srv.next() => {
                let parts: Vec<&str> = msg.subject.split('.').collect();
                let sid = parts[2].to_owned();
                let endpoint = parts[3];
                if msg.headers.as_ref().and_then(|h| h.get("Rota-Protocol")).map(|v| v.as_str().to_owned()) != Some("1".to_owned()) {
                    *fake.headers_ok.lock().unwrap() = false;
                }
                let owner = fake.owner.lock().unwrap().clone();
                match endpoint {
                    "heartbeat" => {
                        let hb: WorkerHeartbeat = serde_json::from_slice(&msg.payload).unwrap();
                        fake.heartbeats.lock().unwrap().push((sid, hb));
                    }
                    "status" => {
                        let r: StatusReport = serde_json::from_slice(&msg.payload).unwrap();
                        if sid != owner {
                            if let Some(reply) = msg.reply {
                                client.publish(reply, Reply::<()>::err(ErrorBody::new(ErrorCode::NotOwner, "not me")).to_bytes().into()).await.unwrap();
                            }
                            continue;
                        }
                        let stop = *fake.stop_running_of.lock().unwrap() == Some(r.instance_id) && r.status == InstanceStatus::Running;
                        fake.reports.lock().unwrap().push((sid, r));
                        if let Some(reply) = msg.reply {
                            let action = if stop { ReportAction::Stop } else { ReportAction::Continue };
                            client.publish(reply, Reply::ok(ReportAck { action }).to_bytes().into()).await.unwrap();
                        }
                    }
                    "logs" => {
                        let b: LogBatch = serde_json::from_slice(&msg.payload).unwrap();
                        let n = b.lines.len() as u64;
                        for l in b.lines { fake.logs.lock().unwrap().push((sid.clone(), l)); }
                        client.publish(msg.reply.unwrap(), Reply::ok(LogAck { stored: n }).to_bytes().into()).await.unwrap();
                    }
                    _ => {}
                }
            }
        }
    }
}

async fn request(client: &async_nats::Client, subject: String, body: String) -> serde_json::Value {
    let msg = client.request(subject, body.into()).await.unwrap();
    serde_json::from_slice(&msg.payload).unwrap()
}

fn dispatch(_wid: &str, id: i64, processor: &str, config: &str, timeout_ms: u64) -> String {
    serde_json::to_string(&DispatchRequest {
        server_id: "s1".into(),
        app_id: 1,
        job_id: 1,
        job_name: "j".into(),
        instance_id: id,
        attempt: 1,
        processor: processor.into(),
        config: config.into(),
        job_params: None,
        instance_params: None,
        timeout_ms,
        expected_trigger_time_ms: None,
    })
    .unwrap()
}

async fn terminal(fake: &Fake, id: i64) -> StatusReport {
    for _ in 0..200 {
        if let Some((_, r)) = fake
            .reports
            .lock()
            .unwrap()
            .iter()
            .find(|(_, r)| r.instance_id == id && r.status.is_terminal())
        {
            return r.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no terminal report for {id}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke() {
    let _ = tracing_subscriber_init();
    let port = 14222 + (std::process::id() % 1000) as u16;
    let mut nats = tokio::process::Command::new("nats-server")
        .args(["-p", &port.to_string(), "-a", "127.0.0.1"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let url = format!("nats://127.0.0.1:{port}");
    let client = async_nats::connect(&url).await.unwrap();
    let fake = Arc::new(Fake {
        reports: Mutex::default(),
        logs: Mutex::default(),
        heartbeats: Mutex::default(),
        owner: Mutex::new("s1".into()),
        stop_running_of: Mutex::default(),
        headers_ok: Mutex::new(true),
    });
    tokio::spawn(fake_server(client.clone(), Arc::clone(&fake)));
    client.flush().await.unwrap();

    let base = WorkerConfig {
        nats_url: url.clone(),
        app: "demo".into(),
        secret: "good".into(),
        allow_shell: true,
        kill_grace: Duration::from_millis(300),
        progress_interval: Duration::from_millis(200),
        log_flush_interval: Duration::from_millis(200),
        reacquire_interval: Duration::from_secs(30),
        shutdown_grace: Duration::from_millis(800),
        ..WorkerConfig::default()
    };

    // Wrong secret, unknown app, unreachable NATS.
    let e = Worker::start(
        WorkerConfig {
            secret: "bad".into(),
            ..base.clone()
        },
        ProcessorRegistry::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            WorkerError::Acquire {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{e}"
    );
    let e = Worker::start(
        WorkerConfig {
            app: "nope".into(),
            ..base.clone()
        },
        ProcessorRegistry::new(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            e,
            WorkerError::Acquire {
                code: ErrorCode::NotFound,
                ..
            }
        ),
        "{e}"
    );
    let e = Worker::start(
        WorkerConfig {
            nats_url: "nats://127.0.0.1:1".into(),
            ..base.clone()
        },
        ProcessorRegistry::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, WorkerError::Connect(_)), "{e}");
    println!("errors: ok ({e})");

    let mut registry = ProcessorRegistry::new();
    registry.register(
        "boom",
        processor_fn(|_ctx: TaskContext| async move {
            if true {
                panic!("deliberate");
            }
            ProcessResult::ok("")
        }),
    );
    registry.register(
        "slow",
        processor_fn(|ctx: TaskContext| async move {
            ctx.info("slow start");
            ctx.cancellation().cancelled().await;
            ProcessResult::ok("ended")
        }),
    );
    let worker = Worker::start(base.clone(), registry).await.unwrap();
    let wid = worker.worker_id().to_owned();
    assert_eq!(worker.server_id(), "s1");
    tokio::time::sleep(Duration::from_millis(100)).await;
    {
        let hbs = fake.heartbeats.lock().unwrap();
        assert!(!hbs.is_empty(), "first heartbeat");
        assert_eq!(hbs[0].1.processors, vec!["boom", "http", "shell", "slow"]);
        println!("heartbeat: {:?}", hbs[0].1);
    }
    let dsub = format!("rota.wrk.{wid}.dispatch");

    // Success + dedupe + logs before terminal.
    let v = request(
        &client,
        dsub.clone(),
        dispatch(&wid, 1, "shell", "echo hi; echo err >&2; echo bye", 0),
    )
    .await;
    assert_eq!(v["data"]["accepted"], true, "{v}");
    let v = request(
        &client,
        dsub.clone(),
        dispatch(&wid, 1, "shell", "echo hi", 0),
    )
    .await;
    assert_eq!(v["data"]["accepted"], false, "{v}");
    let r = terminal(&fake, 1).await;
    assert_eq!(
        (r.status, r.result.as_deref()),
        (InstanceStatus::Succeeded, Some("bye"))
    );
    let logs: Vec<String> = fake
        .logs
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, l)| l.instance_id == 1)
        .map(|(_, l)| l.text.clone())
        .collect();
    assert!(
        logs.contains(&"hi".to_owned())
            && logs.contains(&"err".to_owned())
            && logs.contains(&"bye".to_owned()),
        "{logs:?}"
    );
    let seqs: Vec<i64> = fake
        .reports
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, r)| r.instance_id == 1)
        .map(|(_, r)| r.seq)
        .collect();
    assert_eq!(seqs[0], 1);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    println!("success: ok");

    // Rejections.
    let v = request(&client, dsub.clone(), dispatch(&wid, 2, "nope", "", 0)).await;
    assert_eq!(v["error"]["code"], "REJECTED", "{v}");
    assert_eq!(v["error"]["message"], "unknown processor nope");
    let v = request(&client, dsub.clone(), "{garbage".into()).await;
    assert_eq!(v["error"]["code"], "BAD_REQUEST", "{v}");
    let v = request(
        &client,
        format!("rota.wrk.{wid}.query"),
        r#"{"instance_id":99}"#.into(),
    )
    .await;
    assert_eq!(v["error"]["code"], "NOT_FOUND", "{v}");
    println!("rejections: ok");

    // Timeout.
    let v = request(
        &client,
        dsub.clone(),
        dispatch(&wid, 3, "shell", "echo start; sleep 30", 300),
    )
    .await;
    assert_eq!(v["data"]["accepted"], true);
    let r = terminal(&fake, 3).await;
    assert_eq!(
        (r.status, r.result.as_deref()),
        (InstanceStatus::Failed, Some("timeout: exceeded 300 ms"))
    );
    println!("timeout: ok");

    // Stop + query.
    request(&client, dsub.clone(), dispatch(&wid, 4, "slow", "", 0)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = request(
        &client,
        format!("rota.wrk.{wid}.query"),
        r#"{"instance_id":4}"#.into(),
    )
    .await;
    assert_eq!(v["data"]["status"], "RUNNING", "{v}");
    assert!(
        v["data"]["last_seq"].as_i64().unwrap() >= 2,
        "progress reports: {v}"
    );
    let v = request(
        &client,
        format!("rota.wrk.{wid}.stop"),
        r#"{"instance_id":4}"#.into(),
    )
    .await;
    assert_eq!(v["data"]["was_running"], true, "{v}");
    let r = terminal(&fake, 4).await;
    assert_eq!(
        (r.status, r.result.as_deref()),
        (InstanceStatus::Stopped, Some("stopped"))
    );
    println!("stop/query: ok");

    // Panic.
    request(&client, dsub.clone(), dispatch(&wid, 5, "boom", "", 0)).await;
    let r = terminal(&fake, 5).await;
    assert_eq!(
        (r.status, r.result.as_deref()),
        (InstanceStatus::Failed, Some("processor panicked"))
    );
    println!("panic: ok");

    // Server says stop in answer to progress.
    *fake.stop_running_of.lock().unwrap() = Some(6);
    request(&client, dsub.clone(), dispatch(&wid, 6, "slow", "", 0)).await;
    let r = terminal(&fake, 6).await;
    assert_eq!(
        (r.status, r.result.as_deref()),
        (InstanceStatus::Stopped, Some("stopped by server"))
    );
    println!("server stop: ok");

    // Owner moves: s1 answers NOT_OWNER; the terminal report must reach s2.
    request(
        &client,
        dsub.clone(),
        dispatch(&wid, 7, "shell", "sleep 0.5; echo moved", 0),
    )
    .await;
    *fake.owner.lock().unwrap() = "s2".into();
    let r = terminal(&fake, 7).await;
    assert_eq!(r.result.as_deref(), Some("moved"));
    let sid = fake
        .reports
        .lock()
        .unwrap()
        .iter()
        .find(|(_, r)| r.instance_id == 7 && r.status.is_terminal())
        .unwrap()
        .0
        .clone();
    assert_eq!(sid, "s2");
    assert_eq!(worker.server_id(), "s2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        fake.heartbeats
            .lock()
            .unwrap()
            .iter()
            .any(|(s, _)| s == "s2"),
        "heartbeat to the new owner"
    );
    println!("move: ok");

    // Graceful shutdown with a running instance.
    request(
        &client,
        dsub.clone(),
        dispatch(&wid, 8, "shell", "sleep 30", 0),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shut = tokio::spawn(worker.shutdown());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let v = request(&client, dsub.clone(), dispatch(&wid, 9, "shell", "true", 0)).await;
    assert_eq!(v["error"]["message"], "shutting down", "{v}");
    tokio::time::timeout(Duration::from_secs(20), shut)
        .await
        .unwrap()
        .unwrap();
    let r = terminal(&fake, 8).await;
    assert_eq!(
        (r.status, r.result.as_deref()),
        (InstanceStatus::Failed, Some("worker shutting down"))
    );
    let e = client
        .request(dsub.clone(), dispatch(&wid, 10, "shell", "true", 0).into())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), async_nats::RequestErrorKind::NoResponders);
    assert!(*fake.headers_ok.lock().unwrap());
    println!("shutdown: ok");

    // Overflow: a small buffer drops and counts.
    let worker = Worker::start(WorkerConfig { log_buffer_lines: 100, log_batch_lines: 50, ..base.clone() }, ProcessorRegistry::new()).await.unwrap();
    let wid3 = worker.worker_id().to_owned();
    request(&client, format!("rota.wrk.{wid3}.dispatch"), dispatch(&wid3, 20, "shell", "seq 1 20000", 0)).await;
    let r = terminal(&fake, 20).await;
    assert_eq!(r.result.as_deref(), Some("20000"));
    let stored = fake.logs.lock().unwrap().iter().filter(|(_, l)| l.instance_id == 20).count();
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.shutdown().await;
    println!("overflow: stored {stored} of 20000");
    assert!(stored < 20000 && stored >= 100);

    // Abort.
    let worker = Worker::start(base.clone(), ProcessorRegistry::new())
        .await
        .unwrap();
    let wid2 = worker.worker_id().to_owned();
    worker.abort();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let e = client
        .request(format!("rota.wrk.{wid2}.dispatch"), "{}".into())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), async_nats::RequestErrorKind::NoResponders);
    println!("abort: ok");
    nats.kill().await.ok();
}

fn tracing_subscriber_init() -> Option<()> {
    None
}
