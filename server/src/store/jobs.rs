//! Jobs.

use rota_shared::admin::{DispatchStrategy, JobInfo, JobSpec, MisfirePolicy, OverlapPolicy};
use rota_shared::schedule::{Lifecycle, Schedule};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};

use super::entity::job;
use super::{Store, StoreError, StoreResult, decode_list, encode_list};

/// A job as the scheduler and dispatcher use it: the stored row with its JSON decoded once.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub app_id: i64,
    pub name: String,
    pub schedule: Schedule,
    pub lifecycle: Lifecycle,
    pub processor: String,
    pub config: String,
    pub params: Option<String>,
    pub enabled: bool,
    pub max_instances: u32,
    pub overlap: OverlapPolicy,
    pub max_retries: u32,
    pub retry_delay_ms: u64,
    pub timeout_ms: u64,
    pub dispatch: DispatchStrategy,
    pub tags: Vec<String>,
    pub designated_workers: Vec<String>,
    pub next_trigger_time_ms: Option<i64>,
    pub description: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
    pub misfire: MisfirePolicy,
}

impl Job {
    pub fn from_model(m: job::Model) -> StoreResult<Self> {
        let schedule: Schedule = serde_json::from_str(&m.schedule)
            .map_err(|e| StoreError::Corrupt(format!("job {} schedule: {e}", m.id)))?;
        Ok(Self {
            id: m.id,
            app_id: m.app_id,
            name: m.name,
            schedule,
            lifecycle: Lifecycle {
                start_ms: m.lifecycle_start_ms,
                end_ms: m.lifecycle_end_ms,
            },
            processor: m.processor,
            config: m.config,
            params: m.params,
            enabled: m.enabled,
            max_instances: u32::try_from(m.max_instances).unwrap_or(0),
            overlap: OverlapPolicy::parse(&m.overlap).unwrap_or_default(),
            max_retries: u32::try_from(m.max_retries).unwrap_or(0),
            retry_delay_ms: u64::try_from(m.retry_delay_ms).unwrap_or(0),
            timeout_ms: u64::try_from(m.timeout_ms).unwrap_or(0),
            dispatch: DispatchStrategy::parse(&m.dispatch).unwrap_or_default(),
            tags: decode_list(&m.tags)?,
            designated_workers: decode_list(&m.designated_workers)?,
            next_trigger_time_ms: m.next_trigger_time_ms,
            description: m.description,
            created_at_ms: m.created_at_ms,
            updated_at_ms: m.updated_at_ms,
            misfire: MisfirePolicy::parse(&m.misfire).unwrap_or_default(),
        })
    }

    pub fn to_spec(&self, app_name: &str) -> JobSpec {
        JobSpec {
            app: app_name.to_owned(),
            name: self.name.clone(),
            description: self.description.clone(),
            schedule: self.schedule.clone(),
            lifecycle: self.lifecycle,
            processor: self.processor.clone(),
            config: self.config.clone(),
            params: self.params.clone(),
            enabled: self.enabled,
            max_instances: self.max_instances,
            overlap: self.overlap,
            max_retries: self.max_retries,
            retry_delay_ms: self.retry_delay_ms,
            timeout_ms: self.timeout_ms,
            dispatch: self.dispatch,
            tags: self.tags.clone(),
            designated_workers: self.designated_workers.clone(),
            misfire: self.misfire,
        }
    }

    /// The job's settings the status rules depend on.
    pub fn rules(&self) -> rota_shared::rules::JobRules {
        rota_shared::rules::JobRules {
            frequent: self.schedule.is_frequent(),
            max_retries: self.max_retries,
            retry_delay_ms: self.retry_delay_ms,
            lifecycle_end_ms: self.lifecycle.end_ms,
        }
    }

    pub fn to_info(&self, app_name: &str) -> JobInfo {
        JobInfo {
            id: self.id,
            app_id: self.app_id,
            spec: self.to_spec(app_name),
            next_trigger_time_ms: self.next_trigger_time_ms,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
            warnings: Vec::new(),
        }
    }

    fn to_active(&self) -> job::ActiveModel {
        let clamp_i32 = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
        let clamp_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        job::ActiveModel {
            id: Default::default(),
            app_id: Set(self.app_id),
            name: Set(self.name.clone()),
            description: Set(self.description.clone()),
            schedule: Set(serde_json::to_string(&self.schedule).unwrap_or_default()),
            lifecycle_start_ms: Set(self.lifecycle.start_ms),
            lifecycle_end_ms: Set(self.lifecycle.end_ms),
            processor: Set(self.processor.clone()),
            config: Set(self.config.clone()),
            params: Set(self.params.clone()),
            enabled: Set(self.enabled),
            max_instances: Set(clamp_i32(self.max_instances)),
            overlap: Set(self.overlap.as_str().to_owned()),
            max_retries: Set(clamp_i32(self.max_retries)),
            retry_delay_ms: Set(clamp_i64(self.retry_delay_ms)),
            timeout_ms: Set(clamp_i64(self.timeout_ms)),
            dispatch: Set(self.dispatch.as_str().to_owned()),
            tags: Set(encode_list(&self.tags)),
            designated_workers: Set(encode_list(&self.designated_workers)),
            next_trigger_time_ms: Set(self.next_trigger_time_ms),
            created_at_ms: Set(self.created_at_ms),
            updated_at_ms: Set(self.updated_at_ms),
            misfire: Set(self.misfire.as_text()),
        }
    }

    /// A job from a spec, not yet stored (its id is 0).
    pub fn from_spec(spec: &JobSpec, app_id: i64, now_ms: i64) -> Self {
        Self {
            id: 0,
            app_id,
            name: spec.name.clone(),
            schedule: spec.schedule.clone(),
            lifecycle: spec.lifecycle,
            processor: spec.processor.clone(),
            config: spec.config.clone(),
            params: spec.params.clone(),
            enabled: spec.enabled,
            max_instances: spec.max_instances,
            overlap: spec.overlap,
            max_retries: spec.max_retries,
            retry_delay_ms: spec.retry_delay_ms,
            timeout_ms: spec.timeout_ms,
            dispatch: spec.dispatch,
            tags: spec.tags.clone(),
            designated_workers: spec.designated_workers.clone(),
            next_trigger_time_ms: None,
            description: spec.description.clone(),
            created_at_ms: now_ms,
            updated_at_ms: now_ms,
            misfire: spec.misfire,
        }
    }
}

impl Store {
    pub async fn insert_job(&self, job: &Job) -> StoreResult<Job> {
        let model = job
            .to_active()
            .insert(self.conn())
            .await
            .map_err(|e| StoreError::from_insert(e, format!("job {:?}", job.name)))?;
        Job::from_model(model)
    }

    /// Stores many new jobs in multi-row inserts (for bulk loads: imports, benchmarks).
    pub async fn insert_jobs(&self, jobs: &[Job]) -> StoreResult<()> {
        let txn = self.write_txn().await?;
        // 24 columns a row: 500 rows stay below every backend's bind-parameter limit.
        for chunk in jobs.chunks(500) {
            job::Entity::insert_many(chunk.iter().map(Job::to_active))
                .exec_without_returning(&txn)
                .await
                .map_err(|e| StoreError::from_insert(e, "a job of the batch"))?;
        }
        txn.commit().await?;
        Ok(())
    }

    /// Replaces every column of a stored job.
    pub async fn save_job(&self, job: &Job) -> StoreResult<Job> {
        let mut active = job.to_active();
        active.id = Set(job.id);
        let model = active
            .update(self.conn())
            .await
            .map_err(|e| StoreError::from_insert(e, format!("job {:?}", job.name)))?;
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
