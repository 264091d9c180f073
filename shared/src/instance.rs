//! An instance: one run of a job, through its dispatch attempts. Defined once here; the server's
//! store maps it to its table, `instance show` sends it with its job's name.

use serde::{Deserialize, Serialize};

use crate::rules::InstanceState;
use crate::status::InstanceStatus;

/// How an instance came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(
    feature = "sea-orm",
    derive(sea_orm::EnumIter, sea_orm::DeriveActiveEnum),
    sea_orm(
        rs_type = "String",
        db_type = "String(sea_orm::sea_query::StringLen::None)"
    )
)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// A fire of the job's schedule (CRON, fixed rate or delay, one-shot).
    #[cfg_attr(feature = "sea-orm", sea_orm(string_value = "schedule"))]
    Schedule,
    /// `job run`: an API or operator call.
    #[cfg_attr(feature = "sea-orm", sea_orm(string_value = "api"))]
    Api,
    /// `instance retry`: a new run of a finished instance.
    #[cfg_attr(feature = "sea-orm", sea_orm(string_value = "retry"))]
    Retry,
}

impl Trigger {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Schedule => "schedule",
            Self::Api => "api",
            Self::Retry => "retry",
        }
    }
}

impl std::fmt::Display for Trigger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything stored about an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: i64,
    pub job_id: i64,
    pub app_id: i64,
    pub status: InstanceStatus,
    pub trigger: Trigger,
    /// The fire time it was created for (scheduled instances).
    pub expected_trigger_time_ms: Option<i64>,
    pub instance_params: Option<String>,
    /// The current dispatch attempt (0 before the first dispatch).
    pub attempt: i32,
    /// How many times a worker started it.
    pub runs: i64,
    /// The worker the current attempt was handed to.
    pub worker_id: Option<String>,
    /// The sequence number of the last report applied for the current attempt.
    #[serde(default)]
    pub last_seq: i64,
    pub result: Option<String>,
    pub created_at_ms: i64,
    pub started_at_ms: Option<i64>,
    pub finished_at_ms: Option<i64>,
    /// When the next dispatch is due (for WAITING_DISPATCH).
    pub due_at_ms: Option<i64>,
    /// When the last report of the current attempt was applied.
    #[serde(default)]
    pub last_report_at_ms: Option<i64>,
    /// The key of the `job run` request that created it, which returns this instance again
    /// when repeated (API runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// A distributed instance's tasks, as its master last reported them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<crate::task::TaskCounts>,
}

impl Instance {
    /// What the status rules need to know of it.
    pub fn rule_state(&self) -> InstanceState {
        InstanceState {
            status: self.status,
            attempt: self.attempt,
            worker_id: self.worker_id.clone(),
            last_seq: self.last_seq,
            runs: self.runs,
        }
    }
}
