//! Dispatch (DESIGN §5): hand a due instance to a live worker.
//!
//! Each attempt is a compare-and-set of the instance to WAITING_WORKER_RECEIVE with the chosen
//! worker and a new attempt number, then a request to the worker. A worker that does not answer
//! or refuses makes room for the next one; the attempt it may still run is fenced off, since
//! reports for an old attempt change nothing.
//!
//! The [`Dispatcher`] is the only part that hands instances to workers: it owns the set of
//! instances being dispatched in this process and the per-job locks of concurrency limits.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rota_shared::admission::{Admission, DispatchFacts, Limit, admit};
use rota_shared::message::{DispatchRequest, Frequent, FrequentMode, WorkerSummary};
use rota_shared::schedule::Schedule;
use rota_shared::{Instance, InstanceStatus, Trigger};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, millis};
use crate::job_cache::JobCache;
use crate::metrics::ServerMetrics;
use crate::ownership::Ownership;
use crate::registry::WorkerRegistry;
use crate::store::{Handover, InstanceGuard, Job, Store, StoreError};
use crate::timer::TimerHandle;
use crate::worker_calls::WorkerCalls;

/// How long a waiting instance sleeps before it looks for a worker again.
const RETRY_DISPATCH_MS: i64 = 1_000;

/// Instances the dispatcher takes from the timer at once.
const BATCH: usize = 512;

/// An instance created already handed to a worker (an API run of a plain job, due now): only
/// the dispatch request is left to send.
pub struct Handed {
    pub inst: Instance,
    pub job: Arc<Job>,
    /// The worker it was handed to first, then the others to try.
    pub candidates: Vec<WorkerSummary>,
}

/// What the dispatcher reads and calls, given by the server.
pub struct DispatcherParts {
    pub server_id: String,
    pub clock: Clock,
    pub store: Store,
    pub jobs: Arc<JobCache>,
    pub ownership: Arc<Ownership>,
    pub workers: Arc<WorkerRegistry>,
    pub timer: TimerHandle,
    pub calls: WorkerCalls,
    /// Records how long dispatches take.
    pub metrics: Arc<ServerMetrics>,
    /// How long before its instant a scheduled fire is handed to its worker.
    pub dispatch_ahead: Duration,
    /// How long a worker has to take a dispatch; written into the request as its deadline.
    pub dispatch_timeout: Duration,
    /// How long an instance may wait for an eligible worker before it fails.
    pub no_worker_timeout: Duration,
}

pub struct Dispatcher {
    parts: DispatcherParts,
    /// Instances a dispatch task is working on now, so that the timer and the waiting scan
    /// never run two dispatches of one instance in this process.
    in_flight: Mutex<HashSet<i64>>,
    /// One lock per job with a concurrency limit: counting a job's live instances and handing
    /// one more to a worker must not interleave with another dispatch of the same job.
    job_slots: Mutex<HashMap<i64, Arc<tokio::sync::Mutex<()>>>>,
}

impl Dispatcher {
    pub fn new(parts: DispatcherParts) -> Arc<Self> {
        Arc::new(Self {
            parts,
            in_flight: Mutex::default(),
            job_slots: Mutex::default(),
        })
    }

    /// Puts an instance due at `due_ms` on the timer, `dispatch_ahead` early: a plain instance
    /// is handed to its worker then and starts at `due_ms`; one that needs care (a concurrency
    /// limit, a frequent job) waits on the timer again until `due_ms`.
    pub fn schedule(&self, instance_id: i64, due_ms: i64) -> bool {
        let ahead = millis(self.parts.dispatch_ahead);
        self.parts
            .timer
            .schedule(instance_id, due_ms.saturating_sub(ahead))
    }

