//! Many guarded updates in one statement: `UPDATE t SET … FROM (VALUES …) AS v WHERE … RETURNING
//! t.id`. PostgreSQL and SQLite (3.33+) both read it; a batch of compare-and-sets then costs one
//! round trip and, on PostgreSQL, one WAL flush instead of one of each per row.
//!
//! The columns of a `VALUES` list are named `column1`, `column2`, … on both backends, which is
//! how the `SET` and `WHERE` fragments refer to them. Integers are written into the statement
//! (they come from this process, never from a user); text is bound. Every cell carries a cast,
//! so that PostgreSQL knows a column's type even when every row holds NULL there.

use sea_orm::{ConnectionTrait, DbBackend, Statement, Value};

use super::StoreResult;

/// One cell of a `VALUES` row.
pub(super) enum Cell<'a> {
    Int(i64),
    OptInt(Option<i64>),
    Text(Option<&'a str>),
}

/// Whether `backend` reads `UPDATE … FROM (VALUES …) … RETURNING` (MySQL does not).
pub(super) fn supported(backend: DbBackend) -> bool {
    matches!(backend, DbBackend::Postgres | DbBackend::Sqlite)
}

/// Runs `UPDATE {table} SET {set} FROM (VALUES rows) AS v WHERE {filter} RETURNING {table}.id`
/// and gives back the ids of the rows it changed.
pub(super) async fn update_returning_ids(
    conn: &impl ConnectionTrait,
    table: &str,
    set: &str,
    filter: &str,
    rows: &[Vec<Cell<'_>>],
) -> StoreResult<Vec<i64>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let backend = conn.get_database_backend();
    let mut values = Vec::new();
    let mut sql = format!("UPDATE {table} SET {set} FROM (VALUES ");
    for (r, row) in rows.iter().enumerate() {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for (c, cell) in row.iter().enumerate() {
            if c > 0 {
                sql.push(',');
            }
            match cell {
                Cell::Int(v) => sql.push_str(&format!("CAST({v} AS BIGINT)")),
                Cell::OptInt(Some(v)) => sql.push_str(&format!("CAST({v} AS BIGINT)")),
                Cell::OptInt(None) => sql.push_str("CAST(NULL AS BIGINT)"),
                Cell::Text(None) => sql.push_str("CAST(NULL AS TEXT)"),
                Cell::Text(Some(text)) => {
                    values.push(Value::from(*text));
                    match backend {
                        DbBackend::Postgres => {
                            sql.push_str(&format!("CAST(${} AS TEXT)", values.len()));
                        }
                        _ => sql.push_str("CAST(? AS TEXT)"),
                    }
                }
            }
        }
        sql.push(')');
    }
    sql.push_str(&format!(") AS v WHERE {filter} RETURNING {table}.id"));
    let rows = conn
        .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
        .await?;
    rows.iter()
        .map(|row| row.try_get::<i64>("", "id").map_err(Into::into))
        .collect()
}
