//! The schedule loop (DESIGN §5): take the due jobs of the apps this server owns in batches,
//! create their instances and advance their next fire in one transaction, and put every
//! instance on the timer for its exact fire time. Fires missed while no server scheduled the
//! app are handled by the job's misfire policy.

use std::sync::Arc;

use rota_shared::admin::MisfirePolicy;
use rota_shared::schedule::Schedule;
use tokio::time::Instant;

use crate::clock::now_ms;
use crate::core::Core;
use crate::ownership;
use crate::service::{Every, ScheduledService, ServiceError};
use crate::store::{FirePlan, Job, StoreError};

/// Jobs taken in one pass.
const JOBS_PER_PASS: u64 = 500;
/// Fires of one job created in one pass, at most.
const FIRES_PER_JOB: usize = 1_000;
/// Waiting instances put on the timer in one pass, at most.
const WAITING_PER_PASS: u64 = 5_000;

pub struct ScheduleLoop {
    pub core: Arc<Core>,
    pub refreshed: Option<Instant>,
}

impl ScheduledService for ScheduleLoop {
    fn name(&self) -> &'static str {
        "schedule"
    }

    fn every(&self) -> Every {
        Every::FixedRate(self.core.config.schedule_interval)
    }

    async fn run_one_iteration(&mut self) -> Result<(), ServiceError> {
        let core = &self.core;
        if self
            .refreshed
            .is_none_or(|t| t.elapsed() >= core.config.ownership_refresh)
        {
            ownership::refresh(core).await?;
            core.gate.refresh_apps(&core.store, now_ms()).await?;
            self.refreshed = Some(Instant::now());
        }
        Ok(pass(core).await?)
    }
}

/// One pass of the loop.
pub async fn pass(core: &Core) -> Result<(), StoreError> {
    let owned = core.ownership.app_ids();
    if owned.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let lookahead = i64::try_from(core.config.schedule_lookahead.as_millis()).unwrap_or(0);
    let horizon = now + lookahead;

    loop {
        let due = core.store.due_jobs(&owned, horizon, JOBS_PER_PASS).await?;
        let full_batch = due.len() as u64 == JOBS_PER_PASS;
        let mut plans = Vec::with_capacity(due.len());
        let mut misfires = Vec::new();
        for job in &due {
            if let Some((plan, misfire)) = plan(core, job, now, horizon) {
                plans.push(plan);
                misfires.extend(misfire);
            }
        }
        let created = core.store.fire(&plans, now).await?;
        for inst in created {
            core.schedule_dispatch(inst.id, inst.expected_trigger_time_ms);
        }
        for reason in misfires {
            core.repaired(reason, 1);
        }
        if !full_batch {
            break;
        }
    }

    // Instances waiting for a dispatch (API runs, retries, those left by a restart) go on the
    // timer too; the timer ignores those it already holds.
    for (id, due) in core
        .store
        .waiting_instances(&owned, horizon, WAITING_PER_PASS)
        .await?
    {
        core.schedule_dispatch(id, due);
    }
    Ok(())
}

/// The fires of one due job up to `horizon`, its next fire after them, and the misfire repair
/// it made, if any.
fn plan(
    core: &Core,
    job: &Job,
    now: i64,
    horizon: i64,
) -> Option<(FirePlan, Option<&'static str>)> {
    let old_next = job.next_trigger_time_ms?;
    if matches!(job.spec.schedule, Schedule::Api) {
        return None;
    }
    let base = FirePlan {
        job_id: job.id,
        app_id: job.app_id,
        old_next,
        new_next: None,
        fires: Vec::new(),
    };
    if job.spec.schedule.is_frequent() {
        // A frequent job runs as one long-lived instance, started once here; reconcile starts
        // another if it ends while the job should still run.
        return Some((
            FirePlan {
                fires: vec![old_next],
                ..base
            },
            None,
        ));
    }
    let misfire_threshold = i64::try_from(core.config.misfire_threshold.as_millis()).unwrap_or(0);
    if old_next < now - misfire_threshold {
        return Some(misfire(job, base, now));
    }
    let mut fires = Vec::new();
    let mut cursor = old_next;
    let next = loop {
        fires.push(cursor);
        match next_after(job, cursor) {
            Some(n) if n <= horizon && fires.len() < FIRES_PER_JOB => cursor = n,
            other => break other,
        }
    };
    Some((
        FirePlan {
            new_next: next,
            fires,
            ..base
        },
        None,
    ))
}

/// Fires missed while no server scheduled the app: the job's misfire policy decides which run,
/// and the schedule resumes from now. Every missed fire keeps its own fire time, so the unique
/// index still holds another server to the same decision.
fn misfire(job: &Job, base: FirePlan, now: i64) -> (FirePlan, Option<&'static str>) {
    let next = next_after(job, now);
    let (fires, reason) = match job.spec.misfire {
        MisfirePolicy::FireOnce => (vec![base.old_next], "misfire_fired_once"),
        MisfirePolicy::Skip => (Vec::new(), "misfire_skipped"),
        MisfirePolicy::CatchUp { max } => {
            // The most recent `max` missed fires, found by walking from the first one (bounded,
            // so a job down for a year at one fire a second costs a bounded walk).
            let mut missed = Vec::new();
            let mut cursor = Some(base.old_next);
            let mut steps = 0;
            while let Some(t) = cursor.filter(|t| *t <= now) {
                missed.push(t);
                steps += 1;
                if steps >= 100_000 {
                    break;
                }
                cursor = next_after(job, t);
            }
            let keep = missed.len().saturating_sub(max as usize);
            (missed.split_off(keep), "misfire_caught_up")
        }
    };
    (
        FirePlan {
            new_next: next,
            fires,
            ..base
        },
        Some(reason),
    )
}

fn next_after(job: &Job, after: i64) -> Option<i64> {
    match job.spec.schedule.next_fire_after(after, job.spec.lifecycle) {
        Ok(next) => next,
        Err(e) => {
            tracing::warn!(job = job.id, error = %e, "job's schedule cannot be computed; it stops firing");
            None
        }
    }
}

/// Keeps this server's row in the server registry fresh.
pub struct Presence {
    pub core: Arc<Core>,
}

impl ScheduledService for Presence {
    fn name(&self) -> &'static str {
        "presence"
    }

    fn every(&self) -> Every {
        Every::FixedRate(self.core.config.presence_interval)
    }

    async fn run_one_iteration(&mut self) -> Result<(), ServiceError> {
        Ok(self
            .core
            .store
            .touch_server(&self.core.id, now_ms())
            .await?)
    }
}

/// Checks that the database answers: the server's readiness.
pub struct Health {
    pub core: Arc<Core>,
}

impl ScheduledService for Health {
    fn name(&self) -> &'static str {
        "health"
    }

    fn every(&self) -> Every {
        Every::FixedRate(self.core.config.health_interval)
    }

    async fn run_one_iteration(&mut self) -> Result<(), ServiceError> {
        let answered = matches!(
            tokio::time::timeout(self.core.config.health_interval * 2, self.core.store.ping())
                .await,
            Ok(Ok(()))
        );
        let was = self
            .core
            .ready
            .swap(answered, std::sync::atomic::Ordering::Relaxed);
        if was != answered {
            if answered {
                *self
                    .core
                    .ready_since
                    .lock()
                    .unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
                tracing::info!("the database answers again: ready");
            } else {
                tracing::warn!("the database does not answer: not ready");
            }
        }
        if answered {
            Ok(())
        } else {
            Err("the database does not answer".into())
        }
    }
}
