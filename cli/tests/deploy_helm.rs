//! The Helm chart (`deploy/helm/rota`): `helm lint` is clean; the rendered manifests pass the
//! Kubernetes schemas (kubernetes-validate, strict) for the default values and the chart's `ci/`
//! values files; and the rendered server and worker containers, run as local processes with
//! exactly their command, arguments, environment and mounted files (rooted in a temporary
//! directory), become ready on their readiness probe's path and run a job.
//!
//! The tools come from `scripts/install-deploy-tools.sh` (which `scripts/test.sh` runs): helm
//! in `.tools/bin`, and kubernetes-validate with PyYAML in `.tools/pip`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use rota_client::AdminClient;
use rota_observe::probe::get;
use rota_shared::InstanceStatus;
use rota_shared::admin::*;
use rota_tests::cluster::shell_job;
use rota_tests::db::TestDatabase;
use rota_tests::nats::NatsServer;
use rota_tests::tools::{pyyaml_path, repo, tool};
use rota_tests::wait;
use rota_transport::{AdminToken, NatsOptions};
use serde_json::Value;
use tokio::process::{Child, Command};

fn chart() -> PathBuf {
    repo().join("deploy/helm/rota")
}

async fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().await.context("start the command")?;
    if !out.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            cmd.as_std(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn helm_template(values: &[PathBuf]) -> anyhow::Result<String> {
    let mut cmd = Command::new(tool("helm")?);
    cmd.args(["template", "rel"]).arg(chart());
    for v in values {
        cmd.arg("-f").arg(v);
    }
    run(&mut cmd).await
}

fn ci_values() -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}

#[tokio::test]
async fn the_chart_lints_and_renders_valid_manifests() -> anyhow::Result<()> {
    let mut sets: Vec<Vec<PathBuf>> = vec![vec![]];
    let ci = ci_values()?;
    assert!(
        ci.len() >= 2,
        "the chart's ci/ holds at least two values files"
    );
    sets.extend(ci.into_iter().map(|f| vec![f]));
    let scratch = tempfile::tempdir()?;
    for (n, values) in sets.iter().enumerate() {
        let mut lint = Command::new(tool("helm")?);
        lint.arg("lint").arg("--strict").arg(chart());
        for v in values {
            lint.arg("-f").arg(v);
        }
        let said = run(&mut lint).await?;
        assert!(said.contains("0 chart(s) failed"), "{said}");
        assert!(!said.contains("[WARNING]"), "helm lint warns: {said}");

        let rendered = helm_template(values).await?;
        let file = scratch.path().join(format!("rendered-{n}.yaml"));
        std::fs::write(&file, &rendered)?;
        let out = Command::new(tool("kubernetes-validate")?)
            .arg("--strict")
            .arg(&file)
            .output()
            .await?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{values:?} does not validate: {said}");
        // Only the ServiceMonitor (a Prometheus Operator resource) has no schema to check.
        for line in said.lines().filter(|l| !l.starts_with("INFO")) {
            assert!(
                line.contains("kind ServiceMonitor"),
                "{values:?}: unexpected validator output: {line}"
            );
        }
        let passed = said
            .lines()
            .filter(|l| l.contains(" passed for resource "))
            .count();
        let resources = rendered.lines().filter(|l| l.starts_with("kind: ")).count();
        let monitors = rendered
            .lines()
            .filter(|l| *l == "kind: ServiceMonitor")
            .count();
        assert_eq!(
            passed,
            resources - monitors,
            "{values:?}: not every resource validated: {said}"
        );
    }
    // values.schema.json refuses what would render a broken deployment: an app name that is
    // not a subject token, and the shell processor switched on with a string.
    for bad in ["workers[0].app=bad.name", "workers[0].allowShell=yes"] {
        let out = Command::new(tool("helm")?)
            .args(["template", "rel"])
            .arg(chart())
            .args(["--set-string", bad])
            .output()
            .await?;
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} was accepted");
        assert!(said.contains("schema"), "{bad}: {said}");
    }
    Ok(())
}

