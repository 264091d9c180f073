//! Distributed execution: an instance keeps the task counts its master last reported (total,
//! succeeded, failed, running and each worker's share) as JSON in `tasks`, NULL for a
//! standalone instance. Nothing queries inside it, so it is text on every backend.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Instance {
    Table,
    Tasks,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Instance::Table)
                    .add_column(ColumnDef::new(Instance::Tasks).text().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Instance::Table)
                    .drop_column(Instance::Tasks)
                    .to_owned(),
            )
            .await
    }
}
