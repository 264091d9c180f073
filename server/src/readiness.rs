//! Whether this server can do its work now: the database answers, and for how long it has
//! answered and NATS has been connected without a break.
//!
//! Reconcile needs the two durations to judge silence fairly: heartbeats missed while this server
//! was cut off from NATS say nothing about the workers, and reports that arrived while the
//! database did not answer could not be stored, so their absence is not silence.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub struct Readiness {
    database_answers: AtomicBool,
    answering_since: Mutex<Instant>,
    connected_since: Mutex<Instant>,
}

impl Readiness {
    /// A server that has just connected and whose database answered the migrations a moment ago.
    pub fn new() -> Self {
        Self {
            database_answers: AtomicBool::new(true),
            answering_since: Mutex::new(Instant::now()),
            connected_since: Mutex::new(Instant::now()),
        }
    }

    /// Records whether the database answered the last health check; `Some(answered)` when that
    /// changed.
    pub fn database_answered(&self, answered: bool) -> Option<bool> {
        let was = self.database_answers.swap(answered, Ordering::Relaxed);
        if was == answered {
            return None;
        }
        if answered {
            *self
                .answering_since
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Instant::now();
        }
        Some(answered)
    }

    /// Records that the NATS connection was (re)established.
    pub fn connected(&self) {
        *self
            .connected_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// Whether the database answered the last health check.
    pub fn is_ready(&self) -> bool {
        self.database_answers.load(Ordering::Relaxed)
    }

    /// How long the database has answered without a break (zero while it does not).
    pub fn ready_for(&self) -> Duration {
        if !self.is_ready() {
            return Duration::ZERO;
        }
        self.answering_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }

    /// How long this server has been connected to NATS without a break.
    pub fn connected_for(&self) -> Duration {
        self.connected_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_break_restarts_the_count() {
        let r = Readiness::new();
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(r.ready_for(), Duration::from_secs(10));
        assert_eq!(r.database_answered(true), None, "no change");
        assert_eq!(r.database_answered(false), Some(false));
        assert!(!r.is_ready());
        assert_eq!(r.ready_for(), Duration::ZERO);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(r.database_answered(true), Some(true));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(r.ready_for(), Duration::from_secs(2));

        assert_eq!(r.connected_for(), Duration::from_secs(17));
        r.connected();
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(r.connected_for(), Duration::from_secs(1));
    }
}
