//! Storage: every SQL statement Rota runs lives behind [`Store`].
//!
//! **Architecture Invariant:** nothing outside this module builds a query. The rest of the server
//! speaks in terms of apps, jobs, instances and log lines, so that batching and backend quirks stay
//! in one place.

mod entity;

mod apps;
mod bulk;
mod containers;
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

/// Connections of the pool: open and idle, open and in use, and the most it opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUse {
    pub idle: u64,
    pub in_use: u64,
    pub max: u64,
}

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
        let db = connect_retrying_busy(&url, opts).await?;
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

    /// The connection pool's use now, for `/metrics`.
    pub fn pool_use(&self) -> PoolUse {
        let (open, idle, max) = match self.db.get_database_backend() {
            sea_orm::DbBackend::Postgres => {
                let p = self.db.get_postgres_connection_pool();
                (p.size(), p.num_idle(), p.options().get_max_connections())
            }
            sea_orm::DbBackend::MySql => {
                let p = self.db.get_mysql_connection_pool();
                (p.size(), p.num_idle(), p.options().get_max_connections())
            }
            _ => {
                let p = self.db.get_sqlite_connection_pool();
                (p.size(), p.num_idle(), p.options().get_max_connections())
            }
        };
        let idle = idle as u64;
        PoolUse {
            idle,
            in_use: u64::from(open).saturating_sub(idle),
            max: u64::from(max),
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

/// Connects; on SQLite, a connection refused as "database is locked" is tried again for up to
/// ten seconds. Switching a fresh file to WAL needs its lock for a moment, and SQLite answers
/// that pragma SQLITE_BUSY without waiting the busy timeout, so servers starting together on one
/// new file would otherwise fail at once.
async fn connect_retrying_busy(url: &str, opts: ConnectOptions) -> StoreResult<DatabaseConnection> {
    let mut tries = 0;
    loop {
        match Database::connect(opts.clone()).await {
            // sqlx reports SQLite's result code in the message: 5 is SQLITE_BUSY.
            Err(e)
                if url.starts_with("sqlite:")
                    && tries < 100
                    && e.to_string().contains("(code: 5)") =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return Ok(other?),
        }
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
