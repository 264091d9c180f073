//! The long-running commands: `rota server`, `rota worker` and `rota dev`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rota_client::{AdminClient, ClientError};
use rota_server::{Server, ServerConfig};
use rota_shared::ErrorCode;
use rota_shared::admin::*;
use rota_shared::schedule::Schedule;
use rota_transport::NatsOptions;
use rota_worker::{ProcessorRegistry, Worker, WorkerConfig};
use tokio::process::{Child, Command};

use crate::args::{DevArgs, ServerArgs, WorkerArgs};
use crate::config::{FileConfig, Settings};
use crate::table::{safe, time};
use crate::usage::usage;

/// Resolves when the process is asked to stop (SIGINT or SIGTERM).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn server_config(settings: &Settings, server_id: Option<String>) -> ServerConfig {
    ServerConfig {
        nats: settings.nats.clone(),
        prefix: settings.prefix.clone(),
        database_url: settings.database_url.clone(),
        server_id,
        ..ServerConfig::default()
    }
}

pub async fn server(
    settings: &Settings,
    file: &FileConfig,
    args: ServerArgs,
) -> anyhow::Result<()> {
    let server_id = args.server_id.or_else(|| file.server_id.clone());
    let mut config = server_config(settings, server_id);
    file.server.apply(&mut config)?;
    config.http_listen = args.http_listen.or(file.http_listen);
    let token_file = args
        .admin_token_file
        .or_else(|| file.server.admin_token_file.clone());
    if let Some(path) = token_file {
        let text = crate::config::read_secret_file(&path, "an admin token")?;
        let token = rota_transport::AdminToken::parse(&text)
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        config.admin_token = Some(token);
    }
    for app in &file.server.apps {
        let secret = crate::config::read_secret_file(
            &app.secret_file,
            &format!("app {}'s secret", app.name),
        )?;
        let key = rota_transport::keys::app_key(&app.name, &secret)
            .map_err(|e| anyhow!("[[server.apps]] {}: {e}", app.name))?;
        config.apps.push(rota_server::DeclaredApp {
            name: app.name.clone(),
            key,
        });
    }
    let handle = Server::start(config).await?;
    match handle.http_addr() {
        Some(addr) => eprintln!(
            "rota server {} is running, /metrics and probes on http://{addr} (Ctrl-C to stop)",
            handle.id()
        ),
        None => eprintln!("rota server {} is running (Ctrl-C to stop)", handle.id()),
    }
    stop_signal().await;
    eprintln!("stopping server {}", handle.id());
    handle.shutdown().await;
    Ok(())
}

/// The state directory of a worker with a stable id: `$XDG_STATE_HOME/rota`, else
/// `~/.local/state/rota`. A worker with a generated id is never started again as itself, so
/// it keeps no state.
fn default_state_dir(stable_id: bool) -> Option<std::path::PathBuf> {
    if !stable_id {
        return None;
    }
    let xdg = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty());
    match xdg {
        Some(dir) => Some(std::path::PathBuf::from(dir).join("rota")),
        None => std::env::var_os("HOME")
            .filter(|v| !v.is_empty())
            .map(|home| std::path::PathBuf::from(home).join(".local/state/rota")),
    }
}

