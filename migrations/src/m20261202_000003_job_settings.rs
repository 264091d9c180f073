//! A job's settings become one JSON column.
//!
//! The server's domain type for a job (`rota_shared::job::JobSpec`) is the one definition of a
//! job; a column per field meant that every new field cost a migration, an entity field and two
//! hand-written mappings. Now the table keeps as columns only what queries filter or index on
//! (the app, the name, whether it is enabled, the schedule, the next fire and the times) and the
//! rest as the JSON object of the remaining `JobSpec` fields in `settings`.
//!
//! The existing rows are converted here, with the JSON written out field by field, so that this
//! migration keeps meaning the same thing whatever later becomes of `JobSpec`.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, QueryResult};
use serde_json::{Map, Value, json};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden, Clone, Copy)]
enum Job {
    Table,
    Id,
    Settings,
    Description,
    LifecycleStartMs,
    LifecycleEndMs,
    Processor,
    Config,
    Params,
    MaxInstances,
    Overlap,
    MaxRetries,
    RetryDelayMs,
    TimeoutMs,
    Dispatch,
    Tags,
    DesignatedWorkers,
    Misfire,
}

/// The columns whose values move into `settings`.
const MOVED: [Job; 15] = [
    Job::Description,
    Job::LifecycleStartMs,
    Job::LifecycleEndMs,
    Job::Processor,
    Job::Config,
    Job::Params,
    Job::MaxInstances,
    Job::Overlap,
    Job::MaxRetries,
    Job::RetryDelayMs,
    Job::TimeoutMs,
    Job::Dispatch,
    Job::Tags,
    Job::DesignatedWorkers,
    Job::Misfire,
];

fn corrupt(id: i64, what: &str, e: impl std::fmt::Display) -> DbErr {
    DbErr::Migration(format!("job {id}: {what}: {e}"))
}

/// `fire_once`, `skip` or `catch_up:N` as the tagged JSON of `MisfirePolicy`.
fn misfire_json(id: i64, text: &str) -> Result<Value, DbErr> {
    match text {
        "fire_once" | "" => Ok(json!({"policy": "fire_once"})),
        "skip" => Ok(json!({"policy": "skip"})),
        other => other
            .strip_prefix("catch_up:")
            .and_then(|n| n.parse::<u32>().ok())
            .map(|max| json!({"policy": "catch_up", "max": max}))
            .ok_or_else(|| corrupt(id, "misfire policy", other)),
    }
}

