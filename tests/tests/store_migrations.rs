//! Schema migrations keep what is stored: a job written by the schema before its settings became
//! one JSON column reads back whole after the migration, and migrating down and up again keeps
//! it too. Runs on the backend `ROTA_TEST_DB` names.

use rota_migrations::{Migrator, MigratorTrait};
use rota_server::store::Store;
use rota_shared::admin::{DispatchStrategy, MisfirePolicy, OverlapPolicy};
use rota_shared::schedule::{Lifecycle, Schedule};
use rota_tests::db::TestDatabase;
use sea_orm::{ConnectionTrait, Database};

/// The migrations before `m20261202_000003_job_settings`.
const BEFORE_JOB_SETTINGS: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_stored_in_columns_reads_back_whole_after_the_settings_migration()
-> anyhow::Result<()> {
    rota_tests::init_tracing();
    let db = TestDatabase::create().await?;
    let conn = Database::connect(db.url()).await?;
    Migrator::up(&conn, Some(BEFORE_JOB_SETTINGS)).await?;
    conn.execute_unprepared(
        "INSERT INTO app (name, secret_hash, epoch, created_at_ms) VALUES ('app', 'x', 0, 1)",
    )
    .await?;
    // Every moved column holds a value other than its default.
    conn.execute_unprepared(
        "INSERT INTO job (app_id, name, description, schedule, lifecycle_start_ms, \
         lifecycle_end_ms, processor, config, params, enabled, max_instances, overlap, \
         max_retries, retry_delay_ms, timeout_ms, dispatch, tags, designated_workers, \
         next_trigger_time_ms, created_at_ms, updated_at_ms, misfire) VALUES \
         ((SELECT id FROM app WHERE name = 'app'), 'nightly', 'the nightly run', \
         '{\"type\":\"cron\",\"expression\":\"0 30 2 * * *\",\"time_zone\":\"Europe/Berlin\"}', \
         100, 200, 'shell', 'echo hi', 'p=1', false, 3, 'queue', 2, 500, 9000, 'round_robin', \
         '[\"gpu\",\"eu\"]', '[\"w1\"]', 150, 10, 20, 'catch_up:4')",
    )
    .await?;
    Migrator::up(&conn, None).await?;

    let expect = |job: &rota_server::store::Job| {
        let s = &job.spec;
        assert_eq!(s.name, "nightly");
        assert_eq!(s.description, "the nightly run");
        assert_eq!(
            s.schedule,
            Schedule::Cron {
                expression: "0 30 2 * * *".into(),
                time_zone: Some("Europe/Berlin".into())
            }
        );
        assert_eq!(
            s.lifecycle,
            Lifecycle {
                start_ms: Some(100),
                end_ms: Some(200)
            }
        );
        assert_eq!(
            (s.processor.as_str(), s.config.as_str()),
            ("shell", "echo hi")
        );
        assert_eq!(s.params.as_deref(), Some("p=1"));
        assert!(!s.enabled);
        assert_eq!((s.max_instances, s.overlap), (3, OverlapPolicy::Queue));
        assert_eq!(
            (s.max_retries, s.retry_delay_ms, s.timeout_ms),
            (2, 500, 9000)
        );
        assert_eq!(s.dispatch, DispatchStrategy::RoundRobin);
        assert_eq!(s.tags, vec!["gpu".to_owned(), "eu".to_owned()]);
        assert_eq!(s.designated_workers, vec!["w1".to_owned()]);
        assert_eq!(s.misfire, MisfirePolicy::CatchUp { max: 4 });
        assert_eq!(
            (
                job.next_trigger_time_ms,
                job.created_at_ms,
                job.updated_at_ms
            ),
            (Some(150), 10, 20)
        );
    };
    let store = Store::connect(db.url()).await?;
    let jobs = store.list_jobs(None, None, 10).await?;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    expect(&jobs[0]);

    // Down to the columns and up again: still the same job.
    let steps = Migrator::get_applied_migrations(&conn).await?.len() as u32 - BEFORE_JOB_SETTINGS;
    Migrator::down(&conn, Some(steps)).await?;
    Migrator::up(&conn, None).await?;
    let jobs = store.list_jobs(None, None, 10).await?;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    expect(&jobs[0]);
    Ok(())
}

/// Two servers of a Helm deploy start at the same moment on an empty database: the migrations
/// run under a database-wide lock, so one applies them and the others find nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_starting_at_once_on_a_fresh_database_all_run() -> anyhow::Result<()> {
    rota_tests::init_tracing();
    let nats = rota_tests::nats::NatsServer::start()?;
    let db = TestDatabase::create().await?;
    let config = |id: &str| rota_server::ServerConfig {
        nats: rota_transport::NatsOptions::new(nats.url()),
        database_url: db.url().to_owned(),
        server_id: Some(id.to_owned()),
        ..rota_server::ServerConfig::default()
    };
    let started = futures::future::join_all(
        ["s1", "s2", "s3"].map(|id| rota_server::Server::start(config(id))),
    )
    .await;
    let mut handles = Vec::new();
    for (id, result) in ["s1", "s2", "s3"].iter().zip(started) {
        match result {
            Ok(handle) => handles.push(handle),
            Err(e) => panic!("server {id} did not start: {e}"),
        }
    }
    let store = Store::connect(db.url()).await?;
    let mut registered: Vec<String> = store
        .list_servers(0)
        .await?
        .into_iter()
        .map(|s| s.id)
        .collect();
    registered.sort();
    assert_eq!(registered, ["s1", "s2", "s3"]);
    for handle in handles {
        handle.shutdown().await;
    }
    Ok(())
}

/// A server older than the schema (a newer Rota migrated the database) refuses to start, saying
/// why, instead of running against tables it does not know.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_newer_than_the_binary_is_refused_with_a_clear_message() -> anyhow::Result<()> {
    rota_tests::init_tracing();
    let db = TestDatabase::create().await?;
    Store::connect(db.url()).await?;
    let conn = Database::connect(db.url()).await?;
    conn.execute_unprepared(
        "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m29990101_000001_future', 0)",
    )
    .await?;
    let err = Store::connect(db.url())
        .await
        .expect_err("a schema from a newer Rota must be refused");
    let message = err.to_string();
    assert!(
        message.contains("newer") && message.contains("m29990101_000001_future"),
        "{message}"
    );
    assert!(!message.contains('\n'), "one line: {message}");
    Ok(())
}
