//! Instances: the batched fire transaction and every compare-and-set on an instance's status.

use std::collections::HashSet;

use rota_shared::rules::Update;
use rota_shared::{Instance, InstanceStatus, Trigger};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use super::bulk::{self, Cell};
use super::entity::{instance, job};
use super::{Store, StoreError, StoreResult};

/// One due job's fires for one scheduler pass.
#[derive(Debug, Clone)]
pub struct FirePlan {
    pub job_id: i64,
    pub app_id: i64,
    /// The job's `next_trigger_time_ms` as read: the compare-and-set guard.
    pub old_next: i64,
    /// What it becomes (`None`: the job never fires again).
    pub new_next: Option<i64>,
    /// The fire times to create instances for.
    pub fires: Vec<i64>,
}

/// An instance created for a fire time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledInstance {
    pub id: i64,
    pub job_id: i64,
    pub expected_trigger_time_ms: i64,
}

/// An instance to create on demand (API run, operator retry).
#[derive(Debug, Clone)]
pub struct NewInstance {
    pub job_id: i64,
    pub app_id: i64,
    pub trigger: Trigger,
    pub params: Option<String>,
    pub due_at_ms: i64,
    /// Created already handed to this worker as attempt 1 (WAITING_WORKER_RECEIVE): a run due
    /// now skips the separate dispatch compare-and-set.
    pub handed_to: Option<String>,
    /// The key of an idempotent run (see [`Store::insert_keyed_instance`]).
    pub idempotency_key: Option<String>,
}

/// An instance to hand to a worker ([`Store::cas_dispatch_many`]).
#[derive(Debug, Clone, Copy)]
pub struct Handover<'a> {
    pub id: i64,
    pub guard: InstanceGuard,
    pub worker_id: &'a str,
    /// When the worker is to start it, if later than now.
    pub start_at_ms: Option<i64>,
}

/// The state a compare-and-set expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceGuard {
    pub status: InstanceStatus,
    pub attempt: i32,
    pub last_seq: i64,
}

impl InstanceGuard {
    pub fn of(i: &Instance) -> Self {
        Self {
            status: i.status,
            attempt: i.attempt,
            last_seq: i.last_seq,
        }
    }
}

/// The one mapping from a stored row to the domain type.
impl From<instance::Model> for Instance {
    fn from(m: instance::Model) -> Self {
        Self {
            id: m.id,
            job_id: m.job_id,
            app_id: m.app_id,
            status: m.status,
            trigger: m.trigger,
            expected_trigger_time_ms: m.expected_trigger_time_ms,
            instance_params: m.instance_params,
            attempt: m.attempt,
            runs: m.runs,
            worker_id: m.worker_id,
            last_seq: m.last_seq,
            result: m.result,
            created_at_ms: m.created_at_ms,
            started_at_ms: m.started_at_ms,
            finished_at_ms: m.finished_at_ms,
            due_at_ms: m.due_at_ms,
            last_report_at_ms: m.last_report_at_ms,
            idempotency_key: m.idempotency_key,
            // Counts for people to read, written by this server from a checked report; a
            // value that does not read (which no Rota writes) shows as no counts rather than
            // hiding the instance.
            tasks: m
                .tasks
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok()),
        }
    }
}

/// How a report's task counts are stored.
fn tasks_json(u: &Update) -> Option<String> {
    u.tasks.as_ref().and_then(|t| serde_json::to_string(t).ok())
}

/// The row of an instance created outside the schedule.
fn new_row(new: NewInstance, now_ms: i64) -> instance::ActiveModel {
    let handed = new.handed_to.is_some();
    let status = if handed {
        InstanceStatus::WaitingWorkerReceive
    } else {
        InstanceStatus::WaitingDispatch
    };
    instance::ActiveModel {
        job_id: Set(new.job_id),
        app_id: Set(new.app_id),
        status: Set(status),
        trigger: Set(new.trigger),
        expected_trigger_time_ms: Set(None),
        instance_params: Set(new.params),
        attempt: Set(i32::from(handed)),
        runs: Set(0),
        worker_id: Set(new.handed_to),
        last_seq: Set(0),
        result: Set(None),
        created_at_ms: Set(now_ms),
        started_at_ms: Set(None),
        finished_at_ms: Set(None),
        due_at_ms: Set((!handed).then_some(new.due_at_ms)),
        last_report_at_ms: Set(handed.then_some(now_ms)),
        idempotency_key: Set(new.idempotency_key),
        ..Default::default()
    }
}

