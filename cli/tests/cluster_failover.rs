//! Several `rota server` processes on one database (DESIGN §3): any server answers for the
//! owner, a SIGKILLed owner is replaced without a duplicate fire or a lost report, and a
//! restarted server rejoins and can own apps again. Workers run throughout and never restart.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use rota_client::AdminClient;
use rota_shared::InstanceStatus;
use rota_shared::admin::*;
use rota_shared::schedule::Schedule;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::process::ServerProcess;
use rota_tests::wait;
use rota_worker::{ProcessResult, ProcessorRegistry, processor_fn};
use tokio::time::Instant;

const SERVERS: [&str; 3] = ["s1", "s2", "s3"];

async fn start_servers(d: &Deployment, dir: &Path) -> anyhow::Result<Vec<ServerProcess>> {
    let bin = Path::new(env!("CARGO_BIN_EXE_rota"));
    let mut servers = Vec::new();
    for id in SERVERS {
        servers.push(ServerProcess::start(bin, id, &d.nats.url(), d.db.url(), dir).await?);
    }
    Ok(servers)
}

async fn owner_of(admin: &AdminClient, app: &str) -> anyhow::Result<Option<String>> {
    let apps = admin.call(&AppList {}).await?;
    Ok(apps
        .into_iter()
        .find(|a| a.name == app)
        .and_then(|a| a.current_server))
}

async fn run(admin: &AdminClient, job_id: i64, params: Option<&str>) -> anyhow::Result<i64> {
    Ok(admin
        .call(&JobRun {
            id: job_id,
            params: params.map(str::to_owned),
            delay_ms: 0,
            idempotency_key: None,
        })
        .await?
        .instance_id)
}

fn worker_ids(list: Vec<rota_shared::message::WorkerSummary>) -> Vec<String> {
    let mut ids: Vec<String> = list.into_iter().map(|w| w.worker_id).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_to_a_non_owner_give_the_owners_result() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    let dir = tempfile::tempdir()?;
    let mut servers = start_servers(&d, dir.path()).await?;
    d.create_app("app").await?;
    let mut registry = ProcessorRegistry::new();
    registry.register(
        "echo",
        processor_fn(|ctx| async move {
            ProcessResult::ok(ctx.instance_params.clone().unwrap_or_default())
        }),
    );
    d.start_worker(d.worker_config("app", "w1"), registry.clone())
        .await?;
    d.start_worker(d.worker_config("app", "w2"), registry)
        .await?;
    let owner = owner_of(&d.admin, "app")
        .await?
        .expect("the workers made a server own the app");
    let mut echo = shell_job("app", "echo", "");
    echo.spec.processor = "echo".into();
    let echo = d.create_job(echo).await?;
    let sleeper = d
        .create_job(shell_job("app", "sleeper", "sleep 600"))
        .await?;

    let at_owner = d.admin.at_server(&owner);
    let expected_workers = worker_ids(
        at_owner
            .call(&WorkerList {
                app: Some("app".into()),
                ..Default::default()
            })
            .await?
            .items,
    );
    assert_eq!(expected_workers, ["w1", "w2"]);
    let expected_apps = at_owner.call(&AppList {}).await?;
    let expected_job = at_owner.call(&JobShow(JobId { id: echo.id })).await?;
    for other in SERVERS.iter().filter(|s| **s != owner) {
        let at = d.admin.at_server(other);
        // Owner-bound calls: forwarded to the owner, same answer.
        let workers = worker_ids(
            at.call(&WorkerList {
                app: Some("app".into()),
                ..Default::default()
            })
            .await?
            .items,
        );
        assert_eq!(workers, expected_workers, "worker list via {other}");
        let all_workers = worker_ids(
            at.call(&WorkerList {
                app: None,
                ..Default::default()
            })
            .await?
            .items,
        );
        assert_eq!(
            all_workers, expected_workers,
            "worker list of every app via {other}"
        );
        let id = run(&at, echo.id, Some(other)).await?;
        let done = d.wait_terminal(id, Duration::from_secs(15)).await;
        assert_eq!(
            done.instance.status,
            InstanceStatus::Succeeded,
            "run via {other}: {done:?}"
        );
        assert_eq!(done.instance.result.as_deref(), Some(*other));
        let retried = at
            .call(&InstanceRetry(InstanceId { id }))
            .await?
            .instance_id;
        let again = d.wait_terminal(retried, Duration::from_secs(15)).await;
        assert_eq!(
            (again.instance.status, again.instance.result.as_deref()),
            (InstanceStatus::Succeeded, Some(*other))
        );
        let long = run(&at, sleeper.id, None).await?;
        d.wait_status(long, InstanceStatus::Running, Duration::from_secs(15))
            .await;
        let stopped = at.call(&InstanceStop(InstanceId { id: long })).await?;
        assert_eq!(
            stopped.instance.status,
            InstanceStatus::Stopped,
            "stop via {other}"
        );
        // Database-backed calls: the same data from any server.
        assert_eq!(at.call(&AppList {}).await?, expected_apps);
        assert_eq!(
            at.call(&JobShow(JobId { id: echo.id })).await?,
            expected_job
        );
    }
    // Every server is registered and alive; one stopped cleanly (SIGTERM) leaves the registry.
    let asked_at = rota_transport::wall_ms();
    let servers_listed = d.admin.call(&ServerList {}).await?;
    let listed: Vec<(String, bool)> = servers_listed
        .iter()
        .map(|s| (s.id.clone(), s.alive))
        .collect();
    // Seen once as not alive on MariaDB (1 run in 30); the times say why if it happens again.
    assert_eq!(
        listed,
        SERVERS.map(|s| (s.to_owned(), true)),
        "asked at {asked_at}: {servers_listed:?}"
    );
    let leaving = servers
        .iter_mut()
        .find(|s| s.id() != owner)
        .expect("a non-owner");
    let left = leaving.id().to_owned();
    leaving.terminate().await?;
    let listed = d.admin.call(&ServerList {}).await?;
    assert!(
        listed.iter().all(|s| s.id != left),
        "{left} is still registered: {listed:?}"
    );
    d.shutdown().await;
    Ok(())
}

