//! DESIGN §10 invariant 4: a malformed, mistyped or oversized message on any subject gets an
//! error reply with a stable code, changes nothing, and the process keeps serving. A message
//! without a seal is refused `UNAUTHORIZED` before it is even decoded; a sealed one from a
//! legitimate sender that is malformed gets `BAD_REQUEST` (or `PAYLOAD_TOO_LARGE`,
//! `INVALID_ARGUMENT`, `UNSUPPORTED_VERSION`).

use std::time::Duration;

use rota_shared::admin::{AppList, InstanceList, JobList, JobUpdate};
use rota_shared::envelope::decode_reply;
use rota_shared::limits::MAX_RUNNING;
use rota_shared::message::{
    AttemptRef, MAX_REPORTS_PER_BATCH, Ping, Pong, ReportAction, StatusBatchAck, StatusReport,
    StatusReportBatch, SystemMetrics, WorkerHeartbeat,
};
use rota_shared::subject::{ServerEndpoint, WorkerEndpoint};
use rota_shared::{ErrorCode, InstanceStatus, MAX_PAYLOAD_BYTES, Subjects};
use rota_tests::bus::{
    WorkerVoice, cluster_credential, discovery_credential, raw_request, server_credential,
    token_credential, worker_credential,
};
use rota_tests::cluster::{Deployment, SECRET, shell_job};
use rota_transport::Credential;
use rota_worker::ProcessorRegistry;

/// Sends `payload` (sealed with `credential` when given) and returns the reply's error code.
async fn error_code(
    nats: &async_nats::Client,
    subject: &str,
    payload: Vec<u8>,
    credential: Option<&Credential>,
) -> ErrorCode {
    let msg = raw_request(nats, subject, payload, credential, None)
        .await
        .unwrap_or_else(|e| panic!("no reply on {subject}: {e}"));
    match decode_reply::<serde_json::Value>(&msg.payload) {
        Ok(v) => panic!("{subject} accepted a bad message and answered {v}"),
        Err(e) => e.code,
    }
}

