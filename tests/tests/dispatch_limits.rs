//! A dispatch that can never be sent: larger than the NATS server's `max_payload` (a NATS
//! configured smaller than the default). The instance fails at once with a reason that says so,
//! instead of being tried again every second forever.

use std::time::Duration;

use rota_server::store::{Job, Store};
use rota_shared::InstanceStatus;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::nats::NatsServer;
use rota_transport::NatsOptions;
use rota_worker::ProcessorRegistry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_over_the_nats_max_payload_fails_the_instance() -> anyhow::Result<()> {
    let nats = NatsServer::start_with_config("max_payload: 16384", true)?;
    let options = NatsOptions::new(nats.url());
    let mut d = Deployment::start_with(nats, options).await?;
    let app = d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    // A 20 kB script is within Rota's own limits but not this NATS's; the job is stored
    // directly, since its `job create` reply (which echoes the script) would not fit either.
    let store = Store::connect(d.db.url()).await?;
    let spec = shell_job("app", "big", &format!("echo {}", "x".repeat(20_000)));
    let job = store
        .insert_job(&Job::new(spec.spec, app.id, rota_transport::wall_ms()))
        .await?;
    let id = d.run(job.id).await?;
    let done = d.wait_terminal(id, Duration::from_secs(10)).await;
    assert_eq!(done.instance.status, InstanceStatus::Failed, "{done:?}");
    let reason = done.instance.result.clone().unwrap_or_default();
    assert!(reason.contains("max payload of 16384 bytes"), "{reason}");
    assert_eq!(
        (done.instance.attempt, done.instance.runs),
        (1, 0),
        "{done:?}"
    );
    d.shutdown().await;
    Ok(())
}

/// A job at Rota's documented limits (a 120 KiB script, 64 KiB of job parameters, 64 KiB of run
/// parameters) is stored and runs, on every database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_at_the_documented_limits_is_stored_and_runs() -> anyhow::Result<()> {
    use rota_shared::limits::{MAX_CONFIG_BYTES, MAX_PARAMS_BYTES};
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), ProcessorRegistry::new())
        .await?;
    let script_head = "echo \"params ${#ROTA_JOB_PARAMS} ${#ROTA_INSTANCE_PARAMS}\"\n#";
    let script = format!(
        "{script_head}{}",
        "x".repeat(MAX_CONFIG_BYTES - script_head.len())
    );
    let mut spec = shell_job("app", "largest", &script);
    spec.spec.params = Some("p".repeat(MAX_PARAMS_BYTES));
    let job = d.create_job(spec).await?;
    assert_eq!(job.spec.config.len(), MAX_CONFIG_BYTES);
    let run = rota_shared::admin::JobRun {
        id: job.id,
        params: Some("q".repeat(MAX_PARAMS_BYTES)),
        delay_ms: 0,
        idempotency_key: None,
    };
    let id = d.admin.call(&run).await?.instance_id;
    let done = d.wait_terminal(id, Duration::from_secs(15)).await;
    assert_eq!(
        done.instance.status,
        InstanceStatus::Succeeded,
        "{:?}",
        done.instance.result
    );
    assert_eq!(
        done.instance.result.as_deref(),
        Some(format!("params {MAX_PARAMS_BYTES} {MAX_PARAMS_BYTES}").as_str())
    );
    // One byte more is refused with a reason, not stored.
    let mut over = shell_job("app", "over", &"x".repeat(MAX_CONFIG_BYTES + 1));
    over.spec.params = None;
    let refused = d.create_job(over).await.unwrap_err().to_string();
    assert!(refused.contains("INVALID_ARGUMENT"), "{refused}");
    d.shutdown().await;
    Ok(())
}
