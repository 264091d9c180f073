//! How the worker retries a call to its server: one classification of what went wrong
//! ([`ErrorCode::retry`] for the server's answers) and one jittered exponential pause, used by
//! every loop that sends something again (terminal reports, log batches, the first discovery).

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use rota_shared::Retry;

use crate::link::CallError;

impl CallError {
    /// Whether sending the same request again can help.
    pub(crate) fn retry(&self) -> Retry {
        match self {
            // Nobody answered, or not in time, or not with the deployment's seal, or the NATS
            // connection is down: another try may reach a (new) owner.
            Self::NoResponders(_)
            | Self::TimedOut(_)
            | Self::Unverified(_)
            | Self::Transport(_) => Retry::Transient,
            Self::Remote(body) => body.code.retry(),
        }
    }
}

/// How a loop retries: the pause grows from `first` to `max` (each pause is jittered up to
/// twice its value so that workers cut off together do not return together), an unclear error
/// is tried `unclear_tries` times in all, and a transient one without end unless `transient_tries`
/// says otherwise.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub first: Duration,
    pub max: Duration,
    pub unclear_tries: u32,
    pub transient_tries: Option<u32>,
}

/// What a loop does after a failed try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Wait this long, then try again.
    Pause(Duration),
    /// Stop: the error is permanent, or the tries are used up. Said in the log by the caller.
    GiveUp(GiveUp),
}

/// Why a loop gave up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GiveUp {
    /// The answer will not change.
    Permanent,
    /// The allowed tries are used up.
    Exhausted,
}

impl std::fmt::Display for GiveUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Permanent => "the server's answer will not change",
            Self::Exhausted => "the allowed tries are used up",
        })
    }
}

/// The retry state of one request: how often it was tried and the next pause.
#[derive(Debug)]
pub(crate) struct Retrier {
    policy: Policy,
    backoff: ExponentialBackoff,
    tries: u32,
    unclear: u32,
}

impl Retrier {
    pub(crate) fn new(policy: Policy) -> Self {
        let backoff = ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(policy.first)
            .with_max_delay(policy.max)
            .without_max_times()
            .build();
        Self {
            policy,
            backoff,
            tries: 0,
            unclear: 0,
        }
    }

    /// How many tries failed so far.
    pub(crate) fn tries(&self) -> u32 {
        self.tries
    }

    /// Records a failed try and says what to do next.
    pub(crate) fn failed(&mut self, error: &CallError) -> Next {
        self.tries += 1;
        let exhausted = match error.retry() {
            Retry::Permanent => return Next::GiveUp(GiveUp::Permanent),
            Retry::Unclear => {
                self.unclear += 1;
                self.unclear >= self.policy.unclear_tries
            }
            Retry::Transient => self.policy.transient_tries.is_some_and(|n| self.tries >= n),
        };
        if exhausted {
            return Next::GiveUp(GiveUp::Exhausted);
        }
        // The iterator has no end (`without_max_times`); `max` is the fallback all the same.
        Next::Pause(self.backoff.next().unwrap_or(self.policy.max))
    }

    /// Records a failed try and waits out the pause before the next one (on tokio's clock);
    /// says why when there is no next one.
    pub(crate) async fn wait_after(&mut self, error: &CallError) -> Result<(), GiveUp> {
        match self.failed(error) {
            Next::GiveUp(why) => Err(why),
            Next::Pause(pause) => {
                tokio::time::sleep(pause).await;
                Ok(())
            }
        }
    }

