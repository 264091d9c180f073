//! Reconcile (DESIGN §7): repairs, on a fixed delay, what events missed, for the apps this
//! server owns (checked at the start of every iteration). Every repair is counted by reason.
//!
//! | state found | after | repair | reason |
//! |---|---|---|---|
//! | WAITING_DISPATCH, not on the timer | `waiting_overdue` past its due time | dispatch now | `waiting_overdue` |
//! | WAITING_WORKER_RECEIVE | `unacknowledged_timeout` since the dispatch | dispatch again (uses no retry) | `dispatch_unacknowledged` |
//! | RUNNING, worker not live | the owner has owned the app for `worker_timeout` | retry or FAILED "worker lost" | `worker_lost` |
//! | RUNNING | `report_timeout` without a report, while the database was reachable throughout | retry or FAILED | `report_timeout` |
//! | enabled frequent job, no live instance | its lifecycle allows | start one | `frequent_started` |

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rota_shared::InstanceStatus;
use rota_shared::message::AttemptRef;
use rota_shared::repair::{Hearing, RunningFacts, RunningVerdict, Timeouts, classify_running};
use rota_shared::rules::lost_attempt;

use crate::clock::millis;
use crate::core::Core;
use crate::ownership;
use crate::registry::Seen;
use crate::service::{Every, ScheduledService, ServiceError};
use crate::store::{InstanceGuard, Job, NewInstance, StoreError};
use rota_shared::{Instance, Trigger};

/// Instances looked at per check and iteration.
const LIMIT: u64 = 5_000;

pub struct Reconcile {
    pub core: Arc<Core>,
}

impl ScheduledService for Reconcile {
    fn name(&self) -> &'static str {
        "reconcile"
    }

    fn every(&self) -> Every {
        Every::FixedDelay(self.core.config.reconcile_interval)
    }

    async fn run_one_iteration(&mut self) -> Result<(), ServiceError> {
        Ok(reconcile(&self.core).await?)
    }
}

pub async fn reconcile(core: &Core) -> Result<(), StoreError> {
    // Only the apps this server owns, as the database says now.
    ownership::refresh(core).await?;
    let owned = core.ownership.app_ids();
    if owned.is_empty() {
        return Ok(());
    }
    let now = core.clock.now_ms();
    let cfg = &core.config;

    // Waiting instances that nobody is dispatching.
    let overdue = core
        .store
        .waiting_instances(&owned, now - millis(cfg.waiting_overdue), LIMIT)
        .await?;
    let mut requeued = 0;
    for (id, _) in overdue {
        let busy = core.dispatcher.is_dispatching(id);
        if !busy && core.timer.schedule(id, now) {
            requeued += 1;
        }
    }
    core.repairs.count("waiting_overdue", requeued);

    // Dispatches never acknowledged.
    let unacknowledged = core
        .store
        .stale_instances(
            &owned,
            InstanceStatus::WaitingWorkerReceive,
            now - millis(cfg.unacknowledged_timeout),
            LIMIT,
        )
        .await?;
    let n = lose(core, unacknowledged, "dispatch was never acknowledged", now).await?;
    core.repairs.count("dispatch_unacknowledged", n);

    // Running instances whose worker stopped heartbeating, or that report nothing.
    let hearing = Hearing {
        connected_for_ms: millis(core.readiness.connected_for()),
        stored_for_ms: millis(core.readiness.ready_for()),
    };
    let timeouts = Timeouts {
        worker_ms: millis(cfg.worker_timeout),
        report_ms: millis(cfg.report_timeout),
    };
    let running = core
        .store
        .instances_in(&owned, InstanceStatus::Running, LIMIT)
        .await?;
    let mut live: HashMap<i64, Vec<String>> = HashMap::new();
    let mut lost = Vec::new();
    let mut silent = Vec::new();
    for inst in running {
        let workers = live.entry(inst.app_id).or_insert_with(|| {
            core.workers
                .live(Some(inst.app_id))
                .into_iter()
                .map(|w| w.worker_id)
                .collect()
        });
        let facts = RunningFacts {
            owned_for_ms: core.ownership.owned_for(inst.app_id).map(millis),
            worker_live: inst.worker_id.as_ref().is_some_and(|w| workers.contains(w)),
            last_report_at_ms: inst.last_report_at_ms,
        };
        match classify_running(facts, hearing, timeouts, now) {
            RunningVerdict::WorkerLost => lost.push(inst),
            RunningVerdict::Silent => silent.push(inst),
            RunningVerdict::Fine => {}
        }
    }
    let lost = still_lost(core, lost).await;
    let n = lose(core, lost, "worker lost", now).await?;
    core.repairs.count("worker_lost", n);
    let n = lose(core, silent, "no report from the worker", now).await?;
    core.repairs.count("report_timeout", n);

    // Frequent jobs that should run but have no live instance.
    let frequent = core.store.frequent_jobs(&owned).await?;
    let ids: Vec<i64> = frequent.iter().map(|j| j.id).collect();
    let running = core.store.jobs_with_live_instances(&ids).await?;
    let mut started = 0;
    for job in frequent.iter().filter(|j| !running.contains(&j.id)) {
        let in_lifecycle = job.spec.lifecycle.start_ms.is_none_or(|s| s <= now)
            && job.spec.lifecycle.end_ms.is_none_or(|e| now < e);
        if !in_lifecycle || job.next_trigger_time_ms.is_some() {
            // Outside its lifecycle, or the schedule loop is about to start it.
            continue;
        }
        let inst = core
            .store
            .insert_instance(
                NewInstance {
                    job_id: job.id,
                    app_id: job.app_id,
                    trigger: Trigger::Schedule,
                    params: None,
                    due_at_ms: now,
                    handed_to: None,
                    idempotency_key: None,
                },
                now,
            )
            .await?;
        core.timer.schedule(inst.id, now);
        started += 1;
    }
    core.repairs.count("frequent_started", started);
    Ok(())
}

