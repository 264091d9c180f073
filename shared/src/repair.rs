//! What reconcile decides about a RUNNING instance: the pure classification behind its
//! `worker_lost` and `report_timeout` repairs. The server gathers the facts (how long it has
//! heard NATS and stored to the database, how long it has owned the app, whether the worker is
//! live, when the last report came) and acts on the verdict.

/// The server's view of the time since events that make silence meaningful, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hearing {
    /// Since this server's NATS connection was last (re)established.
    pub connected_for_ms: i64,
    /// Since the database has answered without a break.
    pub stored_for_ms: i64,
}

/// The configured timeouts, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// A worker without a heartbeat for this long is not live.
    pub worker_ms: i64,
    /// A run without a report for this long is ended.
    pub report_ms: i64,
}

/// One RUNNING instance as reconcile sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunningFacts {
    /// How long this server has owned the instance's app; `None` if it does not.
    pub owned_for_ms: Option<i64>,
    /// Whether the instance's worker heartbeats to this server.
    pub worker_live: bool,
    pub last_report_at_ms: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunningVerdict {
    /// Nothing to repair.
    Fine,
    /// The worker is gone (if, asked directly, it does not say it runs the attempt): retry or
    /// fail the attempt, "worker lost".
    WorkerLost,
    /// No report for `report_timeout`: retry or fail the attempt.
    Silent,
}

/// Classifies a RUNNING instance at `now_ms`.
///
/// Silence only means something when it could have been heard: a server that took the app
/// over, or whose NATS connection came back, only just now has not heard every worker's
/// heartbeat yet, so it waits one worker timeout; and reports that arrived while the database
/// did not answer could not be stored, so their absence is silence only once the database has
/// answered for a whole report timeout.
pub fn classify_running(
    facts: RunningFacts,
    hearing: Hearing,
    timeouts: Timeouts,
    now_ms: i64,
) -> RunningVerdict {
    let settled = hearing.connected_for_ms >= timeouts.worker_ms
        && facts.owned_for_ms.is_some_and(|d| d >= timeouts.worker_ms);
    if settled && !facts.worker_live {
        return RunningVerdict::WorkerLost;
    }
    let stored_long_enough = hearing.stored_for_ms >= timeouts.report_ms
        && hearing.connected_for_ms >= timeouts.report_ms;
    let cutoff = now_ms.saturating_sub(timeouts.report_ms);
    if stored_long_enough && facts.last_report_at_ms.is_none_or(|t| t < cutoff) {
        return RunningVerdict::Silent;
    }
    RunningVerdict::Fine
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_796_169_600_000;
    const TIMEOUTS: Timeouts = Timeouts {
        worker_ms: 30_000,
        report_ms: 120_000,
    };
    const LONG: Hearing = Hearing {
        connected_for_ms: 3_600_000,
        stored_for_ms: 3_600_000,
    };
    const HEALTHY: RunningFacts = RunningFacts {
        owned_for_ms: Some(3_600_000),
        worker_live: true,
        last_report_at_ms: Some(NOW - 1_000),
    };

    #[test]
    fn a_live_reporting_run_is_fine() {
        assert_eq!(
            classify_running(HEALTHY, LONG, TIMEOUTS, NOW),
            RunningVerdict::Fine
        );
    }

    #[test]
    fn a_run_whose_worker_is_gone_is_lost_once_the_server_has_heard_long_enough() {
        let gone = RunningFacts {
            worker_live: false,
            ..HEALTHY
        };
        assert_eq!(
            classify_running(gone, LONG, TIMEOUTS, NOW),
            RunningVerdict::WorkerLost
        );
        let just_reconnected = Hearing {
            connected_for_ms: 29_999,
            ..LONG
        };
        assert_eq!(
            classify_running(gone, just_reconnected, TIMEOUTS, NOW),
            RunningVerdict::Fine,
            "a server cut off itself knows nothing of the workers"
        );
        let just_took_over = RunningFacts {
            owned_for_ms: Some(29_999),
            ..gone
        };
        assert_eq!(
            classify_running(just_took_over, LONG, TIMEOUTS, NOW),
            RunningVerdict::Fine,
            "a new owner waits one worker timeout for the heartbeats"
        );
    }

    #[test]
    fn a_silent_run_is_ended_after_the_report_timeout_exactly() {
        let last = |at| RunningFacts {
            last_report_at_ms: Some(at),
            ..HEALTHY
        };
        assert_eq!(
            classify_running(last(NOW - 120_000), LONG, TIMEOUTS, NOW),
            RunningVerdict::Fine
        );
        assert_eq!(
            classify_running(last(NOW - 120_001), LONG, TIMEOUTS, NOW),
            RunningVerdict::Silent
        );
    }

    #[test]
    fn silence_while_the_database_was_away_is_not_silence() {
        let quiet = RunningFacts {
            last_report_at_ms: Some(NOW - 600_000),
            ..HEALTHY
        };
        let database_back = Hearing {
            stored_for_ms: 119_999,
            ..LONG
        };
        assert_eq!(
            classify_running(quiet, database_back, TIMEOUTS, NOW),
            RunningVerdict::Fine
        );
    }
}