    /// Whether this failure is worth a line in the log: the first, then every tenth, so that an
    /// outage is visible without flooding the log.
    pub(crate) fn worth_logging(&self) -> bool {
        self.tries == 1 || self.tries.is_multiple_of(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_shared::{ErrorBody, ErrorCode};

    const POLICY: Policy = Policy {
        first: Duration::from_millis(100),
        max: Duration::from_secs(5),
        unclear_tries: 3,
        transient_tries: None,
    };

    fn remote(code: ErrorCode) -> CallError {
        CallError::Remote(ErrorBody::new(code, "x"))
    }

    #[test]
    fn errors_are_classified_once() {
        for e in [
            CallError::NoResponders("s".into()),
            CallError::TimedOut("s".into()),
            CallError::Unverified("s".into()),
            CallError::Transport("s".into()),
            remote(ErrorCode::Unavailable),
            remote(ErrorCode::NotOwner),
            remote(ErrorCode::Unauthorized),
        ] {
            assert_eq!(e.retry(), Retry::Transient, "{e}");
        }
        for code in [
            ErrorCode::BadRequest,
            ErrorCode::PayloadTooLarge,
            ErrorCode::InvalidArgument,
            ErrorCode::UnsupportedVersion,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::Conflict,
        ] {
            assert_eq!(remote(code).retry(), Retry::Permanent, "{code}");
        }
        for code in [ErrorCode::Internal, ErrorCode::Unknown, ErrorCode::Rejected] {
            assert_eq!(remote(code).retry(), Retry::Unclear, "{code}");
        }
    }

    #[test]
    fn a_permanent_error_is_given_up_at_once() {
        let mut r = Retrier::new(POLICY);
        assert_eq!(
            r.failed(&remote(ErrorCode::InvalidArgument)),
            Next::GiveUp(GiveUp::Permanent)
        );
        assert_eq!(r.tries(), 1);
    }

    #[test]
    fn an_unclear_error_is_tried_a_few_times() {
        let mut r = Retrier::new(POLICY);
        assert!(matches!(
            r.failed(&remote(ErrorCode::Internal)),
            Next::Pause(_)
        ));
        // A transient failure between them does not count against the unclear ones.
        assert!(matches!(
            r.failed(&remote(ErrorCode::Unavailable)),
            Next::Pause(_)
        ));
        assert!(matches!(
            r.failed(&remote(ErrorCode::Internal)),
            Next::Pause(_)
        ));
        assert_eq!(
            r.failed(&remote(ErrorCode::Internal)),
            Next::GiveUp(GiveUp::Exhausted)
        );
    }

    #[test]
    fn a_transient_error_is_retried_without_end_and_the_pause_is_jittered_and_capped() {
        let mut r = Retrier::new(POLICY);
        let pauses: Vec<Duration> = (0..200)
            .map(|_| match r.failed(&CallError::TimedOut("s".into())) {
                Next::Pause(p) => p,
                Next::GiveUp(why) => panic!("gave up on a transient error: {why}"),
            })
            .collect();
        // Jitter adds up to the pause itself: each lies in [nominal, 2 × nominal).
        assert!(
            pauses[0] >= POLICY.first && pauses[0] < POLICY.first * 2,
            "{pauses:?}"
        );
        assert!(pauses.iter().all(|p| *p < POLICY.max * 2), "{pauses:?}");
        assert!(pauses[199] >= POLICY.max, "{pauses:?}");
        // Two retriers do not pause in lockstep.
        let mut other = Retrier::new(POLICY);
        let theirs: Vec<Duration> = (0..20)
            .map(|_| match other.failed(&CallError::TimedOut("s".into())) {
                Next::Pause(p) => p,
                Next::GiveUp(_) => Duration::ZERO,
            })
            .collect();
        assert_ne!(theirs, pauses[..20], "the pauses are not jittered");
    }

    /// A ten-minute outage on paused time: the loop keeps trying, its pauses grow to the cap
    /// and stay there, and it gets through within one (jittered) pause of the end.
    #[tokio::test(start_paused = true)]
    async fn on_paused_time_an_outage_is_ridden_out_with_capped_pauses() {
        let start = tokio::time::Instant::now();
        let outage = Duration::from_secs(600);
        let mut r = Retrier::new(POLICY);
        let mut tries = 1;
        while start.elapsed() < outage {
            r.wait_after(&CallError::NoResponders("s".into()))
                .await
                .expect("a transient error is retried");
            tries += 1;
        }
        let took = start.elapsed();
        assert!(took < outage + POLICY.max * 2, "{took:?}");
        // About 6 growing pauses, then pauses of 5 to 10 s for the rest of the ten minutes.
        assert!((60..=130).contains(&tries), "{tries} tries");
    }

    /// An unclear error on paused time: given up after its tries, having waited only the first
    /// pauses.
    #[tokio::test(start_paused = true)]
    async fn on_paused_time_an_unclear_error_is_given_up_after_the_first_pauses() {
        let start = tokio::time::Instant::now();
        let mut r = Retrier::new(POLICY);
        let error = remote(ErrorCode::Internal);
        assert_eq!(r.wait_after(&error).await, Ok(()));
        assert_eq!(r.wait_after(&error).await, Ok(()));
        assert_eq!(r.wait_after(&error).await, Err(GiveUp::Exhausted));
        let waited = start.elapsed();
        // Two pauses: 100 ms and 200 ms, each jittered up to twice as long.
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_millis(600),
            "{waited:?}"
        );
    }

    #[test]
    fn transient_tries_can_be_bounded() {
        let mut r = Retrier::new(Policy {
            transient_tries: Some(2),
            ..POLICY
        });
        assert!(matches!(
            r.failed(&CallError::NoResponders("s".into())),
            Next::Pause(_)
        ));
        assert_eq!(
            r.failed(&CallError::NoResponders("s".into())),
            Next::GiveUp(GiveUp::Exhausted)
        );
    }
}
