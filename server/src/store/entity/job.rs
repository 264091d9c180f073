use sea_orm::entity::prelude::*;

/// A job: the columns queries filter or index on, and the rest of its `JobSpec` as JSON.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "job")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub app_id: i64,
    pub name: String,
    /// `rota_shared::schedule::Schedule` as JSON (its `type` first: frequent jobs are found by it).
    pub schedule: String,
    pub enabled: bool,
    /// The other fields of `rota_shared::job::JobSpec` as a JSON object.
    pub settings: String,
    pub next_trigger_time_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