/// Instances of `app_ids` in `status`: what the schedule loop and reconcile look through.
fn of_apps_in(app_ids: &[i64], status: InstanceStatus) -> sea_orm::Select<instance::Entity> {
    instance::Entity::find()
        .filter(instance::Column::AppId.is_in(app_ids.iter().copied()))
        .filter(instance::Column::Status.eq(status.code()))
}

#[derive(Debug, Clone, Default)]
pub struct InstanceFilter {
    pub app_id: Option<i64>,
    pub job_id: Option<i64>,
    pub status: Option<InstanceStatus>,
    /// Only instances older (with a smaller id) than this one: the next page, newest first.
    pub before_id: Option<i64>,
    pub limit: u64,
}

const LIVE: [i32; 2] = [
    InstanceStatus::WaitingWorkerReceive.code(),
    InstanceStatus::Running.code(),
];

const NOT_TERMINAL: [i32; 3] = [
    InstanceStatus::WaitingDispatch.code(),
    InstanceStatus::WaitingWorkerReceive.code(),
    InstanceStatus::Running.code(),
];

fn guarded(
    q: sea_orm::UpdateMany<instance::Entity>,
    id: i64,
    g: InstanceGuard,
) -> sea_orm::UpdateMany<instance::Entity> {
    q.filter(instance::Column::Id.eq(id))
        .filter(instance::Column::Status.eq(g.status.code()))
        .filter(instance::Column::Attempt.eq(g.attempt))
        .filter(instance::Column::LastSeq.eq(g.last_seq))
}

impl Store {
    /// Creates the instances of a scheduler pass and advances each job's next fire, in one
    /// transaction. A job whose `next_trigger_time_ms` moved since it was read (another server
    /// got there first) is left alone, and a fire time that already has an instance gets no
    /// second one: `(job_id, expected_trigger_time_ms)` is unique. Returns the instances of the
    /// plans' fire times, whether this call created them or found them.
    pub async fn fire(
        &self,
        plans: &[FirePlan],
        now_ms: i64,
    ) -> StoreResult<Vec<ScheduledInstance>> {
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let txn = self.write_txn().await?;
        let advanced = advance_jobs(&txn, plans).await?;
        let mut rows = Vec::new();
        let mut wanted: HashSet<(i64, i64)> = HashSet::new();
        for plan in plans {
            if !advanced.contains(&plan.job_id) {
                continue;
            }
            for &fire in &plan.fires {
                wanted.insert((plan.job_id, fire));
                rows.push(instance::ActiveModel {
                    job_id: Set(plan.job_id),
                    app_id: Set(plan.app_id),
                    status: Set(InstanceStatus::WaitingDispatch),
                    trigger: Set(Trigger::Schedule),
                    expected_trigger_time_ms: Set(Some(fire)),
                    instance_params: Set(None),
                    attempt: Set(0),
                    runs: Set(0),
                    worker_id: Set(None),
                    last_seq: Set(0),
                    result: Set(None),
                    created_at_ms: Set(now_ms),
                    started_at_ms: Set(None),
                    finished_at_ms: Set(None),
                    due_at_ms: Set(Some(fire)),
                    last_report_at_ms: Set(None),
                    idempotency_key: Set(None),
                    ..Default::default()
                });
            }
        }
        // 18 columns a row: 500 rows stay below every backend's bind-parameter limit.
        for chunk in rows.chunks(500) {
            instance::Entity::insert_many(chunk.to_vec())
                .on_conflict(
                    OnConflict::columns([
                        instance::Column::JobId,
                        instance::Column::ExpectedTriggerTimeMs,
                    ])
                    // Naming a column keeps MySQL's rendering valid (`ON DUPLICATE KEY UPDATE
                    // id = id`); a bare DO NOTHING becomes a misplaced `IGNORE` there.
                    .do_nothing_on([instance::Column::Id])
                    .to_owned(),
                )
                .exec_without_returning(&txn)
                .await?;
        }
        let mut created = Vec::with_capacity(wanted.len());
        if !wanted.is_empty() {
            let job_ids: HashSet<i64> = wanted.iter().map(|(j, _)| *j).collect();
            let times: HashSet<i64> = wanted.iter().map(|(_, t)| *t).collect();
            let found: Vec<(i64, i64, Option<i64>)> = instance::Entity::find()
                .select_only()
                .column(instance::Column::Id)
                .column(instance::Column::JobId)
                .column(instance::Column::ExpectedTriggerTimeMs)
                .filter(instance::Column::JobId.is_in(job_ids))
                .filter(instance::Column::ExpectedTriggerTimeMs.is_in(times))
                .into_tuple()
                .all(&txn)
                .await?;
            for (id, job_id, ett) in found {
                if let Some(ett) = ett.filter(|t| wanted.contains(&(job_id, *t))) {
                    created.push(ScheduledInstance {
                        id,
                        job_id,
                        expected_trigger_time_ms: ett,
                    });
                }
            }
        }
        txn.commit().await?;
        Ok(created)
    }

