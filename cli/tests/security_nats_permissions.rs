//! `rota nats-config` on a real nats-server: with the authorization block it prints, servers,
//! workers and the CLI work as usual with their own users, and an app's worker user can do
//! exactly its app's worker work: it cannot receive another app's dispatches, publish a
//! dispatch, call admin or rpc subjects, join the servers' queue group, or read discovery and
//! reply traffic.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use rota_shared::InstanceStatus;
use rota_shared::subject::SERVER_QUEUE_GROUP;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::nats::NatsServer;
use rota_tests::wait;
use rota_transport::{Connection, NatsOptions};
use rota_worker::{ProcessorRegistry, Worker};

/// Users and passwords from the block `rota nats-config` printed.
fn users(block: &str) -> HashMap<String, String> {
    let mut users = HashMap::new();
    let mut user = None;
    for line in block.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix("user: ") {
            user = Some(name.trim_matches('"').to_owned());
        } else if let (Some(password), Some(name)) = (line.strip_prefix("password: "), user.take())
        {
            users.insert(name, password.trim_matches('"').to_owned());
        }
    }
    users
}

fn login(url: &str, users: &HashMap<String, String>, user: &str) -> NatsOptions {
    let mut options = NatsOptions::new(url);
    options.user = Some(user.to_owned());
    options.password = Some(users[user].clone());
    options
}

/// A deployment whose nats-server runs the block `rota nats-config --app a --app b` printed:
/// the administrators' and the server's users logged in, apps a and b created.
struct Authorized {
    d: Deployment,
    users: HashMap<String, String>,
    url: String,
}

async fn authorized() -> anyhow::Result<Authorized> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["nats-config", "--app", "a", "--app", "b"])
        .env_remove("ROTA_PREFIX")
        .env_remove("ROTA_CONFIG")
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let block = String::from_utf8(out.stdout)?;
    let users = users(&block);
    assert_eq!(users.len(), 4, "{block}");
    let nats = NatsServer::start_with_config(&block, true)?;
    let url = nats.url();
    let mut d = Deployment::on(nats, login(&url, &users, "rota-admin")).await?;
    let mut server = d.server_config("s1");
    server.nats = login(&url, &users, "rota-server");
    d.start_server_with(server).await?;
    d.create_app("a").await?;
    d.create_app("b").await?;
    Ok(Authorized { d, users, url })
}

