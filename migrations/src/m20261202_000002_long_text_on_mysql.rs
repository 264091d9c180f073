//! On MySQL/MariaDB a `TEXT` column holds 65,535 bytes, less than Rota's limits for a job's
//! configuration (120 KiB) and parameters (64 KiB): those columns become `MEDIUMTEXT` (16 MiB)
//! there. SQLite's and PostgreSQL's `TEXT` have no such limit, so nothing changes on them.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::MySql {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE job MODIFY config MEDIUMTEXT NOT NULL, MODIFY params MEDIUMTEXT NULL",
        )
        .await?;
        db.execute_unprepared("ALTER TABLE instance MODIFY instance_params MEDIUMTEXT NULL")
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DbBackend::MySql {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(
            "ALTER TABLE job MODIFY config TEXT NOT NULL, MODIFY params TEXT NULL",
        )
        .await?;
        db.execute_unprepared("ALTER TABLE instance MODIFY instance_params TEXT NULL")
            .await?;
        Ok(())
    }
}
