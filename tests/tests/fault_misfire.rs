//! Every server is down across three fire times of a CRON job; on restart each misfire policy
//! does what it says, and the repair is counted.

use std::collections::BTreeMap;
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::{InstanceInfo, MisfirePolicy, ServerStats};
use rota_shared::schedule::Schedule;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_worker::ProcessorRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_misfire_policy_does_what_it_says() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    let mut config = d.server_config("s1");
    config.misfire_threshold = Duration::from_secs(1);
    let lookahead_ms = i64::try_from(config.schedule_lookahead.as_millis())?;
    d.start_server_with(config.clone()).await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;

    let mut jobs = BTreeMap::new();
    for (name, policy) in [
        ("once", MisfirePolicy::FireOnce),
        ("skip", MisfirePolicy::Skip),
        ("catch-up", MisfirePolicy::CatchUp { max: 2 }),
    ] {
        let mut spec = shell_job("app", name, "echo tick");
        spec.spec.schedule = Schedule::Cron {
            expression: "*/2 * * * * *".into(),
            time_zone: None,
        };
        spec.spec.misfire = policy;
        jobs.insert(name, d.create_job(spec).await?);
    }
    for job in jobs.values() {
        wait::until("each job to fire once", Duration::from_secs(15), || async {
            let list = d.instances_of(job.id).await.ok()?;
            list.iter()
                .any(|i| i.instance.status == InstanceStatus::Succeeded)
                .then_some(())
        })
        .await;
    }

    // Every server goes down; three fire times (every 2 s) pass while none runs.
    d.stop_server("s1").await;
    let down_at = rota_transport::wall_ms();
    // The fires the server had already created ahead of time (its lookahead) are not misses.
    let missed_from = down_at + lookahead_ms;
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    let up_at = rota_transport::wall_ms();
    d.start_server_with(config).await?;

    // Each job fires normally again after the restart...
    for job in jobs.values() {
        wait::until(
            "each job to fire after the restart",
            Duration::from_secs(20),
            || async {
                let list = d.instances_of(job.id).await.ok()?;
                list.iter()
                    .any(|i| {
                        i.instance.status == InstanceStatus::Succeeded
                            && i.instance
                                .expected_trigger_time_ms
                                .is_some_and(|t| t > up_at)
                    })
                    .then_some(())
            },
        )
        .await;
    }
    // ...and the window of missed fires holds what its policy says.
    let missed = |list: &[InstanceInfo]| -> Vec<i64> {
        let mut fires: Vec<i64> = list
            .iter()
            .filter_map(|i| i.instance.expected_trigger_time_ms)
            .filter(|t| *t > missed_from && *t <= up_at)
            .collect();
        fires.sort_unstable();
        fires
    };
    let once = d.instances_of(jobs["once"].id).await?;
    let skip = d.instances_of(jobs["skip"].id).await?;
    let catch_up = d.instances_of(jobs["catch-up"].id).await?;
    assert_eq!(missed(&once).len(), 1, "fire_once: {:?}", missed(&once));
    assert_eq!(missed(&skip).len(), 0, "skip: {:?}", missed(&skip));
    let caught = missed(&catch_up);
    assert_eq!(caught.len(), 2, "catch_up:2: {caught:?}");
    // The most recent missed fires, two seconds apart.
    assert_eq!(caught[1] - caught[0], 2_000);
    assert!(
        up_at - caught[1] < 2_000 + 1_000,
        "{caught:?} up at {up_at}"
    );
    for list in [&once, &skip, &catch_up] {
        let mut fires: Vec<Option<i64>> = list
            .iter()
            .map(|i| i.instance.expected_trigger_time_ms)
            .collect();
        let n = fires.len();
        fires.sort_unstable();
        fires.dedup();
        assert_eq!(fires.len(), n, "a fire time has two instances");
    }
    let stats = d.admin.at_server("s1").call(&ServerStats {}).await?;
    for reason in ["misfire_fired_once", "misfire_skipped", "misfire_caught_up"] {
        assert_eq!(
            stats.repairs.get(reason),
            Some(&1),
            "{reason}: {:?}",
            stats.repairs
        );
    }
    d.shutdown().await;
    Ok(())
}
