//! What went wrong in a storage operation, told apart so that callers answer with the right code
//! and senders know whether to try again: a database that is away now (`UNAVAILABLE`, retried)
//! is not a statement the database refuses (`INTERNAL`, a bug that retrying will not fix), and
//! neither is a write that a constraint refused (`CONFLICT`).

use rota_shared::{ErrorBody, ErrorCode};
use sea_orm::sqlx::error::DatabaseError;
use sea_orm::{DbErr, RuntimeErr, SqlErr};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// A constraint refused the write: it contradicts what is stored.
    #[error("the write contradicts what is stored: {0}")]
    Conflict(DbErr),
    /// The database cannot be reached, or is too busy or locked now; the same operation may
    /// succeed later.
    #[error("the database is unavailable: {0}")]
    Unavailable(DbErr),
    /// The database refused the statement, or its answer did not decode: a bug or a schema that
    /// does not match, which the same operation will meet again.
    #[error("the database failed the operation: {0}")]
    Internal(DbErr),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// The schema was migrated by a newer Rota: this binary does not know what it holds.
    #[error(
        "the database schema is newer than this Rota ({}): it has migrations this binary does \
         not know ({}); run the newer version, or restore the database from before it",
        env!("CARGO_PKG_VERSION"),
        .0.join(", ")
    )]
    SchemaNewer(Vec<String>),
}

/// The three things a database error can mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DbClass {
    Unavailable,
    Conflict,
    Internal,
}

impl From<DbErr> for StoreError {
    fn from(err: DbErr) -> Self {
        match classify(&err) {
            DbClass::Unavailable => Self::Unavailable(err),
            DbClass::Conflict => Self::Conflict(err),
            DbClass::Internal => Self::Internal(err),
        }
    }
}

impl StoreError {
    /// A unique-constraint violation of an insert becomes `AlreadyExists(what)`.
    pub(super) fn from_insert(err: DbErr, what: impl Into<String>) -> Self {
        match err.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => Self::AlreadyExists(what.into()),
            _ => Self::from(err),
        }
    }

    /// The error code a request that met this error is answered with.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::Conflict(_) => ErrorCode::Conflict,
            Self::Unavailable(_) => ErrorCode::Unavailable,
            Self::Internal(_) | Self::Corrupt(_) | Self::SchemaNewer(_) => ErrorCode::Internal,
        }
    }
}

impl From<StoreError> for ErrorBody {
    fn from(err: StoreError) -> Self {
        ErrorBody::new(err.code(), err.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

fn classify(err: &DbErr) -> DbClass {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => DbClass::Unavailable,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            classify_sqlx(e)
        }
        _ => DbClass::Internal,
    }
}

fn classify_sqlx(err: &sea_orm::sqlx::Error) -> DbClass {
    use sea_orm::sqlx::Error as E;
    match err {
        // The connection broke, or none could be had.
        E::Io(_)
        | E::Tls(_)
        | E::Protocol(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::BeginFailed => DbClass::Unavailable,
        E::Database(db) => classify_database(db.as_ref()),
        _ => DbClass::Internal,
    }
}

/// An error the database itself answered, by its code: an SQLSTATE on PostgreSQL and MySQL, an
/// extended result code on SQLite.
fn classify_database(db: &dyn DatabaseError) -> DbClass {
    if db.is_unique_violation() || db.is_foreign_key_violation() || db.is_check_violation() {
        return DbClass::Conflict;
    }
    let Some(code) = db.code() else {
        return DbClass::Internal;
    };
    if let Some(mysql) = db.try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>() {
        return classify_mysql(mysql.number(), &code);
    }
    if db
        .try_downcast_ref::<sea_orm::sqlx::sqlite::SqliteError>()
        .is_some()
    {
        return code.parse().map_or(DbClass::Internal, classify_sqlite);
    }
    classify_sqlstate(&code)
}

fn classify_sqlstate(state: &str) -> DbClass {
    // 08: connection exception; 40: transaction rollback (serialization failure, deadlock);
    // 53: insufficient resources (PostgreSQL: disk full, out of memory, too many connections);
    // 57P0x: the server is shutting down or starting; 55P03: a lock was not available.
    let transient = ["08", "40", "53"]
        .iter()
        .any(|class| state.starts_with(class))
        || state.starts_with("57P0")
        || state == "55P03";
    if transient {
        DbClass::Unavailable
    } else {
        DbClass::Internal
    }
}

fn classify_mysql(number: u16, state: &str) -> DbClass {
    match number {
        // Lock wait timeout, deadlock, too many connections, server shutdown, read-only
        // (a primary that became a replica), the server has gone away or the query was lost.
        1205 | 1213 | 1040 | 1053 | 1290 | 1836 | 2006 | 2013 => DbClass::Unavailable,
        _ => classify_sqlstate(state),
    }
}

fn classify_sqlite(extended: i32) -> DbClass {
    // The primary result code is the low byte of the extended one: BUSY (5), LOCKED (6),
    // NOMEM (7), IOERR (10), FULL (13), CANTOPEN (14) and PROTOCOL (15) can pass; the rest
    // (ERROR for a bad statement or a missing table, MISMATCH, …) will not.
    match extended & 0xff {
        5 | 6 | 7 | 10 | 13 | 14 | 15 => DbClass::Unavailable,
        _ => DbClass::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::ConnAcquireErr;

    #[test]
    fn connection_errors_are_unavailable() {
        assert_eq!(
            classify(&DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)),
            DbClass::Unavailable
        );
        for e in [
            sea_orm::sqlx::Error::PoolTimedOut,
            sea_orm::sqlx::Error::PoolClosed,
            sea_orm::sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ] {
            let err = DbErr::Query(RuntimeErr::SqlxError(std::sync::Arc::new(e)));
            assert_eq!(classify(&err), DbClass::Unavailable, "{err}");
        }
    }

    #[test]
    fn statement_errors_are_internal() {
        let err = DbErr::Query(RuntimeErr::SqlxError(std::sync::Arc::new(
            sea_orm::sqlx::Error::ColumnNotFound("status".into()),
        )));
        assert_eq!(classify(&err), DbClass::Internal);
        assert_eq!(classify(&DbErr::Type("bad".into())), DbClass::Internal);
    }

    #[test]
    fn codes_are_read_per_backend() {
        // PostgreSQL
        assert_eq!(classify_sqlstate("40001"), DbClass::Unavailable);
        assert_eq!(classify_sqlstate("40P01"), DbClass::Unavailable);
        assert_eq!(classify_sqlstate("08006"), DbClass::Unavailable);
        assert_eq!(classify_sqlstate("57P01"), DbClass::Unavailable);
        assert_eq!(
            classify_sqlstate("42P01"),
            DbClass::Internal,
            "undefined table"
        );
        assert_eq!(
            classify_sqlstate("42601"),
            DbClass::Internal,
            "syntax error"
        );
        // MySQL
        assert_eq!(classify_mysql(1205, "HY000"), DbClass::Unavailable);
        assert_eq!(classify_mysql(1213, "40001"), DbClass::Unavailable);
        assert_eq!(
            classify_mysql(1146, "42S02"),
            DbClass::Internal,
            "no such table"
        );
        // SQLite: BUSY_SNAPSHOT (517) is BUSY; ERROR (1) is a bad statement.
        assert_eq!(classify_sqlite(5), DbClass::Unavailable);
        assert_eq!(classify_sqlite(517), DbClass::Unavailable);
        assert_eq!(classify_sqlite(1), DbClass::Internal);
    }
}