/// Every resource of a rendering, as JSON (PyYAML reads the YAML).
async fn manifests(rendered: &str) -> anyhow::Result<Vec<Value>> {
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; \
             print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .env("PYTHONPATH", pyyaml_path()?)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start python3")?;
    let mut stdin = child.stdin.take().context("python3's stdin")?;
    tokio::io::AsyncWriteExt::write_all(&mut stdin, rendered.as_bytes()).await?;
    drop(stdin);
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        bail!(
            "YAML to JSON failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> anyhow::Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} in the rendering"))
}

/// A Secret's key, from `data` (base64) or `stringData`.
fn secret_value(docs: &[Value], name: &str, key: &str) -> anyhow::Result<String> {
    let secret = find(docs, "Secret", name)?;
    if let Some(v) = secret["stringData"][key].as_str() {
        return Ok(v.to_owned());
    }
    let b64 = secret["data"][key]
        .as_str()
        .with_context(|| format!("Secret {name} has no key {key}"))?;
    Ok(String::from_utf8(
        base64::engine::general_purpose::STANDARD.decode(b64)?,
    )?)
}

/// What a rendered container needs to run here: arguments, environment, and its mounts'
/// files written under `root` (mount paths keep their shape below it).
struct LocalContainer {
    args: Vec<String>,
    env: BTreeMap<String, String>,
    readiness: (String, u16),
}

fn as_local(docs: &[Value], deployment: &str, root: &Path) -> anyhow::Result<LocalContainer> {
    let deploy = find(docs, "Deployment", deployment)?;
    let pod = &deploy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mounts = container["volumeMounts"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let volumes = pod["volumes"].as_array().cloned().unwrap_or_default();
    // Longest first, so /etc/rota/apps/x is rewritten before a shorter /etc/rota would be.
    let mut mount_paths: Vec<String> = mounts
        .iter()
        .filter_map(|m| m["mountPath"].as_str().map(str::to_owned))
        .collect();
    mount_paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    // One pass, longest mount first at each place, so a path written under `root` (which
    // may itself lie below a mount path such as /tmp) is never rewritten again.
    let local = |text: &str| {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while !rest.is_empty() {
            match mount_paths.iter().find(|m| rest.starts_with(m.as_str())) {
                Some(m) => {
                    out.push_str(&format!("{}{m}", root.display()));
                    rest = &rest[m.len()..];
                }
                None => {
                    let next = rest.chars().next().map_or(1, char::len_utf8);
                    out.push_str(&rest[..next]);
                    rest = &rest[next..];
                }
            }
        }
        out
    };
    for mount in &mounts {
        let name = mount["name"].as_str().context("a mount without a name")?;
        let path = mount["mountPath"]
            .as_str()
            .context("a mount without a path")?;
        let dir = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)?;
        let volume = volumes
            .iter()
            .find(|v| v["name"] == name)
            .with_context(|| format!("no volume {name}"))?;
        if let Some(cm) = volume["configMap"]["name"].as_str() {
            let map = find(docs, "ConfigMap", cm)?;
            for (file, content) in map["data"].as_object().context("ConfigMap without data")? {
                std::fs::write(dir.join(file), local(content.as_str().unwrap_or("")))?;
            }
        } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
            for item in volume["secret"]["items"]
                .as_array()
                .context("secret items")?
            {
                let key = item["key"].as_str().context("item key")?;
                let to = item["path"].as_str().context("item path")?;
                std::fs::write(dir.join(to), secret_value(docs, secret, key)?)?;
            }
        } else if volume.get("emptyDir").is_none() {
            bail!("volume {name} is of a kind this test does not run: {volume}");
        }
    }
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().cloned().unwrap_or_default() {
        let name = var["name"]
            .as_str()
            .context("env without a name")?
            .to_owned();
        let value = if let Some(v) = var["value"].as_str() {
            local(v)
        } else if let Some(r) = var["valueFrom"]["secretKeyRef"].as_object() {
            let secret = r["name"].as_str().context("secretKeyRef name")?;
            let key = r["key"].as_str().context("secretKeyRef key")?;
            secret_value(docs, secret, key)?
        } else if var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            // The pod's name, as Kubernetes would give it.
            format!("{deployment}-7d9f8-abcde")
        } else {
            bail!("env {name} comes from a source this test does not run: {var}");
        };
        env.insert(name, value);
    }
    let args: Vec<String> = container["args"]
        .as_array()
        .context("container args")?
        .iter()
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    let probe = &container["readinessProbe"]["httpGet"];
    let path = probe["path"].as_str().context("readiness path")?.to_owned();
    let port_name = probe["port"].as_str().context("readiness port (named)")?;
    let port = container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == port_name))
        .and_then(|p| p["containerPort"].as_u64())
        .context("the readiness probe's port")?;
    Ok(LocalContainer {
        args,
        env,
        readiness: (path, u16::try_from(port)?),
    })
}

