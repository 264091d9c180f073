//! A fresh, empty database per test, on the backend the run asks for.
//!
//! `ROTA_TEST_DB` picks the backend (`sqlite`, the default, `postgres` or `mysql`), so one test body
//! covers every backend and `scripts/test.sh` simply runs the suite once per backend.
//!
//! - SQLite: a file in a new temporary directory, removed with the [`TestDatabase`].
//! - PostgreSQL: a new database `rota_test_<random hex>` created through the server named by
//!   `ROTA_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`), dropped
//!   with the [`TestDatabase`] even if connections to it are still open.
//! - MySQL/MariaDB: the same, through `ROTA_TEST_MYSQL_URL` (default
//!   `mysql://root@127.0.0.1:3306/mysql`).

use std::time::Duration;

use anyhow::{Context, bail};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use tempfile::TempDir;

/// The environment variable that picks the backend.
pub const BACKEND_ENV: &str = "ROTA_TEST_DB";

/// The environment variable naming the PostgreSQL server (and a database on it to connect to)
/// in which the test databases are created.
pub const POSTGRES_URL_ENV: &str = "ROTA_TEST_POSTGRES_URL";

/// Where PostgreSQL runs on developer machines and in CI.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The environment variable naming the MySQL/MariaDB server the test databases are created in.
pub const MYSQL_URL_ENV: &str = "ROTA_TEST_MYSQL_URL";

/// Where MariaDB runs on developer machines and in CI.
pub const DEFAULT_MYSQL_URL: &str = "mysql://root@127.0.0.1:3306/mysql";

/// How long dropping a PostgreSQL test database may take before it is given up (and leaked).
const DROP_TIMEOUT: Duration = Duration::from_secs(15);

/// A database backend Rota supports in the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
    Mysql,
}

impl Backend {
    /// The backend named by `ROTA_TEST_DB`: `sqlite` when it is unset or empty.
    ///
    /// # Panics
    ///
    /// On any other value than `sqlite` or `postgres` (or `postgresql`): a typo must not quietly
    /// run the suite on the wrong backend.
    pub fn from_env() -> Backend {
        let value = match std::env::var(BACKEND_ENV) {
            Ok(value) => value,
            Err(std::env::VarError::NotPresent) => return Backend::Sqlite,
            Err(std::env::VarError::NotUnicode(value)) => {
                panic!("{BACKEND_ENV}={value:?} is not valid: use sqlite, postgres or mysql")
            }
        };
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "sqlite" => Backend::Sqlite,
            "postgres" | "postgresql" => Backend::Postgres,
            "mysql" | "mariadb" => Backend::Mysql,
            _ => panic!("{BACKEND_ENV}={value:?} is not valid: use sqlite, postgres or mysql"),
        }
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        })
    }
}

/// An empty database that exists as long as this value: give [`url`](Self::url) to the code
/// under test (for example a server's database setting).
#[derive(Debug)]
pub struct TestDatabase {
    backend: Backend,
    url: String,
    /// Holds the SQLite file; removing the directory removes the database.
    _sqlite_dir: Option<TempDir>,
    /// Drops the PostgreSQL database when the test database goes.
    _postgres: Option<PostgresDatabase>,
}

impl TestDatabase {
    /// Creates a database on the backend `ROTA_TEST_DB` names (see [`Backend::from_env`]).
    pub async fn create() -> anyhow::Result<TestDatabase> {
        Self::create_with(Backend::from_env()).await
    }

