//! The NATS server restarts while jobs run: servers and workers reconnect by themselves, every
//! running instance reaches its real terminal state, and no terminal report is lost.

use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::{InstanceList, JobRun, ServerStats};
use rota_shared::schedule::Schedule;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_worker::ProcessorRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_work_survives_a_nats_restart() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    d.start_worker(d.worker_config("app", "w2"), ProcessorRegistry::new())
        .await?;
    let slow = d
        .create_job(shell_job(
            "app",
            "slow",
            "echo started; sleep 3; echo done-$ROTA_INSTANCE_ID",
        ))
        .await?;
    let mut tick = shell_job("app", "tick", "echo tick");
    tick.spec.schedule = Schedule::Cron {
        expression: "* * * * * *".into(),
        time_zone: None,
    };
    let tick = d.create_job(tick).await?;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let run = JobRun {
            id: slow.id,
            params: None,
            delay_ms: 0,
            idempotency_key: None,
        };
        ids.push(d.admin.call(&run).await?.instance_id);
    }
    for id in &ids {
        d.wait_status(*id, InstanceStatus::Running, Duration::from_secs(10))
            .await;
    }

    // The outage: NATS is down for a second, while every run is in the middle of its sleep.
    d.nats.stop();
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.nats.restart()?;
    let restarted_at = rota_transport::wall_ms();

    // Every run ends as it really ended: its terminal report was retried until the server,
    // reconnected, acknowledged it. Nothing was declared lost.
    for id in &ids {
        let done = d.wait_terminal(*id, Duration::from_secs(30)).await;
        assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
        assert_eq!(done.instance.result, Some(format!("done-{id}")));
        assert_eq!(
            (done.instance.attempt, done.instance.runs),
            (1, 1),
            "{done:?}"
        );
        let logs = d.logs(*id).await?;
        let texts: Vec<&str> = logs.iter().map(|l| l.text.as_str()).collect();
        assert!(
            texts.contains(&"started") && texts.contains(&format!("done-{id}").as_str()),
            "{texts:?}"
        );
    }
    // Scheduling goes on after the reconnect.
    wait::until(
        "the CRON job to fire after the restart",
        Duration::from_secs(20),
        || async {
            let list = d
                .admin
                .call(&InstanceList {
                    job_id: Some(tick.id),
                    status: Some(InstanceStatus::Succeeded),
                    limit: Some(1000),
                    ..Default::default()
                })
                .await
                .ok()?
                .items;
            let after = list
                .iter()
                .filter(|i| {
                    i.instance
                        .expected_trigger_time_ms
                        .is_some_and(|t| t > restarted_at)
                })
                .count();
            (after >= 2).then_some(())
        },
    )
    .await;
    let stats = d.admin.at_server("s1").call(&ServerStats {}).await?;
    assert!(stats.ready);
    assert_eq!(stats.repairs.get("worker_lost"), None, "{stats:?}");
    d.shutdown().await;
    Ok(())
}
