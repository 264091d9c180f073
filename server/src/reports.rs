//! Applying workers' status reports (DESIGN §4), in batches.
//!
//! Reports arrive alone (`status`, progress reports) or in a worker's batch (`reports`, terminal
//! reports), are decoded and queued to a writer (one per instance). A writer takes them in
//! batches, reads the instances they name in one query, decides each with the pure
//! [`apply_report`], writes all changes in one statement (each a compare-and-set on the state it
//! was decided from) and only then answers. A report whose compare-and-set lost a race is
//! decided again on fresh state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use rota_shared::Reply;
use rota_shared::message::{ReportAck, ReportAction, StatusBatchAck, StatusReport};
use rota_shared::rules::{JobRules, Outcome, Update, apply_report};
use rota_shared::{ErrorBody, ErrorCode, InstanceStatus, Trigger};
use rota_transport::{Incoming, Key};
use tokio::sync::mpsc;

use crate::core::Core;
use crate::store::{InstanceGuard, Job, StoreError};
use rota_shared::Instance;

/// Reports taken in one batch.
const BATCH: usize = 256;
/// Rounds a report is decided again after losing a compare-and-set.
const RETRIES: usize = 3;

pub struct Pending {
    pub report: StatusReport,
    /// The app of the worker that sent it (the gate verified it): a report about an instance of
    /// another app is about an instance the sender cannot have.
    pub app_id: i64,
    pub reply: ReplyTo,
}

/// Where a report's answer goes.
pub enum ReplyTo {
    /// A report sent on its own: answered on its message's reply subject, if it has one, sealed
    /// with the worker's key.
    Message(Incoming, Key),
    /// One report of a batch: its answer takes its place among the batch's answers.
    Batch {
        batch: Arc<BatchReply>,
        index: usize,
    },
}

/// The answers of a [`StatusReportBatch`], sent once every report of it has one.
pub struct BatchReply {
    msg: Incoming,
    key: Key,
    results: Mutex<Vec<Option<Reply<ReportAck>>>>,
    remaining: AtomicUsize,
}

impl BatchReply {
    pub fn new(msg: Incoming, reports: usize, key: Key) -> Arc<Self> {
        Arc::new(Self {
            msg,
            key,
            results: Mutex::new(vec![None; reports]),
            remaining: AtomicUsize::new(reports),
        })
    }
}

/// Answers one report, alone or as part of its batch. A published progress report has no
/// reply subject to carry "stop", so its worker is told directly.
pub async fn answer(core: &Core, pending: &Pending, result: Result<ReportAck, ErrorBody>) {
    match &pending.reply {
        ReplyTo::Message(msg, key) if msg.message().reply.is_some() => {
            core.transport.respond(msg, result, Some(key)).await
        }
        ReplyTo::Message(..) => {
            if let Ok(ReportAck {
                action: ReportAction::Stop,
            }) = result
            {
                let r = &pending.report;
                core.calls
                    .publish_stop(pending.app_id, &r.worker_id, r.instance_id)
                    .await;
            }
        }
        ReplyTo::Batch { batch, index } => {
            let reply = match result {
                Ok(ack) => Reply::ok(ack),
                Err(e) => Reply::err(e),
            };
            if let Some(slot) = batch
                .results
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(*index)
            {
                *slot = Some(reply);
            }
            if batch.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                let results =
                    std::mem::take(&mut *batch.results.lock().unwrap_or_else(|e| e.into_inner()))
                        .into_iter()
                        .map(|r| {
                            r.unwrap_or_else(|| {
                                Reply::err(ErrorBody::internal("report not answered"))
                            })
                        })
                        .collect();
                let ack = Ok(StatusBatchAck { results });
                core.transport
                    .respond(&batch.msg, ack, Some(&batch.key))
                    .await;
            }
        }
    }
}

/// Where the server's subscription hands decoded reports.
#[derive(Clone)]
pub struct ReportQueue {
    shards: Vec<mpsc::Sender<Pending>>,
}

/// What became of a report handed to the queue.
pub enum Queued {
    Accepted,
    /// Its writer is behind: the report is handed back to be refused, so that the subscription
    /// never waits (heartbeats share it) and the worker sends the report again later.
    Full(Box<Pending>),
    /// The writers have stopped: the server is shutting down.
    Closed,
}

impl ReportQueue {
    pub fn push(&self, pending: Pending) -> Queued {
        let shard = pending.report.instance_id.unsigned_abs() as usize % self.shards.len();
        match self.shards[shard].try_send(pending) {
            Ok(()) => Queued::Accepted,
            Err(mpsc::error::TrySendError::Full(pending)) => Queued::Full(Box::new(pending)),
            Err(mpsc::error::TrySendError::Closed(_)) => Queued::Closed,
        }
    }
}

