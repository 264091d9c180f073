//! The attack suite, part 2: discovery and the servers among themselves, on an open NATS. The
//! app secret never appears on the bus; a process answering in the servers' place is not
//! believed, neither by a worker looking for its owner nor by a server pinging a dead owner;
//! calls forwarded between servers cannot be forged or replayed.

use std::time::Duration;

use futures::StreamExt;
use rota_shared::admin::{AppList, JobRun};
use rota_shared::envelope::decode_reply;
use rota_shared::message::{AcquireReply, Pong, RemoteCall};
use rota_shared::subject::SERVER_QUEUE_GROUP;
use rota_shared::{ErrorCode, InstanceStatus, Reply, Subjects};
use rota_tests::bus::{Sniffer, raw_request};
use rota_tests::cluster::{Deployment, SECRET, shell_job};
use rota_tests::wait;
use rota_transport::{Credential, Key, Scope, Stamper};
use rota_worker::{ProcessorRegistry, Worker, WorkerError};

/// Everything a message shows an eavesdropper: its subject, its headers and its payload.
fn visible(msg: &async_nats::Message) -> String {
    let headers = msg
        .headers
        .iter()
        .flat_map(|h| h.iter())
        .map(|(k, v)| format!("{k}: {v:?}"))
        .collect::<Vec<_>>()
        .join("\n");
    format!(
        "{}\n{headers}\n{}",
        msg.subject,
        String::from_utf8_lossy(&msg.payload)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_secret_and_new_tokens_never_appear_on_the_bus() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    let eavesdropper = async_nats::connect(d.nats.url()).await?;
    let everything = Sniffer::start(&eavesdropper, ">").await?;
    // An app is made, a worker joins with the secret, a job runs, the secret is rotated and a
    // worker joins with the new one, and a token is made over the bus.
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let job = d.create_job(shell_job("app", "j", "echo hi")).await?;
    let id = d.run(job.id).await?;
    d.wait_terminal(id, Duration::from_secs(15)).await;
    let rotated = "the-rotated-secret";
    d.admin
        .app_rotate_secret("app", rotated, Duration::from_secs(3600))
        .await?;
    let mut w2 = d.worker_config("app", "w2");
    w2.secret = rotated.into();
    d.start_worker(w2, ProcessorRegistry::new()).await?;
    let (_, token) = d
        .admin
        .token_create(rota_shared::admin::Role::Viewer, None, "sniffed?")
        .await?;

    let seen = everything.seen();
    assert!(
        seen.iter()
            .any(|m| m.subject.starts_with("rota.discovery.")),
        "the eavesdropper saw the traffic"
    );
    let secrets = [
        SECRET.to_owned(),
        rotated.to_owned(),
        rota_transport::keys::app_key("app", SECRET)?.to_hex(),
        rota_transport::keys::app_key("app", rotated)?.to_hex(),
        token.reveal(),
        token.key().to_hex(),
    ];
    for msg in &seen {
        let text = visible(msg);
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{secret:?} travelled on {}",
                msg.subject
            );
        }
    }
    // The new token made over the bus works for its holder.
    let viewer = d.client_with(&token).await?;
    assert_eq!(viewer.call(&AppList {}).await?.len(), 1);
    d.shutdown().await;
    Ok(())
}