pub async fn worker(
    settings: &Settings,
    file: &FileConfig,
    args: WorkerArgs,
) -> anyhow::Result<()> {
    let fw = &file.worker;
    let secret_file = args.secret_file.or_else(|| fw.secret_file.clone());
    let secret = args.secret.or_else(|| fw.secret.clone());
    if secret.is_none() && secret_file.is_none() {
        return Err(usage!(
            "give the app's secret: --secret S, --secret-file FILE (or ROTA_SECRET)"
        ));
    }
    let stable_id = args.worker_id.is_some() || fw.worker_id.is_some();
    let config = WorkerConfig {
        nats: settings.nats.clone(),
        prefix: settings.prefix.clone(),
        app: args
            .app
            .or_else(|| fw.app.clone())
            .ok_or_else(|| usage!("say which app this worker serves: --app NAME (or ROTA_APP)"))?,
        secret: secret.unwrap_or_default(),
        secret_file,
        worker_id: args.worker_id.or_else(|| fw.worker_id.clone()),
        tags: if args.tags.is_empty() {
            fw.tags.clone().unwrap_or_default()
        } else {
            args.tags
        },
        capacity: args.capacity.or(fw.capacity).unwrap_or(16),
        allow_shell: args.allow_shell || fw.allow_shell.unwrap_or(false),
        state_dir: args
            .state_dir
            .or_else(|| fw.state_dir.clone())
            .or_else(|| default_state_dir(stable_id)),
        allow_http: !args.no_http,
        allow_containers: args.allow_containers || fw.allow_containers.unwrap_or(false),
        heartbeat_interval: args.heartbeat_interval.map_or(
            WorkerConfig::default().heartbeat_interval,
            Duration::from_millis,
        ),
        reacquire_interval: args.reacquire_interval.map_or(
            WorkerConfig::default().reacquire_interval,
            Duration::from_millis,
        ),
        http_listen: args.http_listen.or(file.http_listen),
        ..WorkerConfig::default()
    };
    let mut registry = ProcessorRegistry::new();
    if args.demo_processors {
        rota_worker::demo::register(&mut registry);
    }
    let handle = Worker::start(config, registry).await?;
    eprintln!(
        "rota worker {} is running for server {} (Ctrl-C to stop)",
        handle.worker_id(),
        handle.server_id()
    );
    stop_signal().await;
    eprintln!(
        "stopping worker {}: finishing running work",
        handle.worker_id()
    );
    handle.shutdown().await;
    Ok(())
}

// === rota dev ===

const DEMO_APP: &str = "demo";
const DEMO_SECRET: &str = "demo-secret";
const DEMO_JOB: &str = "hello";
const DEMO_SCRIPT: &str = r#"echo "hello from Rota: instance $ROTA_INSTANCE_ID, attempt $ROTA_ATTEMPT"
echo "running on $(uname -n) at $(date -u +%H:%M:%S)"
echo "done""#;

/// A private nats-server for `rota dev`, killed when dropped.
struct DevNats {
    _child: Child,
    url: String,
}

fn nats_server_binary() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("ROTA_NATS_SERVER_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let local = Path::new(".tools/bin/nats-server");
    if local.exists() {
        return Ok(local.to_path_buf());
    }
    Ok(PathBuf::from("nats-server"))
}