fn spawn(c: &LocalContainer, log: &Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    Command::new(env!("CARGO_BIN_EXE_rota"))
        .args(&c.args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(&c.env)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("start rota")
}

async fn wait_ready(c: &LocalContainer, what: &str, log: &Path) {
    let addr: SocketAddr = ([127, 0, 0, 1], c.readiness.1).into();
    let path = c.readiness.0.clone();
    wait::until_ok(
        &format!("{what} to answer 200 on {path}"),
        Duration::from_secs(30),
        || async {
            match get(addr, &path, Duration::from_secs(2)).await {
                Ok(a) if a.status == 200 => Ok(()),
                // The log says why a process never became ready.
                answer => Err(format!(
                    "{answer:?}; its log: {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                )),
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_server_and_worker_run_a_job() -> anyhow::Result<()> {
    let nats = NatsServer::start()?;
    let db = TestDatabase::create().await?;
    let scratch = tempfile::tempdir()?;
    let values = scratch.path().join("values.yaml");
    let (server_port, worker_port) = (rota_tests::free_port()?, rota_tests::free_port()?);
    std::fs::write(
        &values,
        format!(
            "nats:\n  url: {nats}\ndatabase:\n  url: {db}\nserver:\n  replicas: 2\n  http:\n    port: {server_port}\n\
             workerDefaults:\n  http:\n    port: {worker_port}\nworkers:\n  - app: demo\n    allowShell: true\n",
            nats = nats.url(),
            db = db.url(),
        ),
    )?;
    let rendered = helm_template(&[values]).await?;
    let docs = manifests(&rendered).await?;

    let root = scratch.path().join("root");
    let server = as_local(&docs, "rel-rota-server", &root.join("server"))?;
    assert_eq!(server.args, ["server"]);
    let server_log = scratch.path().join("server.log");
    let _server = spawn(&server, &server_log)?;
    wait_ready(&server, "the server", &server_log).await;

    let worker = as_local(&docs, "rel-rota-worker-demo", &root.join("worker"))?;
    assert_eq!(worker.args, ["worker"]);
    let worker_log = scratch.path().join("worker.log");
    let _worker = spawn(&worker, &worker_log)?;
    wait_ready(&worker, "the worker", &worker_log).await;

    // The chart-made admin token works: the server created it at start, and the app too.
    let token = AdminToken::parse(&secret_value(&docs, "rel-rota-admin-token", "token")?)?;
    let admin = AdminClient::connect(&NatsOptions::new(nats.url()), "rota", Some(&token)).await?;
    let apps = admin.call(&AppList {}).await?;
    assert!(apps.iter().any(|a| a.name == "demo"), "{apps:?}");
    let job = admin
        .call(&shell_job("demo", "hello", "echo hello from the chart"))
        .await?;
    let run = admin
        .call(&JobRun {
            id: job.id,
            params: None,
            delay_ms: 0,
            idempotency_key: None,
        })
        .await?;
    let done = wait::until("the job to finish", Duration::from_secs(30), || async {
        admin
            .call(&InstanceShow(InstanceId {
                id: run.instance_id,
            }))
            .await
            .ok()
            .filter(|i| i.instance.status.is_terminal())
    })
    .await;
    assert_eq!(
        done.instance.status,
        InstanceStatus::Succeeded,
        "{done:?}; worker log: {}",
        std::fs::read_to_string(&worker_log).unwrap_or_default()
    );
    // The chart asks for JSON logs: every line the server wrote is one JSON object.
    let log = std::fs::read_to_string(&server_log)?;
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with('{')).collect();
    assert!(!lines.is_empty(), "no JSON log lines: {log}");
    for line in lines {
        serde_json::from_str::<Value>(line).with_context(|| format!("not JSON: {line}"))?;
    }
    Ok(())
}
