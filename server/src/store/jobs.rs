//! Jobs.

use rota_shared::admin::{JobInfo, JobSpec};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::{Map, Value};

use super::entity::job;
use super::{Store, StoreError, StoreResult};

/// A job as the scheduler and dispatcher use it: its one definition, [`JobSpec`], with the
/// server's bookkeeping around it.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub app_id: i64,
    pub spec: JobSpec,
    pub next_trigger_time_ms: Option<i64>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// The `JobSpec` fields that are columns of their own; the others are kept in `settings`.
const COLUMNS: [&str; 3] = ["name", "schedule", "enabled"];

impl Job {
    fn from_model(m: job::Model) -> StoreResult<Self> {
        let corrupt = |what: &str, e: &dyn std::fmt::Display| {
            StoreError::Corrupt(format!("job {} {what}: {e}", m.id))
        };
        let mut object: Map<String, Value> =
            serde_json::from_str(&m.settings).map_err(|e| corrupt("settings", &e))?;
        let schedule: Value =
            serde_json::from_str(&m.schedule).map_err(|e| corrupt("schedule", &e))?;
        object.insert("name".into(), Value::String(m.name));
        object.insert("schedule".into(), schedule);
        object.insert("enabled".into(), Value::Bool(m.enabled));
        let spec = JobSpec::from_object(object).map_err(|e| corrupt("settings", &e))?;
        Ok(Self {
            id: m.id,
            app_id: m.app_id,
            spec,
            next_trigger_time_ms: m.next_trigger_time_ms,
            created_at_ms: m.created_at_ms,
            updated_at_ms: m.updated_at_ms,
        })
    }

    fn to_active(&self) -> StoreResult<job::ActiveModel> {
        let mut settings = self.spec.to_object();
        for column in COLUMNS {
            settings.remove(column);
        }
        let schedule = serde_json::to_string(&self.spec.schedule)
            .map_err(|e| StoreError::Corrupt(format!("job {:?} schedule: {e}", self.spec.name)))?;
        Ok(job::ActiveModel {
            id: Default::default(),
            app_id: Set(self.app_id),
            name: Set(self.spec.name.clone()),
            schedule: Set(schedule),
            enabled: Set(self.spec.enabled),
            settings: Set(Value::Object(settings).to_string()),
            next_trigger_time_ms: Set(self.next_trigger_time_ms),
            created_at_ms: Set(self.created_at_ms),
            updated_at_ms: Set(self.updated_at_ms),
        })
    }

    /// A job not yet stored (its id is 0).
    pub fn new(spec: JobSpec, app_id: i64, now_ms: i64) -> Self {
        Self {
            id: 0,
            app_id,
            spec,
            next_trigger_time_ms: None,
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
        }
    }

    /// The job's settings the status rules depend on.
    pub fn rules(&self) -> rota_shared::rules::JobRules {
        rota_shared::rules::JobRules {
            frequent: self.spec.schedule.is_frequent(),
            max_retries: self.spec.max_retries,
            retry_delay_ms: self.spec.retry_delay_ms,
            lifecycle_end_ms: self.spec.lifecycle.end_ms,
        }
    }

    pub fn to_info(&self, app_name: &str) -> JobInfo {
        JobInfo {
            id: self.id,
            app_id: self.app_id,
            app: app_name.to_owned(),
            spec: self.spec.clone(),
            next_trigger_time_ms: self.next_trigger_time_ms,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            warnings: Vec::new(),
        }
    }
}

impl Store {
    pub async fn insert_job(&self, job: &Job) -> StoreResult<Job> {
        let model = job
            .to_active()?
            .insert(self.conn())
            .await
            .map_err(|e| StoreError::from_insert(e, format!("job {:?}", job.spec.name)))?;
        Job::from_model(model)
    }

