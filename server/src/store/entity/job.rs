use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "job")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub app_id: i64,
    pub name: String,
    pub description: String,
    /// `rota_shared::schedule::Schedule` as JSON.
    pub schedule: String,
    pub lifecycle_start_ms: Option<i64>,
    pub lifecycle_end_ms: Option<i64>,
    pub processor: String,
    pub config: String,
    pub params: Option<String>,
    pub enabled: bool,
    pub max_instances: i32,
    pub overlap: String,
    pub max_retries: i32,
    pub retry_delay_ms: i64,
    pub timeout_ms: i64,
    pub dispatch: String,
    /// A JSON array of strings.
    pub tags: String,
    /// A JSON array of strings.
    pub designated_workers: String,
    pub next_trigger_time_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    /// `rota_shared::admin::MisfirePolicy` as text.
    pub misfire: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
