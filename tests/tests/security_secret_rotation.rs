//! Rotating an app's secret without stopping workers: during the grace both secrets work; a
//! worker that reads its secret from a file moves to the new one while it runs; after the grace
//! the old secret no longer authenticates anything, and a worker still on it drops out.

use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::admin::WorkerList;
use rota_tests::cluster::{Deployment, shell_job};
use rota_tests::wait;
use rota_worker::ProcessorRegistry;

const NEW_SECRET: &str = "the-new-secret";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_reaches_running_workers_and_the_old_one_retires() -> anyhow::Result<()> {
    let mut d = Deployment::start().await?;
    d.create_app("app").await?;
    let dir = tempfile::tempdir()?;
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{}\n", rota_tests::cluster::SECRET))?;
    let mut from_file = d.worker_config("app", "w-file");
    from_file.secret = String::new();
    from_file.secret_file = Some(secret_file.clone());
    d.start_worker(from_file, ProcessorRegistry::new()).await?;
    d.start_worker(d.worker_config("app", "w-old"), ProcessorRegistry::new())
        .await?;
    let on = |worker: &str| {
        let mut spec = shell_job("app", &format!("on-{worker}"), "echo ok");
        spec.spec.designated_workers = vec![worker.to_owned()];
        spec
    };
    let on_file = d.create_job(on("w-file")).await?;
    let on_old = d.create_job(on("w-old")).await?;

    let grace = Duration::from_secs(4);
    d.admin.app_rotate_secret("app", NEW_SECRET, grace).await?;
    let rotated = tokio::time::Instant::now();
    std::fs::write(&secret_file, format!("{NEW_SECRET}\n"))?;
    // During the grace, a worker on the old secret still works.
    let id = d.run(on_old.id).await?;
    assert_eq!(
        d.wait_terminal(id, Duration::from_secs(10))
            .await
            .instance
            .status,
        InstanceStatus::Succeeded
    );

    // After it, the worker on the old secret drops out; the one with the file stays, and runs.
    let live = || async {
        let list = d
            .admin
            .call(&WorkerList {
                app: Some("app".into()),
                ..Default::default()
            })
            .await
            .ok()?
            .items;
        Some(list.into_iter().map(|w| w.worker_id).collect::<Vec<_>>())
    };
    wait::until("w-old to drop out", Duration::from_secs(20), || async {
        live().await.filter(|l| l == &vec!["w-file".to_owned()])
    })
    .await;
    assert!(
        rotated.elapsed() >= grace,
        "w-old dropped out before the grace ended"
    );
    let id = d.run(on_file.id).await?;
    let done = d.wait_terminal(id, Duration::from_secs(10)).await;
    assert_eq!(done.instance.status, InstanceStatus::Succeeded, "{done:?}");
    assert_eq!(done.instance.worker_id.as_deref(), Some("w-file"));
    // A new worker with the old secret is refused at once.
    let refused =
        rota_worker::Worker::start(d.worker_config("app", "w-late"), ProcessorRegistry::new())
            .await;
    match refused {
        Err(rota_worker::WorkerError::Acquire { code, .. }) => {
            assert_eq!(code, rota_shared::ErrorCode::Unauthorized)
        }
        Err(other) => panic!("refused otherwise: {other}"),
        Ok(_) => panic!("a worker on the retired secret started"),
    }
    d.shutdown().await;
    Ok(())
}
