//! How a server applies a worker's status report to an instance (DESIGN §4).
//!
//! [`apply_report`] is a pure function of what the server has stored, the job's rules, the report
//! and the current time. The server writes its [`Update`] with a compare-and-set on the state it
//! read, so that two servers, or two reports, racing each other cannot both apply.

use crate::message::{ReportAction, StatusReport};
use crate::status::InstanceStatus;

/// What the server has stored about an instance, as far as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceState {
    pub status: InstanceStatus,
    /// The current dispatch attempt.
    pub attempt: i32,
    /// The worker whose task tracker runs the current attempt, if any.
    pub worker_id: Option<String>,
    /// The sequence number of the last report applied for the current attempt.
    pub last_seq: i64,
    /// How many times a worker started the instance.
    pub runs: i64,
}

/// The job's settings the rules depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRules {
    /// FIXED_RATE or FIXED_DELAY: one long-lived instance on a worker.
    pub frequent: bool,
    pub max_retries: u32,
    pub retry_delay_ms: u64,
    pub lifecycle_end_ms: Option<i64>,
}

/// Why a report changed nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Rule 1: no such instance.
    UnknownInstance,
    /// Rule 2: the report's sequence number is not above the last one applied.
    Stale,
    /// Rule 3: the report comes from a worker that is not the instance's current tracker.
    NotCurrentTracker,
    /// Rule 3: the report is about another attempt than the current one.
    WrongAttempt,
    /// Rule 4: the instance is terminal.
    AlreadyTerminal,
    /// A worker may not report a waiting status.
    InvalidStatus,
}

impl Ignored {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownInstance => "unknown_instance",
            Self::Stale => "stale",
            Self::NotCurrentTracker => "not_current_tracker",
            Self::WrongAttempt => "wrong_attempt",
            Self::AlreadyTerminal => "already_terminal",
            Self::InvalidStatus => "invalid_status",
        }
    }
}

/// The change a report makes to an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub status: InstanceStatus,
    pub last_seq: i64,
    pub runs: i64,
    /// Replaces the stored result when set.
    pub result: Option<String>,
    /// Set when a run starts.
    pub started_at_ms: Option<i64>,
    /// Set when the instance becomes terminal.
    pub finished_at_ms: Option<i64>,
    /// Set when the instance goes back to WAITING_DISPATCH for a retry: when to dispatch it.
    pub retry_at_ms: Option<i64>,
    /// The report asked for an alert, or the instance failed for good.
    pub alert: bool,
    /// A distributed instance's task counts, when the report carried them.
    pub tasks: Option<crate::task::TaskCounts>,
}

impl Update {
    pub fn is_final(&self) -> bool {
        self.status.is_terminal()
    }

    /// The one change equal to applying `self` and then `later`, so that several reports of one
    /// instance in a batch cost one write.
    pub fn then(self, later: Update) -> Update {
        Update {
            status: later.status,
            last_seq: later.last_seq,
            runs: later.runs,
            result: later.result.or(self.result),
            started_at_ms: self.started_at_ms.or(later.started_at_ms),
            finished_at_ms: later.finished_at_ms.or(self.finished_at_ms),
            retry_at_ms: later.retry_at_ms.or(self.retry_at_ms),
            alert: self.alert || later.alert,
            tasks: later.tasks.or(self.tasks),
        }
    }
}

/// The outcome of a report, and what the worker is told to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ignored {
        why: Ignored,
        action: ReportAction,
    },
    Applied {
        update: Update,
        action: ReportAction,
    },
}

impl Outcome {
    pub fn action(&self) -> ReportAction {
        match self {
            Self::Ignored { action, .. } | Self::Applied { action, .. } => *action,
        }
    }
}

/// A worker that is told its report is moot should stop working on a live attempt; after a
/// terminal report there is nothing left to stop, so it is just told the report is settled.
fn ignore(why: Ignored, report: &StatusReport) -> Outcome {
    let action = if report.status.is_terminal() || why == Ignored::Stale {
        ReportAction::Continue
    } else {
        ReportAction::Stop
    };
    Outcome::Ignored { why, action }
}

