//! `rota job run` against a server that freezes past the command's request timeout: the command
//! asks again with the idempotency key it made up, and the job runs once.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rota_shared::admin::*;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::process::ServerProcess;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_retried_after_a_frozen_server_times_out_runs_once() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    let dir = tempfile::tempdir()?;
    let bin = Path::new(env!("CARGO_BIN_EXE_rota"));
    let server = ServerProcess::start(bin, "s1", &d.nats.url(), d.db.url(), dir.path()).await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), Default::default())
        .await?;
    let job = d.create_job(shell_job("app", "once", "echo ran")).await?;

    server.freeze()?;
    let mut cli = tokio::process::Command::new(bin)
        .args(["--json", "--request-timeout", "1s", "job", "run"])
        .arg(job.id.to_string())
        .env("ROTA_NATS_URL", d.nats.url())
        .env("ROTA_TOKEN", d.token.reveal())
        .env_remove("ROTA_CONFIG")
        .env_remove("ROTA_PREFIX")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    // The command says when it asks again; only then is the server let go, so that both the
    // first request and its repeat wait in the frozen server's socket.
    let stderr = cli.stderr.take().expect("stderr is piped");
    let mut lines = BufReader::new(stderr).lines();
    let retried = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await? {
            if line.contains("asking again") {
                return anyhow::Ok(line);
            }
        }
        anyhow::bail!("the command ended without asking again")
    })
    .await;
    server.thaw()?;
    let retried = retried.map_err(|_| anyhow::anyhow!("no retry within 20 s"))??;
    assert!(retried.contains("idempotency key"), "{retried}");

    let out = tokio::time::timeout(Duration::from_secs(30), cli.wait_with_output())
        .await
        .map_err(|_| anyhow::anyhow!("rota job run did not end within 30 s of the thaw"))??;
    assert!(out.status.success(), "rota job run failed: {out:?}");
    let started: RunStarted = serde_json::from_slice(&out.stdout)?;

    let done = d
        .wait_terminal(started.instance_id, Duration::from_secs(30))
        .await;
    assert_eq!(done.instance.result.as_deref(), Some("ran"), "{done:?}");
    let instances = d.instances_of(job.id).await?;
    assert_eq!(
        instances.len(),
        1,
        "a request and its repeat made one instance: {instances:?}"
    );
    d.shutdown().await;
    Ok(())
}
