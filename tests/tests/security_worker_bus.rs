//! The attack suite, part 1: an attacker with nothing but a connection to an open NATS (no
//! permissions configured) and a NATS client of its own, against the subjects between servers
//! and workers. Every attack is refused, and the instance, the worker and the database stay as
//! they were.

use std::time::Duration;

use rota_shared::envelope::decode_reply;
use rota_shared::message::{
    DispatchRequest, LogAck, LogBatch, LogLevel, LogLine, ReportAck, StatusReport, SystemMetrics,
    WorkerHeartbeat,
};
use rota_shared::subject::ServerEndpoint;
use rota_shared::{ErrorCode, InstanceStatus, Subjects};
use rota_tests::bus::{Sniffer, WorkerVoice, raw_request, server_credential};
use rota_tests::cluster::{Deployment, SECRET, hold_registry, shell_job};
use rota_worker::ProcessorRegistry;

/// The error code a reply carries (panics on a success: an attack must not succeed).
fn refusal(msg: &async_nats::Message) -> ErrorCode {
    match decode_reply::<serde_json::Value>(&msg.payload) {
        Ok(v) => panic!("the attack succeeded: {v}"),
        Err(e) => e.code,
    }
}

fn evil_dispatch(instance_id: i64, script: String) -> DispatchRequest {
    DispatchRequest {
        server_id: "s1".into(),
        app_id: 1,
        job_id: 1,
        job_name: "evil".into(),
        instance_id,
        attempt: 1,
        processor: "shell".into(),
        config: script,
        job_params: None,
        instance_params: None,
        timeout_ms: 0,
        expected_trigger_time_ms: None,
        frequent: None,
        deadline_ms: None,
        start_at_ms: None,
        execution: Default::default(),
        task_retries: 0,
        container: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_without_the_servers_seal_runs_nothing() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    // The worker allows shell: a dispatch that got through would run any command.
    let worker = d
        .start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let dir = tempfile::tempdir()?;
    let marker = dir.path().join("pwned");
    let script = format!("touch '{}'", marker.display());
    let attacker = async_nats::connect(d.nats.url()).await?;
    let subject = Subjects::default().to_worker(
        "app",
        &worker,
        rota_shared::subject::WorkerEndpoint::Dispatch,
    );
    let payload = serde_json::to_vec(&evil_dispatch(999, script.clone()))?;

    // Unsealed.
    let reply = raw_request(&attacker, &subject, payload.clone(), None, None).await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);
    // Sealed with a key from a guessed secret.
    let guessed = server_credential("app", "not-the-secret", &worker, "s1")?;
    let reply = raw_request(&attacker, &subject, payload.clone(), Some(&guessed), None).await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);
    // The subject of an older protocol, without the app, has nobody listening.
    let old = attacker
        .request(format!("rota.wrk.{worker}.dispatch"), payload.into())
        .await;
    assert!(old.is_err(), "something answers on the unscoped subject");

    // The worker decided before it answered, and a real run after the attacks comes back
    // alone: nothing of the attacker's ran.
    let job = d.create_job(shell_job("app", "ok", "echo fine")).await?;
    let id = d.run(job.id).await?;
    assert_eq!(
        d.wait_terminal(id, Duration::from_secs(15))
            .await
            .instance
            .status,
        InstanceStatus::Succeeded
    );
    assert!(!marker.exists(), "the forged dispatch ran");
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sniffed_dispatch_replayed_or_altered_runs_nothing() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let worker = d
        .start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let attacker = async_nats::connect(d.nats.url()).await?;
    let subject = Subjects::default().to_worker(
        "app",
        &worker,
        rota_shared::subject::WorkerEndpoint::Dispatch,
    );
    let sniffer = Sniffer::start(&attacker, &subject).await?;
    let dir = tempfile::tempdir()?;
    let runs = dir.path().join("runs");
    let job = d
        .create_job(shell_job(
            "app",
            "count",
            &format!("echo run >> '{}'", runs.display()),
        ))
        .await?;
    let first = d.run(job.id).await?;
    assert_eq!(
        d.wait_terminal(first, Duration::from_secs(15))
            .await
            .instance
            .status,
        InstanceStatus::Succeeded
    );
    let sniffed = sniffer
        .wait_for("the dispatch on the bus", Duration::from_secs(5), |_| true)
        .await;
    let headers = sniffed.headers.clone().expect("a dispatch carries headers");

    // Played again as it was: refused as a replay (and the worker would not run an attempt
    // twice anyway).
    let again = attacker
        .request_with_headers(subject.clone(), headers.clone(), sniffed.payload.clone())
        .await?;
    assert_eq!(refusal(&again), ErrorCode::Unauthorized);
    // With another script, and as a new instance: the seal no longer fits.
    let mut altered: DispatchRequest = serde_json::from_slice(&sniffed.payload)?;
    altered.config = format!("echo evil >> '{}'", runs.display());
    altered.instance_id += 1000;
    let forged = attacker
        .request_with_headers(
            subject.clone(),
            headers,
            serde_json::to_vec(&altered)?.into(),
        )
        .await?;
    assert_eq!(refusal(&forged), ErrorCode::Unauthorized);

    // A second real run: afterwards the file holds exactly the two real runs.
    let second = d.run(job.id).await?;
    assert_eq!(
        d.wait_terminal(second, Duration::from_secs(15))
            .await
            .instance
            .status,
        InstanceStatus::Succeeded
    );
    assert_eq!(std::fs::read_to_string(&runs)?, "run\nrun\n");
    let first = d.instance(first).await?;
    assert_eq!(
        (first.instance.attempt, first.instance.runs),
        (1, 1),
        "{first:?}"
    );
    d.shutdown().await;
    Ok(())
}

