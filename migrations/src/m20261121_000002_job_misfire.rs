//! Jobs get a misfire policy: what to do about fires missed while no server scheduled the app.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Job {
    Table,
    Misfire,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Job::Table)
                    // `fire_once`, `skip` or `catch_up:N` (rota_shared::admin::MisfirePolicy).
                    .add_column(string_len(Job::Misfire, 32).default("fire_once"))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Job::Table)
                    .drop_column(Job::Misfire)
                    .to_owned(),
            )
            .await
    }
}