/// Applies `report` to the stored `current` state by the rules of DESIGN §4.
pub fn apply_report(
    current: Option<&InstanceState>,
    job: &JobRules,
    report: &StatusReport,
    now_ms: i64,
) -> Outcome {
    // Rule 1: unknown instance: acknowledge, change nothing.
    let Some(cur) = current else {
        return Outcome::Ignored {
            why: Ignored::UnknownInstance,
            action: ReportAction::Continue,
        };
    };
    // Rule 4: a terminal instance never changes; a worker still running it is told to stop.
    if cur.status.is_terminal() {
        return ignore(Ignored::AlreadyTerminal, report);
    }
    // Rule 3: only the current tracker of the current attempt may report.
    if report.attempt != cur.attempt {
        return ignore(Ignored::WrongAttempt, report);
    }
    if cur.status == InstanceStatus::WaitingDispatch
        || cur.worker_id.as_deref() != Some(report.worker_id.as_str())
    {
        return ignore(Ignored::NotCurrentTracker, report);
    }
    // Rule 2: stale or repeated reports change nothing.
    if report.seq <= cur.last_seq {
        return ignore(Ignored::Stale, report);
    }
    if matches!(
        report.status,
        InstanceStatus::WaitingDispatch | InstanceStatus::WaitingWorkerReceive
    ) {
        return Outcome::Ignored {
            why: Ignored::InvalidStatus,
            action: ReportAction::Continue,
        };
    }

    // The first report of an attempt means the worker started it.
    let starts_run = cur.status == InstanceStatus::WaitingWorkerReceive;
    let runs = if starts_run { cur.runs + 1 } else { cur.runs };
    let base = Update {
        status: report.status,
        last_seq: report.seq,
        runs,
        result: report.result.clone(),
        // The worker's start time, but never later than now: a worker whose clock runs ahead
        // must not make a run start after it was seen.
        started_at_ms: starts_run.then(|| report.started_at_ms.unwrap_or(now_ms).min(now_ms)),
        finished_at_ms: None,
        retry_at_ms: None,
        alert: report.alert,
        tasks: report.tasks.clone(),
    };

    if job.frequent {
        return apply_frequent(job, report, base, now_ms);
    }
    apply_standard(job, report, base, now_ms)
}

/// Rule 5: frequent jobs copy the tracker's status and run count, until their lifecycle ends.
fn apply_frequent(job: &JobRules, report: &StatusReport, base: Update, now_ms: i64) -> Outcome {
    if job.lifecycle_end_ms.is_some_and(|end| now_ms > end) {
        return Outcome::Applied {
            update: Update {
                status: InstanceStatus::Succeeded,
                finished_at_ms: Some(now_ms),
                runs: report.runs.unwrap_or(base.runs),
                ..base
            },
            action: ReportAction::Stop,
        };
    }
    let finished = report.status.is_terminal().then_some(now_ms);
    Outcome::Applied {
        update: Update {
            runs: report.runs.unwrap_or(base.runs),
            finished_at_ms: finished,
            alert: base.alert || report.status == InstanceStatus::Failed,
            ..base
        },
        action: ReportAction::Continue,
    }
}

/// Rule 6: every other job.
fn apply_standard(job: &JobRules, report: &StatusReport, base: Update, now_ms: i64) -> Outcome {
    let update = match report.status {
        InstanceStatus::Running => base,
        InstanceStatus::Failed if base.runs <= i64::from(job.max_retries) => Update {
            status: InstanceStatus::WaitingDispatch,
            retry_at_ms: Some(now_ms.saturating_add_unsigned(job.retry_delay_ms)),
            ..base
        },
        InstanceStatus::Failed => Update {
            finished_at_ms: Some(now_ms),
            alert: true,
            ..base
        },
        // Succeeded, Stopped and Canceled are final as the worker reports them.
        _ => Update {
            finished_at_ms: Some(now_ms),
            ..base
        },
    };
    Outcome::Applied {
        update,
        action: ReportAction::Continue,
    }
}