async fn start_dev_nats(dir: &Path) -> anyhow::Result<DevNats> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let bin = nats_server_binary()?;
    let child = Command::new(&bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-l")
        .arg(dir.join("nats.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {}: run scripts/install-nats.sh, or pass --nats-url",
                bin.display()
            )
        })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if tokio::time::Instant::now() > deadline {
            bail!(
                "nats-server did not start on port {port} within 10 s (see {})",
                dir.join("nats.log").display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(DevNats {
        _child: child,
        url: format!("nats://127.0.0.1:{port}"),
    })
}

async fn ensure_demo(admin: &AdminClient) -> anyhow::Result<i64> {
    match admin.app_create(DEMO_APP, DEMO_SECRET).await {
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => {}
        Err(e) => return Err(e.into()),
    }
    let jobs = admin
        .call(&JobList {
            app: Some(DEMO_APP.into()),
            ..Default::default()
        })
        .await?
        .items;
    if let Some(job) = jobs.iter().find(|j| j.spec.name == DEMO_JOB) {
        return Ok(job.id);
    }
    let spec = JobSpec {
        name: DEMO_JOB.into(),
        description: "The rota dev demo: a shell job every 5 seconds".into(),
        schedule: Schedule::Cron {
            expression: "*/5 * * * * *".into(),
            time_zone: None,
        },
        lifecycle: Default::default(),
        processor: "shell".into(),
        config: DEMO_SCRIPT.into(),
        params: None,
        enabled: true,
        max_instances: 0,
        overlap: OverlapPolicy::Skip,
        max_retries: 1,
        retry_delay_ms: 2_000,
        timeout_ms: 30_000,
        dispatch: DispatchStrategy::HealthFirst,
        tags: vec![],
        designated_workers: vec![],
        misfire: MisfirePolicy::FireOnce,
        execution: Default::default(),
        task_retries: 0,
        container: None,
    };
    let job = JobCreate {
        app: DEMO_APP.into(),
        spec,
    };
    Ok(admin.call(&job).await?.id)
}

pub async fn dev(settings: &Settings, args: DevArgs) -> anyhow::Result<()> {
    let dir = args.data_dir.unwrap_or_else(|| PathBuf::from(".rota-dev"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (nats, _nats) = if settings.explicit_nats {
        (settings.nats.clone(), None)
    } else {
        let nats = start_dev_nats(&dir).await?;
        (NatsOptions::new(nats.url.clone()), Some(nats))
    };
    let nats_url = rota_transport::options::redact_url(&nats.url);
    let db_path = dir.join("rota.db");
    let database_url = format!("sqlite://{}", db_path.display());
    let server = Server::start(ServerConfig {
        nats: nats.clone(),
        prefix: settings.prefix.clone(),
        database_url: database_url.clone(),
        server_id: Some("dev-server".into()),
        ..ServerConfig::default()
    })
    .await?;
    // An admin token for this run, made in the database as `rota token create` would.
    let store = rota_server::store::Store::connect(&database_url).await?;
    let (_, token) = rota_server::create_token(&store, Role::Admin, None, "rota dev").await?;
    let admin = AdminClient::connect(&nats, &settings.prefix, Some(&token)).await?;
    let job_id = ensure_demo(&admin).await?;
    let worker = Worker::start(
        WorkerConfig {
            nats: nats.clone(),
            prefix: settings.prefix.clone(),
            app: DEMO_APP.into(),
            secret: DEMO_SECRET.into(),
            worker_id: Some("dev-worker".into()),
            allow_shell: true,
            ..WorkerConfig::default()
        },
        ProcessorRegistry::new(),
    )
    .await?;

    println!(
        "Rota dev is running: server {}, worker {}, SQLite at {}",
        server.id(),
        worker.worker_id(),
        db_path.display()
    );
    println!("The demo job {DEMO_JOB:?} (id {job_id}) runs a shell script every 5 seconds.");
    // `rota` may not be on PATH (scripts/dev.sh runs it through cargo): name this binary.
    let rota = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "rota".to_owned());
    println!("In another terminal:");
    println!("  export ROTA_NATS_URL={nats_url}");
    println!("  export ROTA_TOKEN={}", token.reveal());
    println!("  {rota} job list; {rota} instance list; {rota} logs <instance>");
    println!("Ctrl-C stops everything.\n");

    let result = tokio::select! {
        r = follow_demo(&admin, job_id, args.runs) => r,
        _ = stop_signal() => Ok(()),
    };
    worker.shutdown().await;
    server.shutdown().await;
    result
}

/// Prints each demo run as it finishes, with its log.
async fn follow_demo(admin: &AdminClient, job_id: i64, runs: Option<u32>) -> anyhow::Result<()> {
    let started = rota_transport::wall_ms();
    let mut shown: HashSet<i64> = HashSet::new();
    loop {
        let list = admin
            .call(&InstanceList {
                app: Some(DEMO_APP.into()),
                job_id: Some(job_id),
                status: None,
                limit: Some(20),
                after: None,
            })
            .await
            .map_err(|e: ClientError| anyhow!(e))?
            .items;
        let mut done: Vec<&InstanceInfo> = list
            .iter()
            .filter(|i| {
                i.instance.status.is_terminal()
                    && i.instance.created_at_ms >= started
                    && !shown.contains(&i.instance.id)
            })
            .collect();
        done.sort_by_key(|i| i.instance.id);
        for i in done {
            shown.insert(i.instance.id);
            println!(
                "instance {} {} (fire {}, result: {})",
                i.instance.id,
                i.instance.status,
                time(i.instance.expected_trigger_time_ms),
                safe(i.instance.result.as_deref().unwrap_or("-"))
            );
            let page = admin
                .call(&LogsGet {
                    instance_id: i.instance.id,
                    after_id: 0,
                    limit: Some(100),
                })
                .await?;
            for l in page.lines {
                println!("    {} {}", l.level.as_str(), safe(&l.text));
            }
            if runs.is_some_and(|n| shown.len() >= n as usize) {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
