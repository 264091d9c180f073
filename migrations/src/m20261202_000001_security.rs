//! Secure by default: app keys (derived from app secrets, several during a rotation), admin
//! tokens (their derived keys, roles and scopes), and the deployment's own secrets (the cluster
//! key servers authenticate each other with).
//!
//! `app.secret_hash` is no longer read: an app's workers authenticate with the keys in
//! `app_key`. An app created before this migration has none until `rota app rotate-secret`
//! gives it one.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum AppKey {
    Table,
    Id,
    AppId,
    KeyId,
    Key,
    CreatedAtMs,
    RetireAtMs,
}

#[derive(DeriveIden)]
enum AdminToken {
    Table,
    Id,
    Role,
    AppId,
    Description,
    Key,
    CreatedAtMs,
    RevokedAtMs,
}

#[derive(DeriveIden)]
enum DeploymentSecret {
    Table,
    Name,
    Value,
    CreatedAtMs,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AppKey::Table)
                    .if_not_exists()
                    .col(big_pk_auto(AppKey::Id))
                    .col(big_integer(AppKey::AppId))
                    // The key's public id (`rota_transport::Key::id`).
                    .col(string_len(AppKey::KeyId, 32))
                    // The Argon2id-derived app key, hex; never the secret.
                    .col(string_len(AppKey::Key, 64))
                    .col(big_integer(AppKey::CreatedAtMs))
                    // After this time the key no longer authenticates (a rotation's grace).
                    .col(big_integer_null(AppKey::RetireAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_app_key_app_key_id")
                    .table(AppKey::Table)
                    .col(AppKey::AppId)
                    .col(AppKey::KeyId)
                    .unique()
                    .if_not_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(AdminToken::Table)
                    .if_not_exists()
                    .col(string_len(AdminToken::Id, 32).primary_key())
                    // `viewer`, `operator` or `admin` (rota_shared::admin::Role).
                    .col(string_len(AdminToken::Role, 16))
                    // Scoped to this app when set.
                    .col(big_integer_null(AdminToken::AppId))
                    .col(string_len(AdminToken::Description, 255))
                    // The key derived from the token's secret, hex; never the token.
                    .col(string_len(AdminToken::Key, 64))
                    .col(big_integer(AdminToken::CreatedAtMs))
                    .col(big_integer_null(AdminToken::RevokedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(DeploymentSecret::Table)
                    .if_not_exists()
                    .col(string_len(DeploymentSecret::Name, 64).primary_key())
                    .col(string_len(DeploymentSecret::Value, 128))
                    .col(big_integer(DeploymentSecret::CreatedAtMs))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            AppKey::Table.into_iden(),
            AdminToken::Table.into_iden(),
            DeploymentSecret::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