fn perfect_heartbeat(worker_id: &str) -> WorkerHeartbeat {
    WorkerHeartbeat {
        worker_id: worker_id.into(),
        tags: vec![],
        processors: vec!["shell".into(), "http".into()],
        capacity: 1_000,
        running: vec![],
        held: vec![],
        attempts: vec![],
        incarnation: String::new(),
        // Everything free: the best health score there is.
        metrics: SystemMetrics::default(),
        version: "evil".into(),
        dropped_log_lines: 0,
        containers: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_without_the_key_register_no_worker() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let attacker = async_nats::connect(d.nats.url()).await?;
    let hb_subject = Subjects::default().to_server("app", d.server_id(), ServerEndpoint::Heartbeat);
    let sniffer = Sniffer::start(&attacker, &hb_subject).await?;
    let real = d
        .start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let ghosts = Sniffer::start(&attacker, "rota.app.app.wrk.*.dispatch").await?;

    // A heartbeat with no seal at all.
    attacker
        .publish(
            hb_subject.clone(),
            serde_json::to_vec(&perfect_heartbeat("ghost"))?.into(),
        )
        .await?;
    // A real worker's heartbeat, sniffed and published again with another worker id.
    let sniffed = sniffer
        .wait_for("a heartbeat of w1", Duration::from_secs(5), |_| true)
        .await;
    let mut copy: WorkerHeartbeat = serde_json::from_slice(&sniffed.payload)?;
    copy.worker_id = "ghost2".into();
    copy.capacity = 1_000;
    attacker
        .publish_with_headers(
            hb_subject.clone(),
            sniffed.headers.clone().expect("sealed"),
            serde_json::to_vec(&copy)?.into(),
        )
        .await?;
    attacker.flush().await?;
    d.wait_refused(d.server_id(), "no_seal", 1).await;
    d.wait_refused(d.server_id(), "bad_seal", 1).await;

    let live: Vec<String> = d
        .admin
        .call(&rota_shared::admin::WorkerList {
            app: Some("app".into()),
            ..Default::default()
        })
        .await?
        .items
        .into_iter()
        .map(|w| w.worker_id)
        .collect();
    assert_eq!(live, vec![real.clone()]);
    // Runs go to the real worker, and no dispatch was ever tried on a ghost.
    let job = d.create_job(shell_job("app", "j", "echo hi")).await?;
    for _ in 0..3 {
        let id = d.run(job.id).await?;
        let done = d.wait_terminal(id, Duration::from_secs(15)).await;
        assert_eq!(done.instance.worker_id.as_deref(), Some(real.as_str()));
    }
    let targets: Vec<String> = ghosts
        .seen()
        .iter()
        .map(|m| m.subject.to_string())
        .collect();
    assert_eq!(
        targets,
        vec![
            Subjects::default().to_worker(
                "app",
                &real,
                rota_shared::subject::WorkerEndpoint::Dispatch
            );
            3
        ]
    );
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_status_reports_change_nothing() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let (registry, release) = hold_registry();
    let attacker = async_nats::connect(d.nats.url()).await?;
    let status = Subjects::default().to_server("app", d.server_id(), ServerEndpoint::Status);
    let sniffer = Sniffer::start(&attacker, &status).await?;
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
    // The tracker's RUNNING reports are published on the status subject, sealed.
    let sniffed = sniffer
        .wait_for("a RUNNING report", Duration::from_secs(10), |m| {
            serde_json::from_slice::<StatusReport>(&m.payload).is_ok_and(|r| r.instance_id == id)
        })
        .await;
    let report: StatusReport = serde_json::from_slice(&sniffed.payload)?;
    let headers = sniffed.headers.clone().expect("sealed");

    let forged = |status: InstanceStatus, seq: i64| StatusReport {
        instance_id: id,
        attempt: running.instance.attempt,
        seq,
        worker_id: worker.clone(),
        status,
        result: Some("forged".into()),
        runs: None,
        alert: false,
        reported_at_ms: 0,
        started_at_ms: None,
        tasks: None,
    };
    // Without a seal: FAILED, and a RUNNING far ahead that would make the real reports stale.
    for bad in [
        forged(InstanceStatus::Failed, 2),
        forged(InstanceStatus::Running, i64::MAX),
    ] {
        let reply = raw_request(&attacker, &status, serde_json::to_vec(&bad)?, None, None).await?;
        assert_eq!(refusal(&reply), ErrorCode::Unauthorized);
    }
    // The sniffed RUNNING report made FAILED, and the sniffed one as it was.
    let mut failed = report.clone();
    failed.status = InstanceStatus::Failed;
    failed.seq = i64::MAX;
    let reply = attacker
        .request_with_headers(
            status.clone(),
            headers.clone(),
            serde_json::to_vec(&failed)?.into(),
        )
        .await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);
    let reply = attacker
        .request_with_headers(status.clone(), headers, sniffed.payload.clone())
        .await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);

    let still = d.instance(id).await?;
    assert_eq!(
        (
            still.instance.status,
            still.instance.attempt,
            still.instance.result.clone()
        ),
        (InstanceStatus::Running, running.instance.attempt, None),
        "{still:?}"
    );
    release.notify_one();
    let done = d.wait_terminal(id, Duration::from_secs(10)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    assert_eq!(done.instance.result.as_deref(), Some("released"));
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_log_lines_are_not_stored() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let job = d
        .create_job(shell_job("app", "j", "echo real-line"))
        .await?;
    let id = d.run(job.id).await?;
    d.wait_terminal(id, Duration::from_secs(15)).await;
    let before = d.logs(id).await?;
    assert!(before.iter().any(|l| l.text == "real-line"), "{before:?}");

    let line = |instance_id: i64| LogLine {
        instance_id,
        attempt: 1,
        ts_ms: 0,
        level: LogLevel::Error,
        text: "forged line".into(),
    };
    let batch = |worker_id: &str| LogBatch {
        worker_id: worker_id.into(),
        lines: vec![line(id), line(1_000_000_000)],
        dropped: 0,
    };
    let attacker = async_nats::connect(d.nats.url()).await?;
    let logs = Subjects::default().to_server("app", d.server_id(), ServerEndpoint::Logs);
    let reply = raw_request(
        &attacker,
        &logs,
        serde_json::to_vec(&batch("w1"))?,
        None,
        None,
    )
    .await?;
    assert_eq!(refusal(&reply), ErrorCode::Unauthorized);
    // Even a worker of the app (it holds the secret) cannot write into an instance it was not
    // given, nor into one that does not exist: no orphan rows.
    let insider = WorkerVoice::new(attacker.clone(), "app", "w2", SECRET)?;
    let ack: LogAck = insider
        .request(d.server_id(), ServerEndpoint::Logs, &batch("w2"))
        .await?;
    assert_eq!((ack.stored, ack.refused), (0, 2));
    // And not as another worker either.
    let as_other = insider
        .request::<_, LogAck>(d.server_id(), ServerEndpoint::Logs, &batch("w1"))
        .await
        .unwrap_err();
    assert_eq!(as_other.code(), Some(ErrorCode::Unauthorized));

    assert_eq!(d.logs(id).await?, before);
    let missing = d
        .admin
        .call(&rota_shared::admin::LogsGet {
            instance_id: 1_000_000_000,
            after_id: 0,
            limit: None,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::NotFound));
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_stop_or_query_does_nothing() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let worker = d
        .start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let job = d
        .create_job(shell_job("app", "long", "sleep 2; echo done"))
        .await?;
    let id = d.run(job.id).await?;
    d.wait_status(id, InstanceStatus::Running, Duration::from_secs(10))
        .await;
    let attacker = async_nats::connect(d.nats.url()).await?;
    let s = Subjects::default();
    for endpoint in [
        rota_shared::subject::WorkerEndpoint::Stop,
        rota_shared::subject::WorkerEndpoint::Query,
    ] {
        let subject = s.to_worker("app", &worker, endpoint);
        let body = serde_json::to_vec(&serde_json::json!({ "instance_id": id }))?;
        let reply = raw_request(&attacker, &subject, body, None, None).await?;
        assert_eq!(refusal(&reply), ErrorCode::Unauthorized, "{subject}");
    }
    // A forged "stop" answer to a progress report, on the worker's ack inbox.
    let acks = format!("{}.>", s.worker_inbox("app"));
    let stop = rota_shared::Reply::ok(ReportAck {
        action: rota_shared::message::ReportAction::Stop,
    })
    .to_bytes();
    let sniffer = Sniffer::start(
        &attacker,
        &s.to_server("app", d.server_id(), ServerEndpoint::Status),
    )
    .await?;
    let progress = sniffer
        .wait_for("a progress report", Duration::from_secs(5), |m| {
            m.reply.is_some()
        })
        .await;
    let ack_subject = progress.reply.clone().expect("a reply subject");
    assert!(ack_subject.starts_with(acks.trim_end_matches(".>")));
    attacker.publish(ack_subject, stop.into()).await?;
    attacker.flush().await?;

    let done = d.wait_terminal(id, Duration::from_secs(15)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    assert_eq!(done.instance.result.as_deref(), Some("done"));
    d.shutdown().await;
    Ok(())
}

/// The owner's announcement on `rota.app.{app}.owner` makes a worker ask discovery now. An
/// attacker's copy (unsealed, sealed with another app's key, or with a worker key instead of the
/// app key) is refused and makes it ask nothing; the genuine one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_owner_announcements_are_refused() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.create_app("other").await?;
    let config = rota_worker::WorkerConfig {
        reacquire_interval: Duration::from_secs(600),
        http_listen: "127.0.0.1:0".parse().ok(),
        ..d.worker_config("app", "w1")
    };
    d.start_worker(config, ProcessorRegistry::new()).await?;
    let http = d
        .worker("w1")
        .and_then(|w| w.http_addr())
        .expect("the worker serves /metrics");
    let attacker = async_nats::connect(d.nats.url()).await?;
    let discovery = Sniffer::start(&attacker, &Subjects::default().discovery("app")).await?;
    let subject = Subjects::default().app_owner("app");
    let news = rota_shared::message::OwnerChanged {
        server_id: "s-attacker".into(),
        epoch: 99,
    };
    let transport = rota_transport::Transport::new(attacker.clone());
    let forged = [
        None,
        Some(rota_tests::bus::discovery_credential(
            "other",
            SECRET,
            "s-attacker",
        )?),
        Some(rota_tests::bus::worker_credential("app", SECRET, "w1")?),
    ];
    for credential in &forged {
        transport
            .publish(&subject, &news, credential.as_ref(), None)
            .await?;
    }
    attacker.flush().await?;
    // The worker takes its announcements in order and counts each one it refuses: once it has
    // counted all three, none of them can still make it ask discovery.
    let refused = || async {
        let answer = rota_observe::probe::get(http, "/metrics", Duration::from_secs(5))
            .await
            .ok()?;
        let scrape = rota_tests::scrape::Scrape::parse(&answer.body).ok()?;
        let n = scrape.sum(
            "rota_worker_refused_messages_total",
            &[("reason", "unauthenticated")],
        );
        (n >= forged.len() as f64).then_some(())
    };
    rota_tests::wait::until(
        "the worker to refuse the three forged announcements",
        Duration::from_secs(10),
        refused,
    )
    .await;
    assert!(
        discovery.seen().is_empty(),
        "a forged announcement made the worker ask discovery"
    );

    let genuine = rota_tests::bus::discovery_credential("app", SECRET, "s-attacker")?;
    transport
        .publish(&subject, &news, Some(&genuine), None)
        .await?;
    discovery
        .wait_for(
            "the worker to ask discovery after a genuine announcement",
            Duration::from_secs(5),
            |_| true,
        )
        .await;
    d.shutdown().await;
    Ok(())
}