    /// Whether a dispatch of the instance is under way in this process.
    pub fn is_dispatching(&self, id: i64) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&id)
    }

    /// Sends an instance created already handed over (see [`Handed`]) to its worker.
    pub fn send_handed(self: &Arc<Self>, h: Handed) {
        if self.begin(h.inst.id) {
            let attempt = h.inst.attempt;
            self.spawn_send(h, attempt, None);
        }
    }

    /// Marks an instance as being dispatched; `false` if it already is.
    fn begin(&self, id: i64) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id)
    }

    fn end(&self, id: i64) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// The lock that serializes the dispatches of one job.
    fn job_slot(&self, job_id: i64) -> Arc<tokio::sync::Mutex<()>> {
        self.job_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(job_id)
            .or_default()
            .clone()
    }

    fn retry_later(&self, id: i64) {
        let p = &self.parts;
        p.timer.schedule(id, p.clock.now_ms() + RETRY_DISPATCH_MS);
    }

    /// Runs the dispatcher: the instance ids the timer fires are taken in batches, and each
    /// batch hands its plain instances to workers with one compare-and-set statement.
    pub fn start(
        self: &Arc<Self>,
        mut fired: mpsc::UnboundedReceiver<i64>,
        shutdown: CancellationToken,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                // Grown by `recv_many` only when ids arrive.
                let mut ids = Vec::new();
                let got = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    n = fired.recv_many(&mut ids, BATCH) => n,
                };
                if got == 0 {
                    break;
                }
                ids.retain(|id| this.begin(*id));
                if ids.is_empty() {
                    continue;
                }
                let this = this.clone();
                tokio::spawn(async move { this.dispatch_batch(ids).await });
            }
        });
    }

    /// Dispatches a batch of fired instances. Those that need care (a concurrency limit, a
    /// frequent job, a deleted or disabled job, no worker) go one by one through
    /// [`Self::dispatch_one`]; the rest are handed over together. Every id in `ids` has been
    /// marked with `begin`.
    async fn dispatch_batch(self: Arc<Self>, ids: Vec<i64>) {
        let p = &self.parts;
        let (instances, jobs) = match self.read_batch(&ids).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(instances = ids.len(), error = %e, "dispatch failed; will retry");
                for id in ids {
                    self.retry_later(id);
                    self.end(id);
                }
                return;
            }
        };
        let mut seen: HashSet<i64> = HashSet::with_capacity(instances.len());
        let mut plain = Vec::new();
        let now = p.clock.now_ms();
        let ahead = millis(p.dispatch_ahead);
        for inst in instances {
            seen.insert(inst.id);
            let job = jobs.get(&inst.job_id);
            let simple = job.filter(|job| {
                inst.status == InstanceStatus::WaitingDispatch
                    && p.ownership.owns(inst.app_id)
                    && inst.due_at_ms.is_none_or(|due| due <= now + ahead + 5)
                    && (job.spec.enabled || inst.trigger != Trigger::Schedule)
                    && job.spec.max_instances == 0
                    && !job.spec.schedule.is_frequent()
            });
            let candidates = simple.map(|job| p.workers.candidates(job));
            match (simple, candidates) {
                (Some(job), Some(candidates)) if !candidates.is_empty() => {
                    // Counted at once, so that the next instance of the batch sees it.
                    p.workers.note_handed(inst.app_id, &candidates[0].worker_id);
                    plain.push((inst, job.clone(), candidates));
                }
                _ => self.spawn_dispatch_one(inst.id),
            }
        }
        for id in ids.iter().filter(|id| !seen.contains(id)) {
            // Deleted since it was put on the timer: nothing to do.
            self.end(*id);
        }
        if plain.is_empty() {
            return;
        }
        let now = p.clock.now_ms();
        let handovers: Vec<Handover<'_>> = plain
            .iter()
            .map(|(inst, _, candidates)| Handover {
                id: inst.id,
                guard: InstanceGuard::of(inst),
                worker_id: candidates[0].worker_id.as_str(),
                start_at_ms: start_at(inst, now),
            })
            .collect();
        let attempts = match p.store.cas_dispatch_many(&handovers, now).await {
            Ok(attempts) => attempts,
            Err(e) => {
                tracing::warn!(instances = plain.len(), error = %e, "dispatch failed; will retry");
                for (inst, ..) in &plain {
                    self.retry_later(inst.id);
                    self.end(inst.id);
                }
                return;
            }
        };
        drop(handovers);
        for ((inst, job, candidates), attempt) in plain.into_iter().zip(attempts) {
            let Some(attempt) = attempt else {
                // Someone else (an operator's stop, another dispatch) changed it: nothing to do.
                self.end(inst.id);
                continue;
            };
            let start_at_ms = start_at(&inst, p.clock.now_ms());
            self.spawn_send(
                Handed {
                    inst,
                    job,
                    candidates,
                },
                attempt,
                start_at_ms,
            );
        }
    }

    async fn read_batch(
        &self,
        ids: &[i64],
    ) -> Result<(Vec<Instance>, HashMap<i64, Arc<Job>>), StoreError> {
        let instances = self.parts.store.instances_by_ids(ids).await?;
        let job_ids: Vec<i64> = instances.iter().map(|m| m.job_id).collect();
        let jobs = self.parts.jobs.jobs(&job_ids).await?;
        Ok((instances, jobs))
    }

    /// Sends an instance already handed over as `attempt` (see [`Self::hand_over`]) and ends
    /// its dispatch. Should that fail, the instance stays WAITING_WORKER_RECEIVE and reconcile
    /// dispatches it again.
    fn spawn_send(self: &Arc<Self>, h: Handed, attempt: i32, start_at_ms: Option<i64>) {
        let this = self.clone();
        tokio::spawn(async move {
            let id = h.inst.id;
            if let Err(e) = this
                .hand_over(&h.inst, &h.job, h.candidates, attempt, start_at_ms)
                .await
            {
                tracing::warn!(instance = id, error = %e, "dispatch failed");
            }
            this.end(id);
        });
    }

    /// Ends an instance the dispatcher cannot hand over, if it is still as `guard` says.
    async fn finish(
        &self,
        inst: &Instance,
        guard: InstanceGuard,
        status: InstanceStatus,
        reason: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        let p = &self.parts;
        let ended = p
            .store
            .cas_finish(inst.id, Some(guard), status, reason, now)
            .await?;
        if ended {
            p.metrics.finished(inst.app_id, status);
        }
        Ok(ended)
    }

    fn spawn_dispatch_one(self: &Arc<Self>, id: i64) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.dispatch_one(id).await {
                tracing::warn!(instance = id, error = %e, "dispatch failed; will retry");
                this.retry_later(id);
            }
            this.end(id);
        });
    }

    /// Sends an instance, already handed to `candidates[0]` as `attempt`, to that worker; when
    /// it does not take it, tries the other candidates in turn and finally puts the instance
    /// back to wait.
    async fn hand_over(
        &self,
        inst: &Instance,
        job: &Job,
        candidates: Vec<WorkerSummary>,
        attempt: i32,
        start_at_ms: Option<i64>,
    ) -> Result<(), StoreError> {
        let p = &self.parts;
        let mut guard = InstanceGuard {
            status: InstanceStatus::WaitingWorkerReceive,
            attempt,
            last_seq: 0,
        };
        for (i, worker) in candidates.iter().enumerate() {
            if i > 0 {
                p.workers.note_handed(inst.app_id, &worker.worker_id);
                let Some(next) = p
                    .store
                    .cas_dispatch(inst.id, guard, &worker.worker_id, p.clock.now_ms())
                    .await?
                else {
                    return Ok(());
                };
                guard.attempt = next;
            }
            let request = self.dispatch_request(inst, job, guard.attempt, start_at_ms);
            let sent = tokio::time::Instant::now();
            match p.calls.dispatch(&worker.worker_id, &request).await {
                Ok(_) => {
                    p.metrics.dispatched(inst.app_id, sent.elapsed());
                    tracing::debug!(instance = inst.id, attempt = guard.attempt, worker = %worker.worker_id, "dispatched");
                    return Ok(());
                }
                // No worker can ever take it as it is: fail it now rather than try it forever.
                Err(e) if e.kind() == rota_transport::RequestErrorKind::TooLarge => {
                    let size = serde_json::to_vec(&request).map_or(0, |v| v.len());
                    let reason = format!(
                        "the dispatch is {size} bytes, larger than the NATS server's max payload \
                         of {} bytes: make the job's configuration or parameters smaller",
                        p.calls.max_payload()
                    );
                    tracing::warn!(instance = inst.id, "{reason}");
                    let now = p.clock.now_ms();
                    self.finish(inst, guard, InstanceStatus::Failed, &reason, now)
                        .await?;
                    return Ok(());
                }
                Err(e) => {
                    tracing::info!(instance = inst.id, worker = %worker.worker_id, error = %e, "worker did not take the dispatch");
                }
            }
        }
        // Nobody took it: wait a moment and try again.
        let due = p.clock.now_ms() + RETRY_DISPATCH_MS;
        if p.store.cas_requeue(inst.id, guard, due).await? {
            p.timer.schedule(inst.id, due);
        }
        Ok(())
    }

    async fn dispatch_one(&self, id: i64) -> Result<(), StoreError> {
        let p = &self.parts;
        let inst = match p.store.instance(id).await {
            Ok(inst) => inst,
            Err(StoreError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        if inst.status != InstanceStatus::WaitingDispatch || !p.ownership.owns(inst.app_id) {
            return Ok(());
        }
        let now = p.clock.now_ms();
        let guard = InstanceGuard::of(&inst);
        let job = match p.jobs.job(inst.job_id).await {
            Ok(job) => job,
            Err(StoreError::NotFound(_)) => {
                self.finish(
                    &inst,
                    guard,
                    InstanceStatus::Canceled,
                    "job was deleted",
                    now,
                )
                .await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        };

        // Held until the instance is handed over (or not), so that no other dispatch of this
        // job counts the live instances in between.
        let limit = Limit::of(&job.spec);
        let _slot = match limit.counts() {
            false => None,
            true => Some(self.job_slot(job.id).lock_owned().await),
        };
        let live = if limit.counts() {
            // The state may have moved while this task waited for the slot.
            let fresh = p.store.instance(id).await?;
            if InstanceGuard::of(&fresh) != guard {
                return Ok(());
            }
            p.store.count_live(job.id).await?
        } else {
            0
        };
        let candidates = p.workers.candidates(&job);
        let facts = DispatchFacts {
            now_ms: now,
            due_at_ms: inst.due_at_ms,
            created_at_ms: inst.created_at_ms,
            trigger: inst.trigger,
            job: &job.spec,
            live,
            eligible_workers: candidates.len(),
            no_worker_timeout_ms: millis(p.no_worker_timeout),
            recheck_ms: RETRY_DISPATCH_MS,
        };
        match admit(&facts) {
            Admission::Dispatch => {}
            Admission::WaitUntil(at) => {
                p.timer.schedule(id, at);
                return Ok(());
            }
            Admission::Cancel(reason) => {
                self.finish(&inst, guard, InstanceStatus::Canceled, &reason, now)
                    .await?;
                return Ok(());
            }
            Admission::Fail(reason) => {
                self.finish(&inst, guard, InstanceStatus::Failed, &reason, now)
                    .await?;
                return Ok(());
            }
        }

        let Some(first) = candidates.first() else {
            return Ok(());
        };
        p.workers.note_handed(inst.app_id, &first.worker_id);
        let Some(attempt) = p
            .store
            .cas_dispatch(id, guard, &first.worker_id, p.clock.now_ms())
            .await?
        else {
            // Someone else (an operator's stop, another dispatch) changed it: nothing to do.
            return Ok(());
        };
        self.hand_over(
            &inst,
            &job,
            candidates,
            attempt,
            start_at(&inst, p.clock.now_ms()),
        )
        .await
    }

    fn dispatch_request(
        &self,
        inst: &Instance,
        job: &Job,
        attempt: i32,
        start_at_ms: Option<i64>,
    ) -> DispatchRequest {
        let p = &self.parts;
        DispatchRequest {
            server_id: p.server_id.clone(),
            app_id: job.app_id,
            job_id: job.id,
            job_name: job.spec.name.clone(),
            instance_id: inst.id,
            attempt,
            processor: job.spec.processor.clone(),
            config: job.spec.config.clone(),
            job_params: job.spec.params.clone(),
            instance_params: inst.instance_params.clone(),
            timeout_ms: job.spec.timeout_ms,
            expected_trigger_time_ms: inst.expected_trigger_time_ms,
            frequent: match job.spec.schedule {
                Schedule::FixedRate { interval_ms } => Some(Frequent {
                    mode: FrequentMode::FixedRate,
                    interval_ms,
                    lifecycle_end_ms: job.spec.lifecycle.end_ms,
                }),
                Schedule::FixedDelay { interval_ms } => Some(Frequent {
                    mode: FrequentMode::FixedDelay,
                    interval_ms,
                    lifecycle_end_ms: job.spec.lifecycle.end_ms,
                }),
                _ => None,
            },
            deadline_ms: Some(p.clock.now_ms() + millis(p.dispatch_timeout)),
            start_at_ms,
            execution: job.spec.execution.clone(),
            task_retries: job.spec.task_retries,
            container: job.spec.container.clone(),
        }
    }
}

/// When an instance handed over now should start: its due time or its scheduled instant,
/// whichever is later, when that is still ahead (a fire dispatched ahead of its instant), else at
/// once. The instant counts on its own because a dispatch that found no taker puts the instance
/// back due a moment later, which can still be before the instant.
fn start_at(inst: &Instance, now: i64) -> Option<i64> {
    let instant = inst
        .expected_trigger_time_ms
        .filter(|_| inst.trigger == Trigger::Schedule);
    inst.due_at_ms.max(instant).filter(|at| *at > now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fire(due_at_ms: Option<i64>, instant: Option<i64>, trigger: Trigger) -> Instance {
        Instance {
            id: 1,
            job_id: 1,
            app_id: 1,
            status: InstanceStatus::WaitingDispatch,
            trigger,
            expected_trigger_time_ms: instant,
            instance_params: None,
            attempt: 0,
            runs: 0,
            worker_id: None,
            last_seq: 0,
            result: None,
            created_at_ms: 0,
            started_at_ms: None,
            finished_at_ms: None,
            due_at_ms,
            last_report_at_ms: None,
            idempotency_key: None,
            tasks: None,
        }
    }

    #[test]
    fn a_fire_never_starts_before_its_instant() {
        // Handed over ahead: starts at its instant.
        assert_eq!(
            start_at(&fire(Some(10_000), Some(10_000), Trigger::Schedule), 8_500),
            Some(10_000)
        );
        // Put back after a refused dispatch, due again before its instant: still the instant.
        assert_eq!(
            start_at(&fire(Some(9_000), Some(10_000), Trigger::Schedule), 9_000),
            Some(10_000)
        );
        // Due now or past: at once.
        assert_eq!(
            start_at(&fire(Some(10_000), Some(10_000), Trigger::Schedule), 10_000),
            None
        );
        // A retry of a fire long past waits for its retry time only.
        assert_eq!(
            start_at(&fire(Some(20_000), Some(10_000), Trigger::Schedule), 19_000),
            Some(20_000)
        );
        // An API run has no instant; a delayed one starts at its due time.
        assert_eq!(
            start_at(&fire(Some(5_000), None, Trigger::Api), 4_000),
            Some(5_000)
        );
        assert_eq!(start_at(&fire(None, None, Trigger::Api), 4_000), None);
    }
}
