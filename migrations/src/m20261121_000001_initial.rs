//! The first schema: apps, servers, jobs, instances and their logs.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[derive(DeriveIden)]
enum App {
    Table,
    Id,
    Name,
    SecretHash,
    CurrentServer,
    Epoch,
    CreatedAtMs,
}

#[derive(DeriveIden)]
enum Server {
    Table,
    Id,
    Version,
    StartedAtMs,
    LastSeenMs,
}

#[derive(DeriveIden)]
enum Job {
    Table,
    Id,
    AppId,
    Name,
    Description,
    Schedule,
    LifecycleStartMs,
    LifecycleEndMs,
    Processor,
    Config,
    Params,
    Enabled,
    MaxInstances,
    Overlap,
    MaxRetries,
    RetryDelayMs,
    TimeoutMs,
    Dispatch,
    Tags,
    DesignatedWorkers,
    NextTriggerTimeMs,
    CreatedAtMs,
    UpdatedAtMs,
}

// Column names mirror the entity fields, so `Instance::InstanceParams` is meant.
#[allow(clippy::enum_variant_names)]
#[derive(DeriveIden)]
enum Instance {
    Table,
    Id,
    JobId,
    AppId,
    Status,
    Trigger,
    ExpectedTriggerTimeMs,
    InstanceParams,
    Attempt,
    Runs,
    WorkerId,
    LastSeq,
    Result,
    CreatedAtMs,
    StartedAtMs,
    FinishedAtMs,
    DueAtMs,
    LastReportAtMs,
}

#[derive(DeriveIden)]
enum InstanceLog {
    Table,
    Id,
    InstanceId,
    Attempt,
    TsMs,
    Level,
    Text,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(App::Table)
                    .if_not_exists()
                    .col(big_pk_auto(App::Id))
                    .col(string_len_uniq(App::Name, 128))
                    .col(string_len(App::SecretHash, 128))
                    .col(string_len_null(App::CurrentServer, 128))
                    .col(big_integer(App::Epoch).default(0))
                    .col(big_integer(App::CreatedAtMs))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Server::Table)
                    .if_not_exists()
                    .col(string_len(Server::Id, 128).primary_key())
                    .col(string_len(Server::Version, 64))
                    .col(big_integer(Server::StartedAtMs))
                    .col(big_integer(Server::LastSeenMs))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Job::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Job::Id))
                    .col(big_integer(Job::AppId))
                    .col(string_len(Job::Name, 255))
                    .col(text(Job::Description))
                    // The schedule as `rota_shared::schedule::Schedule` JSON.
                    .col(text(Job::Schedule))
                    .col(big_integer_null(Job::LifecycleStartMs))
                    .col(big_integer_null(Job::LifecycleEndMs))
                    .col(string_len(Job::Processor, 255))
                    .col(text(Job::Config))
                    .col(text_null(Job::Params))
                    .col(boolean(Job::Enabled))
                    .col(integer(Job::MaxInstances))
                    .col(string_len(Job::Overlap, 16))
                    .col(integer(Job::MaxRetries))
                    .col(big_integer(Job::RetryDelayMs))
                    .col(big_integer(Job::TimeoutMs))
                    .col(string_len(Job::Dispatch, 32))
                    // JSON arrays of strings.
                    .col(text(Job::Tags))
                    .col(text(Job::DesignatedWorkers))
                    .col(big_integer_null(Job::NextTriggerTimeMs))
                    .col(big_integer(Job::CreatedAtMs))
                    .col(big_integer(Job::UpdatedAtMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_job_app_name")
                    .table(Job::Table)
                    .col(Job::AppId)
                    .col(Job::Name)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The schedule loop's query: enabled jobs whose next fire is due.
        manager
            .create_index(
                Index::create()
                    .name("ix_job_due")
                    .table(Job::Table)
                    .col(Job::Enabled)
                    .col(Job::NextTriggerTimeMs)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Instance::Table)
                    .if_not_exists()
                    .col(big_pk_auto(Instance::Id))
                    .col(big_integer(Instance::JobId))
                    .col(big_integer(Instance::AppId))
                    .col(integer(Instance::Status))
                    .col(string_len(Instance::Trigger, 16))
                    .col(big_integer_null(Instance::ExpectedTriggerTimeMs))
                    .col(text_null(Instance::InstanceParams))
                    .col(integer(Instance::Attempt))
                    .col(big_integer(Instance::Runs))
                    .col(string_len_null(Instance::WorkerId, 128))
                    .col(big_integer(Instance::LastSeq))
                    .col(text_null(Instance::Result))
                    .col(big_integer(Instance::CreatedAtMs))
                    .col(big_integer_null(Instance::StartedAtMs))
                    .col(big_integer_null(Instance::FinishedAtMs))
                    .col(big_integer_null(Instance::DueAtMs))
                    .col(big_integer_null(Instance::LastReportAtMs))
                    .to_owned(),
            )
            .await?;
        // Fencing (DESIGN §3): a fire time of a job yields at most one instance, whatever the
        // number of servers that believe they own the app. API runs have no expected trigger
        // time, and NULLs never collide in a unique index.
        manager
            .create_index(
                Index::create()
                    .name("ux_instance_job_fire")
                    .table(Instance::Table)
                    .col(Instance::JobId)
                    .col(Instance::ExpectedTriggerTimeMs)
                    .unique()
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_instance_app_status")
                    .table(Instance::Table)
                    .col(Instance::AppId)
                    .col(Instance::Status)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_instance_job_status")
                    .table(Instance::Table)
                    .col(Instance::JobId)
                    .col(Instance::Status)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(InstanceLog::Table)
                    .if_not_exists()
                    .col(big_pk_auto(InstanceLog::Id))
                    .col(big_integer(InstanceLog::InstanceId))
                    .col(integer(InstanceLog::Attempt))
                    .col(big_integer(InstanceLog::TsMs))
                    .col(string_len(InstanceLog::Level, 8))
                    .col(text(InstanceLog::Text))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ix_instance_log_instance")
                    .table(InstanceLog::Table)
                    .col(InstanceLog::InstanceId)
                    .col(InstanceLog::Id)
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for table in [
            InstanceLog::Table.into_iden(),
            Instance::Table.into_iden(),
            Job::Table.into_iden(),
            Server::Table.into_iden(),
            App::Table.into_iden(),
        ] {
            manager
                .drop_table(Table::drop().table(table).if_exists().to_owned())
                .await?;
        }
        Ok(())
    }
}
