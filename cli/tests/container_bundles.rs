//! Containers end to end: bundles uploaded with the CLI to the deployment's NATS object store
//! (JetStream) or served over HTTP, deployed to `rota worker` processes, checked and unpacked,
//! and their entries run as processors (a Python script here).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::*;
use rota_shared::container::{ContainerJob, ContainerRef};
use rota_tests::cluster::{Deployment, SECRET, shell_job};
use rota_tests::free_port;
use rota_tests::wait;
use rota_tests::worker_process::WorkerProcess;
use tempfile::TempDir;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn rota() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rota"))
}

/// Runs the CLI against the deployment; returns its exit code, stdout and stderr.
async fn cli(d: &Deployment, args: &[&str]) -> (i32, String, String) {
    d.cli(rota(), args).await
}

/// The versions of app `app`'s containers, as `container.list` answers.
async fn listed(d: &Deployment) -> anyhow::Result<Vec<ContainerListing>> {
    Ok(d.admin.call(&ContainerList { app: "app".into() }).await?)
}

/// The arguments of `rota container upload` of a bundle (a directory or a `.tar.gz`) to app
/// `app`.
fn upload_args<'a>(name: &'a str, version: &'a str, path: &'a str) -> [&'a str; 9] {
    [
        "container",
        "upload",
        "--app",
        "app",
        "--name",
        name,
        "--version",
        version,
        path,
    ]
}

async fn ok(d: &Deployment, args: &[&str]) -> String {
    let (code, out, err) = cli(d, args).await;
    assert_eq!(code, 0, "rota {args:?} failed: {err}");
    out
}

/// A bundle directory whose `hello` entry is a Python script: it logs a line, reads the work
/// from standard input and prints `VERSION:PARAMS` last (the result). With `gate`, it first
/// waits until that file exists.
fn bundle(dir: &Path, version: &str, gate: Option<&Path>) -> PathBuf {
    let root = dir.join(format!("bundle-{version}"));
    std::fs::create_dir_all(&root).expect("a bundle directory");
    std::fs::write(
        root.join("rota-container.toml"),
        "[processors.hello]\ncommand = [\"python3\", \"main.py\"]\nenv = { GREETING = \"hi\" }\n",
    )
    .expect("a manifest");
    let wait = match gate {
        Some(path) => format!(
            "import os, time\nwhile not os.path.exists({:?}):\n    time.sleep(0.05)\n",
            path.display().to_string()
        ),
        None => String::new(),
    };
    std::fs::write(
        root.join("main.py"),
        format!(
            "import json, os, sys\n{wait}work = json.load(sys.stdin)\n\
             print(os.environ['GREETING'], 'from', os.environ['ROTA_CONTAINER'], flush=True)\n\
             print('{version}:' + (work['instance_params'] or ''))\n"
        ),
    )
    .expect("a script");
    root
}

struct Setup {
    d: Deployment,
    dir: TempDir,
    /// Killed when the test ends.
    _workers: Vec<WorkerProcess>,
}

/// A `rota worker` process of `app` with its own state directory (and so its own container
/// cache) under `dir`, optionally serving `/metrics` on `http`.
async fn start_worker(
    d: &Deployment,
    dir: &Path,
    id: &str,
    allow_containers: bool,
    http: Option<SocketAddr>,
) -> anyhow::Result<WorkerProcess> {
    let state = dir.join(id);
    std::fs::create_dir_all(&state)?;
    let http = http.map(|a| a.to_string());
    let mut extra = vec!["--heartbeat-interval", "500ms"];
    if allow_containers {
        extra.push("--allow-containers");
    }
    if let Some(addr) = &http {
        extra.extend(["--http-listen", addr.as_str()]);
    }
    WorkerProcess::start_with(
        rota(),
        id,
        "app",
        SECRET,
        &d.nats.url(),
        &state,
        &d.admin,
        &extra,
    )
    .await
}

/// A server, and worker processes `w1` and `w2` that run containers, plus `w3` that does not.
async fn setup() -> anyhow::Result<Setup> {
    let d = Deployment::start().await?;
    d.create_app("app").await?;
    let dir = tempfile::Builder::new()
        .prefix("rota-containers-")
        .tempdir()?;
    let mut workers = Vec::new();
    for (id, allow) in [("w1", true), ("w2", true), ("w3", false)] {
        workers.push(start_worker(&d, dir.path(), id, allow, None).await?);
    }
    Ok(Setup {
        d,
        dir,
        _workers: workers,
    })
}

