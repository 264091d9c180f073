//! Containers end to end: bundles uploaded with the CLI to the deployment's NATS object store
//! (JetStream) or served over HTTP, deployed to workers, checked and unpacked, and their entries
//! run as processors (a Python script here).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::*;
use rota_shared::container::{ContainerJob, ContainerRef};
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_worker::ProcessorRegistry;
use tempfile::TempDir;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

fn rota() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rota"))
}

/// Runs the CLI against the deployment; returns its exit code, stdout and stderr.
async fn cli(d: &Deployment, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(rota())
        .args(args)
        .env("ROTA_NATS_URL", d.nats.url())
        .env("ROTA_TOKEN", d.token.reveal())
        .env_remove("ROTA_CONFIG")
        .env_remove("ROTA_PREFIX")
        .output()
        .await
        .expect("the rota binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
}

/// A server, and workers `w1` and `w2` that run containers (each with its own state
/// directory), plus `w3` that does not.
async fn setup() -> anyhow::Result<Setup> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let dir = tempfile::Builder::new()
        .prefix("rota-containers-")
        .tempdir()?;
    for (id, allow) in [("w1", true), ("w2", true), ("w3", false)] {
        let mut config = d.worker_config("app", id);
        config.allow_containers = allow;
        config.state_dir = Some(dir.path().join(id));
        d.start_worker(config, ProcessorRegistry::new()).await?;
    }
    Ok(Setup { d, dir })
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
    let Setup { d, dir } = setup().await?;
    let v1 = bundle(dir.path(), "1", None);
    let v1 = v1.display().to_string();
    ok(
        &d,
        &[
            "container",
            "upload",
            "--app",
            "app",
            "--name",
            "demo",
            "--version",
            "1",
            &v1,
        ],
    )
    .await;
    // A version is recorded once.
    let (code, _, err) = cli(
        &d,
        &[
            "container",
            "upload",
            "--app",
            "app",
            "--name",
            "demo",
            "--version",
            "1",
            &v1,
        ],
    )
    .await;
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
        let list = d
            .admin
            .call(&ContainerList { app: "app".into() })
            .await
            .ok()?;
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
    let Setup { d, dir } = setup().await?;
    let gate = dir.path().join("go");
    let v1 = bundle(dir.path(), "1", Some(&gate)).display().to_string();
    let v2 = bundle(dir.path(), "2", None).display().to_string();
    ok(
        &d,
        &[
            "container",
            "upload",
            "--app",
            "app",
            "--name",
            "demo",
            "--version",
            "1",
            &v1,
        ],
    )
    .await;
    let job = container_job(&d, "hello", "demo").await?;
    let first = run(&d, job, "a").await?;
    d.wait_status(first, InstanceStatus::Running, RUN_TIMEOUT)
        .await;
    ok(
        &d,
        &[
            "container",
            "upload",
            "--app",
            "app",
            "--name",
            "demo",
            "--version",
            "2",
            &v2,
        ],
    )
    .await;
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
    let Setup { d, dir } = setup().await?;
    let v1 = bundle(dir.path(), "1", None).display().to_string();
    ok(
        &d,
        &[
            "container",
            "upload",
            "--app",
            "app",
            "--name",
            "demo",
            "--version",
            "1",
            &v1,
        ],
    )
    .await;
    // Someone with access to the object store swaps the bundle for one of the same size.
    let js = async_nats::jetstream::new(async_nats::connect(d.nats.url()).await?);
    let store = js.get_object_store("rota-containers").await?;
    let size = store.info("app/demo/1").await?.size;
    let fake = vec![b'x'; size];
    store.put("app/demo/1", &mut fake.as_slice()).await?;
    let job = container_job(&d, "hello", "demo").await?;
    let id = run(&d, job, "x").await?;
    let info = d.wait_terminal(id, RUN_TIMEOUT).await;
    assert_eq!(info.instance.status, InstanceStatus::Failed, "{info:?}");
    let result = info.instance.result.unwrap_or_default();
    assert!(result.contains("digest mismatch"), "{result}");
    Ok(())
}
