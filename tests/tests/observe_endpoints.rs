//! `/metrics`, `/healthz` and `/readyz` of a real server and worker: the counters and
//! histograms move while jobs run, every metric the Grafana dashboard queries exists, and
//! `/readyz` turns 503 while the database is cut and 200 again after.

use std::net::SocketAddr;
use std::time::Duration;

use rota_observe::probe::get;
use rota_shared::InstanceStatus;
use rota_shared::admin::*;
use rota_shared::schedule::Schedule;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::db::Backend;
use rota_tests::proxy::in_front_of_database;
use rota_tests::scrape::Scrape;
use rota_tests::wait;
use rota_worker::ProcessorRegistry;

const ASK: Duration = Duration::from_secs(5);

fn any_port() -> Option<SocketAddr> {
    "127.0.0.1:0".parse().ok()
}

async fn scrape(addr: SocketAddr) -> anyhow::Result<Scrape> {
    let answer = get(addr, "/metrics", ASK).await?;
    anyhow::ensure!(answer.status == 200, "/metrics answered {}", answer.status);
    Scrape::parse(&answer.body)
}

/// Waits until a scrape of `addr` satisfies `ok`, and returns it.
async fn scrape_until(what: &str, addr: SocketAddr, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    wait::until(what, Duration::from_secs(20), || async {
        scrape(addr).await.ok().filter(|s| ok(s))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_move_while_jobs_run() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    let mut config = d.server_config("s1");
    config.http_listen = any_port();
    d.start_server_with(config).await?;
    let server = d
        .server("s1")
        .and_then(|s| s.http_addr())
        .expect("server serves HTTP");
    d.create_app("app").await?;
    let mut worker_config = d.worker_config("app", "w1");
    worker_config.http_listen = any_port();
    d.start_worker(worker_config, ProcessorRegistry::new())
        .await?;
    let worker = d
        .worker("w1")
        .and_then(|w| w.http_addr())
        .expect("worker serves HTTP");

    assert_eq!(get(server, "/healthz", ASK).await?.status, 200);
    assert_eq!(get(worker, "/healthz", ASK).await?.status, 200);
    wait::until(
        "the server to be ready",
        Duration::from_secs(10),
        || async { (get(server, "/readyz", ASK).await.ok()?.status == 200).then_some(()) },
    )
    .await;
    assert_eq!(get(worker, "/readyz", ASK).await?.status, 200);
    let before = scrape(server).await?;
    assert_eq!(
        before.sum("rota_instances_finished_total", &[("app", "app")]),
        0.0,
        "nothing has run yet"
    );

    // A CRON job every second, a run that fails, and a long run that is stopped.
    let mut tick = shell_job("app", "tick", "echo tick");
    tick.spec.schedule = Schedule::Cron {
        expression: "* * * * * *".into(),
        time_zone: None,
    };
    let tick = d.create_job(tick).await?;
    let fail = d.create_job(shell_job("app", "fail", "exit 3")).await?;
    let long = d.create_job(shell_job("app", "long", "sleep 30")).await?;
    let failed = d.run(fail.id).await?;
    let long_run = d.run(long.id).await?;
    d.wait_status(long_run, InstanceStatus::Running, Duration::from_secs(15))
        .await;
    scrape_until("the running instance in rota_instances", server, |s| {
        s.sum("rota_instances", &[("app", "app"), ("status", "running")]) >= 1.0
    })
    .await;
    d.admin
        .call(&InstanceStop(InstanceId { id: long_run }))
        .await?;
    d.wait_terminal(failed, Duration::from_secs(15)).await;
    // A sharded job of two items: the worker is its master and runs both tasks.
    let mut sharded = shell_job("app", "sharded", "echo $ROTA_SHARD_INDEX");
    sharded.spec.execution = rota_shared::task::Execution::Sharding {
        shards: rota_shared::task::shard_count(2),
    };
    let sharded = d.create_job(sharded).await?;
    let sharded_run = d.run(sharded.id).await?;
    let done = d.wait_terminal(sharded_run, Duration::from_secs(15)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");

    let s = scrape_until(
        "three fires, the sharded run and every end counted",
        server,
        |s| {
            let finished = |status| {
                s.sum(
                    "rota_instances_finished_total",
                    &[("app", "app"), ("status", status)],
                )
            };
            finished("succeeded") >= 4.0 && finished("failed") >= 1.0 && finished("stopped") >= 1.0
        },
    )
    .await;
    // Every fire and run was handed over, and the fires' starts were timed against their
    // instants.
    assert!(s.sum("rota_dispatch_duration_seconds_count", &[("app", "app")]) >= 5.0);
    assert!(s.sum("rota_schedule_lateness_seconds_count", &[("app", "app")]) >= 3.0);
    assert!(s.sum("rota_reports_applied_total", &[("app", "app")]) >= 5.0);
    // The stopped run's own STOPPED report came after the operator's stop: refused.
    let refused = scrape_until("the late report of the stopped run refused", server, |s| {
        s.sum("rota_reports_refused_total", &[]) >= 1.0
    })
    .await;
    assert_eq!(refused.sum("rota_live_workers", &[("app", "app")]), 1.0);
    assert_eq!(refused.sum("rota_owned_apps", &[]), 1.0);
    assert_eq!(refused.sum("rota_ready", &[]), 1.0);
    assert_eq!(
        refused.sum("rota_service_running", &[("service", "reconcile")]),
        1.0
    );
    assert!(refused.sum("rota_ownership_changes_total", &[("change", "acquired")]) >= 1.0);
    assert!(refused.sum("rota_db_pool_max_connections", &[]) >= 1.0);

    let w = scrape_until("the worker's runs timed", worker, |w| {
        w.sum(
            "rota_worker_processor_duration_seconds_count",
            &[("processor", "shell"), ("outcome", "succeeded")],
        ) >= 3.0
    })
    .await;
    assert!(
        w.sum(
            "rota_worker_processor_duration_seconds_count",
            &[("outcome", "failed")]
        ) >= 1.0
    );
    assert!(w.sum("rota_worker_dispatches_total", &[("outcome", "accepted")]) >= 5.0);
    assert_eq!(
        w.sum(
            "rota_worker_distributed_tasks_total",
            &[("outcome", "succeeded")]
        ),
        2.0,
        "the sharded job's two tasks"
    );
    assert!(
        w.knows("rota_worker_master_of"),
        "the masters gauge is served"
    );
    assert_eq!(
        w.sum("rota_worker_master_of", &[]),
        0.0,
        "the ended instance's master let go"
    );
    assert_eq!(w.sum("rota_worker_capacity", &[("app", "app")]), 16.0);
    assert_eq!(w.sum("rota_nats_reconnects_total", &[]), 0.0);

    // Every metric the dashboard queries is served by a server or a worker.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/rota.json"),
    )?;
    let json: serde_json::Value = serde_json::from_str(&dashboard)?;
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    assert!(!exprs.is_empty(), "the dashboard queries nothing");
    let mut named = std::collections::BTreeSet::new();
    for expr in &exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("rota_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            named.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    let missing: Vec<&String> = named
        .iter()
        .filter(|n| !refused.knows(n) && !w.knows(n))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries unknown metrics: {missing:?}"
    );
    let _ = tick;
    d.shutdown().await;
    Ok(())
}

/// Every `expr` of the dashboard's panels' targets and its variables' queries.
fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                    ("query", serde_json::Value::Object(q)) => {
                        if let Some(serde_json::Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|i| collect_exprs(i, out)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_database() -> anyhow::Result<()> {
    if Backend::from_env() == Backend::Sqlite {
        eprintln!("skipped: SQLite has no network connection to cut");
        return Ok(());
    }
    let mut d = Deployment::start_without_servers().await?;
    let (proxy, proxied) = in_front_of_database(d.db.url()).await?;
    let mut config = d.server_config("s1");
    config.database_url = proxied;
    config.http_listen = any_port();
    d.start_server_with(config).await?;
    let server = d
        .server("s1")
        .and_then(|s| s.http_addr())
        .expect("server serves HTTP");
    let readyz = || async { get(server, "/readyz", ASK).await.ok() };

    wait::until("ready before the cut", Duration::from_secs(10), || async {
        (readyz().await?.status == 200).then_some(())
    })
    .await;
    proxy.cut();
    let not_ready = wait::until(
        "not ready while the database is cut",
        Duration::from_secs(20),
        || async { readyz().await.filter(|a| a.status == 503) },
    )
    .await;
    assert!(
        not_ready.body.contains("the database does not answer"),
        "{}",
        not_ready.body
    );
    // Alive all along: a liveness probe must not restart a server whose database is away.
    assert_eq!(get(server, "/healthz", ASK).await?.status, 200);
    let s = scrape(server).await?;
    assert_eq!(s.sum("rota_ready", &[]), 0.0);
    proxy.restore();
    wait::until(
        "ready again after the database is back",
        Duration::from_secs(30),
        || async { (readyz().await?.status == 200).then_some(()) },
    )
    .await;
    d.shutdown().await;
    Ok(())
}
