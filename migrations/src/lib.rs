//! Rota's database schema, as sea-orm migrations. The server applies them at start.
//!
//! Every time is stored as milliseconds since the Unix epoch in a BIGINT column: the same on
//! SQLite, PostgreSQL and MySQL, free of time-zone conversions, and cheap to compare.
#![forbid(unsafe_code)]
// `MigrationTrait` is an async-trait whose methods take `&SchemaManager` with its lifetime
// elided; an impl must match that signature exactly.
#![allow(elided_lifetimes_in_paths)]

pub use sea_orm_migration::prelude::*;
pub use sea_orm_migration::seaql_migrations;

mod m20261121_000001_initial;
mod m20261121_000002_job_misfire;
mod m20261202_000001_security;
mod m20261202_000002_long_text_on_mysql;
mod m20261202_000003_job_settings;
mod m20261202_000004_run_idempotency;
mod m20261203_000001_instance_tasks;
mod m20261203_000002_container;

pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261121_000001_initial::Migration),
            Box::new(m20261121_000002_job_misfire::Migration),
            Box::new(m20261202_000001_security::Migration),
            Box::new(m20261202_000002_long_text_on_mysql::Migration),
            Box::new(m20261202_000003_job_settings::Migration),
            Box::new(m20261202_000004_run_idempotency::Migration),
            Box::new(m20261203_000001_instance_tasks::Migration),
            Box::new(m20261203_000002_container::Migration),
        ]
    }
}