async fn succeeded_fires_after(
    d: &Deployment,
    job_id: i64,
    after_ms: i64,
) -> anyhow::Result<usize> {
    let list = probing(d)
        .call(&InstanceList {
            job_id: Some(job_id),
            status: Some(InstanceStatus::Succeeded),
            limit: Some(1000),
            ..Default::default()
        })
        .await?
        .items;
    Ok(list
        .iter()
        .filter(|i| {
            i.instance
                .expected_trigger_time_ms
                .is_some_and(|t| t >= after_ms)
        })
        .count())
}

/// An admin client whose requests give up after a second, for probes that are repeated anyway.
fn probing(d: &Deployment) -> AdminClient {
    d.admin.clone().with_timeout(Duration::from_secs(1))
}

/// Waits until the app has an owner other than `not`, and returns it with the time it took.
async fn new_owner(
    d: &Deployment,
    servers: &[ServerProcess],
    not: &str,
    since: Instant,
) -> (String, Duration) {
    let what = format!("a server other than {not} to own the app");
    let owner = owner_such_that(d, servers, &what, |o| o != not).await;
    (owner, since.elapsed())
}

/// Waits up to 15 s until the app's owner passes `accept`. On failure the servers' last log
/// lines are part of the message: they say why none took over.
async fn owner_such_that(
    d: &Deployment,
    servers: &[ServerProcess],
    what: &str,
    accept: impl Fn(&str) -> bool,
) -> String {
    // A request that NATS routed to the server just killed, before it noticed the death, is
    // lost: with the client's default 15 s timeout one such probe used the whole wait (the cause
    // of this test's old flakiness). Short probes are simply asked again.
    let admin = probing(d);
    let probe = || async {
        owner_of(&admin, "app")
            .await
            .ok()
            .flatten()
            .filter(|o| accept(o))
    };
    // The outer bound fires first, so that the logs can be shown.
    let waited = tokio::time::timeout(
        Duration::from_secs(15),
        wait::until(what, Duration::from_secs(16), probe),
    )
    .await;
    match waited {
        Ok(owner) => owner,
        Err(_) => {
            let logs: Vec<String> = servers
                .iter()
                .map(|s| format!("--- {} ---\n{}", s.id(), s.log_tail()))
                .collect();
            panic!(
                "timed out after 15s waiting for {what}\n{}",
                logs.join("\n")
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_owner_is_replaced_without_duplicate_or_lost_work() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    let dir = tempfile::tempdir()?;
    let mut servers = start_servers(&d, dir.path()).await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    d.start_worker(d.worker_config("app", "w2"), ProcessorRegistry::new())
        .await?;
    let mut tick = shell_job("app", "tick", "echo tick");
    tick.spec.schedule = Schedule::Cron {
        expression: "* * * * * *".into(),
        time_zone: None,
    };
    let tick = d.create_job(tick).await?;
    let long = d
        .create_job(shell_job("app", "long", "sleep 5; echo long-done"))
        .await?;
    wait::until("the CRON job to run", Duration::from_secs(15), || async {
        (succeeded_fires_after(&d, tick.id, 0).await.ok()? >= 2).then_some(())
    })
    .await;
    let long_id = run(&d.admin, long.id, None).await?;
    let running = d
        .wait_status(long_id, InstanceStatus::Running, Duration::from_secs(15))
        .await;

    // Kill the owner mid-run.
    let owner = owner_of(&d.admin, "app").await?.expect("an owner");
    let killed = servers
        .iter_mut()
        .find(|s| s.id() == owner)
        .expect("the owner is ours");
    let t0 = Instant::now();
    killed.kill().await;
    let (successor, took) = new_owner(&d, &servers, &owner, t0).await;
    eprintln!(
        "failover: {successor} owns the app {} ms after {owner} was SIGKILLed",
        took.as_millis()
    );
    let taken_at = rota_transport::wall_ms();

    // The CRON job goes on firing under the new owner.
    wait::until(
        "three fires under the new owner",
        Duration::from_secs(20),
        || async { (succeeded_fires_after(&d, tick.id, taken_at).await.ok()? >= 3).then_some(()) },
    )
    .await;
    // The long run's terminal report reached the new owner: it ends as it really ended.
    let done = d.wait_terminal(long_id, Duration::from_secs(20)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    assert_eq!(done.instance.result.as_deref(), Some("long-done"));
    assert_eq!(
        (
            done.instance.attempt,
            done.instance.runs,
            done.instance.worker_id.as_deref()
        ),
        (
            running.instance.attempt,
            1,
            running.instance.worker_id.as_deref()
        )
    );

    // The killed server comes back with the same configuration and rejoins.
    let restarted = servers.iter_mut().find(|s| s.id() == owner).expect("ours");
    restarted.restart().await?;
    let listed = d.admin.call(&ServerList {}).await?;
    assert!(
        listed.iter().any(|s| s.id == owner && s.alive),
        "{listed:?}"
    );
    // It can own apps again: with the other two gone, it takes this one over.
    let t1 = Instant::now();
    for s in servers.iter_mut().filter(|s| s.id() != owner) {
        s.kill().await;
    }
    owner_such_that(&d, &servers, "the restarted server to own the app", |o| {
        o == owner
    })
    .await;
    eprintln!(
        "failover: restarted {owner} owns the app {} ms after the others were SIGKILLed",
        t1.elapsed().as_millis()
    );
    let back_at = rota_transport::wall_ms();
    wait::until(
        "two fires under the restarted server",
        Duration::from_secs(20),
        || async { (succeeded_fires_after(&d, tick.id, back_at).await.ok()? >= 2).then_some(()) },
    )
    .await;

    // No fire time ever had two instances.
    let all = d
        .admin
        .call(&InstanceList {
            job_id: Some(tick.id),
            limit: Some(1000),
            ..Default::default()
        })
        .await?
        .items;
    let fires: HashSet<Option<i64>> = all
        .iter()
        .map(|i| i.instance.expected_trigger_time_ms)
        .collect();
    assert_eq!(fires.len(), all.len(), "a fire time has two instances");
    assert!(
        all.iter().all(|i| i.instance.runs <= 1),
        "an instance ran twice"
    );
    // The same two workers, never restarted, find the new owner (an idle one at its next
    // periodic re-acquire).
    wait::until(
        "both workers to serve the new owner",
        Duration::from_secs(10),
        || async {
            let list = d
                .admin
                .call(&WorkerList {
                    app: Some("app".into()),
                    ..Default::default()
                })
                .await
                .ok()?
                .items;
            (worker_ids(list) == ["w1", "w2"]).then_some(())
        },
    )
    .await;
    d.shutdown().await;
    Ok(())
}

/// Idle workers have nothing to report, so nothing tells them their owner died but their own
/// heartbeat: published with a reply subject, it comes back as "no responders" once the owner's
/// process is gone. The first worker to notice asks discovery, a surviving server takes the app
/// over and announces it on the app's subject, and every worker moves at once, long before its
/// next heartbeat (30 s for two of them here) or re-acquire (a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_follow_a_new_owner_within_two_seconds() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    let dir = tempfile::tempdir()?;
    let mut servers = start_servers(&d, dir.path()).await?;
    d.create_app("app").await?;
    // Only w1 heartbeats often enough to notice by itself; w2 and w3 learn it from the
    // announcement.
    for (id, heartbeat) in [("w1", 500), ("w2", 30_000), ("w3", 30_000)] {
        let config = rota_worker::WorkerConfig {
            heartbeat_interval: Duration::from_millis(heartbeat),
            reacquire_interval: Duration::from_secs(60),
            ..d.worker_config("app", id)
        };
        d.start_worker(config, ProcessorRegistry::new()).await?;
    }
    let owner = owner_of(&d.admin, "app")
        .await?
        .expect("the workers made a server own the app");
    let everyone = vec!["w1".to_owned(), "w2".to_owned(), "w3".to_owned()];

    servers
        .iter_mut()
        .find(|s| s.id() == owner)
        .expect("the owner is one of ours")
        .kill()
        .await;
    let killed_at = Instant::now();
    let admin = &probing(&d);
    let new_owner = wait::until(
        "all three workers to heartbeat to a new owner",
        Duration::from_secs(2),
        || async {
            let now = owner_of(admin, "app").await.ok()??;
            if now == owner {
                return None;
            }
            let live = admin
                .at_server(&now)
                .call(&WorkerList {
                    app: Some("app".to_owned()),
                    ..Default::default()
                })
                .await
                .ok()?;
            (worker_ids(live.items) == everyone).then_some(now)
        },
    )
    .await;
    eprintln!(
        "{new_owner} took over from {owner} and heard all three workers {} ms after the kill",
        killed_at.elapsed().as_millis()
    );
    d.shutdown().await;
    Ok(())
}
