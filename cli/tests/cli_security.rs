//! The `rota` binary and security, as an operator meets it: no token, no service; the first
//! token made straight in the database; roles and app scopes; revocation; NATS logins given as
//! flags, environment variables or a `[nats]` section; and text from jobs and workers shown
//! escaped, never acting on the operator's terminal.

use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::{InstanceInfo, JobInfo, Role};
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::nats::NatsServer;
use rota_transport::NatsOptions;
use rota_worker::ProcessorRegistry;

struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `rota` with exactly the environment given (nothing of the test's own `ROTA_*`).
async fn rota_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_rota"));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("ROTA_") && key != "ROTA_NATS_SERVER_BIN" {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let out = command.output().await.expect("the rota binary runs");
    Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

async fn rota_as(d: &Deployment, token: Option<&str>, args: &[&str]) -> Output {
    let url = d.nats.url();
    let mut env = vec![("ROTA_NATS_URL", url.as_str())];
    if let Some(token) = token {
        env.push(("ROTA_TOKEN", token));
    }
    rota_env(args, &env).await
}

fn ok(out: &Output, what: &str) -> String {
    assert_eq!(out.code, 0, "{what} failed: {}", out.stderr);
    out.stdout.clone()
}

/// The token an `export ROTA_TOKEN=…` line printed by `rota token create` holds.
fn exported_token(stdout: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("export ROTA_TOKEN="))
        .unwrap_or_else(|| panic!("no export line in {stdout:?}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_scopes_from_the_command_line() -> anyhow::Result<()> {
    let d = Deployment::start().await?;
    d.create_app("a").await?;
    d.create_app("b").await?;
    let job_a = d.create_job(shell_job("a", "ja", "echo a")).await?;
    let job_b = d.create_job(shell_job("b", "jb", "echo b")).await?;

    // Without a token: one line, UNAUTHORIZED, a non-zero exit.
    let out = rota_as(&d, None, &["job", "list"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("UNAUTHORIZED"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);

    // The first token of a deployment, straight in the database.
    let out = rota_env(
        &[
            "token",
            "create",
            "--role",
            "viewer",
            "--description",
            "first",
        ],
        &[("ROTA_DATABASE_URL", d.db.url())],
    )
    .await;
    let viewer = exported_token(&ok(&out, "token create --database-url"));
    let listed = ok(
        &rota_as(&d, Some(&viewer), &["job", "list"]).await,
        "job list",
    );
    assert!(listed.contains("ja") && listed.contains("jb"), "{listed}");
    let out = rota_as(&d, Some(&viewer), &["job", "run", &job_a.id.to_string()]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("FORBIDDEN"), "{}", out.stderr);

    // An operator scoped to app a, made over NATS by the admin.
    let admin = d.token.reveal();
    let out = rota_as(
        &d,
        Some(&admin),
        &["token", "create", "--role", "operator", "--app", "a"],
    )
    .await;
    let operator = exported_token(&ok(&out, "token create"));
    ok(
        &rota_as(&d, Some(&operator), &["job", "run", &job_a.id.to_string()]).await,
        "an operator runs its app's job",
    );
    let out = rota_as(&d, Some(&operator), &["job", "run", &job_b.id.to_string()]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("FORBIDDEN"), "{}", out.stderr);
    let json = ok(
        &rota_as(&d, Some(&operator), &["--json", "job", "list"]).await,
        "job list",
    );
    let jobs: rota_shared::admin::Page<JobInfo> = serde_json::from_str(&json)?;
    assert_eq!(
        jobs.items.iter().map(|j| j.id).collect::<Vec<_>>(),
        vec![job_a.id]
    );

    // Listed without secrets, and revoked.
    let list = ok(
        &rota_as(&d, Some(&admin), &["token", "list"]).await,
        "token list",
    );
    assert!(
        !list.contains(&operator) && !list.contains(&viewer),
        "{list}"
    );
    let json = ok(
        &rota_as(&d, Some(&admin), &["--json", "token", "list"]).await,
        "token list",
    );
    let tokens: Vec<rota_shared::admin::TokenInfo> = serde_json::from_str(&json)?;
    let op = tokens
        .iter()
        .find(|t| t.role == Role::Operator)
        .expect("the operator token is listed");
    assert_eq!(op.app.as_deref(), Some("a"));
    ok(
        &rota_as(&d, Some(&admin), &["token", "revoke", &op.id]).await,
        "token revoke",
    );
    let out = rota_as(&d, Some(&operator), &["job", "list"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("UNAUTHORIZED"), "{}", out.stderr);

    // A malformed token is one clear line.
    let out = rota_as(&d, Some("not-a-token"), &["job", "list"]).await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("ROTA_TOKEN"), "{}", out.stderr);
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_from_jobs_and_workers_is_shown_escaped() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let mut worker = d.worker_config("app", "w1");
    worker.tags = vec!["\u{1b}]0;owned\u{7}".into()];
    d.start_worker(worker, ProcessorRegistry::new()).await?;
    // The job prints an escape sequence that would turn the terminal red and clear it, and
    // ends with a result that carries one too.
    let script = r"printf '\033[31mRED\033[2J\n'; printf '\033[1mbold-result'";
    let job = d.create_job(shell_job("app", "esc", script)).await?;
    let id = d.run(job.id).await?;
    let done = d.wait_terminal(id, Duration::from_secs(15)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    let token = d.token.reveal();
    let id = id.to_string();

    for args in [
        vec!["logs", id.as_str()],
        vec!["instance", "show", id.as_str()],
        vec!["instance", "list"],
        vec!["worker", "list"],
    ] {
        let out = ok(&rota_as(&d, Some(&token), &args).await, &args.join(" "));
        assert!(
            !out.contains('\u{1b}') && !out.contains('\u{7}'),
            "{args:?} printed {out:?}"
        );
        assert!(out.contains("\\u{1b}"), "{args:?} printed {out:?}");
    }
    // `--json` keeps the text as data.
    let json = ok(
        &rota_as(&d, Some(&token), &["--json", "instance", "show", &id]).await,
        "instance show --json",
    );
    let shown: InstanceInfo = serde_json::from_str(&json)?;
    assert_eq!(
        shown.instance.result.as_deref(),
        Some("\u{1b}[1mbold-result")
    );
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_logins_as_flags_environment_and_config_file() -> anyhow::Result<()> {
    let nats = NatsServer::start_with_config(
        r#"authorization { user: "ops", password: "ops-pass" }"#,
        true,
    )?;
    let url = nats.url();
    let mut options = NatsOptions::new(url.clone());
    options.user = Some("ops".into());
    options.password = Some("ops-pass".into());
    let d = Deployment::start_with(nats, options).await?;
    d.create_app("app").await?;
    let token = d.token.reveal();

    // As flags.
    let out = rota_env(
        &[
            "--nats-user",
            "ops",
            "--nats-password",
            "ops-pass",
            "app",
            "list",
        ],
        &[("ROTA_NATS_URL", &url), ("ROTA_TOKEN", &token)],
    )
    .await;
    assert!(ok(&out, "flags").contains("app"));
    // As environment variables.
    let out = rota_env(
        &["app", "list"],
        &[
            ("ROTA_NATS_URL", &url),
            ("ROTA_NATS_USER", "ops"),
            ("ROTA_NATS_PASSWORD", "ops-pass"),
            ("ROTA_TOKEN", &token),
        ],
    )
    .await;
    assert!(ok(&out, "environment").contains("app"));
    // In the URL.
    let with_creds = url.replace("nats://", "nats://ops:ops-pass@");
    let out = rota_env(
        &["app", "list"],
        &[("ROTA_NATS_URL", &with_creds), ("ROTA_TOKEN", &token)],
    )
    .await;
    assert!(ok(&out, "URL").contains("app"));
    // In the [nats] section of the config file.
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("rota.toml");
    std::fs::write(
        &config,
        format!("[nats]\nurl = {url:?}\nuser = \"ops\"\npassword = \"ops-pass\"\n"),
    )?;
    let out = rota_env(
        &[
            "--config",
            config.to_str().unwrap_or_default(),
            "app",
            "list",
        ],
        &[("ROTA_TOKEN", &token)],
    )
    .await;
    assert!(ok(&out, "config file").contains("app"));
    // A wrong password is one clear line, and no password shows in it.
    let out = rota_env(
        &[
            "--nats-user",
            "ops",
            "--nats-password",
            "wrong-pass",
            "app",
            "list",
        ],
        &[("ROTA_NATS_URL", &url), ("ROTA_TOKEN", &token)],
    )
    .await;
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("authorization"), "{}", out.stderr);
    assert!(!out.stderr.contains("wrong-pass"), "{}", out.stderr);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    d.shutdown().await;
    Ok(())
}
