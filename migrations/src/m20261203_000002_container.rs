//! Containers: one row per version of a container of an app, with the bundle's sha256 and
//! size (which a worker checks before it unpacks anything) and where to download it (JSON of
//! `rota_shared::container::ContainerSource`). A version is recorded once per app and name.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum Container {
    Table,
    Id,
    AppId,
    Name,
    Version,
    Sha256,
    Size,
    Source,
    CreatedAtMs,
}

const INDEX: &str = "ux_container_app_name_version";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Container::Table)
                    .col(
                        ColumnDef::new(Container::Id)
                            .big_integer()
                            .not_null()
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(ColumnDef::new(Container::AppId).big_integer().not_null())
                    .col(ColumnDef::new(Container::Name).string_len(128).not_null())
                    .col(ColumnDef::new(Container::Version).string_len(64).not_null())
                    .col(ColumnDef::new(Container::Sha256).string_len(64).not_null())
                    .col(ColumnDef::new(Container::Size).big_integer().not_null())
                    .col(ColumnDef::new(Container::Source).text().not_null())
                    .col(
                        ColumnDef::new(Container::CreatedAtMs)
                            .big_integer()
                            .not_null(),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name(INDEX)
                    .table(Container::Table)
                    .col(Container::AppId)
                    .col(Container::Name)
                    .col(Container::Version)
                    .unique()
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(Container::Table).to_owned())
            .await
    }
}