/// Runs the CLI as the administrators' NATS user, with the deployment's admin token, and
/// checks that it succeeds.
async fn admin_cli(
    url: &str,
    users: &HashMap<String, String>,
    token: &str,
    args: &[&str],
) -> anyhow::Result<()> {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(["--nats-user", "rota-admin", "--nats-password"])
        .arg(&users["rota-admin"])
        .args(args)
        .env("ROTA_NATS_URL", url)
        .env("ROTA_TOKEN", token)
        .env_remove("ROTA_PREFIX")
        .env_remove("ROTA_CONFIG")
        .output()
        .await?;
    assert!(
        out.status.success(),
        "rota {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_can_do_its_work_and_nothing_else() -> anyhow::Result<()> {
    let Authorized { mut d, users, url } = authorized().await?;
    let mut wa = d.worker_config("a", "wa");
    wa.nats = login(&url, &users, "rota-worker-a");
    d.start_worker(wa, ProcessorRegistry::new()).await?;
    let mut wb = d.worker_config("b", "wb");
    wb.nats = login(&url, &users, "rota-worker-b");
    d.start_worker(wb, ProcessorRegistry::new()).await?;
    let job_a = d.create_job(shell_job("a", "ja", "echo a")).await?;
    let job_b = d.create_job(shell_job("b", "jb", "echo b")).await?;
    for job in [job_a.id, job_b.id] {
        let id = d.run(job).await?;
        let done = d.wait_terminal(id, Duration::from_secs(15)).await;
        assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    }
    // The CLI works with the administrators' user.
    admin_cli(&url, &users, &d.token.reveal(), &["job", "list"]).await?;

    // App a's worker user, in an attacker's hands.
    let (attacker, errors) = watched(&url, &users, "rota-worker-a", "rota.inbox.app.a").await?;
    let refused = |what: &'static str, subject: &'static str| wait_refused(&errors, what, subject);
    // Another app's dispatches, discovery traffic, the servers' queue group, other replies.
    let mut b_dispatches = attacker
        .subscribe("rota.app.b.wrk.wb.dispatch".to_owned())
        .await?;
    refused("subscription", "rota.app.b.wrk.wb.dispatch").await;
    let _discovery = attacker.subscribe("rota.discovery.>".to_owned()).await?;
    refused("subscription", "rota.discovery.>").await;
    let _queue = attacker
        .queue_subscribe("rota.discovery.*".to_owned(), SERVER_QUEUE_GROUP.to_owned())
        .await?;
    refused("subscription", "rota.discovery.*").await;
    let _admin_replies = attacker.subscribe("rota.inbox.admin.>".to_owned()).await?;
    refused("subscription", "rota.inbox.admin.>").await;
    let _b_replies = attacker.subscribe("rota.inbox.app.b.>".to_owned()).await?;
    refused("subscription", "rota.inbox.app.b.>").await;
    // Dispatches (even to its own app's workers), admin and rpc requests.
    attacker
        .publish("rota.app.a.wrk.wa.dispatch".to_owned(), "{}".into())
        .await?;
    refused("publish", "rota.app.a.wrk.wa.dispatch").await;
    attacker
        .publish("rota.admin.app.list".to_owned(), "{}".into())
        .await?;
    refused("publish", "rota.admin.app.list").await;
    attacker
        .publish("rota.srv.s1.rpc".to_owned(), "{}".into())
        .await?;
    refused("publish", "rota.srv.s1.rpc").await;
    attacker
        .publish("rota.discovery.b".to_owned(), "{}".into())
        .await?;
    refused("publish", "rota.discovery.b").await;

    // B's work goes on, and the refused subscription saw none of it.
    let id = d.run(job_b.id).await?;
    assert_eq!(
        d.wait_terminal(id, Duration::from_secs(15))
            .await
            .instance
            .status,
        InstanceStatus::Succeeded
    );
    assert!(
        !matches!(b_dispatches.next().now_or_never(), Some(Some(_))),
        "app a's worker user received a dispatch of app b"
    );
    // Nor can app a's user serve as a worker of app b.
    let mut as_b = d.worker_config("b", "intruder");
    as_b.nats = login(&url, &users, "rota-worker-a");
    assert!(Worker::start(as_b, ProcessorRegistry::new()).await.is_err());
    d.shutdown().await;
    Ok(())
}

/// A connection as `user` and the permission violations NATS reports to it.
async fn watched(
    url: &str,
    users: &HashMap<String, String>,
    user: &str,
    inbox: &str,
) -> anyhow::Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut connection = Connection::new("attacker", inbox);
    connection.on_event = Some({
        let errors = errors.clone();
        Arc::new(move |event: &async_nats::Event| {
            if let async_nats::Event::ServerError(e) = event {
                errors
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(e.to_string());
            }
        })
    });
    let client = login(url, users, user).connect(connection).await?;
    Ok((client, errors))
}

/// Waits for NATS to report that it refused the `what` (publish, subscription) of `subject`.
async fn wait_refused(errors: &Arc<Mutex<Vec<String>>>, what: &str, subject: &str) {
    wait::until(
        &format!("NATS to refuse the {what} of {subject}"),
        Duration::from_secs(5),
        || async {
            errors
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .any(|e| {
                    let e = e.to_ascii_lowercase();
                    e.contains("permissions violation")
                        && e.contains(what)
                        && e.contains(&subject.to_ascii_lowercase())
                })
                .then_some(())
        },
    )
    .await;
}

/// Publishes to `subject` and waits for NATS to refuse it.
async fn publish_refused(
    client: &async_nats::Client,
    errors: &Arc<Mutex<Vec<String>>>,
    subject: &str,
) -> anyhow::Result<()> {
    client.publish(subject.to_owned(), "{}".into()).await?;
    wait_refused(errors, "publish", subject).await;
    Ok(())
}