/// What reconcile does to an attempt whose worker went silent (DESIGN §7): a dispatch that was
/// never acknowledged goes back to WAITING_DISPATCH at once (it never ran, so it uses no retry);
/// a run whose worker was lost is retried after the job's delay while retries are left, and
/// fails otherwise. A frequent job's instance fails, and reconcile starts a new one. `None` for
/// an instance that is not handed to a worker.
pub fn lost_attempt(
    cur: &InstanceState,
    job: &JobRules,
    reason: &str,
    now_ms: i64,
) -> Option<Update> {
    let base = Update {
        status: cur.status,
        last_seq: cur.last_seq,
        runs: cur.runs,
        result: Some(reason.to_owned()),
        started_at_ms: None,
        finished_at_ms: None,
        retry_at_ms: None,
        alert: false,
        tasks: None,
    };
    match cur.status {
        InstanceStatus::WaitingWorkerReceive => Some(Update {
            status: InstanceStatus::WaitingDispatch,
            retry_at_ms: Some(now_ms),
            ..base
        }),
        InstanceStatus::Running if !job.frequent && cur.runs <= i64::from(job.max_retries) => {
            Some(Update {
                status: InstanceStatus::WaitingDispatch,
                retry_at_ms: Some(now_ms.saturating_add_unsigned(job.retry_delay_ms)),
                ..base
            })
        }
        InstanceStatus::Running => Some(Update {
            status: InstanceStatus::Failed,
            finished_at_ms: Some(now_ms),
            alert: true,
            ..base
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use InstanceStatus::*;

    const NOW: i64 = 1_000_000;

    fn state(status: InstanceStatus) -> InstanceState {
        InstanceState {
            status,
            attempt: 2,
            worker_id: Some("w1".into()),
            last_seq: 3,
            runs: 1,
        }
    }

    fn report(status: InstanceStatus, seq: i64) -> StatusReport {
        StatusReport {
            instance_id: 9,
            attempt: 2,
            seq,
            worker_id: "w1".into(),
            status,
            result: Some("r".into()),
            runs: None,
            alert: false,
            reported_at_ms: NOW,
            started_at_ms: None,
            tasks: None,
        }
    }

    fn job(max_retries: u32) -> JobRules {
        JobRules {
            frequent: false,
            max_retries,
            retry_delay_ms: 10_000,
            lifecycle_end_ms: None,
        }
    }

    fn applied(o: Outcome) -> Update {
        match o {
            Outcome::Applied { update, .. } => update,
            other => panic!("expected an update, got {other:?}"),
        }
    }

    fn ignored(o: &Outcome) -> Ignored {
        match o {
            Outcome::Ignored { why, .. } => *why,
            other => panic!("expected the report to be ignored, got {other:?}"),
        }
    }

    #[test]
    fn rule1_unknown_instance_is_acknowledged_and_changes_nothing() {
        let o = apply_report(None, &job(0), &report(Running, 4), NOW);
        assert_eq!(ignored(&o), Ignored::UnknownInstance);
        assert_eq!(o.action(), ReportAction::Continue);
    }

    #[test]
    fn rule2_stale_and_repeated_sequence_numbers_change_nothing() {
        let cur = state(Running);
        for seq in [1, 3] {
            let o = apply_report(Some(&cur), &job(0), &report(Succeeded, seq), NOW);
            assert_eq!(ignored(&o), Ignored::Stale, "seq {seq}");
            assert_eq!(o.action(), ReportAction::Continue);
        }
    }

    #[test]
    fn rule3_reports_from_another_worker_or_attempt_change_nothing() {
        let cur = state(Running);
        let mut other_worker = report(Succeeded, 4);
        other_worker.worker_id = "w2".into();
        let o = apply_report(Some(&cur), &job(0), &other_worker, NOW);
        assert_eq!(ignored(&o), Ignored::NotCurrentTracker);

        let mut old_attempt = report(Running, 9);
        old_attempt.attempt = 1;
        let o = apply_report(Some(&cur), &job(0), &old_attempt, NOW);
        assert_eq!(ignored(&o), Ignored::WrongAttempt);
        assert_eq!(
            o.action(),
            ReportAction::Stop,
            "a stray run is told to stop"
        );

        // Waiting for a retry there is no current tracker at all.
        let waiting = InstanceState {
            worker_id: None,
            ..state(WaitingDispatch)
        };
        let o = apply_report(Some(&waiting), &job(0), &report(Running, 4), NOW);
        assert_eq!(ignored(&o), Ignored::NotCurrentTracker);
    }

    #[test]
    fn rule4_terminal_is_final_and_running_reports_are_told_to_stop() {
        for status in [Failed, Succeeded, Canceled, Stopped] {
            let cur = state(status);
            let o = apply_report(Some(&cur), &job(3), &report(Running, 10), NOW);
            assert_eq!(ignored(&o), Ignored::AlreadyTerminal);
            assert_eq!(o.action(), ReportAction::Stop);
            let o = apply_report(Some(&cur), &job(3), &report(Failed, 10), NOW);
            assert_eq!(ignored(&o), Ignored::AlreadyTerminal);
            assert_eq!(o.action(), ReportAction::Continue);
        }
    }

    #[test]
    fn rule5_frequent_jobs_copy_status_and_runs_until_lifecycle_end() {
        let frequent = JobRules {
            frequent: true,
            lifecycle_end_ms: Some(NOW + 1),
            ..job(0)
        };
        let mut r = report(Running, 4);
        r.runs = Some(57);
        r.alert = true;
        let o = apply_report(Some(&state(Running)), &frequent, &r, NOW);
        assert_eq!(o.action(), ReportAction::Continue);
        let u = applied(o);
        assert_eq!((u.status, u.runs, u.alert), (Running, 57, true));
        assert_eq!(u.finished_at_ms, None);

        let o = apply_report(Some(&state(Running)), &frequent, &r, NOW + 2);
        assert_eq!(o.action(), ReportAction::Stop);
        let u = applied(o);
        assert_eq!(u.status, Succeeded);
        assert_eq!(u.finished_at_ms, Some(NOW + 2));

        // A FAILED instance of a frequent job stops its tracker (rule 4 covers it).
        let o = apply_report(Some(&state(Failed)), &frequent, &r, NOW);
        assert_eq!(o.action(), ReportAction::Stop);
    }

    #[test]
    fn rule6_first_report_starts_the_run() {
        let u = applied(apply_report(
            Some(&state(WaitingWorkerReceive)),
            &job(0),
            &report(Running, 4),
            NOW,
        ));
        assert_eq!((u.status, u.runs, u.started_at_ms), (Running, 2, Some(NOW)));
        // A later progress report does not count another run.
        let u = applied(apply_report(
            Some(&state(Running)),
            &job(0),
            &report(Running, 4),
            NOW,
        ));
        assert_eq!((u.runs, u.started_at_ms), (1, None));
    }

    #[test]
    fn rule6_the_run_starts_when_the_worker_started_it() {
        // A short run's only report is its terminal one: its start is the worker's.
        let mut r = report(Succeeded, 4);
        r.started_at_ms = Some(NOW - 15);
        let u = applied(apply_report(
            Some(&state(WaitingWorkerReceive)),
            &job(0),
            &r,
            NOW,
        ));
        assert_eq!(
            (u.started_at_ms, u.finished_at_ms),
            (Some(NOW - 15), Some(NOW))
        );
        // A worker whose clock runs ahead does not start a run after the server saw it.
        r.started_at_ms = Some(NOW + 60_000);
        let u = applied(apply_report(
            Some(&state(WaitingWorkerReceive)),
            &job(0),
            &r,
            NOW,
        ));
        assert_eq!(u.started_at_ms, Some(NOW));
    }

    #[test]
    fn rule6_succeeded_is_final_even_without_a_running_report() {
        let u = applied(apply_report(
            Some(&state(WaitingWorkerReceive)),
            &job(0),
            &report(Succeeded, 1 + 3),
            NOW,
        ));
        assert_eq!(u.status, Succeeded);
        assert_eq!(u.runs, 2);
        assert_eq!(u.finished_at_ms, Some(NOW));
        assert_eq!(u.result.as_deref(), Some("r"));
    }

    #[test]
    fn rule6_failed_retries_until_retries_are_used_up() {
        // runs = 1 after the first run: one retry left of max 2 → back to waiting, due later.
        let u = applied(apply_report(
            Some(&state(Running)),
            &job(2),
            &report(Failed, 4),
            NOW,
        ));
        assert_eq!(u.status, WaitingDispatch);
        assert_eq!(u.retry_at_ms, Some(NOW + 10_000));
        assert!(!u.is_final());

        let third_run = InstanceState {
            runs: 3,
            ..state(Running)
        };
        let u = applied(apply_report(
            Some(&third_run),
            &job(2),
            &report(Failed, 4),
            NOW,
        ));
        assert_eq!(u.status, Failed);
        assert!(u.is_final() && u.alert);
        assert_eq!(u.runs, 3);
    }

    #[test]
    fn two_reports_in_a_row_merge_into_the_same_change() {
        // RUNNING then SUCCEEDED for a fresh attempt, applied one after the other...
        let start = state(WaitingWorkerReceive);
        let first = applied(apply_report(
            Some(&start),
            &job(0),
            &report(Running, 4),
            NOW,
        ));
        let after_first = InstanceState {
            status: first.status,
            last_seq: first.last_seq,
            runs: first.runs,
            ..start.clone()
        };
        let second = applied(apply_report(
            Some(&after_first),
            &job(0),
            &report(Succeeded, 5),
            NOW + 7,
        ));
        // ...come to the same as one merged change.
        let merged = first.clone().then(second.clone());
        assert_eq!(merged.status, Succeeded);
        assert_eq!((merged.last_seq, merged.runs), (5, 2));
        assert_eq!(merged.started_at_ms, Some(NOW));
        assert_eq!(merged.finished_at_ms, Some(NOW + 7));
        assert_eq!(merged.result, second.result);
    }

    #[test]
    fn a_lost_attempt_is_retried_or_failed() {
        // Never acknowledged: dispatch again now, without using a retry.
        let u = lost_attempt(&state(WaitingWorkerReceive), &job(0), "lost", NOW).unwrap();
        assert_eq!(
            (u.status, u.retry_at_ms, u.runs),
            (WaitingDispatch, Some(NOW), 1)
        );
        // Running, retries left: retry after the delay.
        let u = lost_attempt(&state(Running), &job(1), "worker lost", NOW).unwrap();
        assert_eq!(
            (u.status, u.retry_at_ms),
            (WaitingDispatch, Some(NOW + 10_000))
        );
        assert_eq!(u.result.as_deref(), Some("worker lost"));
        // Running, no retries left: failed for good.
        let u = lost_attempt(&state(Running), &job(0), "worker lost", NOW).unwrap();
        assert_eq!(
            (u.status, u.finished_at_ms, u.alert),
            (Failed, Some(NOW), true)
        );
        // A frequent job's instance fails whatever its retries.
        let frequent = JobRules {
            frequent: true,
            ..job(5)
        };
        assert_eq!(
            lost_attempt(&state(Running), &frequent, "x", NOW)
                .unwrap()
                .status,
            Failed
        );
        // Nothing to do for instances no worker holds.
        assert_eq!(
            lost_attempt(&state(WaitingDispatch), &job(0), "x", NOW),
            None
        );
        assert_eq!(lost_attempt(&state(Succeeded), &job(0), "x", NOW), None);
    }

    #[test]
    fn workers_cannot_report_waiting_statuses() {
        let o = apply_report(
            Some(&state(Running)),
            &job(0),
            &report(WaitingDispatch, 4),
            NOW,
        );
        assert_eq!(ignored(&o), Ignored::InvalidStatus);
    }
}