    /// Creates a database on `backend`.
    pub async fn create_with(backend: Backend) -> anyhow::Result<TestDatabase> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("rota-db-")
                    .tempdir()
                    .context("cannot create a temporary directory for the SQLite database")?;
                // `mode=rwc` lets the first connection create the file.
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("rota.db").display());
                Ok(TestDatabase {
                    backend,
                    url,
                    _sqlite_dir: Some(dir),
                    _postgres: None,
                })
            }
            Backend::Postgres | Backend::Mysql => {
                let (env, default) = match backend {
                    Backend::Mysql => (MYSQL_URL_ENV, DEFAULT_MYSQL_URL),
                    _ => (POSTGRES_URL_ENV, DEFAULT_POSTGRES_URL),
                };
                let server_url = std::env::var(env)
                    .ok()
                    .filter(|url| !url.is_empty())
                    .unwrap_or_else(|| default.to_owned());
                let database = PostgresDatabase::create(backend, server_url).await?;
                let url = with_database(&database.server_url, &database.name)?;
                Ok(TestDatabase {
                    backend,
                    url,
                    _sqlite_dir: None,
                    _postgres: Some(database),
                })
            }
        }
    }

    /// The connection URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The backend this database lives on.
    pub fn backend(&self) -> Backend {
        self.backend
    }
}

/// A PostgreSQL or MySQL database created for one test, dropped again when this value is.
#[derive(Debug)]
struct PostgresDatabase {
    backend: Backend,
    /// The URL the database was created through, used again to drop it.
    server_url: String,
    name: String,
}

impl PostgresDatabase {
    async fn create(backend: Backend, server_url: String) -> anyhow::Result<PostgresDatabase> {
        // A random name lets any number of tests, and test runs, share one PostgreSQL server.
        let name = format!("rota_test_{}", uuid::Uuid::new_v4().simple());
        let server = connect_to_server(&server_url).await?;
        let created = server
            .execute_unprepared(&format!("CREATE DATABASE {}", quoted(backend, &name)))
            .await
            .with_context(|| format!("cannot create the test database {name}"));
        drop(server.close().await);
        created?;
        Ok(PostgresDatabase {
            backend,
            server_url,
            name,
        })
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        // Drop cannot await, and may run inside or outside a tokio runtime (or while a test
        // unwinds), so the database is dropped on a thread of its own with its own small
        // runtime. Waiting for it keeps the process alive until the database is gone, so a test
        // binary that ends right after does not leak it. Nothing here may panic.
        let server_url = self.server_url.clone();
        let name = self.name.clone();
        let backend = self.backend;
        let dropper = std::thread::Builder::new()
            .name("rota-test-dropdb".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        tracing::warn!("cannot drop the test database {name}: {error}");
                        return;
                    }
                };
                runtime.block_on(async {
                    match tokio::time::timeout(
                        DROP_TIMEOUT,
                        drop_database(backend, &server_url, &name),
                    )
                    .await
                    {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => {
                            tracing::warn!("cannot drop the test database {name}: {error:#}")
                        }
                        Err(_) => tracing::warn!(
                            "gave up dropping the test database {name} after {DROP_TIMEOUT:?}"
                        ),
                    }
                });
            });
        match dropper {
            Ok(dropper) => drop(dropper.join()),
            Err(error) => tracing::warn!("cannot drop the test database {}: {error}", self.name),
        }
    }
}

/// The database name quoted as the backend quotes identifiers.
fn quoted(backend: Backend, name: &str) -> String {
    match backend {
        Backend::Mysql => format!("`{name}`"),
        _ => format!("\"{name}\""),
    }
}

async fn drop_database(backend: Backend, server_url: &str, name: &str) -> anyhow::Result<()> {
    let server = connect_to_server(server_url).await?;
    // On PostgreSQL (13 or newer) FORCE ends the connections the code under test may still
    // hold; MySQL drops a database whatever idle connections it has.
    let statement = match backend {
        Backend::Mysql => format!("DROP DATABASE IF EXISTS {}", quoted(backend, name)),
        _ => format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quoted(backend, name)
        ),
    };
    let dropped = server.execute_unprepared(&statement).await;
    drop(server.close().await);
    dropped?;
    Ok(())
}

/// One connection to the PostgreSQL server the test databases are created in.
async fn connect_to_server(server_url: &str) -> anyhow::Result<DatabaseConnection> {
    let mut options = ConnectOptions::new(server_url);
    options
        .max_connections(1)
        .min_connections(0)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options).await.with_context(|| {
        format!(
            "cannot connect to the database server at {server_url} (set {POSTGRES_URL_ENV} or \
             {MYSQL_URL_ENV}, or start it)"
        )
    })
}