/// Everything an operator can see, to check that nothing changed.
async fn state(d: &Deployment) -> anyhow::Result<String> {
    let apps = d.admin.call(&AppList {}).await?;
    let jobs = d
        .admin
        .call(&JobList {
            app: None,
            ..Default::default()
        })
        .await?
        .items;
    let instances = d.admin.call(&InstanceList::default()).await?.items;
    Ok(serde_json::to_string(&(apps, jobs, instances))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_get_error_replies_and_change_nothing() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let worker = d
        .start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let job = d.create_job(shell_job("app", "echo", "echo ok")).await?;
    let before = state(&d).await?;

    let s = Subjects::default();
    let sid = d.server_id().to_owned();
    // What each subject's legitimate sender seals with. The test speaks as worker "w9" towards
    // the server (a worker of the app that is not running), and as server "s1" towards w1.
    let as_worker = worker_credential("app", SECRET, "w9")?;
    let as_discovery = discovery_credential("app", SECRET, "w9")?;
    let as_server = server_credential("app", SECRET, &worker, &sid)?;
    let as_admin = token_credential(&d.token);
    let as_peer = cluster_credential(d.db.url(), "s-peer").await?;
    let mut subjects: Vec<(String, &Credential)> = vec![
        (s.discovery("app"), &as_discovery),
        (s.server_ping(&sid), &as_peer),
        (s.server_rpc(&sid), &as_peer),
        (s.admin("app", "create"), &as_admin),
        (s.admin("job", "create"), &as_admin),
        (s.admin("job", "update"), &as_admin),
        (s.admin("job", "run"), &as_admin),
        (s.admin("instance", "stop"), &as_admin),
        (s.admin("logs", "get"), &as_admin),
        (s.admin("token", "create"), &as_admin),
        (s.admin("container", "create"), &as_admin),
        (s.admin("container", "deploy"), &as_admin),
    ];
    for endpoint in ServerEndpoint::ALL {
        subjects.push((s.to_server("app", &sid, endpoint), &as_worker));
    }
    for endpoint in WorkerEndpoint::ALL {
        subjects.push((s.to_worker("app", &worker, endpoint), &as_server));
    }
    let oversized = {
        let mut v = br#"{"pad":""#.to_vec();
        v.resize(MAX_PAYLOAD_BYTES + 64 * 1024, b'x');
        v.extend_from_slice(br#""}"#);
        v
    };
    let nats = async_nats::connect(d.nats.url()).await?;
    for (subject, credential) in &subjects {
        assert_eq!(
            error_code(&nats, subject, b"{}".to_vec(), None).await,
            ErrorCode::Unauthorized,
            "an unsealed message on {subject}"
        );
        assert_eq!(
            error_code(&nats, subject, b"{not json".to_vec(), Some(credential)).await,
            ErrorCode::BadRequest,
            "malformed JSON on {subject}"
        );
        // An array where every subject expects an object.
        assert_eq!(
            error_code(&nats, subject, b"[1,2,3]".to_vec(), Some(credential)).await,
            ErrorCode::BadRequest,
            "wrong type on {subject}"
        );
        assert_eq!(
            error_code(&nats, subject, oversized.clone(), Some(credential)).await,
            ErrorCode::PayloadTooLarge,
            "oversized payload on {subject}"
        );
    }
    // Fields of the wrong type inside the right shape.
    let status = s.to_server("app", &sid, ServerEndpoint::Status);
    let reports = s.to_server("app", &sid, ServerEndpoint::Reports);
    for (subject, payload, credential) in [
        (s.admin("job", "run"), r#"{"id":"seven"}"#, &as_admin),
        // `job.update` carries its changes as an object of job fields.
        (s.admin("job", "update"), r#"{"id":1}"#, &as_admin),
        (
            s.admin("job", "update"),
            r#"{"id":1,"changes":[["max_retries",3]]}"#,
            &as_admin,
        ),
        // `job.create` names its app beside the job's fields.
        (
            s.admin("job", "create"),
            r#"{"app":["app"],"name":"x","schedule":{"type":"api"},"processor":"shell"}"#,
            &as_admin,
        ),
        (
            s.admin("app", "create"),
            r#"{"name":5,"sealed_key":true}"#,
            &as_admin,
        ),
        (
            status.clone(),
            r#"{"instance_id":"x","attempt":1,"seq":1,"worker_id":"w9","status":"RUNNING","reported_at_ms":0}"#,
            &as_worker,
        ),
        (
            status.clone(),
            r#"{"instance_id":1,"attempt":1,"seq":1,"worker_id":"w9","status":"DANCING","reported_at_ms":0}"#,
            &as_worker,
        ),
        (s.discovery("app"), r#"{"worker_id":["w"]}"#, &as_discovery),
        (
            reports.clone(),
            r#"{"reports":[{"instance_id":1}]}"#,
            &as_worker,
        ),
    ] {
        assert_eq!(
            error_code(
                &nats,
                &subject,
                payload.as_bytes().to_vec(),
                Some(credential)
            )
            .await,
            ErrorCode::BadRequest,
            "wrong field type on {subject}: {payload}"
        );
    }
    // A report batch over the limit is refused whole.
    let report = StatusReport {
        instance_id: 1,
        attempt: 1,
        seq: 1,
        worker_id: "w9".into(),
        status: InstanceStatus::Succeeded,
        result: None,
        runs: None,
        alert: false,
        reported_at_ms: 0,
        started_at_ms: None,
        tasks: None,
    };
    let too_many = StatusReportBatch {
        reports: vec![report; MAX_REPORTS_PER_BATCH + 1],
    };
    assert_eq!(
        error_code(
            &nats,
            &reports,
            serde_json::to_vec(&too_many)?,
            Some(&as_worker)
        )
        .await,
        ErrorCode::InvalidArgument,
        "a batch of {} reports",
        MAX_REPORTS_PER_BATCH + 1
    );
    // Well-formed messages with values out of bounds: idempotency keys that are not keys, and
    // heartbeats listing more attempts or held fires than any worker may run, or a huge
    // incarnation.
    for key in [
        serde_json::json!("has spaces"),
        serde_json::json!(""),
        serde_json::json!("k".repeat(129)),
    ] {
        let run = serde_json::json!({"id": job.id, "idempotency_key": key});
        assert_eq!(
            error_code(
                &nats,
                &s.admin("job", "run"),
                serde_json::to_vec(&run)?,
                Some(&as_admin)
            )
            .await,
            ErrorCode::InvalidArgument,
            "job.run with idempotency key {key}"
        );
    }
    let heartbeat = s.to_server("app", &sid, ServerEndpoint::Heartbeat);
    let fine = WorkerHeartbeat {
        worker_id: "w9".into(),
        tags: vec![],
        processors: vec!["shell".into()],
        capacity: 16,
        running: vec![],
        held: vec![],
        attempts: vec![],
        incarnation: "i".into(),
        metrics: SystemMetrics::default(),
        version: "test".into(),
        dropped_log_lines: 0,
        containers: Vec::new(),
    };
    let attempt = AttemptRef {
        instance_id: 1,
        attempt: 1,
    };
    // More attempts than the limit do not even fit a message: refused by its size.
    let too_many_attempts = WorkerHeartbeat {
        attempts: vec![attempt; 2 * MAX_RUNNING + 1],
        ..fine.clone()
    };
    assert_eq!(
        error_code(
            &nats,
            &heartbeat,
            serde_json::to_vec(&too_many_attempts)?,
            Some(&as_worker)
        )
        .await,
        ErrorCode::PayloadTooLarge,
        "a heartbeat with too many attempts"
    );
    for (what, hb) in [
        (
            "too many held fires",
            WorkerHeartbeat {
                held: vec![1; MAX_RUNNING + 1],
                ..fine.clone()
            },
        ),
        (
            "an incarnation of 64 KiB",
            WorkerHeartbeat {
                incarnation: "i".repeat(64 * 1024),
                ..fine.clone()
            },
        ),
    ] {
        assert_eq!(
            error_code(
                &nats,
                &heartbeat,
                serde_json::to_vec(&hb)?,
                Some(&as_worker)
            )
            .await,
            ErrorCode::InvalidArgument,
            "a heartbeat with {what}"
        );
    }
    // A batch is answered report by report, in order; reports of unknown instances change
    // nothing and are settled.
    let unknown = StatusReportBatch {
        reports: vec![
            StatusReport {
                instance_id: 1_000_001,
                ..too_many.reports[0].clone()
            },
            StatusReport {
                instance_id: 1_000_002,
                ..too_many.reports[0].clone()
            },
        ],
    };
    let voice = WorkerVoice::new(nats.clone(), "app", "w9", SECRET)?;
    let answers: StatusBatchAck = voice
        .request(&sid, ServerEndpoint::Reports, &unknown)
        .await?;
    let actions: Vec<_> = answers
        .results
        .into_iter()
        .map(|r| r.into_result().map(|ack| ack.action))
        .collect();
    assert_eq!(actions, vec![Ok(ReportAction::Continue); 2]);
    // A message of a protocol version this server does not speak.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(rota_shared::PROTOCOL_HEADER, "99");
    let reply = raw_request(
        &nats,
        &s.server_ping(&sid),
        b"{}".to_vec(),
        Some(&as_peer),
        Some(headers),
    )
    .await?;
    assert_eq!(
        decode_reply::<Pong>(&reply.payload).map_err(|e| e.code),
        Err(ErrorCode::UnsupportedVersion)
    );

    // Job changes that name what a job does not have, or give a field the wrong type or a bad
    // value, are refused whole: among them an attempt to move the job to another app.
    for changes in [
        serde_json::json!({"app_id": 2}),
        serde_json::json!({"app": "other", "max_retries": 3}),
        serde_json::json!({"id": 99}),
        serde_json::json!({"max_retry": 3}),
        serde_json::json!({"max_retries": "three"}),
        serde_json::json!({"processor": " "}),
        serde_json::json!({"schedule": {"type": "cron", "expression": "0 0 0 30 2 *"}}),
    ] {
        let update = JobUpdate {
            id: job.id,
            changes: changes.as_object().cloned().unwrap_or_default(),
        };
        let refused = d.admin.call(&update).await;
        assert_eq!(
            refused.as_ref().map_err(|e| e.code()).err().flatten(),
            Some(ErrorCode::InvalidArgument),
            "job update {changes}: {refused:?}"
        );
    }

    assert_eq!(
        state(&d).await?,
        before,
        "a bad message changed the stored state"
    );

    // The server and the worker still serve: a ping answers, and a job runs end to end.
    let pong = raw_request(
        &nats,
        &s.server_ping(&sid),
        serde_json::to_vec(&Ping::default())?,
        Some(&as_peer),
        None,
    )
    .await?;
    assert_eq!(decode_reply::<Pong>(&pong.payload)?.server_id, sid);
    let id = d.run(job.id).await?;
    let done = d.wait_terminal(id, Duration::from_secs(15)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_workers_are_listed_in_pages_that_fit_nats() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    // The simulated workers heartbeat once: with the tests' 3 s worker timeout some expired
    // while a loaded machine was still listing them (9,583 of 10,000 seen once).
    let mut config = d.server_config("s1");
    config.worker_timeout = Duration::from_secs(120);
    d.start_server_with(config).await?;
    d.create_app("app").await?;
    // The server owns the app once a worker has acquired it.
    let nats = async_nats::connect(d.nats.url()).await?;
    let acquire = rota_shared::message::AcquireRequest {
        worker_id: "w0".into(),
        current_server: None,
    };
    WorkerVoice::new(nats.clone(), "app", "w0", SECRET)?
        .discover::<rota_shared::message::AcquireReply>(&acquire)
        .await?;
    // Ten thousand workers make a worker list of a few MB, over NATS' 1 MB max payload. Each
    // heartbeat is sealed with its worker's key, as a real one is.
    let transport = rota_transport::Transport::new(nats.clone());
    let subject = Subjects::default().to_server("app", d.server_id(), ServerEndpoint::Heartbeat);
    let app_key = rota_transport::keys::app_key("app", SECRET)?;
    let stamper = std::sync::Arc::new(rota_transport::Stamper::new());
    for i in 0..10_000 {
        let id = format!("sim-{i}");
        let credential = Credential::new(
            rota_transport::Scope::Worker {
                key_id: app_key.id(),
            },
            rota_transport::keys::worker_key(&app_key, "app", &id),
            id.clone(),
            stamper.clone(),
        );
        let hb = rota_shared::message::WorkerHeartbeat {
            worker_id: id,
            tags: vec!["a-tag-to-make-the-entry-longer".into()],
            processors: vec!["shell".into(), "http".into()],
            capacity: 16,
            running: vec![],
            held: vec![],
            attempts: vec![],
            incarnation: String::new(),
            metrics: Default::default(),
            version: "test".into(),
            dropped_log_lines: 0,
            containers: Vec::new(),
        };
        transport
            .publish(&subject, &hb, Some(&credential), None)
            .await?;
    }
    nats.flush().await?;
    let at = d.admin.at_server(d.server_id());
    let stats = rota_tests::wait::until(
        "the heartbeats to arrive",
        std::time::Duration::from_secs(20),
        || async {
            let s = at.call(&rota_shared::admin::ServerStats {}).await.ok()?;
            (s.live_workers == 10_000).then_some(s)
        },
    )
    .await;
    assert_eq!(stats.live_workers, 10_000);
    // Listed whole, a page at a time: each page is at most its limit and fits one reply.
    let mut seen = std::collections::HashSet::new();
    let mut after = None;
    let mut pages = 0;
    loop {
        let page = d
            .admin
            .call(&rota_shared::admin::WorkerList {
                app: Some("app".into()),
                after,
                limit: Some(rota_shared::admin::MAX_PAGE),
            })
            .await?;
        pages += 1;
        assert!(page.items.len() <= 1000);
        seen.extend(page.items.into_iter().map(|w| w.worker_id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(seen.len(), 10_000);
    assert!(pages >= 10, "{pages} pages");
    d.shutdown().await;
    Ok(())
}