async fn container_job(d: &Deployment, name: &str, container: &str) -> anyhow::Result<i64> {
    let mut job = shell_job("app", name, "");
    job.spec.processor = "container".into();
    job.spec.container = Some(ContainerJob {
        container: ContainerRef::parse(container)?,
        entry: "hello".into(),
    });
    // The two workers that run containers.
    job.spec.designated_workers = vec!["w1".into(), "w2".into()];
    Ok(d.create_job(job).await?.id)
}

async fn run(d: &Deployment, job: i64, params: &str) -> anyhow::Result<i64> {
    Ok(d.admin
        .call(&JobRun {
            id: job,
            params: Some(params.to_owned()),
            delay_ms: 0,
            idempotency_key: None,
        })
        .await?
        .instance_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uploaded_bundle_is_deployed_and_its_python_entry_runs() -> anyhow::Result<()> {
    let Setup { d, dir, _workers } = setup().await?;
    let v1 = bundle(dir.path(), "1", None);
    let v1 = v1.display().to_string();
    ok(&d, &upload_args("demo", "1", &v1)).await;
    // A version is recorded once.
    let (code, _, err) = cli(&d, &upload_args("demo", "1", &v1)).await;
    assert_ne!(code, 0);
    assert!(err.contains("exists already"), "{err}");

    // Deployed to the live workers: the two that run containers take it, the third says why
    // it does not.
    let (code, out, err) = cli(
        &d,
        &["container", "deploy", "--app", "app", "demo", "--json"],
    )
    .await;
    assert_ne!(code, 0, "a worker refused, so the command fails: {out}");
    let rollout: ContainerRollout = serde_json::from_str(&out)?;
    let by = |w: &str| rollout.workers.iter().find(|o| o.worker_id == w).cloned();
    assert!(
        by("w1").is_some_and(|o| o.ok && o.message == "downloaded"),
        "{rollout:?}"
    );
    assert!(by("w2").is_some_and(|o| o.ok), "{rollout:?}");
    assert!(
        by("w3").is_some_and(|o| !o.ok && o.message.contains("--allow-containers")),
        "{rollout:?} {err}"
    );
    // Both workers list it in their heartbeats.
    wait::until("both workers to list demo@1", RUN_TIMEOUT, || async {
        let list = listed(&d).await.ok()?;
        let l = list.iter().find(|l| l.container.version == "1")?;
        (l.workers == ["w1", "w2"]).then_some(())
    })
    .await;
    let table = ok(&d, &["container", "list", "--app", "app"]).await;
    assert!(table.contains("demo") && table.contains("w1,w2"), "{table}");

    // A job runs its entry: the output is the log, the last line the result.
    let job = container_job(&d, "hello", "demo").await?;
    let id = run(&d, job, "there").await?;
    let info = d.wait_terminal(id, RUN_TIMEOUT).await;
    assert_eq!(info.instance.status, InstanceStatus::Succeeded, "{info:?}");
    assert_eq!(info.instance.result.as_deref(), Some("1:there"));
    let logs = d.logs(id).await?;
    assert!(logs.iter().any(|l| l.text == "hi from demo"), "{logs:#?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_instance_keeps_its_version_while_a_new_one_is_deployed() -> anyhow::Result<()> {
    let Setup { d, dir, _workers } = setup().await?;
    let gate = dir.path().join("go");
    let v1 = bundle(dir.path(), "1", Some(&gate)).display().to_string();
    let v2 = bundle(dir.path(), "2", None).display().to_string();
    ok(&d, &upload_args("demo", "1", &v1)).await;
    let job = container_job(&d, "hello", "demo").await?;
    let first = run(&d, job, "a").await?;
    d.wait_status(first, InstanceStatus::Running, RUN_TIMEOUT)
        .await;
    ok(&d, &upload_args("demo", "2", &v2)).await;
    let (_, out, _) = cli(
        &d,
        &["container", "deploy", "--app", "app", "demo", "--json"],
    )
    .await;
    let rollout: ContainerRollout = serde_json::from_str(&out)?;
    assert_eq!(rollout.container.version, "2");
    std::fs::write(&gate, "")?;
    let info = d.wait_terminal(first, RUN_TIMEOUT).await;
    assert_eq!(info.instance.result.as_deref(), Some("1:a"), "{info:?}");
    let second = run(&d, job, "b").await?;
    let info = d.wait_terminal(second, RUN_TIMEOUT).await;
    assert_eq!(info.instance.result.as_deref(), Some("2:b"), "{info:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_changed_in_the_object_store_is_refused() -> anyhow::Result<()> {
    let Setup { d, dir, _workers } = setup().await?;
    let v1 = bundle(dir.path(), "1", None).display().to_string();
    ok(&d, &upload_args("demo", "1", &v1)).await;
    // Someone with access to the object store swaps the bundle for one of the same size.
    let js = async_nats::jetstream::new(async_nats::connect(d.nats.url()).await?);
    let listed = listed(&d).await?;
    let rota_shared::container::ContainerSource::ObjectStore { bucket, object } =
        listed[0].container.source.clone()
    else {
        panic!("uploaded to the object store: {listed:?}");
    };
    let store = js.get_object_store(&bucket).await?;
    let size = store.info(&object).await?.size;
    let fake = vec![b'x'; size];
    store.put(object.as_str(), &mut fake.as_slice()).await?;
    let job = container_job(&d, "hello", "demo").await?;
    let id = run(&d, job, "x").await?;
    let info = d.wait_terminal(id, RUN_TIMEOUT).await;
    assert_eq!(info.instance.status, InstanceStatus::Failed, "{info:?}");
    let result = info.instance.result.unwrap_or_default();
    assert!(result.contains("digest mismatch"), "{result}");
    Ok(())
}

/// A `.tar.gz` of a directory, as `rota container upload` packs one.
fn pack(dir: &Path) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    tar.append_dir_all(".", dir).expect("packed");
    tar.into_inner()
        .and_then(|gz| gz.finish())
        .expect("an archive")
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Serves `body` to every GET on a free port of 127.0.0.1 and counts the requests.
async fn serve(body: Vec<u8>) -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/bundle.tar.gz", listener.local_addr()?);
    let served = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&served);
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                count.fetch_add(1, Ordering::SeqCst);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = socket.write_all(reply.as_bytes()).await;
                let _ = socket.write_all(&body).await;
            });
        }
    });
    Ok((url, served))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_served_over_http_works_and_a_restarted_worker_reuses_its_cache()