    /// Creates one instance outside the schedule (an API run or an operator's retry).
    pub async fn insert_instance(&self, new: NewInstance, now_ms: i64) -> StoreResult<Instance> {
        // One round trip where the backend has RETURNING (PostgreSQL, SQLite).
        Ok(instance::Entity::insert(new_row(new, now_ms))
            .exec_with_returning(self.conn())
            .await?
            .into())
    }

    /// The instance a run with this idempotency key created for the job, while it is kept.
    pub async fn instance_by_key(&self, job_id: i64, key: &str) -> StoreResult<Option<Instance>> {
        Ok(instance::Entity::find()
            .filter(instance::Column::JobId.eq(job_id))
            .filter(instance::Column::IdempotencyKey.eq(key))
            .one(self.conn())
            .await?
            .map(Instance::from))
    }

    /// Creates an API run's instance under its idempotency key, or finds the one an earlier run
    /// with that key created: `(instance, created)`. Two requests racing with one key create one
    /// instance, since the key is unique per job.
    pub async fn insert_keyed_instance(
        &self,
        new: NewInstance,
        now_ms: i64,
    ) -> StoreResult<(Instance, bool)> {
        let job_id = new.job_id;
        let Some(key) = new.idempotency_key.clone() else {
            return Ok((self.insert_instance(new, now_ms).await?, true));
        };
        if let Some(found) = self.instance_by_key(job_id, &key).await? {
            return Ok((found, false));
        }
        match instance::Entity::insert(new_row(new, now_ms))
            .exec_with_returning(self.conn())
            .await
        {
            Ok(model) => Ok((model.into(), true)),
            Err(e)
                if matches!(
                    e.sql_err(),
                    Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
                ) =>
            {
                // Another request with this key was first.
                match self.instance_by_key(job_id, &key).await? {
                    Some(found) => Ok((found, false)),
                    None => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Creates instances outside the schedule in one statement, returned in the order given.
    pub async fn insert_instances(
        &self,
        news: Vec<NewInstance>,
        now_ms: i64,
    ) -> StoreResult<Vec<Instance>> {
        if !self.db.support_returning() {
            // MySQL has no RETURNING: one statement each.
            let mut out = Vec::with_capacity(news.len());
            for new in news {
                out.push(self.insert_instance(new, now_ms).await?);
            }
            return Ok(out);
        }
        let n = news.len();
        let rows = news.into_iter().map(|new| new_row(new, now_ms));
        let mut models = instance::Entity::insert_many(rows)
            .exec_with_returning(self.conn())
            .await?;
        // Ids are drawn in the order of the rows of one INSERT (a sequence on PostgreSQL, the
        // rowid on SQLite), so sorting by id gives back the order of `news`.
        models.sort_by_key(|m| m.id);
        if models.len() != n {
            return Err(StoreError::Corrupt(format!(
                "inserted {n} instances, got {} back",
                models.len()
            )));
        }
        Ok(models.into_iter().map(Instance::from).collect())
    }

    pub async fn instance(&self, id: i64) -> StoreResult<Instance> {
        instance::Entity::find_by_id(id)
            .one(self.conn())
            .await?
            .map(Instance::from)
            .ok_or_else(|| StoreError::NotFound(format!("instance {id}")))
    }

    pub async fn instances_by_ids(&self, ids: &[i64]) -> StoreResult<Vec<Instance>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        Ok(instance::Entity::find()
            .filter(instance::Column::Id.is_in(ids.iter().copied()))
            .all(self.conn())
            .await?
            .into_iter()
            .map(Instance::from)
            .collect())
    }

    /// Newest first.
    pub async fn list_instances(&self, f: &InstanceFilter) -> StoreResult<Vec<Instance>> {
        let mut q = instance::Entity::find().order_by_desc(instance::Column::Id);
        if let Some(app_id) = f.app_id {
            q = q.filter(instance::Column::AppId.eq(app_id));
        }
        if let Some(job_id) = f.job_id {
            q = q.filter(instance::Column::JobId.eq(job_id));
        }
        if let Some(status) = f.status {
            q = q.filter(instance::Column::Status.eq(status.code()));
        }
        if let Some(before) = f.before_id {
            q = q.filter(instance::Column::Id.lt(before));
        }
        Ok(q.limit(f.limit)
            .all(self.conn())
            .await?
            .into_iter()
            .map(Instance::from)
            .collect())
    }

    /// Instances of a job that hold a concurrency slot: handed to a worker or running.
    pub async fn count_live(&self, job_id: i64) -> StoreResult<u64> {
        Ok(instance::Entity::find()
            .filter(instance::Column::JobId.eq(job_id))
            .filter(instance::Column::Status.is_in(LIVE))
            .count(self.conn())
            .await?)
    }

    /// WAITING_DISPATCH instances of `app_ids` due by `horizon_ms`: `(id, due_at_ms)`.
    pub async fn waiting_instances(
        &self,
        app_ids: &[i64],
        horizon_ms: i64,
        limit: u64,
    ) -> StoreResult<Vec<(i64, i64)>> {
        if app_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, Option<i64>)> = of_apps_in(app_ids, InstanceStatus::WaitingDispatch)
            .select_only()
            .column(instance::Column::Id)
            .column(instance::Column::DueAtMs)
            .filter(
                instance::Column::DueAtMs
                    .lte(horizon_ms)
                    .or(instance::Column::DueAtMs.is_null()),
            )
            .order_by_asc(instance::Column::DueAtMs)
            .limit(limit)
            .into_tuple()
            .all(self.conn())
            .await?;
        Ok(rows
            .into_iter()
            .map(|(id, due)| (id, due.unwrap_or(0)))
            .collect())
    }

    /// Instances of `app_ids` in `status` whose last report (or dispatch) is older than
    /// `before_ms`, oldest first.
    pub async fn stale_instances(
        &self,
        app_ids: &[i64],
        status: InstanceStatus,
        before_ms: i64,
        limit: u64,
    ) -> StoreResult<Vec<Instance>> {
        if app_ids.is_empty() {
            return Ok(Vec::new());
        }
        let select = of_apps_in(app_ids, status)
            .filter(
                instance::Column::LastReportAtMs
                    .lt(before_ms)
                    .or(instance::Column::LastReportAtMs.is_null()),
            )
            .order_by_asc(instance::Column::LastReportAtMs);
        self.first_of(select, limit).await
    }

    /// Instances of `app_ids` in `status`.
    pub async fn instances_in(
        &self,
        app_ids: &[i64],
        status: InstanceStatus,
        limit: u64,
    ) -> StoreResult<Vec<Instance>> {
        if app_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.first_of(of_apps_in(app_ids, status), limit).await
    }

    /// The instances of an app running on a worker.
    pub async fn running_on_worker(
        &self,
        app_id: i64,
        worker_id: &str,
        limit: u64,
    ) -> StoreResult<Vec<Instance>> {
        let select = of_apps_in(&[app_id], InstanceStatus::Running)
            .filter(instance::Column::WorkerId.eq(worker_id));
        self.first_of(select, limit).await
    }

    /// The first `limit` instances `select` finds.
    async fn first_of(
        &self,
        select: sea_orm::Select<instance::Entity>,
        limit: u64,
    ) -> StoreResult<Vec<Instance>> {
        Ok(select
            .limit(limit)
            .all(self.conn())
            .await?
            .into_iter()
            .map(Instance::from)
            .collect())
    }

    /// How many instances of each app in `app_ids` are in each unfinished status, in one
    /// grouped query (for the `rota_instances` gauge). Pairs with no instance are left out.
    pub async fn count_unfinished(
        &self,
        app_ids: &[i64],
    ) -> StoreResult<Vec<(i64, InstanceStatus, u64)>> {
        if app_ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(i64, i32, i64)> = instance::Entity::find()
            .select_only()
            .column(instance::Column::AppId)
            .column(instance::Column::Status)
            .column_as(instance::Column::Id.count(), "n")
            .filter(instance::Column::AppId.is_in(app_ids.iter().copied()))
            .filter(instance::Column::Status.is_in(NOT_TERMINAL))
            .group_by(instance::Column::AppId)
            .group_by(instance::Column::Status)
            .into_tuple()
            .all(self.conn())
            .await?;
        rows.into_iter()
            .map(|(app, code, n)| {
                let status = InstanceStatus::from_code(code).ok_or_else(|| {
                    StoreError::Corrupt(format!("an instance of app {app} has status {code}"))
                })?;
                Ok((app, status, u64::try_from(n).unwrap_or(0)))
            })
            .collect()
    }

    /// The job ids among `job_ids` that have an instance that is not terminal.
    pub async fn jobs_with_live_instances(&self, job_ids: &[i64]) -> StoreResult<HashSet<i64>> {
        if job_ids.is_empty() {
            return Ok(HashSet::new());
        }
        let ids: Vec<i64> = instance::Entity::find()
            .select_only()
            .column(instance::Column::JobId)
            .filter(instance::Column::JobId.is_in(job_ids.iter().copied()))
            .filter(instance::Column::Status.is_in(NOT_TERMINAL))
            .into_tuple()
            .all(self.conn())
            .await?;
        Ok(ids.into_iter().collect())
    }

    /// Deletes up to `batch` instances that finished before `cutoff_ms`, with their log lines.
    /// Returns `(instances, log lines)` deleted.
    pub async fn delete_finished_before(
        &self,
        cutoff_ms: i64,
        batch: u64,
    ) -> StoreResult<(u64, u64)> {
        let ids: Vec<i64> = instance::Entity::find()
            .select_only()
            .column(instance::Column::Id)
            .filter(instance::Column::FinishedAtMs.lt(cutoff_ms))
            .filter(instance::Column::Status.is_not_in(NOT_TERMINAL))
            .order_by_asc(instance::Column::Id)
            .limit(batch)
            .into_tuple()
            .all(self.conn())
            .await?;
        if ids.is_empty() {
            return Ok((0, 0));
        }
        let txn = self.write_txn().await?;
        let lines = super::entity::instance_log::Entity::delete_many()
            .filter(super::entity::instance_log::Column::InstanceId.is_in(ids.iter().copied()))
            .exec(&txn)
            .await?
            .rows_affected;
        let instances = instance::Entity::delete_many()
            .filter(instance::Column::Id.is_in(ids))
            .exec(&txn)
            .await?
            .rows_affected;
        txn.commit().await?;
        Ok((instances, lines))
    }

    /// Hands an instance to `worker_id` as a new attempt: WAITING_DISPATCH (or a previous
    /// WAITING_WORKER_RECEIVE that was not acknowledged) → WAITING_WORKER_RECEIVE. Returns the
    /// new attempt, or `None` when the guard did not match.
    pub async fn cas_dispatch(
        &self,
        id: i64,
        guard: InstanceGuard,
        worker_id: &str,
        now_ms: i64,
    ) -> StoreResult<Option<i32>> {
        dispatch_one(self.conn(), id, guard, worker_id, now_ms).await
    }

    /// Puts an instance whose dispatch found no taker back to WAITING_DISPATCH, due at `due_at_ms`.
    pub async fn cas_requeue(
        &self,
        id: i64,
        guard: InstanceGuard,
        due_at_ms: i64,
    ) -> StoreResult<bool> {
        let res = guarded(instance::Entity::update_many(), id, guard)
            .col_expr(
                instance::Column::Status,
                Expr::value(InstanceStatus::WaitingDispatch.code()),
            )
            .col_expr(
                instance::Column::WorkerId,
                Expr::value(Option::<String>::None),
            )
            .col_expr(instance::Column::DueAtMs, Expr::value(due_at_ms))
            .exec(self.conn())
            .await?;
        Ok(res.rows_affected == 1)
    }

    /// Ends a non-terminal instance with a terminal `status` (operator stop, cancellation, no
    /// worker). `guard` narrows it to one observed state; `None` accepts any live state.
    pub async fn cas_finish(
        &self,
        id: i64,
        guard: Option<InstanceGuard>,
        status: InstanceStatus,
        result: &str,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let q = instance::Entity::update_many()
            .col_expr(instance::Column::Status, Expr::value(status.code()))
            .col_expr(instance::Column::Result, Expr::value(result))
            .col_expr(instance::Column::FinishedAtMs, Expr::value(now_ms))
            .col_expr(instance::Column::DueAtMs, Expr::value(Option::<i64>::None));
        let q = match guard {
            Some(g) => guarded(q, id, g),
            None => q
                .filter(instance::Column::Id.eq(id))
                .filter(instance::Column::Status.is_in(NOT_TERMINAL)),
        };
        Ok(q.exec(self.conn()).await?.rows_affected == 1)
    }

    /// Applies status-report updates, each a compare-and-set on the state it was computed from,
    /// in one statement where the backend allows (one transaction of one statement each on
    /// MySQL). Returns, per update, whether it applied.
    pub async fn apply_updates(
        &self,
        updates: &[(i64, InstanceGuard, Update)],
        now_ms: i64,
    ) -> StoreResult<Vec<bool>> {
        if updates.is_empty() {
            return Ok(Vec::new());
        }
        if bulk::supported(self.conn().get_database_backend()) {
            let tasks: Vec<Option<String>> =
                updates.iter().map(|(_, _, u)| tasks_json(u)).collect();
            let rows: Vec<Vec<Cell<'_>>> = updates
                .iter()
                .zip(&tasks)
                .map(|((id, g, u), tasks)| {
                    vec![
                        Cell::Int(*id),
                        Cell::Int(i64::from(g.status.code())),
                        Cell::Int(i64::from(g.attempt)),
                        Cell::Int(g.last_seq),
                        Cell::Int(i64::from(u.status.code())),
                        Cell::Int(u.last_seq),
                        Cell::Int(u.runs),
                        Cell::Text(u.result.as_deref()),
                        Cell::OptInt(u.started_at_ms),
                        Cell::OptInt(u.finished_at_ms),
                        Cell::OptInt(u.retry_at_ms),
                        Cell::Text(tasks.as_deref()),
                    ]
                })
                .collect();
            // A retry (column 11) goes back to WAITING_DISPATCH with no current worker.
            let set = format!(
                "status = v.column5, last_seq = v.column6, runs = v.column7, \
                 last_report_at_ms = {now_ms}, \
                 result = COALESCE(v.column8, instance.result), \
                 started_at_ms = COALESCE(v.column9, instance.started_at_ms), \
                 finished_at_ms = COALESCE(v.column10, instance.finished_at_ms), \
                 due_at_ms = COALESCE(v.column11, instance.due_at_ms), \
                 worker_id = CASE WHEN v.column11 IS NULL THEN instance.worker_id ELSE NULL END, \
                 tasks = COALESCE(v.column12, instance.tasks)"
            );
            let changed: HashSet<i64> =
                bulk::update_returning_ids(self.conn(), "instance", &set, GUARD_MATCHES, &rows)
                    .await?
                    .into_iter()
                    .collect();
            return Ok(updates
                .iter()
                .map(|(id, ..)| changed.contains(id))
                .collect());
        }
        let txn = self.write_txn().await?;
        let mut applied = Vec::with_capacity(updates.len());
        for (id, guard, u) in updates {
            applied.push(apply_one(&txn, *id, *guard, u, now_ms).await?);
        }
        txn.commit().await?;
        Ok(applied)
    }

    /// Hands many instances to workers at once, each as [`Store::cas_dispatch`] does: one
    /// statement where the backend allows. Returns, per hand-over, the new attempt or `None`
    /// when its guard did not match. The ids must be distinct.
    ///
    /// A hand-over that starts later counts its wait for an acknowledgement from its start:
    /// `last_report_at_ms` is the later of now and the start.
    pub async fn cas_dispatch_many(
        &self,
        handovers: &[Handover<'_>],
        now_ms: i64,
    ) -> StoreResult<Vec<Option<i32>>> {
        let since = |h: &Handover<'_>| {
            h.start_at_ms
                .map_or(now_ms, |at| std::cmp::Ord::max(at, now_ms))
        };
        if !bulk::supported(self.conn().get_database_backend()) {
            let txn = self.write_txn().await?;
            let mut out = Vec::with_capacity(handovers.len());
            for h in handovers {
                out.push(dispatch_one(&txn, h.id, h.guard, h.worker_id, since(h)).await?);
            }
            txn.commit().await?;
            return Ok(out);
        }
        let rows: Vec<Vec<Cell<'_>>> = handovers
            .iter()
            .map(|h| {
                vec![
                    Cell::Int(h.id),
                    Cell::Int(i64::from(h.guard.status.code())),
                    Cell::Int(i64::from(h.guard.attempt)),
                    Cell::Int(h.guard.last_seq),
                    Cell::Text(Some(h.worker_id)),
                    Cell::Int(since(h)),
                ]
            })
            .collect();
        let set = format!(
            "status = {status}, attempt = instance.attempt + 1, worker_id = v.column5, \
             last_seq = 0, result = NULL, due_at_ms = NULL, tasks = NULL, \
             last_report_at_ms = v.column6",
            status = InstanceStatus::WaitingWorkerReceive.code()
        );
        let changed: HashSet<i64> =
            bulk::update_returning_ids(self.conn(), "instance", &set, GUARD_MATCHES, &rows)
                .await?
                .into_iter()
                .collect();
        Ok(handovers
            .iter()
            .map(|h| changed.contains(&h.id).then_some(h.guard.attempt + 1))
            .collect())
    }
}

/// The `WHERE` of a bulk compare-and-set whose rows start with id, status, attempt, last_seq.
const GUARD_MATCHES: &str = "instance.id = v.column1 AND instance.status = v.column2 \
     AND instance.attempt = v.column3 AND instance.last_seq = v.column4";

/// Moves each plan's job from `old_next` to `new_next` where it still reads `old_next`, in one
/// statement where the backend allows. Returns the jobs moved.
async fn advance_jobs(
    conn: &impl ConnectionTrait,
    plans: &[FirePlan],
) -> StoreResult<HashSet<i64>> {
    let distinct = plans.iter().map(|p| p.job_id).collect::<HashSet<_>>().len() == plans.len();
    if distinct && bulk::supported(conn.get_database_backend()) {
        let rows: Vec<Vec<Cell<'_>>> = plans
            .iter()
            .map(|p| {
                vec![
                    Cell::Int(p.job_id),
                    Cell::Int(p.old_next),
                    Cell::OptInt(p.new_next),
                ]
            })
            .collect();
        let mut moved = HashSet::with_capacity(plans.len());
        // Bounded statements: a pass over 100,000 due jobs is not one statement.
        for chunk in rows.chunks(2_000) {
            moved.extend(
                bulk::update_returning_ids(
                    conn,
                    "job",
                    "next_trigger_time_ms = v.column3",
                    "job.id = v.column1 AND job.next_trigger_time_ms = v.column2",
                    chunk,
                )
                .await?,
            );
        }
        return Ok(moved);
    }
    let mut moved = HashSet::with_capacity(plans.len());
    for plan in plans {
        let advanced = job::Entity::update_many()
            .col_expr(job::Column::NextTriggerTimeMs, Expr::value(plan.new_next))
            .filter(job::Column::Id.eq(plan.job_id))
            .filter(job::Column::NextTriggerTimeMs.eq(plan.old_next))
            .exec(conn)
            .await?;
        if advanced.rows_affected == 1 {
            moved.insert(plan.job_id);
        }
    }
    Ok(moved)
}

async fn dispatch_one(
    conn: &impl ConnectionTrait,
    id: i64,
    guard: InstanceGuard,
    worker_id: &str,
    now_ms: i64,
) -> StoreResult<Option<i32>> {
    let attempt = guard.attempt + 1;
    let res = guarded(instance::Entity::update_many(), id, guard)
        .col_expr(
            instance::Column::Status,
            Expr::value(InstanceStatus::WaitingWorkerReceive.code()),
        )
        .col_expr(instance::Column::Attempt, Expr::value(attempt))
        .col_expr(instance::Column::WorkerId, Expr::value(worker_id))
        .col_expr(instance::Column::LastSeq, Expr::value(0i64))
        // The previous attempt's result (a failure reason) does not describe this one.
        .col_expr(
            instance::Column::Result,
            Expr::value(Option::<String>::None),
        )
        .col_expr(instance::Column::DueAtMs, Expr::value(Option::<i64>::None))
        .col_expr(instance::Column::Tasks, Expr::value(Option::<String>::None))
        .col_expr(instance::Column::LastReportAtMs, Expr::value(now_ms))
        .exec(conn)
        .await?;
    Ok((res.rows_affected == 1).then_some(attempt))
}

async fn apply_one(
    conn: &impl ConnectionTrait,
    id: i64,
    guard: InstanceGuard,
    u: &Update,
    now_ms: i64,
) -> StoreResult<bool> {
    let mut q = guarded(instance::Entity::update_many(), id, guard)
        .col_expr(instance::Column::Status, Expr::value(u.status.code()))
        .col_expr(instance::Column::LastSeq, Expr::value(u.last_seq))
        .col_expr(instance::Column::Runs, Expr::value(u.runs))
        .col_expr(instance::Column::LastReportAtMs, Expr::value(now_ms));
    if let Some(result) = &u.result {
        q = q.col_expr(instance::Column::Result, Expr::value(result.as_str()));
    }
    if let Some(t) = u.started_at_ms {
        q = q.col_expr(instance::Column::StartedAtMs, Expr::value(t));
    }
    if let Some(t) = u.finished_at_ms {
        q = q.col_expr(instance::Column::FinishedAtMs, Expr::value(t));
    }
    if let Some(tasks) = tasks_json(u) {
        q = q.col_expr(instance::Column::Tasks, Expr::value(tasks));
    }
    if let Some(t) = u.retry_at_ms {
        // Back to WAITING_DISPATCH: no current tracker until the next dispatch.
        q = q
            .col_expr(instance::Column::DueAtMs, Expr::value(t))
            .col_expr(
                instance::Column::WorkerId,
                Expr::value(Option::<String>::None),
            );
    }
    Ok(q.exec(conn).await?.rows_affected == 1)
}