/// Containers under `rota nats-config`: the CLI uploads as the administrators' user, the
/// server moves the bundle into the app's bucket, and app a's worker user runs it; that user
/// cannot read app b's bucket nor write any bucket, and the administrators' user cannot write
/// an app's bucket (only the upload bucket, which no worker reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_buckets_are_read_by_their_apps_workers_and_written_by_servers_only()
-> anyhow::Result<()> {
    let Authorized { mut d, users, url } = authorized().await?;
    let state = tempfile::tempdir()?;
    let mut wa = d.worker_config("a", "wa");
    wa.nats = login(&url, &users, "rota-worker-a");
    wa.allow_containers = true;
    wa.state_dir = Some(state.path().join("wa"));
    d.start_worker(wa, ProcessorRegistry::new()).await?;

    let bundle = state.path().join("bundle");
    std::fs::create_dir_all(&bundle)?;
    std::fs::write(
        bundle.join("rota-container.toml"),
        "[processors.hello]\ncommand = [\"sh\", \"run.sh\"]\n",
    )?;
    std::fs::write(bundle.join("run.sh"), "cat > /dev/null\necho from-bundle\n")?;
    // Bytes that do not compress, so that the bundle spans several object store chunks
    // (128 KiB each) and the worker reads each of them.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let noise: Vec<u8> = (0..300 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state.to_le_bytes()[0]
        })
        .collect();
    std::fs::write(bundle.join("noise.bin"), noise)?;
    let bundle = bundle.display().to_string();
    admin_cli(
        &url,
        &users,
        &d.token.reveal(),
        &[
            "container",
            "upload",
            "--app",
            "a",
            "--name",
            "demo",
            "--version",
            "1",
            &bundle,
        ],
    )
    .await?;
    let mut job = shell_job("a", "bundled", "");
    job.spec.processor = "container".into();
    job.spec.container = Some(rota_shared::container::ContainerJob {
        container: rota_shared::container::ContainerRef::parse("demo")?,
        entry: "hello".into(),
    });
    let job = d.create_job(job).await?;
    let id = d.run(job.id).await?;
    let done = d.wait_terminal(id, Duration::from_secs(30)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    assert_eq!(done.instance.result.as_deref(), Some("from-bundle"));
    let listed = d
        .admin
        .call(&rota_shared::admin::ContainerList { app: "a".into() })
        .await?;
    assert!(
        listed[0].container.size > 2 * 128 * 1024,
        "the bundle spans several chunks: {listed:?}"
    );

    // App a's worker user: no writes to its own bucket, no reads of b's or of uploads.
    let (worker_a, errors) = watched(&url, &users, "rota-worker-a", "rota.inbox.app.a").await?;
    for subject in [
        "$O.rota-containers-a.C.swap",
        "$JS.API.STREAM.PURGE.OBJ_rota-containers-a",
        "$JS.API.STREAM.DELETE.OBJ_rota-containers-a",
        "$JS.API.STREAM.INFO.OBJ_rota-containers-b",
        "$JS.API.CONSUMER.CREATE.OBJ_rota-containers-b",
        "$JS.API.DIRECT.GET.OBJ_rota-containers-b",
        "$JS.API.STREAM.INFO.OBJ_rota-container-uploads",
        // No consumers, even on its own bucket: it would choose where JetStream delivers.
        "$JS.API.CONSUMER.CREATE.OBJ_rota-containers-a",
    ] {
        publish_refused(&worker_a, &errors, subject).await?;
    }
    // The administrators' user writes uploads only: never an app's bucket, nor does it read
    // one, nor choose the upload bucket's configuration.
    let (admin, errors) = watched(&url, &users, "rota-admin", "rota.inbox.admin").await?;
    for subject in [
        "$O.rota-containers-a.C.swap",
        "$JS.API.STREAM.PURGE.OBJ_rota-containers-a",
        "$JS.API.STREAM.CREATE.OBJ_rota-containers-a",
        "$JS.API.DIRECT.GET.OBJ_rota-containers-a",
        "$JS.API.CONSUMER.CREATE.OBJ_rota-containers-a",
        "$JS.API.STREAM.CREATE.OBJ_rota-container-uploads",
        "$JS.API.STREAM.UPDATE.OBJ_rota-container-uploads",
        "$JS.API.STREAM.DELETE.OBJ_rota-container-uploads",
        "$JS.API.CONSUMER.CREATE.OBJ_rota-container-uploads",
    ] {
        publish_refused(&admin, &errors, subject).await?;
    }
    d.shutdown().await;
    Ok(())
}
