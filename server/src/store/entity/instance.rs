use rota_shared::{InstanceStatus, Trigger};
use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "instance")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub job_id: i64,
    pub app_id: i64,
    pub status: InstanceStatus,
    pub trigger: Trigger,
    pub expected_trigger_time_ms: Option<i64>,
    pub instance_params: Option<String>,
    pub attempt: i32,
    pub runs: i64,
    pub worker_id: Option<String>,
    pub last_seq: i64,
    pub result: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    pub due_at_ms: Option<i64>,
    pub last_report_at_ms: Option<i64>,
    pub idempotency_key: Option<String>,
    /// JSON of `rota_shared::task::TaskCounts`.
    pub tasks: Option<String>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