/// Answers every request on `subject` (in the servers' queue group when `queue`) with `answer`,
/// unsealed, as a process posing as a server would; counts what it answered.
async fn impostor(
    nats: &async_nats::Client,
    subject: &str,
    queue: bool,
    answer: Vec<u8>,
) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicU64>> {
    let mut sub = if queue {
        nats.queue_subscribe(subject.to_owned(), SERVER_QUEUE_GROUP.to_owned())
            .await?
    } else {
        nats.subscribe(subject.to_owned()).await?
    };
    nats.flush().await?;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (nats, count) = (nats.clone(), answered.clone());
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            if let Some(reply) = msg.reply {
                let _ = nats.publish(reply, answer.clone().into()).await;
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    Ok(answered)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_owner_in_discovery_is_not_believed() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    // The only server goes away; an impostor joins the servers' queue group and answers every
    // discovery with itself as the owner.
    d.stop_server("s1").await;
    let attacker = async_nats::connect(d.nats.url()).await?;
    let fake = Reply::ok(AcquireReply {
        server_id: "evil".into(),
        app_id: 1,
        epoch: 99,
    })
    .to_bytes();
    let answered = impostor(&attacker, "rota.discovery.*", true, fake).await?;
    let started = Worker::start(d.worker_config("app", "w1"), ProcessorRegistry::new()).await;
    match started {
        Err(WorkerError::Acquire { code, message }) => {
            assert_eq!(code, ErrorCode::Unauthorized, "{message}");
            assert!(message.contains("not authenticated"), "{message}");
        }
        Err(other) => panic!("the worker failed otherwise: {other}"),
        Ok(w) => panic!(
            "the worker took the impostor as its owner: {}",
            w.server_id()
        ),
    }
    assert!(answered.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fake_pong_does_not_keep_a_dead_owner_in_office() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let owner = |apps: Vec<rota_shared::admin::AppInfo>| apps[0].current_server.clone();
    assert_eq!(
        owner(d.admin.call(&AppList {}).await?).as_deref(),
        Some("s1")
    );
    d.start_server("s2").await?;
    // s1 crashes; an impostor answers its pings as if it lived.
    d.abort_server("s1");
    let attacker = async_nats::connect(d.nats.url()).await?;
    let pong = Reply::ok(Pong {
        server_id: "s1".into(),
        started_at_ms: 0,
        version: "0".into(),
    })
    .to_bytes();
    let pinged = impostor(
        &attacker,
        &Subjects::default().server_ping("s1"),
        false,
        pong,
    )
    .await?;
    // A worker's discovery reaches s2, which pings s1, does not believe the answer and takes
    // the app over.
    d.start_worker(d.worker_config("app", "w2"), ProcessorRegistry::new())
        .await?;
    let admin = d.admin.at_server("s2");
    wait::until("s2 to own the app", Duration::from_secs(15), || async {
        (owner(admin.call(&AppList {}).await.ok()?).as_deref() == Some("s2")).then_some(())
    })
    .await;
    assert!(pinged.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_calls_cannot_be_forged_or_replayed() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    d.start_server("s2").await?;
    let job = d.create_job(shell_job("app", "j", "echo hi")).await?;
    let attacker = async_nats::connect(d.nats.url()).await?;
    let rpc = Subjects::default().server_rpc("s1");
    let call = serde_json::to_vec(&RemoteCall::JobRun(JobRun {
        id: job.id,
        params: None,
        delay_ms: 0,
        idempotency_key: None,
    }))?;
    // Unsealed, and sealed with a cluster key of the attacker's own.
    let reply = raw_request(&attacker, &rpc, call.clone(), None, None).await?;
    assert_eq!(
        decode_reply::<serde_json::Value>(&reply.payload).map_err(|e| e.code),
        Err(ErrorCode::Unauthorized)
    );
    let own_key = Credential::new(
        Scope::Cluster,
        Key::random()?,
        "s9",
        std::sync::Arc::new(Stamper::new()),
    );
    let reply = raw_request(&attacker, &rpc, call, Some(&own_key), None).await?;
    assert_eq!(
        decode_reply::<serde_json::Value>(&reply.payload).map_err(|e| e.code),
        Err(ErrorCode::Unauthorized)
    );
    assert!(
        d.instances_of(job.id).await?.is_empty(),
        "a forged call ran the job"
    );

    // A real forwarded call (s2 does not own the app, so it forwards the run to s1), sniffed
    // and played again: refused, and the job ran once.
    let sniffer = Sniffer::start(&attacker, "rota.srv.*.rpc").await?;
    let id = d
        .admin
        .at_server("s2")
        .call(&JobRun {
            id: job.id,
            params: None,
            delay_ms: 0,
            idempotency_key: None,
        })
        .await?
        .instance_id;
    assert_eq!(
        d.wait_terminal(id, Duration::from_secs(15))
            .await
            .instance
            .status,
        InstanceStatus::Succeeded
    );
    let sniffed = sniffer
        .wait_for("the forwarded call", Duration::from_secs(5), |_| true)
        .await;
    let reply = attacker
        .request_with_headers(
            sniffed.subject.clone(),
            sniffed.headers.clone().expect("sealed"),
            sniffed.payload.clone(),
        )
        .await?;
    assert_eq!(
        decode_reply::<serde_json::Value>(&reply.payload).map_err(|e| e.code),
        Err(ErrorCode::Unauthorized)
    );
    assert_eq!(d.instances_of(job.id).await?.len(), 1);
    d.shutdown().await;
    Ok(())
}