-> anyhow::Result<()> {
    let Setup {
        d,
        dir,
        _workers: mut workers,
    } = setup().await?;
    let bytes = pack(&bundle(dir.path(), "1", None));
    let (url, served) = serve(bytes.clone()).await?;
    let sha = sha256_hex(&bytes);
    // Without --size the CLI fetches the bundle once to learn it, and so a wrong digest is
    // told at once, with nothing recorded.
    let wrong = "0".repeat(64);
    let upload = |sha: &str| {
        [
            "container",
            "upload",
            "--app",
            "app",
            "--name",
            "web",
            "--version",
            "1",
            "--url",
            &url,
            "--sha256",
            sha,
        ]
        .map(str::to_owned)
    };
    let args = upload(&wrong);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = cli(&d, &args).await;
    assert_ne!(code, 0);
    assert!(
        err.contains(&format!("has sha256 {sha}, not {wrong}")),
        "{err}"
    );
    assert!(listed(&d).await?.is_empty());
    let args = upload(&sha);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&d, &args).await;
    let listed = listed(&d).await?;
    assert_eq!(listed[0].container.size, bytes.len() as u64, "{listed:?}");
    let checked = served.load(Ordering::SeqCst);
    assert_eq!(checked, 2, "the CLI fetched it once per upload");
    let mut job = shell_job("app", "web", "");
    job.spec.processor = "container".into();
    job.spec.container = Some(ContainerJob {
        container: ContainerRef::parse("web@1")?,
        entry: "hello".into(),
    });
    job.spec.designated_workers = vec!["w1".into()];
    let job = d.create_job(job).await?.id;
    let first = d.wait_terminal(run(&d, job, "a").await?, RUN_TIMEOUT).await;
    assert_eq!(first.instance.result.as_deref(), Some("1:a"), "{first:?}");
    assert_eq!(
        served.load(Ordering::SeqCst),
        checked + 1,
        "downloaded once"
    );

    // The same worker started again (same id, same state directory) uses its cache, and
    // sweeps away what its abrupt end left (a half-unpacked bundle here).
    workers
        .iter_mut()
        .find(|w| w.id() == "w1")
        .expect("w1 runs")
        .kill()
        .await;
    let half = cache_dir(dir.path(), "w1").join(".tmp-half");
    std::fs::create_dir_all(half.join("x"))?;
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let _again = start_worker(&d, dir.path(), "w1", true, Some(addr)).await?;
    let second = d.wait_terminal(run(&d, job, "b").await?, RUN_TIMEOUT).await;
    assert_eq!(second.instance.result.as_deref(), Some("1:b"), "{second:?}");
    assert_eq!(
        served.load(Ordering::SeqCst),
        checked + 1,
        "not downloaded again"
    );
    assert!(!half.exists(), "the leftover was swept away");
    let scrape = rota_tests::scrape::Scrape::parse(
        &rota_observe::probe::get(addr, "/metrics", Duration::from_secs(5))
            .await?
            .body,
    )?;
    let fetches = |result| scrape.sum("rota_worker_container_fetches_total", &[("result", result)]);
    assert_eq!(
        (fetches("downloaded"), fetches("cache_hit")),
        (0.0, 1.0),
        "the restarted worker took the bundle from its cache"
    );
    Ok(())
}

