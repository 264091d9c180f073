//! Clean-up: finished instances and their logs older than the retention are deleted in
//! batches; live instances are never touched, and the deletions are counted.

use std::time::Duration;

use rota_shared::admin::{InstanceList, JobRun, LogsGet, ServerStats};
use rota_shared::{ErrorCode, InstanceStatus};
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_worker::ProcessorRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_instances_past_retention_are_deleted_with_their_logs() -> anyhow::Result<()> {
    let mut d = Deployment::start_without_servers().await?;
    let mut config = d.server_config("s1");
    config.retention = Duration::from_secs(2);
    config.clean_up_interval = Duration::from_millis(500);
    d.start_server_with(config).await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let quick = d
        .create_job(shell_job("app", "quick", "echo line-1; echo line-2"))
        .await?;
    let slow = d.create_job(shell_job("app", "slow", "sleep 600")).await?;
    let run = |id| JobRun {
        id,
        params: None,
        delay_ms: 0,
        idempotency_key: None,
    };
    let long = d.admin.call(&run(slow.id)).await?.instance_id;
    let mut finished = Vec::new();
    for _ in 0..3 {
        let id = d.admin.call(&run(quick.id)).await?.instance_id;
        let done = d.wait_terminal(id, Duration::from_secs(15)).await;
        assert_eq!(done.instance.status, InstanceStatus::Succeeded);
        // Its two lines, and the shell's exit status.
        assert_eq!(d.logs(id).await?.len(), 3);
        finished.push(id);
    }
    d.wait_status(long, InstanceStatus::Running, Duration::from_secs(10))
        .await;

    // Past the retention the finished ones go, logs and all.
    for id in &finished {
        wait::until(
            &format!("instance {id} to be deleted"),
            Duration::from_secs(15),
            || async {
                let gone = d.instance(*id).await.err()?;
                gone.to_string().contains("NOT_FOUND").then_some(())
            },
        )
        .await;
        let logs = d
            .admin
            .call(&LogsGet {
                instance_id: *id,
                after_id: 0,
                limit: None,
            })
            .await;
        assert_eq!(logs.err().and_then(|e| e.code()), Some(ErrorCode::NotFound));
    }
    // The running instance stays, however old.
    let left = d
        .admin
        .call(&InstanceList {
            job_id: Some(slow.id),
            ..Default::default()
        })
        .await?
        .items;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].instance.status, InstanceStatus::Running);

    let stats = d.admin.at_server("s1").call(&ServerStats {}).await?;
    assert_eq!(
        stats.repairs.get("cleaned_instances"),
        Some(&3),
        "{:?}",
        stats.repairs
    );
    assert_eq!(
        stats.repairs.get("cleaned_log_lines"),
        Some(&9),
        "{:?}",
        stats.repairs
    );
    d.shutdown().await;
    Ok(())
}