pub fn start(core: Arc<Core>) -> ReportQueue {
    // Report writers working side by side where the database allows. Each instance's reports
    // always go to the same one, so they are applied in the order they arrived.
    let shards = (0..core.store.parallel_writers())
        .map(|_| {
            let (tx, mut rx) = mpsc::channel::<Pending>(4 * BATCH);
            let core = core.clone();
            tokio::spawn(async move {
                let mut batch = Vec::with_capacity(BATCH);
                loop {
                    batch.clear();
                    let got = tokio::select! {
                        _ = core.shutdown.cancelled() => break,
                        n = rx.recv_many(&mut batch, BATCH) => n,
                    };
                    if got == 0 {
                        break;
                    }
                    apply_batch(&core, &mut batch).await;
                }
            });
            tx
        })
        .collect();
    ReportQueue { shards }
}

/// The rules of a job; an instance whose job is gone is treated as a plain job without retries.
fn rules_of(job: Option<&Job>) -> JobRules {
    job.map_or(
        JobRules {
            frequent: false,
            max_retries: 0,
            retry_delay_ms: 0,
            lifecycle_end_ms: None,
        },
        Job::rules,
    )
}

/// What one report came to: the answer to send back.
type Verdict = Result<ReportAck, ErrorBody>;

async fn apply_batch(core: &Core, batch: &mut [Pending]) {
    let verdicts = match decide_and_write(core, batch).await {
        Ok(v) => v,
        Err(e) => {
            // The code tells the workers whether to send them again: for as long as it takes
            // while the database is away; otherwise a few times (INTERNAL), since the batch
            // failed as a whole and each report may fare better in another batch.
            let code = match e.code() {
                ErrorCode::Unavailable => ErrorCode::Unavailable,
                _ => ErrorCode::Internal,
            };
            tracing::warn!(error = %e, %code, "could not apply status reports");
            let err = ErrorBody::new(code, format!("reports not stored: {e}"));
            batch.iter().map(|_| Err(err.clone())).collect()
        }
    };
    for (pending, verdict) in batch.iter().zip(verdicts) {
        answer(core, pending, verdict).await;
    }
}

async fn decide_and_write(core: &Core, batch: &[Pending]) -> Result<Vec<Verdict>, StoreError> {
    let ids: Vec<i64> = batch.iter().map(|p| p.report.instance_id).collect();
    let mut instances: HashMap<i64, Instance> = core
        .store
        .instances_by_ids(&ids)
        .await?
        .into_iter()
        .map(|m| (m.id, m))
        .collect();
    let job_ids: Vec<i64> = instances.values().map(|m| m.job_id).collect();
    let jobs = core.jobs.jobs(&job_ids).await?;

    let now = core.clock.now_ms();
    let mut verdicts = Vec::with_capacity(batch.len());
    // One write per instance: several reports of an instance in one batch (a fast job's
    // RUNNING and SUCCEEDED) merge into one change, guarded by the state the batch started from.
    let mut writes: Vec<(i64, InstanceGuard, Update)> = Vec::new();
    let mut write_of: HashMap<i64, usize> = HashMap::new();
    // The reports behind each write, so that a lost race can be decided again.
    let mut written_by: Vec<Vec<usize>> = Vec::new();
    // How late each write's scheduled fire started, when this write records its start.
    let mut late_by: Vec<Option<i64>> = Vec::new();
    for (i, pending) in batch.iter().enumerate() {
        let report = &pending.report;
        // An instance of another app is, to this sender, an instance that does not exist.
        let current = instances
            .get(&report.instance_id)
            .filter(|m| m.app_id == pending.app_id);
        if let Some(m) = current.filter(|m| !core.ownership.owns(m.app_id)) {
            core.metrics.report_refused("not_owner");
            verdicts.push(Err(ErrorBody::new(
                ErrorCode::NotOwner,
                format!("server {} does not own app {}", core.id, m.app_id),
            )));
            continue;
        }
        let job = current.and_then(|m| jobs.get(&m.job_id)).map(AsRef::as_ref);
        let outcome = apply_report(
            current.map(Instance::rule_state).as_ref(),
            &rules_of(job),
            report,
            now,
        );
        match outcome {
            Outcome::Ignored { why, action } => {
                core.metrics.report_refused(why.as_str());
                tracing::debug!(
                    instance = report.instance_id,
                    reason = why.as_str(),
                    "report changed nothing"
                );
                verdicts.push(Ok(ReportAck { action }));
            }
            Outcome::Applied { update, action } => {
                let Some(m) = instances.get_mut(&report.instance_id) else {
                    verdicts.push(Ok(ReportAck { action }));
                    continue;
                };
                let late = start_lateness(m, report);
                match write_of.get(&m.id) {
                    Some(&k) => {
                        let merged = writes[k].2.clone().then(update.clone());
                        writes[k].2 = merged;
                        written_by[k].push(i);
                        late_by[k] = late_by[k].or(late);
                    }
                    None => {
                        write_of.insert(m.id, writes.len());
                        writes.push((m.id, InstanceGuard::of(m), update.clone()));
                        written_by.push(vec![i]);
                        late_by.push(late);
                    }
                }
                // Later reports in this batch see the state this one leaves.
                m.status = update.status;
                m.last_seq = update.last_seq;
                m.runs = update.runs;
                if update.retry_at_ms.is_some() {
                    m.worker_id = None;
                }
                verdicts.push(Ok(ReportAck { action }));
            }
        }
    }

    let applied = core.store.apply_updates(&writes, now).await?;
    let mut lost = Vec::new();
    for (((id, _, update), (ok, reports)), late) in writes
        .iter()
        .zip(applied.into_iter().zip(written_by))
        .zip(late_by)
    {
        if ok {
            let Some(m) = instances.get(id) else {
                continue;
            };
            let job = jobs.get(&m.job_id);
            after_update(core, m.app_id, *id, update, job.map(AsRef::as_ref), late);
        } else {
            lost.extend(reports);
        }
    }
    lost.sort_unstable();
    for i in lost {
        verdicts[i] = decide_alone(core, &batch[i]).await?;
    }
    Ok(verdicts)
}