    /// Stores many new jobs in multi-row inserts (for bulk loads: imports, benchmarks).
    pub async fn insert_jobs(&self, jobs: &[Job]) -> StoreResult<()> {
        let txn = self.write_txn().await?;
        // 9 columns a row: 500 rows stay below every backend's bind-parameter limit.
        for chunk in jobs.chunks(500) {
            let rows = chunk
                .iter()
                .map(Job::to_active)
                .collect::<StoreResult<Vec<_>>>()?;
            job::Entity::insert_many(rows)
                .exec_without_returning(&txn)
                .await
                .map_err(|e| StoreError::from_insert(e, "a job of the batch"))?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Replaces every column of a stored job.
    pub async fn save_job(&self, job: &Job) -> StoreResult<Job> {
        let mut active = job.to_active()?;
        active.id = Set(job.id);
        let model = active
            .update(self.conn())
            .await
            .map_err(|e| StoreError::from_insert(e, format!("job {:?}", job.spec.name)))?;
        Job::from_model(model)
    }

    pub async fn job(&self, id: i64) -> StoreResult<Job> {
        let model = job::Entity::find_by_id(id)
            .one(self.conn())
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("job {id}")))?;
        Job::from_model(model)
    }

    pub async fn jobs_by_ids(&self, ids: &[i64]) -> StoreResult<Vec<Job>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        job::Entity::find()
            .filter(job::Column::Id.is_in(ids.iter().copied()))
            .all(self.conn())
            .await?
            .into_iter()
            .map(Job::from_model)
            .collect()
    }

    /// Jobs in id order: of one app or all, after `after_id`, at most `limit`.
    pub async fn list_jobs(
        &self,
        app_id: Option<i64>,
        after_id: Option<i64>,
        limit: u64,
    ) -> StoreResult<Vec<Job>> {
        let mut q = job::Entity::find().order_by_asc(job::Column::Id);
        if let Some(app_id) = app_id {
            q = q.filter(job::Column::AppId.eq(app_id));
        }
        if let Some(after) = after_id {
            q = q.filter(job::Column::Id.gt(after));
        }
        q.limit(limit)
            .all(self.conn())
            .await?
            .into_iter()
            .map(Job::from_model)
            .collect()
    }

    pub async fn delete_job(&self, id: i64) -> StoreResult<()> {
        let res = job::Entity::delete_by_id(id).exec(self.conn()).await?;
        if res.rows_affected == 0 {
            return Err(StoreError::NotFound(format!("job {id}")));
        }
        Ok(())
    }

    /// Enabled jobs of `app_ids` whose next fire is at or before `horizon_ms`, earliest first.
    pub async fn due_jobs(
        &self,
        app_ids: &[i64],
        horizon_ms: i64,
        limit: u64,
    ) -> StoreResult<Vec<Job>> {
        if app_ids.is_empty() {
            return Ok(Vec::new());
        }
        job::Entity::find()
            .filter(job::Column::Enabled.eq(true))
            .filter(job::Column::NextTriggerTimeMs.lte(horizon_ms))
            .filter(job::Column::AppId.is_in(app_ids.iter().copied()))
            .order_by_asc(job::Column::NextTriggerTimeMs)
            .limit(limit)
            .all(self.conn())
            .await?
            .into_iter()
            .map(Job::from_model)
            .collect()
    }

    /// Enabled FIXED_RATE and FIXED_DELAY jobs of `app_ids`.
    pub async fn frequent_jobs(&self, app_ids: &[i64]) -> StoreResult<Vec<Job>> {
        if app_ids.is_empty() {
            return Ok(Vec::new());
        }
        // The schedule is stored as tagged JSON whose first key is its type.
        job::Entity::find()
            .filter(job::Column::Enabled.eq(true))
            .filter(job::Column::AppId.is_in(app_ids.iter().copied()))
            .filter(job::Column::Schedule.like(r#"{"type":"fixed_%"#))
            .all(self.conn())
            .await?
            .into_iter()
            .map(Job::from_model)
            .collect()
    }

    /// Sets a job's next fire outright, bypassing the schedule loop's compare-and-set (for
    /// setting up state, as the fencing tests do).
    pub async fn set_next_trigger(
        &self,
        job_id: i64,
        next_ms: Option<i64>,
        now_ms: i64,
    ) -> StoreResult<()> {
        job::Entity::update_many()
            .col_expr(job::Column::NextTriggerTimeMs, Expr::value(next_ms))
            .col_expr(job::Column::UpdatedAtMs, Expr::value(now_ms))
            .filter(job::Column::Id.eq(job_id))
            .exec(self.conn())
            .await?;
        Ok(())
    }
}
