//! Idempotent API runs: a `job run` repeated with its idempotency key returns the instance the
//! first one created, however often and however concurrently it is repeated, so that a client
//! may retry a run whose answer it did not get.

use rota_shared::ErrorCode;
use rota_shared::admin::*;
use rota_tests::cluster::{Deployment, shell_job};

fn run(id: i64, key: &str, params: Option<&str>) -> JobRun {
    JobRun {
        id,
        params: params.map(str::to_owned),
        delay_ms: 0,
        idempotency_key: Some(key.to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_repeated_with_its_key_returns_the_first_instance() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    d.start_worker(d.worker_config("app", "w1"), Default::default())
        .await?;
    let job = d.create_job(shell_job("app", "once", "echo ran")).await?;

    let first = d.admin.call(&run(job.id, "order-17", Some("p"))).await?;
    assert!(!first.reused);
    let again = d.admin.call(&run(job.id, "order-17", Some("p"))).await?;
    assert_eq!(again.instance_id, first.instance_id);
    assert!(again.reused, "the second answer says it is a repeat");

    // Sent at the same moment, on every backend's unique index: still one instance.
    let burst = run(job.id, "burst-1", None);
    let racing = futures::future::join_all((0..16).map(|_| d.admin.call(&burst))).await;
    let ids: std::collections::BTreeSet<i64> = racing
        .into_iter()
        .map(|r| r.map(|s| s.instance_id))
        .collect::<Result<_, _>>()?;
    assert_eq!(ids.len(), 1, "16 racing runs with one key: {ids:?}");

    // A key is per job, and another key is another run.
    let other_job = d.create_job(shell_job("app", "other", "echo ran")).await?;
    let elsewhere = d
        .admin
        .call(&run(other_job.id, "order-17", Some("p")))
        .await?;
    assert!(!elsewhere.reused);
    let second = d.admin.call(&run(job.id, "order-18", Some("p"))).await?;
    assert_ne!(second.instance_id, first.instance_id);

    let instances = d.instances_of(job.id).await?;
    assert_eq!(
        instances.len(),
        3,
        "order-17, burst-1, order-18: {instances:?}"
    );
    d.wait_terminal(first.instance_id, std::time::Duration::from_secs(20))
        .await;
    d.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reused_for_other_parameters_or_malformed_is_refused() -> anyhow::Result<()> {
    let d = Deployment::start().await?;
    d.create_app("app").await?;
    let job = d.create_job(shell_job("app", "once", "echo ran")).await?;
    let first = d.admin.call(&run(job.id, "k-1", Some("a"))).await?;

    let err = d
        .admin
        .call(&run(job.id, "k-1", Some("b")))
        .await
        .expect_err("other parameters under a used key are a mistake, not a repeat");
    assert_eq!(err.code(), Some(ErrorCode::Conflict), "{err}");
    assert!(
        err.to_string().contains(&first.instance_id.to_string()),
        "{err}"
    );

    for bad in ["", "has space", "semi;colon", &"k".repeat(129)] {
        let err = d
            .admin
            .call(&run(job.id, bad, None))
            .await
            .expect_err("a malformed key is refused");
        assert_eq!(
            err.code(),
            Some(ErrorCode::InvalidArgument),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(d.instances_of(job.id).await?.len(), 1);
    d.shutdown().await;
    Ok(())
}
