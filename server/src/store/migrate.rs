//! Schema migrations, applied under a lock that spans the database, so that any number of
//! servers may start at once on a new or an old schema: one applies what is missing while the
//! others wait, then find nothing left to do.
//!
//! The lock is PostgreSQL's transaction-scoped advisory lock, MySQL's named lock (`GET_LOCK`,
//! held by the session) and, on SQLite, the write lock of a `BEGIN IMMEDIATE` transaction. On
//! PostgreSQL and SQLite the migrations also run inside that one transaction, so a server that
//! dies halfway leaves the schema as it was.

use std::collections::BTreeSet;

use rota_migrations::{Migrator, MigratorTrait, SchemaManager, seaql_migrations};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    SqliteTransactionMode, Statement, TransactionOptions, TransactionTrait,
};

use super::{StoreError, StoreResult};

/// The PostgreSQL advisory lock key: "rotamigr" in ASCII, so that it says whose it is.
const PG_LOCK_KEY: i64 = 0x726f_7461_6d69_6772;
/// The MySQL lock name.
const MYSQL_LOCK: &str = "rota_migrations";
/// How long a server waits for another one's migrations before it gives up.
const LOCK_WAIT_SECS: u32 = 120;

/// Applies the migrations this binary knows and the database lacks; refuses a schema that has
/// migrations this binary does not know (it was migrated by a newer Rota).
pub async fn migrate(db: &DatabaseConnection) -> StoreResult<()> {
    let txn = db
        .begin_with_options(TransactionOptions {
            isolation_level: None,
            access_mode: None,
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        })
        .await?;
    let backend = txn.get_database_backend();
    lock(&txn, backend).await?;
    let applied = async {
        refuse_newer_schema(&txn).await?;
        Migrator::up(&txn, None).await?;
        StoreResult::Ok(())
    }
    .await;
    if backend == DbBackend::MySql {
        // Released whatever happened: the session outlives this function in the pool.
        let released = txn
            .execute_unprepared(&format!("DO RELEASE_LOCK('{MYSQL_LOCK}')"))
            .await;
        if let Err(e) = released {
            tracing::warn!(error = %e, "could not release the migration lock");
        }
    }
    applied?;
    txn.commit().await?;
    Ok(())
}

async fn lock(txn: &DatabaseTransaction, backend: DbBackend) -> StoreResult<()> {
    match backend {
        DbBackend::Postgres => {
            txn.execute_unprepared(&format!(
                "SET LOCAL lock_timeout = '{LOCK_WAIT_SECS}s'; \
                 SELECT pg_advisory_xact_lock({PG_LOCK_KEY})"
            ))
            .await?;
        }
        DbBackend::MySql => {
            let row = txn
                .query_one_raw(Statement::from_string(
                    backend,
                    format!("SELECT GET_LOCK('{MYSQL_LOCK}', {LOCK_WAIT_SECS}) AS got"),
                ))
                .await?;
            let got: Option<i64> = match row {
                Some(row) => row.try_get("", "got")?,
                None => None,
            };
            if got != Some(1) {
                return Err(StoreError::Unavailable(sea_orm::DbErr::Custom(format!(
                    "another server held the migration lock for more than {LOCK_WAIT_SECS} s"
                ))));
            }
        }
        // `BEGIN IMMEDIATE` took the write lock; others wait for it up to the busy timeout.
        _ => {}
    }
    Ok(())
}

async fn refuse_newer_schema(txn: &DatabaseTransaction) -> StoreResult<()> {
    let table = Migrator::migration_table_name().to_string();
    if !SchemaManager::new(txn).has_table(&table).await? {
        return Ok(());
    }
    let known: BTreeSet<String> = Migrator::migrations()
        .iter()
        .map(|m| m.name().to_owned())
        .collect();
    let unknown: Vec<String> = seaql_migrations::Entity::find()
        .all(txn)
        .await?
        .into_iter()
        .map(|m| m.version)
        .filter(|v| !known.contains(v))
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(StoreError::SchemaNewer(unknown))
    }
}