/// Keeps the instances whose worker, asked directly, does not say it runs their attempt. A
/// worker this server does not hear may be alive all the same (it heartbeats to a server that
/// still believes it owns the app); one that is frozen or gone does not answer.
async fn still_lost(core: &Core, candidates: Vec<Instance>) -> Vec<Instance> {
    let timeout = std::time::Duration::from_secs(1);
    let answers = futures::future::join_all(candidates.iter().map(|inst| async move {
        let Some(worker) = &inst.worker_id else {
            return false;
        };
        matches!(
            core.calls.query(inst.app_id, worker, inst.id, timeout).await,
            Ok(runtime) if runtime.attempt == inst.attempt
        )
    }))
    .await;
    candidates
        .into_iter()
        .zip(answers)
        .filter_map(|(inst, alive)| (!alive).then_some(inst))
        .collect()
}

/// Acts on a heartbeat from a worker process this server did not know: a worker started again
/// under the same id (`Seen::Restarted`), or one heard for the first time (`Seen::New`, as after
/// a hand-over). Every attempt the database has running on that worker and the heartbeat does
/// not name is lost at once, and retried by its job's rules, instead of waiting for a report
/// timeout: a restarted process has none of its predecessor's work.
///
/// A restarted worker sends its first heartbeat before it takes any dispatch, so nothing it does
/// not name can be its own. A worker new to this server may have taken a dispatch that its
/// heartbeat, already on its way, could not name: those that changed within the dispatch
/// timeout are left to the next judgement.
pub async fn attempts_not_on_worker(
    core: Arc<Core>,
    app_id: i64,
    worker_id: String,
    named: Vec<AttemptRef>,
    seen: Seen,
) {
    if !core.ownership.owns(app_id) {
        return;
    }
    if seen == Seen::Restarted {
        tracing::info!(worker = %worker_id, "the worker started again");
    }
    let now = core.clock.now_ms();
    let recent = match seen {
        Seen::Restarted => now,
        _ => now - millis(core.config.dispatch_timeout),
    };
    let running = match core
        .store
        .running_on_worker(app_id, &worker_id, LIMIT)
        .await
    {
        Ok(running) => running,
        Err(e) => {
            tracing::warn!(worker = %worker_id, error = %e, "cannot check the worker's attempts");
            return;
        }
    };
    let named: HashSet<AttemptRef> = named.into_iter().collect();
    let lost: Vec<Instance> = running
        .into_iter()
        .filter(|i| {
            !named.contains(&AttemptRef {
                instance_id: i.id,
                attempt: i.attempt,
            }) && i.last_report_at_ms.is_none_or(|at| at <= recent)
        })
        .collect();
    let reason = match seen {
        Seen::Restarted => "the worker started again without it",
        _ => "the worker does not have it",
    };
    match lose(&core, lost, reason, now).await {
        Ok(n) => core.repairs.count("attempt_not_on_worker", n),
        Err(e) => tracing::warn!(worker = %worker_id, error = %e, "cannot end lost attempts"),
    }
}

