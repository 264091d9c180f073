//! Which fires of a due job the schedule loop creates: the pure decision behind each pass,
//! misfire policies included. The server reads the job and the clock, calls [`plan`], and
//! writes the result in one compare-and-set transaction.

use crate::job::{JobSpec, MisfirePolicy};
use crate::schedule::{Schedule, ScheduleError};

/// What a pass does with one due job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fires {
    /// The fire times to create instances for, in order.
    pub fires: Vec<i64>,
    /// The job's next fire after them; `None` when it has no more.
    pub next: Option<i64>,
    /// The misfire repair this plan makes, for `server stats`.
    pub repair: Option<&'static str>,
    /// The schedule failed to give a next fire (an unknown time zone, say): the job stops
    /// firing, and the server says why.
    pub error: Option<ScheduleError>,
}

/// How a pass plans: fires up to `horizon_ms` are created ahead of time, at most `max_fires`
/// of one job per pass; a next fire older than `misfire_threshold_ms` before `now_ms` was
/// missed (no server scheduled the app), and the job's misfire policy decides.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    pub now_ms: i64,
    pub horizon_ms: i64,
    pub misfire_threshold_ms: i64,
    pub max_fires: usize,
}

/// A walk over missed fires stops after this many, so that a job down for a year at one fire
/// a second costs a bounded walk.
const MAX_MISSED_WALK: usize = 100_000;

/// The fires of a job whose next fire is `next_ms`; `None` for a job the loop does not fire
/// (API jobs).
pub fn plan(job: &JobSpec, next_ms: i64, w: Window) -> Option<Fires> {
    if matches!(job.schedule, Schedule::Api) {
        return None;
    }
    let mut error = None;
    let mut next_after = |after: i64| match job.schedule.next_fire_after(after, job.lifecycle) {
        Ok(next) => next,
        Err(e) => {
            error = Some(e);
            None
        }
    };
    if job.schedule.is_frequent() {
        // A frequent job runs as one long-lived instance, started once here; reconcile starts
        // another if it ends while the job should still run.
        return Some(Fires {
            fires: vec![next_ms],
            next: None,
            repair: None,
            error: None,
        });
    }
    let (fires, next, repair) = if next_ms < w.now_ms.saturating_sub(w.misfire_threshold_ms) {
        // Missed: every fire keeps its own time, so the unique index holds another server to
        // the same decision; the schedule resumes from now.
        let next = next_after(w.now_ms);
        let (fires, repair) = match job.misfire {
            MisfirePolicy::FireOnce => (vec![next_ms], "misfire_fired_once"),
            MisfirePolicy::Skip => (Vec::new(), "misfire_skipped"),
            MisfirePolicy::CatchUp { max } => {
                let mut missed = Vec::new();
                let mut cursor = Some(next_ms);
                while let Some(t) = cursor.filter(|t| *t <= w.now_ms) {
                    missed.push(t);
                    if missed.len() >= MAX_MISSED_WALK {
                        break;
                    }
                    cursor = next_after(t);
                }
                let keep = missed.len().saturating_sub(max as usize);
                (missed.split_off(keep), "misfire_caught_up")
            }
        };
        (fires, next, Some(repair))
    } else {
        let mut fires = Vec::new();
        let mut cursor = next_ms;
        let next = loop {
            fires.push(cursor);
            match next_after(cursor) {
                Some(n) if n <= w.horizon_ms && fires.len() < w.max_fires => cursor = n,
                other => break other,
            }
        };
        (fires, next, None)
    };
    Some(Fires {
        fires,
        next,
        repair,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// 2026-12-02T00:00:00Z.
    const T0: i64 = 1_796_169_600_000;

    fn every_minute(misfire: MisfirePolicy) -> JobSpec {
        let object = json!({"name": "j", "processor": "shell",
            "schedule": {"type": "cron", "expression": "0 * * * * *"}});
        let mut job = JobSpec::from_object(object.as_object().cloned().unwrap_or_default())
            .expect("a minimal job");
        job.misfire = misfire;
        job
    }

    fn window(now_ms: i64) -> Window {
        Window {
            now_ms,
            horizon_ms: now_ms + 5_000,
            misfire_threshold_ms: 5_000,
            max_fires: 1_000,
        }
    }

    #[test]
    fn a_due_job_fires_up_to_the_horizon() {
        let mut w = window(T0);
        w.horizon_ms = T0 + 150_000;
        let f = plan(&every_minute(MisfirePolicy::FireOnce), T0, w).expect("a cron job fires");
        assert_eq!(f.fires, vec![T0, T0 + 60_000, T0 + 120_000]);
        assert_eq!((f.next, f.repair), (Some(T0 + 180_000), None));
    }

    #[test]
    fn at_most_max_fires_are_created_per_pass() {
        let mut w = window(T0);
        w.horizon_ms = T0 + 3_600_000;
        w.max_fires = 2;
        let f = plan(&every_minute(MisfirePolicy::FireOnce), T0, w).expect("fires");
        assert_eq!(f.fires, vec![T0, T0 + 60_000]);
        assert_eq!(f.next, Some(T0 + 120_000), "the rest comes next pass");
    }

    #[test]
    fn a_late_fire_within_the_threshold_is_not_a_misfire() {
        let f = plan(&every_minute(MisfirePolicy::Skip), T0, window(T0 + 4_999)).expect("fires");
        assert_eq!((f.fires, f.repair), (vec![T0], None));
    }

    #[test]
    fn misfire_policies_decide_what_an_outage_missed() {
        // The server was down from before T0 until ten minutes and a half later.
        let now = T0 + 630_000;
        let once = plan(&every_minute(MisfirePolicy::FireOnce), T0, window(now)).expect("plan");
        assert_eq!(once.fires, vec![T0], "one run for all the missed fires");
        assert_eq!(once.next, Some(T0 + 660_000), "resumes from now");
        assert_eq!(once.repair, Some("misfire_fired_once"));

        let skip = plan(&every_minute(MisfirePolicy::Skip), T0, window(now)).expect("plan");
        assert!(skip.fires.is_empty());
        assert_eq!(
            (skip.next, skip.repair),
            (Some(T0 + 660_000), Some("misfire_skipped"))
        );

        let catch_up = plan(
            &every_minute(MisfirePolicy::CatchUp { max: 3 }),
            T0,
            window(now),
        )
        .expect("plan");
        assert_eq!(
            catch_up.fires,
            vec![T0 + 480_000, T0 + 540_000, T0 + 600_000],
            "the most recent three missed fires, each at its own time"
        );
        assert_eq!(catch_up.repair, Some("misfire_caught_up"));
    }

    #[test]
    fn api_jobs_are_not_planned_and_frequent_jobs_start_once() {
        let mut job = every_minute(MisfirePolicy::FireOnce);
        job.schedule = Schedule::Api;
        assert_eq!(plan(&job, T0, window(T0)), None);
        job.schedule = Schedule::FixedRate { interval_ms: 100 };
        let f = plan(&job, T0, window(T0 + 60_000)).expect("a frequent job starts");
        assert_eq!((f.fires, f.next, f.repair), (vec![T0], None, None));
    }

    #[test]
    fn a_schedule_that_cannot_be_computed_stops_and_says_why() {
        let mut job = every_minute(MisfirePolicy::FireOnce);
        job.schedule = Schedule::Cron {
            expression: "0 * * * * *".into(),
            time_zone: Some("Mars/Olympus".into()),
        };
        let f = plan(&job, T0, window(T0)).expect("planned");
        assert_eq!((f.fires, f.next), (vec![T0], None));
        assert!(f.error.is_some());
    }
}
