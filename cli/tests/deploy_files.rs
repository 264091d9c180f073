//! The image and the compose file, which this machine cannot build or run (no Docker daemon):
//! what can be checked without one is. The Dockerfile copies every workspace member (a member
//! it forgets fails the image's `cargo build --locked`), and the compose file has the services
//! it promises, with TOML configurations that `rota` accepts.

use std::path::Path;
use std::process::Stdio;

use anyhow::{Context, bail};
use rota_tests::tools::{pyyaml_path, repo};
use serde_json::Value;

#[test]
fn the_image_copies_every_workspace_member() -> anyhow::Result<()> {
    let manifest = std::fs::read_to_string(repo().join("Cargo.toml"))?;
    let members_line = manifest
        .lines()
        .find(|l| l.trim_start().starts_with("members"))
        .context("no workspace members")?;
    let members: Vec<&str> = members_line.split('"').skip(1).step_by(2).collect();
    assert!(members.len() >= 9, "{members:?}");
    let dockerfile = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile"))?;
    for member in members {
        assert!(
            dockerfile
                .lines()
                .any(|l| l.trim() == format!("COPY {member} {member}")),
            "the Dockerfile does not copy the workspace member {member}"
        );
    }
    assert!(dockerfile.contains("cargo build --release --locked -p rota"));
    assert!(
        dockerfile.contains("USER 65532:65532"),
        "the image runs as root"
    );
    Ok(())
}

/// Runs a `rota` command that reads `config` and does nothing else (a schedule preview).
fn load_config(config: &Path) -> anyhow::Result<std::process::Output> {
    Ok(std::process::Command::new(env!("CARGO_BIN_EXE_rota"))
        .arg("--config")
        .arg(config)
        .args([
            "schedule",
            "preview",
            "--cron",
            "0 * * * * *",
            "--count",
            "1",
        ])
        .output()?)
}

/// The compose file as JSON (PyYAML, from kubernetes-validate's install in `.tools/pip`).
fn compose() -> anyhow::Result<Value> {
    let yaml_home = pyyaml_path()?;
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        ])
        .arg(repo().join("deploy/compose.yaml"))
        .env("PYTHONPATH", yaml_home)
        .stderr(Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("compose.yaml does not parse");
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

#[test]
fn compose_runs_nats_postgres_two_servers_a_worker_and_a_demo_job() -> anyhow::Result<()> {
    let c = compose()?;
    let services = c["services"].as_object().context("no services")?;
    for name in [
        "nats", "postgres", "server-1", "server-2", "worker", "demo-job",
    ] {
        assert!(services.contains_key(name), "no service {name}");
    }
    let nats_command = c["services"]["nats"]["command"].to_string();
    assert!(nats_command.contains("--jetstream"), "{nats_command}");
    assert_ne!(
        c["services"]["server-1"]["environment"]["ROTA_SERVER_ID"],
        c["services"]["server-2"]["environment"]["ROTA_SERVER_ID"],
        "two servers need two ids"
    );
    // Each configuration is a TOML file `rota` accepts (it refuses unknown keys).
    let scratch = tempfile::tempdir()?;
    let configs = c["configs"].as_object().context("no configs")?;
    assert!(configs.contains_key("server") && configs.contains_key("worker"));
    for (name, config) in configs {
        let file = scratch.path().join(format!("{name}.toml"));
        std::fs::write(&file, config["content"].as_str().context("content")?)?;
        let out = load_config(&file)?;
        assert!(
            out.status.success(),
            "config {name} is refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // And a file with a key `rota` does not know is refused, so the check above can fail.
    let bad = scratch.path().join("bad.toml");
    std::fs::write(&bad, "http_listn = \"0.0.0.0:9090\"\n")?;
    let out = load_config(&bad)?;
    assert!(!out.status.success());
    Ok(())
}