/// `url` with its database (the path) replaced by `name`, keeping credentials, host, port and
/// query parameters.
fn with_database(url: &str, name: &str) -> anyhow::Result<String> {
    let Some((scheme, rest)) = url.split_once("://") else {
        bail!("{POSTGRES_URL_ENV}={url:?} is not a URL like {DEFAULT_POSTGRES_URL}");
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    // A `/` cannot occur in the authority (a password must percent-encode it), so the first one
    // starts the path.
    let authority = before_query
        .split_once('/')
        .map_or(before_query, |(authority, _)| authority);
    if authority.is_empty() {
        bail!("{POSTGRES_URL_ENV}={url:?} names no host");
    }
    let mut result = format!("{scheme}://{authority}/{name}");
    if let Some(query) = query {
        result.push('?');
        result.push_str(query);
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, Statement};

    use super::*;

    #[test]
    fn the_database_name_replaces_the_path() {
        let url = |base| with_database(base, "rota_test_1").unwrap();
        assert_eq!(
            url("postgres://postgres@127.0.0.1:5432/postgres"),
            "postgres://postgres@127.0.0.1:5432/rota_test_1"
        );
        assert_eq!(url("postgres://u:p@db"), "postgres://u:p@db/rota_test_1");
        assert_eq!(url("postgres://db/"), "postgres://db/rota_test_1");
        assert_eq!(
            url("postgresql://db:5433/x?sslmode=disable"),
            "postgresql://db:5433/rota_test_1?sslmode=disable"
        );
        assert!(with_database("db:5432", "rota_test_1").is_err());
    }

    async fn select_one(url: &str) -> i32 {
        let connection = Database::connect(url).await.unwrap();
        let backend = connection.get_database_backend();
        let row = connection
            .query_one_raw(Statement::from_string(backend, "SELECT 1 AS one"))
            .await
            .unwrap()
            .unwrap();
        let one = row.try_get::<i32>("", "one").unwrap();
        connection.close().await.unwrap();
        one
    }

    /// Runs on whichever backend the run is for, as every end-to-end test will.
    #[tokio::test]
    async fn the_database_of_this_run_answers() {
        let database = TestDatabase::create().await.unwrap();
        assert_eq!(database.backend(), Backend::from_env());
        assert_eq!(select_one(database.url()).await, 1);
    }

    #[tokio::test]
    async fn a_sqlite_database_is_a_file_that_goes_away() {
        let database = TestDatabase::create_with(Backend::Sqlite).await.unwrap();
        assert!(database.url().starts_with("sqlite://"));
        assert_eq!(select_one(database.url()).await, 1);
        let dir = database._sqlite_dir.as_ref().unwrap().path().to_owned();
        assert!(dir.join("rota.db").is_file());
        drop(database);
        assert!(!dir.exists());
    }

    /// Only when the run is for PostgreSQL: a SQLite run must not need a PostgreSQL server.
    #[tokio::test]
    async fn a_postgres_database_is_created_and_dropped_even_while_in_use() {
        if Backend::from_env() != Backend::Postgres {
            eprintln!("skipped: {BACKEND_ENV} is not postgres");
            return;
        }
        let database = TestDatabase::create_with(Backend::Postgres).await.unwrap();
        let name = database._postgres.as_ref().unwrap().name.clone();
        assert!(database.url().ends_with(&format!("/{name}")));
        assert_eq!(select_one(database.url()).await, 1);

        // A connection left open, as a server under test would leave it, must not stop the drop.
        let open = Database::connect(database.url()).await.unwrap();
        open.execute_unprepared("SELECT 1").await.unwrap();
        let server_url = database._postgres.as_ref().unwrap().server_url.clone();
        drop(database);

        let server = connect_to_server(&server_url).await.unwrap();
        let left = server
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT datname FROM pg_database WHERE datname = $1",
                [name.clone().into()],
            ))
            .await
            .unwrap();
        assert!(left.is_none(), "the test database {name} was not dropped");
    }
}
