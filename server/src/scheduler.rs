//! The schedule loop (DESIGN §5): take the due jobs of the apps this server owns in batches,
//! create their instances and advance their next fire in one transaction, and put every
//! instance on the timer for its exact fire time.

use std::sync::Arc;

use rota_shared::schedule::Schedule;

use crate::clock::now_ms;
use crate::core::Core;
use crate::ownership;
use crate::store::{FirePlan, Job, StoreError};

/// Jobs taken in one pass.
const JOBS_PER_PASS: u64 = 500;
/// Fires of one job created in one pass, at most.
const FIRES_PER_JOB: usize = 1_000;
/// Waiting instances put on the timer in one pass, at most.
const WAITING_PER_PASS: u64 = 5_000;

pub fn start(core: Arc<Core>) {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(core.config.schedule_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refreshed: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                _ = core.shutdown.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if refreshed.is_none_or(|t| t.elapsed() >= core.config.ownership_refresh) {
                match ownership::refresh(&core).await {
                    Ok(()) => refreshed = Some(tokio::time::Instant::now()),
                    Err(e) => tracing::warn!(error = %e, "could not re-read ownerships"),
                }
            }
            if let Err(e) = pass(&core).await {
                tracing::warn!(error = %e, "schedule pass failed; the next one will retry");
            }
        }
    });
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
        let plans: Vec<FirePlan> = due
            .iter()
            .filter_map(|job| plan(core, job, now, horizon))
            .collect();
        let created = core.store.fire(&plans, now).await?;
        for inst in created {
            core.timer.schedule(inst.id, inst.expected_trigger_time_ms);
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
        core.timer.schedule(id, due);
    }
    Ok(())
}

/// The fires of one due job up to `horizon`, and its next fire after them.
fn plan(core: &Core, job: &Job, now: i64, horizon: i64) -> Option<FirePlan> {
    let old_next = job.next_trigger_time_ms?;
    if job.schedule.is_frequent() || matches!(job.schedule, Schedule::Api) {
        return None;
    }
    let misfire = i64::try_from(core.config.misfire_threshold.as_millis()).unwrap_or(0);
    let mut fires = Vec::new();
    let mut cursor = old_next;
    let next = if old_next < now - misfire {
        // Missed while no server scheduled the app: fire once now (under the first missed fire
        // time, which keeps it unique), then resume from the present.
        fires.push(old_next);
        next_after(job, now)
    } else {
        loop {
            fires.push(cursor);
            match next_after(job, cursor) {
                Some(n) if n <= horizon && fires.len() < FIRES_PER_JOB => cursor = n,
                other => break other,
            }
        }
    };
    Some(FirePlan {
        job_id: job.id,
        app_id: job.app_id,
        old_next,
        new_next: next,
        fires,
    })
}

fn next_after(job: &Job, after: i64) -> Option<i64> {
    match job.schedule.next_fire_after(after, job.lifecycle) {
        Ok(next) => next,
        Err(e) => {
            tracing::warn!(job = job.id, error = %e, "job's schedule cannot be computed; it stops firing");
            None
        }
    }
}