/// Decides one report on fresh state, for a report whose batched write lost a race.
async fn decide_alone(core: &Core, pending: &Pending) -> Result<Verdict, StoreError> {
    let report = &pending.report;
    for _ in 0..RETRIES {
        let current = match core.store.instance(report.instance_id).await {
            Ok(m) if m.app_id == pending.app_id => Some(m),
            Ok(_) => None,
            Err(StoreError::NotFound(_)) => None,
            Err(e) => return Err(e),
        };
        let job = match &current {
            Some(m) => core.jobs.jobs(&[m.job_id]).await?.remove(&m.job_id),
            None => None,
        };
        let now = core.clock.now_ms();
        let outcome = apply_report(
            current.as_ref().map(Instance::rule_state).as_ref(),
            &rules_of(job.as_deref()),
            report,
            now,
        );
        let (Outcome::Applied { update, action }, Some(m)) = (&outcome, &current) else {
            return Ok(Ok(ReportAck {
                action: outcome.action(),
            }));
        };
        let write = [(m.id, InstanceGuard::of(m), update.clone())];
        if core.store.apply_updates(&write, now).await?.first() == Some(&true) {
            let late = start_lateness(m, report);
            after_update(core, m.app_id, m.id, update, job.as_deref(), late);
            return Ok(Ok(ReportAck { action: *action }));
        }
    }
    Ok(Err(ErrorBody::new(
        ErrorCode::Conflict,
        "the instance kept changing; send the report again",
    )))
}

/// How late a scheduled fire started, if `report` is the first to say it started: from its
/// instant to the processor's start on the worker's clock.
fn start_lateness(m: &Instance, report: &StatusReport) -> Option<i64> {
    if m.status != InstanceStatus::WaitingWorkerReceive || m.trigger != Trigger::Schedule {
        return None;
    }
    Some(report.started_at_ms? - m.expected_trigger_time_ms?)
}

/// What follows a stored change: a retry goes on the timer, a final failure raises an alert,
/// and the metrics count it.
fn after_update(
    core: &Core,
    app_id: i64,
    id: i64,
    update: &rota_shared::rules::Update,
    job: Option<&Job>,
    late_ms: Option<i64>,
) {
    core.metrics.report_applied(app_id, update.status);
    if let Some(late) = late_ms {
        core.metrics.started_late(app_id, late);
    }
    if let Some(at) = update.retry_at_ms {
        core.dispatcher.schedule(id, at);
    }
    if update.alert {
        tracing::warn!(
            instance = id,
            job = job.map(|j| j.spec.name.as_str()).unwrap_or("?"),
            status = %update.status,
            result = update.result.as_deref().unwrap_or(""),
            "alert: instance needs attention"
        );
    }
}
