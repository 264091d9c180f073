//! Whether a waiting instance is handed to a worker now: the pure decision behind each
//! dispatch. The server gathers the facts (the job, its live instances counted under the job's
//! slot, the eligible workers) and acts on the verdict.

use crate::instance::Trigger;
use crate::job::{JobSpec, OverlapPolicy};

/// How many instances of a job may be live at once, and what happens to one more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    /// `0`: no limit.
    pub max_instances: u32,
    pub overlap: OverlapPolicy,
}

impl Limit {
    /// The job's limit. A frequent job runs as one long-lived instance: a second one is skipped.
    pub fn of(job: &JobSpec) -> Self {
        if job.schedule.is_frequent() {
            Self {
                max_instances: 1,
                overlap: OverlapPolicy::Skip,
            }
        } else {
            Self {
                max_instances: job.max_instances,
                overlap: job.overlap,
            }
        }
    }

    /// Whether live instances must be counted (under the job's slot) before a dispatch.
    pub fn counts(self) -> bool {
        self.max_instances > 0
    }
}

/// One waiting instance and its surroundings.
#[derive(Debug, Clone, Copy)]
pub struct DispatchFacts<'a> {
    pub now_ms: i64,
    pub due_at_ms: Option<i64>,
    pub created_at_ms: i64,
    pub trigger: Trigger,
    pub job: &'a JobSpec,
    /// The job's live instances, when its limit [counts](Limit::counts) them.
    pub live: u64,
    /// Live workers that may run the job.
    pub eligible_workers: usize,
    /// An instance no worker could take for this long fails.
    pub no_worker_timeout_ms: i64,
    /// How soon to look again at an instance that must wait.
    pub recheck_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Hand it to a worker.
    Dispatch,
    /// Not now: look again at this time.
    WaitUntil(i64),
    /// End it CANCELED with this reason.
    Cancel(String),
    /// End it FAILED with this reason.
    Fail(String),
}

/// A timer entry may fire this early (its due time is rounded by the timer wheel) and still
/// count as due.
const EARLY_SLACK_MS: i64 = 5;

/// Decides about one waiting instance.
pub fn admit(f: &DispatchFacts<'_>) -> Admission {
    if let Some(due) = f.due_at_ms.filter(|due| *due > f.now_ms + EARLY_SLACK_MS) {
        // Fired early (a stale timer entry after a requeue): wait for the real time.
        return Admission::WaitUntil(due);
    }
    // Fires are created ahead of time; one of a job disabled since then does not run. Runs
    // asked for by hand (API, retry) still do.
    if !f.job.enabled && f.trigger == Trigger::Schedule {
        return Admission::Cancel("job was disabled".to_owned());
    }
    let limit = Limit::of(f.job);
    if limit.counts() && f.live >= u64::from(limit.max_instances) {
        return match limit.overlap {
            OverlapPolicy::Skip => Admission::Cancel(format!(
                "skipped: {} instance(s) of the job already run (max_instances {})",
                f.live, limit.max_instances
            )),
            OverlapPolicy::Queue => Admission::WaitUntil(f.now_ms + f.recheck_ms),
        };
    }
    if f.eligible_workers == 0 {
        let waiting_since = f.due_at_ms.unwrap_or(f.created_at_ms);
        if f.now_ms.saturating_sub(waiting_since) > f.no_worker_timeout_ms {
            return Admission::Fail(format!(
                "no live worker could run it for {} s (processor {:?}, tags {:?})",
                f.no_worker_timeout_ms / 1000,
                f.job.processor,
                f.job.tags
            ));
        }
        return Admission::WaitUntil(f.now_ms + f.recheck_ms);
    }
    Admission::Dispatch
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::Schedule;
    use serde_json::json;

    const NOW: i64 = 1_796_169_600_000;

    fn job() -> JobSpec {
        let object = json!({"name": "j", "processor": "etl", "tags": ["gpu"],
                            "schedule": {"type": "cron", "expression": "0 * * * * *"}});
        JobSpec::from_object(object.as_object().cloned().unwrap_or_default()).expect("a job")
    }

    fn facts(job: &JobSpec) -> DispatchFacts<'_> {
        DispatchFacts {
            now_ms: NOW,
            due_at_ms: Some(NOW),
            created_at_ms: NOW - 5_000,
            trigger: Trigger::Schedule,
            job,
            live: 0,
            eligible_workers: 2,
            no_worker_timeout_ms: 60_000,
            recheck_ms: 1_000,
        }
    }

    #[test]
    fn a_due_instance_with_a_worker_is_dispatched() {
        let j = job();
        assert_eq!(admit(&facts(&j)), Admission::Dispatch);
        let slightly_early = DispatchFacts {
            due_at_ms: Some(NOW + 5),
            ..facts(&j)
        };
        assert_eq!(admit(&slightly_early), Admission::Dispatch);
    }

    #[test]
    fn an_early_instance_waits_for_its_time() {
        let j = job();
        let early = DispatchFacts {
            due_at_ms: Some(NOW + 6),
            ..facts(&j)
        };
        assert_eq!(admit(&early), Admission::WaitUntil(NOW + 6));
    }

    #[test]
    fn a_disabled_job_cancels_its_fires_but_runs_what_was_asked_for() {
        let mut j = job();
        j.enabled = false;
        assert_eq!(
            admit(&facts(&j)),
            Admission::Cancel("job was disabled".into())
        );
        for trigger in [Trigger::Api, Trigger::Retry] {
            let asked = DispatchFacts {
                trigger,
                ..facts(&j)
            };
            assert_eq!(admit(&asked), Admission::Dispatch, "{trigger:?}");
        }
    }

    #[test]
    fn at_the_limit_an_instance_is_skipped_or_queued() {
        let mut j = job();
        j.max_instances = 2;
        fn full(j: &JobSpec) -> DispatchFacts<'_> {
            DispatchFacts {
                live: 2,
                ..facts(j)
            }
        }
        assert!(matches!(admit(&full(&j)), Admission::Cancel(r) if r.contains("max_instances 2")));
        j.overlap = OverlapPolicy::Queue;
        assert_eq!(admit(&full(&j)), Admission::WaitUntil(NOW + 1_000));
        let room = DispatchFacts {
            live: 1,
            ..facts(&j)
        };
        assert_eq!(admit(&room), Admission::Dispatch);
    }

    #[test]
    fn a_frequent_job_runs_one_instance_whatever_its_settings() {
        let mut j = job();
        j.schedule = Schedule::FixedRate { interval_ms: 100 };
        j.max_instances = 10;
        j.overlap = OverlapPolicy::Queue;
        assert_eq!(Limit::of(&j).max_instances, 1);
        let second = DispatchFacts {
            live: 1,
            ..facts(&j)
        };
        assert!(matches!(admit(&second), Admission::Cancel(_)));
    }

    #[test]
    fn without_a_worker_an_instance_waits_then_fails_naming_what_it_needs() {
        let j = job();
        let none = |now_ms| DispatchFacts {
            now_ms,
            eligible_workers: 0,
            ..facts(&j)
        };
        assert_eq!(
            admit(&none(NOW + 60_000)),
            Admission::WaitUntil(NOW + 61_000)
        );
        match admit(&none(NOW + 60_001)) {
            Admission::Fail(reason) => {
                assert!(
                    reason.contains("\"etl\"") && reason.contains("gpu"),
                    "{reason}"
                )
            }
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}