/// A `.tar.gz` with one entry written raw, so that it may name any path.
fn evil_archive(path: &str) -> Vec<u8> {
    let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    let manifest = b"[processors.hello]\ncommand = [\"python3\", \"main.py\"]\n";
    let mut header = tar::Header::new_gnu();
    header.set_path("rota-container.toml").expect("a path");
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, &manifest[..]).expect("an entry");
    let data = b"pwned";
    let mut header = tar::Header::new_gnu();
    let name = &mut header.as_gnu_mut().expect("a GNU header").name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append(&header, &data[..]).expect("an entry");
    builder
        .into_inner()
        .and_then(|gz| gz.finish())
        .expect("an archive")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malicious_archive_is_refused_and_writes_nothing_outside() -> anyhow::Result<()> {
    let Setup { d, dir, _workers } = setup().await?;
    let archive = dir.path().join("evil.tar.gz");
    std::fs::write(&archive, evil_archive("../../escape"))?;
    let archive = archive.display().to_string();
    ok(&d, &upload_args("evil", "1", &archive)).await;
    let job = container_job(&d, "evil", "evil").await?;
    let info = d.wait_terminal(run(&d, job, "").await?, RUN_TIMEOUT).await;
    assert_eq!(info.instance.status, InstanceStatus::Failed, "{info:?}");
    let result = info.instance.result.unwrap_or_default();
    assert!(result.contains("escapes its directory"), "{result}");
    for w in ["w1", "w2"] {
        let state = dir.path().join(w);
        assert!(
            !state.join("escape").exists(),
            "{w} wrote outside its cache"
        );
        assert!(!state.join("containers").join("escape").exists());
    }
    assert!(!dir.path().join("escape").exists());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_containers_refuses_a_container_dispatch() -> anyhow::Result<()> {
    let Setup { d, _workers, .. } = setup().await?;
    let nats = async_nats::connect(d.nats.url()).await?;
    let subject = rota_shared::Subjects::default().to_worker(
        "app",
        "w3",
        rota_shared::subject::WorkerEndpoint::Dispatch,
    );
    let dispatch = rota_shared::message::DispatchRequest {
        server_id: "s1".into(),
        app_id: 1,
        job_id: 1,
        job_name: "c".into(),
        instance_id: 77,
        attempt: 1,
        processor: "container".into(),
        config: String::new(),
        job_params: None,
        instance_params: None,
        timeout_ms: 0,
        expected_trigger_time_ms: None,
        frequent: None,
        deadline_ms: None,
        start_at_ms: None,
        execution: Default::default(),
        task_retries: 0,
        container: Some(ContainerJob {
            container: ContainerRef::parse("demo")?,
            entry: "hello".into(),
        }),
    };
    let credential = rota_tests::bus::server_credential("app", SECRET, "w3", "s1")?;
    let reply = rota_tests::bus::raw_request(
        &nats,
        &subject,
        serde_json::to_vec(&dispatch)?,
        Some(&credential),
        None,
    )
    .await?;
    let refused = rota_shared::envelope::decode_reply::<serde_json::Value>(&reply.payload)
        .expect_err("the worker refuses");
    assert_eq!(refused.code, rota_shared::ErrorCode::Rejected);
    assert!(
        refused.message.contains("--allow-containers"),
        "{}",
        refused.message
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_need_an_admin_token_and_sharded_jobs_run_container_entries() -> anyhow::Result<()>
{
    let Setup { d, dir, _workers } = setup().await?;
    let v1 = bundle(dir.path(), "1", None).display().to_string();
    // An operator of the app may run jobs, not change what code they run.
    let operator = d.token(Role::Operator, Some("app")).await?;
    let out = tokio::process::Command::new(rota())
        .args(upload_args("demo", "1", &v1))
        .env("ROTA_NATS_URL", d.nats.url())
        .env("ROTA_TOKEN", operator.reveal())
        .env_remove("ROTA_CONFIG")
        .env_remove("ROTA_PREFIX")
        .output()
        .await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin"),
        "the refusal names the role it needs: {err}"
    );
    let listed = listed(&d).await?;
    assert!(listed.is_empty(), "nothing was recorded: {listed:?}");
    assert_eq!(
        objects(&d, UPLOADS).await?,
        Vec::<String>::new(),
        "the refused upload was dropped"
    );

    // Each item of a sharded job runs the entry, with its task on standard input.
    ok(&d, &upload_args("demo", "1", &v1)).await;
    let mut job = shell_job("app", "sharded", "");
    job.spec.processor = "container".into();
    job.spec.container = Some(ContainerJob {
        container: ContainerRef::parse("demo")?,
        entry: "hello".into(),
    });
    job.spec.designated_workers = vec!["w1".into(), "w2".into()];
    job.spec.execution = rota_shared::task::Execution::Sharding {
        shards: rota_shared::task::shard_count(4),
    };
    let job = d.create_job(job).await?.id;
    let info = d.wait_terminal(run(&d, job, "s").await?, RUN_TIMEOUT).await;
    assert_eq!(info.instance.status, InstanceStatus::Succeeded, "{info:?}");
    let tasks = info.instance.tasks.clone().expect("task counts");
    assert_eq!((tasks.total, tasks.succeeded), (4, 4), "{tasks:?}");
    let logs = d.logs(info.instance.id).await?;
    assert_eq!(
        logs.iter()
            .filter(|l| l.text.ends_with("hi from demo"))
            .count(),
        4,
        "each item ran the entry once: {logs:#?}"
    );
    Ok(())
}

/// The names of the objects a bucket holds (an error when there is no such bucket).
async fn objects(d: &Deployment, bucket: &str) -> anyhow::Result<Vec<String>> {
    use futures::StreamExt;
    let js = async_nats::jetstream::new(async_nats::connect(d.nats.url()).await?);
    let store = js.get_object_store(bucket).await?;
    let mut list = store.list().await?;
    let mut names = Vec::new();
    while let Some(info) = list.next().await {
        names.push(info?.name);
    }
    names.sort();
    Ok(names)
}

const UPLOADS: &str = "rota-container-uploads";

/// Writes, by hand, an upload `name` whose metadata describes `bundle` in two chunks, of which
/// only `chunk` (if any) is stored, and returns the request that records it as `demo@version`.
async fn crafted(
    js: &async_nats::jetstream::Context,
    name: &str,
    chunk: Option<&[u8]>,
    bundle: &[u8],
    version: &str,
) -> anyhow::Result<ContainerCreate> {
    use base64::Engine;
    use sha2::Digest;
    let nuid = format!("crafted-{version}");
    if let Some(chunk) = chunk {
        js.publish(format!("$O.{UPLOADS}.C.{nuid}"), chunk.to_vec().into())
            .await?
            .await?;
    }
    let sha = sha2::Sha256::digest(bundle);
    let meta = serde_json::json!({
        "name": name,
        "bucket": UPLOADS,
        "nuid": nuid,
        "size": bundle.len(),
        "chunks": 2,
        "digest": format!("SHA-256={}", base64::engine::general_purpose::URL_SAFE.encode(sha)),
    });
    let subject = format!(
        "$O.{UPLOADS}.M.{}",
        base64::engine::general_purpose::URL_SAFE.encode(name)
    );
    js.publish(subject, serde_json::to_vec(&meta)?.into())
        .await?
        .await?;
    let mut create = create_from(UPLOADS, name, &sha256_hex(bundle), bundle.len() as u64);
    create.version = version.to_owned();
    Ok(create)
}

/// `container.create` with an upload, as the CLI sends it.
fn create_from(bucket: &str, object: &str, sha256: &str, size: u64) -> ContainerCreate {
    ContainerCreate {
        app: "app".into(),
        name: "demo".into(),
        version: "1".into(),
        sha256: sha256.into(),
        size,
        source: rota_shared::container::ContainerSource::ObjectStore {
            bucket: bucket.into(),
            object: object.into(),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_records_only_an_upload_that_matches_and_moves_it_into_the_apps_bucket()
-> anyhow::Result<()> {
    let Setup { d, dir, _workers } = setup().await?;
    let bytes = pack(&bundle(dir.path(), "1", None));
    let (sha, size) = (sha256_hex(&bytes), bytes.len() as u64);
    let js = async_nats::jetstream::new(async_nats::connect(d.nats.url()).await?);
    // The server created the upload bucket when it started.
    let uploads = js.get_object_store(UPLOADS).await?;
    let refused = |e: rota_client::ClientError| e.remote().cloned().expect("an error reply");

    // Only the upload bucket: an admin of this app cannot point it at another app's bundles.
    let e = refused(
        d.admin
            .call(&create_from(
                "rota-containers-other",
                "demo/1/x",
                &sha,
                size,
            ))
            .await
            .expect_err("another bucket"),
    );
    assert_eq!(e.code, rota_shared::ErrorCode::InvalidArgument, "{e:?}");
    assert!(e.message.contains(UPLOADS), "{e:?}");

    // Bytes that are not what the request records: refused, and the upload dropped.
    uploads.put("app/wrong", &mut bytes.as_slice()).await?;
    let e = refused(
        d.admin
            .call(&create_from(UPLOADS, "app/wrong", &"0".repeat(64), size))
            .await
            .expect_err("a wrong digest"),
    );
    assert_eq!(e.code, rota_shared::ErrorCode::InvalidArgument, "{e:?}");
    assert!(e.message.contains("not what was recorded"), "{e:?}");
    uploads.put("app/short", &mut bytes.as_slice()).await?;
    let e = refused(
        d.admin
            .call(&create_from(UPLOADS, "app/short", &sha, size - 1))
            .await
            .expect_err("a wrong size"),
    );
    assert!(e.message.contains("not what was recorded"), "{e:?}");
    assert_eq!(objects(&d, UPLOADS).await?, Vec::<String>::new());
    // An upload that is not there.
    let e = refused(
        d.admin
            .call(&create_from(UPLOADS, "app/never", &sha, size))
            .await
            .expect_err("no such upload"),
    );
    assert_eq!(e.code, rota_shared::ErrorCode::NotFound, "{e:?}");
    assert!(listed(&d).await?.is_empty(), "nothing was recorded");
    assert_eq!(
        objects(&d, "rota-containers-app").await?,
        Vec::<String>::new(),
        "the refused copies were deleted"
    );

    // The right bytes: moved into the app's bucket, named by their digest, and the upload
    // dropped.
    uploads.put("app/right", &mut bytes.as_slice()).await?;
    let info = d
        .admin
        .call(&create_from(UPLOADS, "app/right", &sha, size))
        .await?;
    let rota_shared::container::ContainerSource::ObjectStore { bucket, object } = &info.source
    else {
        panic!("an object store source: {info:?}");
    };
    assert_eq!(bucket, "rota-containers-app");
    assert!(object.starts_with(&format!("demo/1/{sha}/")), "{object}");
    assert_eq!(objects(&d, UPLOADS).await?, Vec::<String>::new());
    assert_eq!(
        objects(&d, "rota-containers-app").await?,
        vec![object.clone()]
    );

    // A link (here to the recorded bundle) would have the server read another bucket with
    // its own rights: refused.
    let target = js
        .get_object_store("rota-containers-app")
        .await?
        .info(object.as_str())
        .await?;
    uploads.add_link("app/link", &target).await?;
    let mut linked = create_from(UPLOADS, "app/link", &sha, size);
    linked.version = "2".into();
    let e = refused(d.admin.call(&linked).await.expect_err("a link"));
    assert!(e.message.contains("link"), "{e:?}");
    // Uploads whose metadata an administrator wrote by hand, naming chunks that are not
    // there. Half of them: the copy ends at the read error and deletes what it wrote.
    let e = refused(
        d.admin
            .call(
                &crafted(
                    &js,
                    "app/half",
                    Some(&bytes[..bytes.len() / 2]),
                    &bytes,
                    "3",
                )
                .await?,
            )
            .await
            .expect_err("a chunk short"),
    );
    assert_eq!(e.code, rota_shared::ErrorCode::InvalidArgument, "{e:?}");
    assert!(e.message.contains("not what was recorded"), "{e:?}");
    // None at all: the copy waits for them until its deadline, then ends, and the request
    // slot is free again.
    let e = refused(
        d.admin
            .call(&crafted(&js, "app/stalled", None, &bytes, "4").await?)
            .await
            .expect_err("no chunks"),
    );
    assert_eq!(e.code, rota_shared::ErrorCode::Unavailable, "{e:?}");
    assert!(e.message.contains("did not end within"), "{e:?}");
    assert_eq!(
        objects(&d, "rota-containers-app").await?,
        vec![object.clone()],
        "nothing but the recorded bundle is in the app's bucket"
    );
    // Nor are any chunks left of the refused copies: only the recorded bundle's.
    let chunks = {
        use futures::TryStreamExt;
        js.get_stream("OBJ_rota-containers-app")
            .await?
            .info_with_subjects("$O.rota-containers-app.C.>")
            .await?
            .try_collect::<Vec<(String, usize)>>()
            .await?
    };
    assert_eq!(
        chunks
            .iter()
            .map(|(subject, _)| subject.as_str())
            .collect::<Vec<_>>(),
        [format!("$O.rota-containers-app.C.{}", target.nuid)],
        "{chunks:?}"
    );
    // A second upload of the same version is refused, and its upload dropped too.
    uploads.put("app/again", &mut bytes.as_slice()).await?;
    let e = refused(
        d.admin
            .call(&create_from(UPLOADS, "app/again", &sha, size))
            .await
            .expect_err("the version exists"),
    );
    assert_eq!(e.code, rota_shared::ErrorCode::Conflict, "{e:?}");
    assert_eq!(objects(&d, UPLOADS).await?, Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destroyed_version_leaves_its_workers_the_listing_and_the_bucket() -> anyhow::Result<()> {
    let Setup { d, dir, _workers } = setup().await?;
    let v1 = bundle(dir.path(), "1", None).display().to_string();
    ok(&d, &upload_args("demo", "1", &v1)).await;
    // w3 does not run containers, and says so.
    let (_, deployed, _) = cli(
        &d,
        &["--json", "container", "deploy", "--app", "app", "demo"],
    )
    .await;
    let deployed: ContainerRollout = serde_json::from_str(&deployed)?;
    let mut on: Vec<&str> = deployed
        .workers
        .iter()
        .filter(|w| w.ok)
        .map(|w| w.worker_id.as_str())
        .collect();
    on.sort_unstable();
    assert_eq!(on, ["w1", "w2"], "{deployed:?}");
    for w in ["w1", "w2"] {
        wait::until(
            &format!("{w}'s heartbeat to list demo@1"),
            Duration::from_secs(15),
            || async { w_has(&d, w, "1").await.ok()?.then_some(()) },
        )
        .await;
    }

    let (_, destroyed, _) = cli(
        &d,
        &[
            "--json",
            "container",
            "destroy",
            "--app",
            "app",
            "demo",
            "--version",
            "1",
        ],
    )
    .await;
    let destroyed: ContainerRollout = serde_json::from_str(&destroyed)?;
    assert!(
        ["w1", "w2"]
            .iter()
            .all(|w| destroyed.workers.iter().any(|o| o.worker_id == *w && o.ok)),
        "{destroyed:?}"
    );
    assert!(listed(&d).await?.is_empty(), "no longer listed");
    assert_eq!(
        objects(&d, "rota-containers-app").await?,
        Vec::<String>::new(),
        "its bundle left the app's bucket"
    );
    for w in ["w1", "w2"] {
        wait::until(
            &format!("{w}'s heartbeat to drop demo@1"),
            Duration::from_secs(15),
            || async { (!w_has(&d, w, "1").await.ok()?).then_some(()) },
        )
        .await;
        assert!(
            !cache_dir(dir.path(), w).read_dir()?.any(|e| e
                .map(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .unwrap_or(false)),
            "{w}'s cache no longer records it"
        );
    }
    // A job naming it fails with the reason.
    let job = container_job(&d, "gone", "demo@1").await?;
    let info = d.wait_terminal(run(&d, job, "x").await?, RUN_TIMEOUT).await;
    assert_eq!(info.instance.status, InstanceStatus::Failed, "{info:?}");
    let result = info.instance.result.unwrap_or_default();
    assert!(result.contains("demo@1"), "{result}");
    // Destroying it again says it is not there.
    let (code, _, err) = cli(
        &d,
        &[
            "container",
            "destroy",
            "--app",
            "app",
            "demo",
            "--version",
            "1",
        ],
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("demo@1"), "{err}");
    Ok(())
}

/// A worker's container cache, in its state directory.
fn cache_dir(dir: &Path, worker: &str) -> PathBuf {
    dir.join(worker)
        .join("containers")
        .join(format!("app-{worker}"))
}

/// Whether a worker's heartbeats list `demo` at `version`.
async fn w_has(d: &Deployment, worker: &str, version: &str) -> anyhow::Result<bool> {
    let list = d
        .admin
        .call(&WorkerList {
            app: Some("app".into()),
            ..Default::default()
        })
        .await?;
    Ok(list.items.iter().any(|w| {
        w.worker_id == worker
            && w.containers
                .iter()
                .any(|c| c.name == "demo" && c.version == version)
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_or_a_stop_ends_every_process_of_a_container_entry() -> anyhow::Result<()> {
    use rota_tests::groups;
    let Setup { d, dir, _workers } = setup().await?;
    // The entry leaves a background sleep behind (a grandchild it does not wait for): only
    // killing the whole group ends it.
    let root = dir.path().join("sleeper");
    std::fs::create_dir_all(&root)?;
    std::fs::write(
        root.join("rota-container.toml"),
        "[processors.hello]\ncommand = [\"sh\", \"run.sh\"]\n",
    )?;
    std::fs::write(
        root.join("run.sh"),
        "cat > /dev/null\necho $$ > \"$ROTA_INSTANCE_PARAMS\"\nsleep 600 & sleep 600\n",
    )?;
    let root = root.display().to_string();
    ok(&d, &upload_args("sleeper", "1", &root)).await;
    let mut job = shell_job("app", "sleeper", "");
    job.spec.processor = "container".into();
    job.spec.container = Some(ContainerJob {
        container: ContainerRef::parse("sleeper")?,
        entry: "hello".into(),
    });
    job.spec.designated_workers = vec!["w1".into()];
    job.spec.timeout_ms = 1_000;
    let timed = d.create_job(job.clone()).await?.id;
    job.spec.name = "stopped".into();
    job.spec.timeout_ms = 0;
    let stopped = d.create_job(job).await?.id;

    // A timeout.
    let pid_file = dir.path().join("timed.pid");
    let id = run(&d, timed, &pid_file.display().to_string()).await?;
    let pgid = groups::read_pid_file(&pid_file).await;
    let done = d.wait_terminal(id, RUN_TIMEOUT).await;
    assert_eq!(done.instance.status, InstanceStatus::Failed, "{done:?}");
    assert_eq!(
        done.instance.result.as_deref(),
        Some("timeout: exceeded 1000 ms"),
        "{done:?}"
    );
    groups::wait_gone(pgid, "the timed-out entry", Duration::from_secs(10)).await;

    // A stop.
    let pid_file = dir.path().join("stopped.pid");
    let id = run(&d, stopped, &pid_file.display().to_string()).await?;
    let pgid = groups::read_pid_file(&pid_file).await;
    assert!(!groups::is_gone(pgid), "the entry runs");
    let info = d.admin.call(&InstanceStop(InstanceId { id })).await?;
    assert_eq!(info.instance.status, InstanceStatus::Stopped, "{info:?}");
    groups::wait_gone(pgid, "the stopped entry", Duration::from_secs(10)).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_recreates_an_upload_bucket_someone_else_configured() -> anyhow::Result<()> {
    use async_nats::jetstream::stream;
    let nats = rota_tests::nats::NatsServer::start()?;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await?);
    // Created before any server, by someone who wants every stored upload republished.
    js.create_stream(stream::Config {
        name: format!("OBJ_{UPLOADS}"),
        subjects: vec![format!("$O.{UPLOADS}.C.>"), format!("$O.{UPLOADS}.M.>")],
        republish: Some(stream::Republish {
            source: format!("$O.{UPLOADS}.C.>"),
            destination: "stolen.>".into(),
            headers_only: false,
        }),
        allow_rollup: true,
        ..Default::default()
    })
    .await?;
    let options = rota_transport::NatsOptions::new(nats.url());
    let mut d = Deployment::on(nats, options).await?;
    d.start_server_with(d.server_config("s1")).await?;
    let mut stream = js.get_stream(format!("OBJ_{UPLOADS}")).await?;
    let config = stream.info().await?.config.clone();
    assert!(config.republish.is_none(), "{config:?}");
    assert_eq!(config.max_age, rota_shared::container::UPLOAD_MAX_AGE);
    // A bucket servers made survives the next server's start, uploads and all.
    js.get_object_store(UPLOADS)
        .await?
        .put("app/waiting", &mut &b"bytes"[..])
        .await?;
    d.start_server_with(d.server_config("s2")).await?;
    assert_eq!(objects(&d, UPLOADS).await?, ["app/waiting"]);
    d.shutdown().await;
    Ok(())
}
