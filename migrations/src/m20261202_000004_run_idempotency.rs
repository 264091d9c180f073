//! Idempotent API runs: an instance may carry the idempotency key its `job run` request gave,
//! and a key is used once per job (a unique index; rows without a key do not collide, since
//! every backend treats NULLs in a unique index as distinct).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Instance {
    Table,
    JobId,
    IdempotencyKey,
}

const INDEX: &str = "ux_instance_job_idempotency_key";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Instance::Table)
                    .add_column(
                        ColumnDef::new(Instance::IdempotencyKey)
                            .string_len(128)
                            .null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Instance::Table)
                    .col(Instance::JobId)
                    .col(Instance::IdempotencyKey)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(Index::drop().name(INDEX).table(Instance::Table).to_owned())
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Instance::Table)
                    .drop_column(Instance::IdempotencyKey)
                    .to_owned(),
            )
            .await
    }
}
