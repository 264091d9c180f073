//! The schedule loop (DESIGN §5): take the due jobs of the apps this server owns in batches,
//! create their instances and advance their next fire in one transaction, and put every
//! instance on the timer for its exact fire time. Fires missed while no server scheduled the
//! app are handled by the job's misfire policy.

use std::sync::Arc;

use rota_shared::fires;
use tokio::time::Instant;

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
            core.gate
                .refresh_apps(&core.store, core.clock.now_ms())
                .await?;
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
    let now = core.clock.now_ms();
    let lookahead = crate::clock::millis(core.config.schedule_lookahead);
    let horizon = now + lookahead;

    loop {
        let due = core.store.due_jobs(&owned, horizon, JOBS_PER_PASS).await?;
        let full_batch = due.len() as u64 == JOBS_PER_PASS;
        let mut plans = Vec::with_capacity(due.len());
        let mut misfires = Vec::new();
        for job in &due {
            if let Some((plan, misfire)) = plan(job, now, horizon, core.config.misfire_threshold) {
                plans.push(plan);
                misfires.extend(misfire);
            }
        }
        let created = core.store.fire(&plans, now).await?;
        for inst in created {
            core.dispatcher
                .schedule(inst.id, inst.expected_trigger_time_ms);
        }
        for reason in misfires {
            core.repairs.count(reason, 1);
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
        core.dispatcher.schedule(id, due);
    }
    Ok(())
}

/// The fires of one due job up to `horizon` (decided by [`rota_shared::fires::plan`]), and the
/// misfire repair it made, if any.
fn plan(
    job: &Job,
    now: i64,
    horizon: i64,
    misfire_threshold: std::time::Duration,
) -> Option<(FirePlan, Option<&'static str>)> {
    let old_next = job.next_trigger_time_ms?;
    let window = fires::Window {
        now_ms: now,
        horizon_ms: horizon,
        misfire_threshold_ms: crate::clock::millis(misfire_threshold),
        max_fires: FIRES_PER_JOB,
    };
    let planned = fires::plan(&job.spec, old_next, window)?;
    if let Some(e) = &planned.error {
        tracing::warn!(job = job.id, error = %e, "job's schedule cannot be computed; it stops firing");
    }
    Some((
        FirePlan {
            job_id: job.id,
            app_id: job.app_id,
            old_next,
            new_next: planned.next,
            fires: planned.fires,
        },
        planned.repair,
    ))
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
            .touch_server(&self.core.id, self.core.clock.now_ms())
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
        match self.core.readiness.database_answered(answered) {
            Some(true) => tracing::info!("the database answers again: ready"),
            Some(false) => tracing::warn!("the database does not answer: not ready"),
            None => {}
        }
        if answered {
            Ok(())
        } else {
            Err("the database does not answer".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rota_shared::admin::{JobSpec, MisfirePolicy};
    use rota_shared::schedule::Schedule;

    use super::*;
    use crate::clock::{Clock, millis};

    /// 2026-12-02T00:00:00Z.
    const T0: i64 = 1_796_169_600_000;

    /// The schedule loop's planning on paused time, pass by pass at the default interval: while
    /// the server runs, every fire is created once, ahead of its time; after a ten-minute outage
    /// the job's misfire policy decides what runs, and the schedule resumes from now.
    #[tokio::test(start_paused = true)]
    async fn on_paused_time_fires_are_made_once_and_an_outage_is_caught_up_by_policy() {
        let clock = Clock::following_tokio(T0);
        let interval = Duration::from_millis(500);
        let lookahead = Duration::from_secs(5);
        let threshold = Duration::from_secs(5);
        let object = serde_json::json!({"name": "j", "processor": "shell",
            "schedule": {"type": "cron", "expression": "*/10 * * * * *"}});
        let mut spec =
            JobSpec::from_object(object.as_object().cloned().unwrap_or_default()).expect("a job");
        spec.misfire = MisfirePolicy::CatchUp { max: 2 };
        assert!(matches!(spec.schedule, Schedule::Cron { .. }));
        let mut job = Job::new(spec, 1, T0);
        job.id = 1;
        job.next_trigger_time_ms = Some(T0 + 10_000);

        let mut created = Vec::new();
        let mut repairs = Vec::new();
        // One pass: the job is due when its next fire is within the lookahead.
        let pass = |job: &mut Job, created: &mut Vec<i64>, repairs: &mut Vec<&str>| {
            let now = clock.now_ms();
            let horizon = now + millis(lookahead);
            if job.next_trigger_time_ms.is_none_or(|next| next > horizon) {
                return;
            }
            let (fired, repair) = plan(job, now, horizon, threshold).expect("a cron job fires");
            created.extend(fired.fires);
            repairs.extend(repair);
            job.next_trigger_time_ms = fired.new_next;
        };

        for _ in 0..120 {
            pass(&mut job, &mut created, &mut repairs);
            tokio::time::advance(interval).await;
        }
        assert_eq!(
            created,
            (1..=6).map(|i| T0 + i * 10_000).collect::<Vec<_>>(),
            "one instance per fire in the first minute, none twice"
        );
        assert!(repairs.is_empty(), "{repairs:?}");

        created.clear();
        tokio::time::advance(Duration::from_secs(600)).await;
        pass(&mut job, &mut created, &mut repairs);
        assert_eq!(clock.now_ms(), T0 + 660_000);
        assert_eq!(
            created,
            vec![T0 + 650_000, T0 + 660_000],
            "the two most recent missed fires"
        );
        assert_eq!(repairs, vec!["misfire_caught_up"]);
        assert_eq!(
            job.next_trigger_time_ms,
            Some(T0 + 670_000),
            "resumes from now"
        );
    }
}