fn misfire_text(value: Option<&Value>) -> String {
    let policy = value.and_then(|v| v.get("policy")).and_then(Value::as_str);
    match policy {
        Some("skip") => "skip".to_owned(),
        Some("catch_up") => {
            let max = value
                .and_then(|v| v.get("max"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            format!("catch_up:{max}")
        }
        _ => "fire_once".to_owned(),
    }
}

fn settings_of(row: &QueryResult) -> Result<(i64, String), DbErr> {
    let id: i64 = row.try_get("", "id")?;
    let list = |column: &str| -> Result<Value, DbErr> {
        let text: String = row.try_get("", column)?;
        serde_json::from_str(&text).map_err(|e| corrupt(id, column, e))
    };
    let mut lifecycle = Map::new();
    if let Some(start) = row.try_get::<Option<i64>>("", "lifecycle_start_ms")? {
        lifecycle.insert("start_ms".into(), start.into());
    }
    if let Some(end) = row.try_get::<Option<i64>>("", "lifecycle_end_ms")? {
        lifecycle.insert("end_ms".into(), end.into());
    }
    let settings = json!({
        "description": row.try_get::<String>("", "description")?,
        "lifecycle": lifecycle,
        "processor": row.try_get::<String>("", "processor")?,
        "config": row.try_get::<String>("", "config")?,
        "params": row.try_get::<Option<String>>("", "params")?,
        "max_instances": row.try_get::<i32>("", "max_instances")?,
        "overlap": row.try_get::<String>("", "overlap")?,
        "max_retries": row.try_get::<i32>("", "max_retries")?,
        "retry_delay_ms": row.try_get::<i64>("", "retry_delay_ms")?,
        "timeout_ms": row.try_get::<i64>("", "timeout_ms")?,
        "dispatch": row.try_get::<String>("", "dispatch")?,
        "tags": list("tags")?,
        "designated_workers": list("designated_workers")?,
        "misfire": misfire_json(id, &row.try_get::<String>("", "misfire")?)?,
    });
    Ok((id, settings.to_string()))
}

fn long_text(backend: DbBackend) -> &'static str {
    // MySQL's TEXT holds 64 kB, less than a job's configuration may be.
    if backend == DbBackend::MySql {
        "MEDIUMTEXT"
    } else {
        "TEXT"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        // Added nullable and filled below; MySQL allows no default on a TEXT column.
        db.execute_unprepared(&format!(
            "ALTER TABLE job ADD COLUMN settings {} NULL",
            long_text(backend)
        ))
        .await?;
        let mut select = Query::select();
        select.column(Job::Id).columns(MOVED).from(Job::Table);
        for row in db.query_all(&select).await? {
            let (id, settings) = settings_of(&row)?;
            let update = Query::update()
                .table(Job::Table)
                .value(Job::Settings, settings)
                .and_where(Expr::col(Job::Id).eq(id))
                .to_owned();
            db.execute(&update).await?;
        }
        // SQLite cannot change a column's constraints; there the store always writes it.
        match backend {
            DbBackend::Postgres => {
                db.execute_unprepared("ALTER TABLE job ALTER COLUMN settings SET NOT NULL")
                    .await?;
            }
            DbBackend::MySql => {
                db.execute_unprepared("ALTER TABLE job MODIFY settings MEDIUMTEXT NOT NULL")
                    .await?;
            }
            _ => {}
        }
        for column in MOVED {
            manager
                .alter_table(
                    Table::alter()
                        .table(Job::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        let text = long_text(backend);
        // The columns come back nullable: MySQL allows no default on a TEXT column, and every row
        // is filled below.
        for (column, kind) in [
            ("description", "TEXT"),
            ("lifecycle_start_ms", "BIGINT"),
            ("lifecycle_end_ms", "BIGINT"),
            ("processor", "VARCHAR(255)"),
            ("config", text),
            ("params", text),
            ("max_instances", "INTEGER"),
            ("overlap", "VARCHAR(16)"),
            ("max_retries", "INTEGER"),
            ("retry_delay_ms", "BIGINT"),
            ("timeout_ms", "BIGINT"),
            ("dispatch", "VARCHAR(32)"),
            ("tags", "TEXT"),
            ("designated_workers", "TEXT"),
            ("misfire", "VARCHAR(32)"),
        ] {
            db.execute_unprepared(&format!("ALTER TABLE job ADD COLUMN {column} {kind} NULL"))
                .await?;
        }
        let mut select = Query::select();
        select.columns([Job::Id, Job::Settings]).from(Job::Table);
        for row in db.query_all(&select).await? {
            let id: i64 = row.try_get("", "id")?;
            let text: String = row.try_get("", "settings")?;
            let s: Map<String, Value> =
                serde_json::from_str(&text).map_err(|e| corrupt(id, "settings", e))?;
            let str_of = |k: &str, default: &str| {
                s.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or(default)
                    .to_owned()
            };
            let int_of =
                |k: &str, default: i64| s.get(k).and_then(Value::as_i64).unwrap_or(default);
            let lifecycle = s.get("lifecycle");
            let bound = |k: &str| lifecycle.and_then(|l| l.get(k)).and_then(Value::as_i64);
            let list = |k: &str| s.get(k).cloned().unwrap_or_else(|| json!([])).to_string();
            let update = Query::update()
                .table(Job::Table)
                .values([
                    (Job::Description, str_of("description", "").into()),
                    (Job::LifecycleStartMs, bound("start_ms").into()),
                    (Job::LifecycleEndMs, bound("end_ms").into()),
                    (Job::Processor, str_of("processor", "").into()),
                    (Job::Config, str_of("config", "").into()),
                    (
                        Job::Params,
                        s.get("params")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .into(),
                    ),
                    (
                        Job::MaxInstances,
                        (int_of("max_instances", 0) as i32).into(),
                    ),
                    (Job::Overlap, str_of("overlap", "skip").into()),
                    (Job::MaxRetries, (int_of("max_retries", 0) as i32).into()),
                    (Job::RetryDelayMs, int_of("retry_delay_ms", 10_000).into()),
                    (Job::TimeoutMs, int_of("timeout_ms", 0).into()),
                    (Job::Dispatch, str_of("dispatch", "health_first").into()),
                    (Job::Tags, list("tags").into()),
                    (Job::DesignatedWorkers, list("designated_workers").into()),
                    (Job::Misfire, misfire_text(s.get("misfire")).into()),
                ])
                .and_where(Expr::col(Job::Id).eq(id))
                .to_owned();
            db.execute(&update).await?;
        }
        manager
            .alter_table(
                Table::alter()
                    .table(Job::Table)
                    .drop_column(Job::Settings)
                    .to_owned(),
            )
            .await
    }
}
