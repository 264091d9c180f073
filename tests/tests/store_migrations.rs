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
