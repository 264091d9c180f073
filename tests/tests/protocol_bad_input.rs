//! DESIGN §10 invariant 4: a malformed, mistyped or oversized message on any subject gets an
//! error reply with a stable code, changes nothing, and the process keeps serving.

use std::time::Duration;

use rota_shared::admin::{AppList, InstanceList, JobList};
use rota_shared::envelope::decode_reply;
use rota_shared::message::{
    MAX_REPORTS_PER_BATCH, Ping, Pong, ReportAction, StatusBatchAck, StatusReport,
    StatusReportBatch,
};
use rota_shared::{ErrorCode, InstanceStatus, MAX_PAYLOAD_BYTES, Subjects};
use rota_tests::cluster::{Deployment, shell_job};
use rota_worker::ProcessorRegistry;

/// Sends `payload` as a request and returns the error code of the reply.
async fn error_code(nats: &async_nats::Client, subject: &str, payload: Vec<u8>) -> ErrorCode {
    let msg = nats
        .request(subject.to_owned(), payload.into())
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
    let jobs = d.admin.call(&JobList { app: None }).await?;
    let instances = d.admin.call(&InstanceList::default()).await?;
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
    let subjects = [
        s.discovery_acquire(),
        s.server_heartbeat(&sid),
        s.server_status(&sid),
        s.server_reports(&sid),
        s.server_logs(&sid),
        s.server_cluster(&sid),
        s.server_ping(&sid),
        s.admin("app", "create"),
        s.admin("job", "create"),
        s.admin("job", "update"),
        s.admin("job", "run"),
        s.admin("instance", "stop"),
        s.admin("logs", "get"),
        s.worker_dispatch(&worker),
        s.worker_stop(&worker),
        s.worker_query(&worker),
    ];
    let oversized = {
        let mut v = br#"{"pad":""#.to_vec();
        v.resize(MAX_PAYLOAD_BYTES + 64 * 1024, b'x');
        v.extend_from_slice(br#""}"#);
        v
    };
    let nats = async_nats::connect(d.nats.url()).await?;
    for subject in &subjects {
        assert_eq!(
            error_code(&nats, subject, b"{not json".to_vec()).await,
            ErrorCode::BadRequest,
            "malformed JSON on {subject}"
        );
        // An array where every subject expects an object.
        assert_eq!(
            error_code(&nats, subject, b"[1,2,3]".to_vec()).await,
            ErrorCode::BadRequest,
            "wrong type on {subject}"
        );
        assert_eq!(
            error_code(&nats, subject, oversized.clone()).await,
            ErrorCode::PayloadTooLarge,
            "oversized payload on {subject}"
        );
    }
    // Fields of the wrong type inside the right shape.
    for (subject, payload) in [
        (s.admin("job", "run"), r#"{"id":"seven"}"#),
        (s.admin("app", "create"), r#"{"name":5,"secret":true}"#),
        (
            s.server_status(&sid),
            r#"{"instance_id":"x","attempt":1,"seq":1,"worker_id":"w1","status":"RUNNING","reported_at_ms":0}"#,
        ),
        (
            s.server_status(&sid),
            r#"{"instance_id":1,"attempt":1,"seq":1,"worker_id":"w1","status":"DANCING","reported_at_ms":0}"#,
        ),
        (
            s.discovery_acquire(),
            r#"{"app":["a"],"secret":"s","worker_id":"w"}"#,
        ),
        (s.server_reports(&sid), r#"{"reports":[{"instance_id":1}]}"#),
    ] {
        assert_eq!(
            error_code(&nats, &subject, payload.as_bytes().to_vec()).await,
            ErrorCode::BadRequest,
            "wrong field type on {subject}: {payload}"
        );
    }
    // A report batch over the limit is refused whole.
    let report = StatusReport {
        instance_id: 1,
        attempt: 1,
        seq: 1,
        worker_id: "w1".into(),
        status: InstanceStatus::Succeeded,
        result: None,
        runs: None,
        alert: false,
        reported_at_ms: 0,
    };
    let too_many = StatusReportBatch {
        reports: vec![report; MAX_REPORTS_PER_BATCH + 1],
    };
    assert_eq!(
        error_code(
            &nats,
            &s.server_reports(&sid),
            serde_json::to_vec(&too_many)?
        )
        .await,
        ErrorCode::InvalidArgument,
        "a batch of {} reports",
        MAX_REPORTS_PER_BATCH + 1
    );
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
    let reply = nats
        .request(s.server_reports(&sid), serde_json::to_vec(&unknown)?.into())
        .await?;
    let answers = decode_reply::<StatusBatchAck>(&reply.payload)?;
    let actions: Vec<_> = answers
        .results
        .into_iter()
        .map(|r| r.into_result().map(|ack| ack.action))
        .collect();
    assert_eq!(actions, vec![Ok(ReportAction::Continue); 2]);
    // A message of a protocol version this server does not speak.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(rota_shared::PROTOCOL_HEADER, "99");
    let reply = nats
        .request_with_headers(s.server_ping(&sid), headers, b"{}".to_vec().into())
        .await?;
    assert_eq!(
        decode_reply::<Pong>(&reply.payload).map_err(|e| e.code),
        Err(ErrorCode::UnsupportedVersion)
    );

    assert_eq!(
        state(&d).await?,
        before,
        "a bad message changed the stored state"
    );

    // The server and the worker still serve: a ping answers, and a job runs end to end.
    let pong = nats
        .request(
            s.server_ping(&sid),
            serde_json::to_vec(&Ping::default())?.into(),
        )
        .await?;
    assert_eq!(decode_reply::<Pong>(&pong.payload)?.server_id, sid);
    let id = d.run(job.id).await?;
    let done = d.wait_terminal(id, Duration::from_secs(15)).await;
    assert_eq!(done.status, InstanceStatus::Succeeded, "{done:?}");
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_nats_limit_is_a_clear_error_not_a_time_out() -> anyhow::Result<()> {
    let d = Deployment::start().await?;
    let app = d.create_app("app").await?;
    // The server owns the app once a worker has acquired it.
    let nats = async_nats::connect(d.nats.url()).await?;
    let acquire = rota_shared::message::AcquireRequest {
        app: "app".into(),
        secret: rota_tests::cluster::SECRET.into(),
        worker_id: "w0".into(),
        current_server: None,
    };
    let reply = nats
        .request(
            Subjects::default().discovery_acquire(),
            serde_json::to_vec(&acquire)?.into(),
        )
        .await?;
    decode_reply::<rota_shared::message::AcquireReply>(&reply.payload)?;
    // Ten thousand workers make a worker list of a few MB, over NATS' 1 MB max payload.
    let subject = Subjects::default().server_heartbeat(d.server_id());
    for i in 0..10_000 {
        let hb = rota_shared::message::WorkerHeartbeat {
            worker_id: format!("sim-{i}"),
            app_id: app.id,
            app: "app".into(),
            tags: vec!["a-tag-to-make-the-entry-longer".into()],
            processors: vec!["shell".into(), "http".into()],
            capacity: 16,
            running: vec![],
            metrics: Default::default(),
            version: "test".into(),
            dropped_log_lines: 0,
        };
        nats.publish(subject.clone(), serde_json::to_vec(&hb)?.into())
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
    let started = tokio::time::Instant::now();
    let listed = d
        .admin
        .call(&rota_shared::admin::WorkerList {
            app: Some("app".into()),
        })
        .await;
    assert_eq!(
        listed.err().and_then(|e| e.code()),
        Some(ErrorCode::PayloadTooLarge)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the error came late"
    );
    d.shutdown().await;
    Ok(())
}
