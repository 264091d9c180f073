//! Storage: every SQL statement Rota runs lives behind [`Store`].
//!
//! **Architecture Invariant:** nothing outside this module builds a query. The rest of the server
//! speaks in terms of apps, jobs, instances and log lines, so that batching and backend quirks stay
//! in one place.

mod entity;

mod apps;
mod bulk;
mod error;
mod instances;
mod jobs;
mod logs;
mod migrate;
mod secrets;
mod servers;

pub use apps::AppKey;
pub use error::{StoreError, StoreResult};
pub use instances::{
    FirePlan, Handover, InstanceFilter, InstanceGuard, NewInstance, ScheduledInstance,
};
pub use jobs::Job;
pub use secrets::StoredToken;

use std::time::Duration;

use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DatabaseTransaction,
    SqliteTransactionMode, TransactionOptions, TransactionTrait,
};

/// The database behind a server.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

impl Store {
    /// Connects to `url` (`sqlite://path?mode=rwc`, `postgres://…`, `mysql://…`) and applies the
    /// migrations (under a lock: see `migrate`). A SQLite file is created when missing and runs in WAL mode with a busy timeout.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let url = normalize_sqlite_url(url);
        let mut opts = ConnectOptions::new(url.clone());
        // Short timeouts: while the database is unreachable, requests fail fast with
        // UNAVAILABLE (and are retried by their senders) instead of piling up.
        opts.sqlx_logging(false)
            .connect_timeout(Duration::from_secs(5))
            .acquire_timeout(Duration::from_secs(3));
        if url.starts_with("sqlite:") {
            // SQLite has one writer; a handful of connections serve concurrent reads in WAL mode.
            opts.max_connections(4)
                .min_connections(1)
                .map_sqlx_sqlite_opts(|o| {
                    o.journal_mode(SqliteJournalMode::Wal)
                        .synchronous(SqliteSynchronous::Normal)
                        .busy_timeout(Duration::from_secs(10))
                        .create_if_missing(true)
                });
        } else {
            // A few connections are kept open, so that a burst does not wait for new ones.
            opts.max_connections(16).min_connections(4);
        }
        let db = Database::connect(opts).await?;
        migrate::migrate(&db).await?;
        Ok(Self { db })
    }

    /// A write transaction. On SQLite it takes the write lock at once (`BEGIN IMMEDIATE`), so a
    /// read-then-write transaction waits for the busy timeout instead of failing with SQLITE_BUSY.
    async fn write_txn(&self) -> StoreResult<DatabaseTransaction> {
        let options = TransactionOptions {
            isolation_level: None,
            access_mode: None,
            sqlite_transaction_mode: Some(SqliteTransactionMode::Immediate),
        };
        Ok(self.db.begin_with_options(options).await?)
    }

    /// How many writers can usefully work side by side: SQLite has one write lock, so more
    /// would only queue on it.
    pub fn parallel_writers(&self) -> usize {
        match self.db.get_database_backend() {
            sea_orm::DbBackend::Sqlite => 1,
            _ => 4,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> StoreResult<()> {
        self.db.ping().await?;
        Ok(())
    }

    fn conn(&self) -> &impl ConnectionTrait {
        &self.db
    }
}

/// Accepts `sqlite:path` and `sqlite://path` and adds `mode=rwc` so the file is created.
fn normalize_sqlite_url(url: &str) -> String {
    if !url.starts_with("sqlite:") || url.contains("mode=") || url.contains(":memory:") {
        return url.to_owned();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}mode=rwc")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_create_the_file() {
        assert_eq!(
            normalize_sqlite_url("sqlite:///tmp/a.db"),
            "sqlite:///tmp/a.db?mode=rwc"
        );
        assert_eq!(
            normalize_sqlite_url("sqlite://a.db?mode=ro"),
            "sqlite://a.db?mode=ro"
        );
        assert_eq!(
            normalize_sqlite_url("postgres://x@h/db"),
            "postgres://x@h/db"
        );
    }
}
