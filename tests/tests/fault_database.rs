//! A database outage (DESIGN §7, §8): the server's connection to PostgreSQL or MySQL goes through
//! a TCP proxy that the test cuts for ten seconds. The server says it is not ready but keeps
//! answering, a run that ends during the outage loses neither its result nor its log, and once
//! the database is back the server is ready again and the CRON job fires again, never twice
//! for one fire time.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use rota_shared::admin::*;
use rota_shared::schedule::Schedule;
use rota_shared::{ErrorCode, InstanceStatus};
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::db::Backend;
use rota_tests::proxy::in_front_of_database;
use rota_tests::wait;
use rota_worker::ProcessorRegistry;
use tokio::time::Instant;

/// How long the database is away.
const OUTAGE: Duration = Duration::from_secs(10);

/// How often the server is asked for its stats during the outage.
const STATS_EVERY: Duration = Duration::from_millis(200);

fn now_ms() -> i64 {
    rota_transport::wall_ms()
}

/// How many instances of the job for a fire time after `after_ms` have succeeded.
async fn succeeded_fires_after(d: &Deployment, job_id: i64, after_ms: i64) -> Option<usize> {
    let list = d.instances_of(job_id).await.ok()?;
    Some(
        list.iter()
            .filter(|i| i.instance.status == InstanceStatus::Succeeded)
            .filter(|i| {
                i.instance
                    .expected_trigger_time_ms
                    .is_some_and(|t| t > after_ms)
            })
            .count(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_of_ten_seconds() -> anyhow::Result<()> {
    if Backend::from_env() == Backend::Sqlite {
        eprintln!("skipped: SQLite has no network connection to cut");
        return Ok(());
    }
    let mut d = Deployment::start_without_servers().await?;
    let (proxy, proxied) = in_front_of_database(d.db.url()).await?;
    let mut config = d.server_config("s1");
    config.database_url = proxied;
    // Its migrations, and everything else, go through the proxy.
    d.start_server_with(config).await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let mut tick = shell_job("app", "tick", "echo tick");
    tick.spec.schedule = Schedule::Cron {
        expression: "* * * * * *".into(),
        time_zone: None,
    };
    let tick = d.create_job(tick).await?;
    let slow = d
        .create_job(shell_job("app", "slow", "sleep 3; echo slow-done"))
        .await?;
    wait::until(
        "the CRON job to run before the outage",
        Duration::from_secs(15),
        || async { (succeeded_fires_after(&d, tick.id, 0).await? >= 2).then_some(()) },
    )
    .await;
    let slow_id = d.run(slow.id).await?;
    d.wait_status(slow_id, InstanceStatus::Running, Duration::from_secs(15))
        .await;

    // --- The outage. The server is asked for its stats all along; every call must answer.
    let stats = d.admin.at_server("s1").with_timeout(Duration::from_secs(2));
    let cut_at_ms = now_ms();
    let cut = Instant::now();
    proxy.cut();
    let mut polls = 0;
    let mut slowest = Duration::ZERO;
    let mut not_ready_after: Option<Duration> = None;
    while cut.elapsed() < OUTAGE {
        let asked = Instant::now();
        let info = stats.call(&ServerStats {}).await.with_context(|| {
            format!(
                "s1 did not answer ServerStats {} ms into the outage",
                cut.elapsed().as_millis()
            )
        })?;
        polls += 1;
        slowest = slowest.max(asked.elapsed());
        match (info.ready, not_ready_after) {
            (false, None) => not_ready_after = Some(cut.elapsed()),
            (true, Some(at)) => panic!(
                "s1 said ready again {} ms into the outage, after it said not ready at {} ms",
                cut.elapsed().as_millis(),
                at.as_millis()
            ),
            _ => {}
        }
        // The outage lasts a fixed time: this paces the polls within it.
        tokio::time::sleep(STATS_EVERY.min(OUTAGE.saturating_sub(cut.elapsed()))).await;
    }
    let not_ready_after = not_ready_after.unwrap_or_else(|| {
        panic!("s1 never said it was not ready during the {OUTAGE:?} outage ({polls} polls)")
    });
    // A request that needs the database is answered UNAVAILABLE (which senders retry), not
    // INTERNAL (which they give up on after a few tries).
    let err = d
        .admin
        .at_server("s1")
        .with_timeout(Duration::from_secs(10))
        .call(&JobList::default())
        .await
        .expect_err("the database is away");
    assert_eq!(err.code(), Some(ErrorCode::Unavailable), "{err}");
    assert!(
        not_ready_after <= Duration::from_secs(5),
        "s1 took {} ms to notice the database was gone",
        not_ready_after.as_millis()
    );
    eprintln!(
        "outage: s1 not ready {} ms after the cut; {polls} ServerStats calls all answered, the \
         slowest in {} ms",
        not_ready_after.as_millis(),
        slowest.as_millis()
    );

    // --- The database is back.
    let restored_at_ms = now_ms();
    let restored = Instant::now();
    proxy.restore();
    wait::until("s1 to be ready again", Duration::from_secs(15), || async {
        stats.call(&ServerStats {}).await.ok().filter(|s| s.ready)
    })
    .await;
    eprintln!(
        "s1 ready again {} ms after the restore",
        restored.elapsed().as_millis()
    );

    // The slow run ended during the outage; its terminal report and its log, retried by the
    // worker, reached the database once it was back.
    let done = d.wait_terminal(slow_id, Duration::from_secs(40)).await;
    eprintln!(
        "slow instance final {} ms after the restore: {done:?}",
        restored.elapsed().as_millis()
    );
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    assert_eq!(
        done.instance.result.as_deref(),
        Some("slow-done"),
        "{done:?}"
    );
    assert_eq!(
        (done.instance.attempt, done.instance.runs),
        (1, 1),
        "{done:?}"
    );
    // The terminal report does not wait for an unreachable log store for ever, so the log may
    // be stored a moment after the instance is final.
    let line = wait::until(
        "the slow run's last log line to be stored",
        Duration::from_secs(15),
        || async {
            let logs = d.logs(slow_id).await.ok()?;
            logs.into_iter().find(|l| l.text.contains("slow-done"))
        },
    )
    .await;
    assert!(
        (cut_at_ms..restored_at_ms).contains(&line.ts_ms),
        "the slow run printed at {} ms, not during the outage ({cut_at_ms}..{restored_at_ms})",
        line.ts_ms
    );

    // The CRON job fires again.
    wait::until(
        "two fires of the CRON job after the restore",
        Duration::from_secs(20),
        || async { (succeeded_fires_after(&d, tick.id, restored_at_ms).await? >= 2).then_some(()) },
    )
    .await;
    eprintln!(
        "CRON fires again {} ms after the restore",
        restored.elapsed().as_millis()
    );

    // No fire time has two instances.
    let all = d.instances_of(tick.id).await?;
    let mut per_fire: HashMap<Option<i64>, usize> = HashMap::new();
    for i in &all {
        *per_fire
            .entry(i.instance.expected_trigger_time_ms)
            .or_default() += 1;
    }
    let doubled: Vec<_> = per_fire.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        doubled.is_empty(),
        "fire times with two instances: {doubled:?}"
    );
    let stats = stats.call(&ServerStats {}).await?;
    eprintln!(
        "after the outage: {} instances of the CRON job; repairs {:?}; services {:?}",
        all.len(),
        stats.repairs,
        stats.services
    );

    d.shutdown().await;
    drop(proxy);
    Ok(())
}
