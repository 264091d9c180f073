//! The server's one clock: wall time in milliseconds since the Unix epoch (the unit of every
//! stored time), and the one conversion between configured durations and those milliseconds.
//!
//! Every part of the server reads the time from the [`Clock`] it was given, never from the
//! system directly (clippy refuses `Utc::now` and `SystemTime::now`), so that a test can hand it
//! a clock that follows tokio's: with tokio's time paused, the wall time then moves exactly as
//! `tokio::time::advance` says, and timing logic can be driven through hours in milliseconds.

use std::time::Duration;

/// Where the wall time comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// The system's wall clock. A production server reads it on every call, so that a step of
    /// the system clock (NTP) is seen at once: fire times are compared across servers, and each
    /// must read the same wall time as its peers.
    System,
    /// `origin_ms` at `origin`, moving with tokio's clock from there.
    Tokio {
        origin: tokio::time::Instant,
        origin_ms: i64,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Clock {
    source: Source,
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self {
            source: Source::System,
        }
    }

    /// A clock that reads `start_ms` now and moves with tokio's clock (paused in tests).
    pub fn following_tokio(start_ms: i64) -> Self {
        Self {
            source: Source::Tokio {
                origin: tokio::time::Instant::now(),
                origin_ms: start_ms,
            },
        }
    }

    /// The wall time now, in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self.source {
            Source::System => rota_transport::wall_ms(),
            Source::Tokio { origin, origin_ms } => {
                origin_ms.saturating_add(millis(origin.elapsed()))
            }
        }
    }

    /// How long from now until `due_ms`; zero for a time already past.
    pub fn until(&self, due_ms: i64) -> Duration {
        until(due_ms, self.now_ms())
    }
}

/// Milliseconds from `now_ms` to `due_ms` as a duration, with past times as zero.
pub fn until(due_ms: i64, now_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(due_ms.saturating_sub(now_ms)).unwrap_or(0))
}

/// A duration in milliseconds, the unit stored times are compared in. It saturates far below
/// `i64::MAX`, so that a stored time plus or minus any configured duration cannot overflow.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).map_or(MAX_MILLIS, |ms| ms.min(MAX_MILLIS))
}

/// The largest duration [`millis`] gives: about 73 million years.
const MAX_MILLIS: i64 = i64::MAX / 4;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_clock_following_tokio_moves_only_with_tokio_time() {
        let clock = Clock::following_tokio(1_000_000);
        assert_eq!(clock.now_ms(), 1_000_000);
        tokio::time::advance(Duration::from_secs(3_600)).await;
        assert_eq!(clock.now_ms(), 1_000_000 + 3_600_000);
        assert_eq!(
            clock.until(1_000_000 + 3_600_500),
            Duration::from_millis(500)
        );
        assert_eq!(clock.until(0), Duration::ZERO, "a time past is due now");
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn the_system_clock_reads_the_wall_time() {
        let before = chrono::Utc::now().timestamp_millis();
        let read = Clock::system().now_ms();
        let after = chrono::Utc::now().timestamp_millis();
        assert!(
            (before..=after).contains(&read),
            "{before} <= {read} <= {after}"
        );
    }

    #[test]
    fn conversions_saturate_instead_of_overflowing() {
        assert_eq!(millis(Duration::from_millis(1_500)), 1_500);
        assert_eq!(millis(Duration::MAX), MAX_MILLIS);
        assert!(MAX_MILLIS.checked_add(MAX_MILLIS).is_some());
        assert_eq!(until(i64::MIN, i64::MAX), Duration::ZERO);
    }
}