/// Applies [`lost_attempt`] to each instance with a compare-and-set; returns how many changed.
async fn lose(
    core: &Core,
    instances: Vec<Instance>,
    reason: &str,
    now: i64,
) -> Result<u64, StoreError> {
    if instances.is_empty() {
        return Ok(0);
    }
    let job_ids: Vec<i64> = instances.iter().map(|i| i.job_id).collect();
    let jobs: HashMap<i64, Job> = core
        .store
        .jobs_by_ids(&job_ids)
        .await?
        .into_iter()
        .map(|j| (j.id, j))
        .collect();
    let mut writes = Vec::new();
    for inst in &instances {
        let Some(job) = jobs.get(&inst.job_id) else {
            continue;
        };
        let detail = match &inst.worker_id {
            Some(w) => format!("{reason} (worker {w}, attempt {})", inst.attempt),
            None => reason.to_owned(),
        };
        if let Some(update) = lost_attempt(&inst.rule_state(), &job.rules(), &detail, now) {
            writes.push((inst.id, InstanceGuard::of(inst), update));
        }
    }
    let applied = core.store.apply_updates(&writes, now).await?;
    let mut changed = 0;
    for ((id, _, update), ok) in writes.iter().zip(applied) {
        if !ok {
            continue;
        }
        changed += 1;
        if let Some(at) = update.retry_at_ms {
            core.timer.schedule(*id, at);
        }
        if update.status.is_terminal()
            && let Some(inst) = instances.iter().find(|i| i.id == *id)
        {
            core.metrics.finished(inst.app_id, update.status);
        }
        if update.alert {
            tracing::warn!(
                instance = id,
                result = update.result.as_deref().unwrap_or(""),
                "alert: instance failed"
            );
        }
        // The worker that may still hold the attempt is told to stop, in case it is alive after
        // all (its reports are fenced off either way).
        if let Some((app_id, worker)) = instances
            .iter()
            .find(|i| i.id == *id)
            .and_then(|i| Some((i.app_id, i.worker_id.clone()?)))
        {
            core.calls.publish_stop(app_id, &worker, *id).await;
        }
    }
    Ok(changed)
}

/// Deletes finished instances and their logs older than the retention, in batches.
pub struct CleanUp {
    pub core: Arc<Core>,
}

impl ScheduledService for CleanUp {
    fn name(&self) -> &'static str {
        "clean_up"
    }

    fn every(&self) -> Every {
        Every::FixedDelay(self.core.config.clean_up_interval)
    }

    async fn run_one_iteration(&mut self) -> Result<(), ServiceError> {
        let core = &self.core;
        let cutoff = core.clock.now_ms() - millis(core.config.retention);
        loop {
            let (instances, lines) = core.store.delete_finished_before(cutoff, 1_000).await?;
            core.repairs.count("cleaned_instances", instances);
            core.repairs.count("cleaned_log_lines", lines);
            if instances < 1_000 {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::{Instant, advance};

    use super::*;
    use crate::clock::Clock;
    use crate::ownership::Ownership;

    /// 2026-12-02T00:00:00Z.
    const T0: i64 = 1_796_169_600_000;

    /// Reconcile's judgement of a RUNNING instance on paused time, from the same sources it
    /// reads in a server: the clock, the ownership table's and the connection's tokio instants.
    #[tokio::test(start_paused = true)]
    async fn on_paused_time_lost_workers_and_silent_runs_are_judged_at_their_timeouts() {
        let clock = Clock::following_tokio(T0);
        let ownership = Ownership::default();
        ownership.insert(1, 1);
        let connected_since = Instant::now();
        let timeouts = Timeouts {
            worker_ms: 30_000,
            report_ms: 120_000,
        };
        let last_report = clock.now_ms();
        let judge = |ready_since: Instant, worker_live: bool| {
            let facts = RunningFacts {
                owned_for_ms: ownership.owned_for(1).map(millis),
                worker_live,
                last_report_at_ms: Some(last_report),
            };
            let hearing = Hearing {
                connected_for_ms: millis(connected_since.elapsed()),
                stored_for_ms: millis(ready_since.elapsed()),
            };
            classify_running(facts, hearing, timeouts, clock.now_ms())
        };
        let ready_since = Instant::now();

        // The app was just taken over: a worker not heard yet is not lost before one worker
        // timeout, and is lost from then on.
        advance(Duration::from_millis(29_999)).await;
        assert_eq!(judge(ready_since, false), RunningVerdict::Fine);
        advance(Duration::from_millis(1)).await;
        assert_eq!(judge(ready_since, false), RunningVerdict::WorkerLost);

        // A live worker's run is silent once the report timeout has passed since its last
        // report, not a millisecond before.
        advance(Duration::from_secs(90)).await;
        assert_eq!(judge(ready_since, true), RunningVerdict::Fine);
        advance(Duration::from_millis(1)).await;
        assert_eq!(judge(ready_since, true), RunningVerdict::Silent);

        // The database was away and answers again from now: the silence is judged only after a
        // whole report timeout of answering.
        let ready_again = Instant::now();
        assert_eq!(judge(ready_again, true), RunningVerdict::Fine);
        advance(Duration::from_secs(120)).await;
        assert_eq!(judge(ready_again, true), RunningVerdict::Silent);
        assert_eq!(
            clock.now_ms(),
            T0 + 240_001,
            "four minutes of judging ran on paused time"
        );
    }
}
