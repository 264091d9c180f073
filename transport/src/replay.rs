//! Stamps and replay protection.
//!
//! Every authenticated message carries a stamp: the sender's wall-clock millisecond shifted left
//! by 16 bits, plus a counter, so that a sender's stamps only ever rise (even across restarts,
//! as long as its clock does not run backwards) and up to 65,536 messages share a millisecond.
//! A receiver refuses a stamp it has seen from the same sender, a stamp older than the newest one
//! it took from that sender by more than [`REORDER_MS`] (messages sent side by side arrive a
//! little out of order), and a stamp outside [`FRESHNESS_MS`] of its own clock. A receiver
//! that restarts remembers nothing, so it also refuses stamps from before it started
//! ([`START_SKEW_MS`] of slack): a message recorded before the restart cannot be played to it.
//!
//! All decisions take the current time as an argument, so they are tested with fixed times.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use thiserror::Error;

/// A stamp more than this far from the receiver's clock is refused. It bounds how long a
/// recorded message stays worth replaying, and how far apart two clocks may drift.
pub const FRESHNESS_MS: i64 = 60_000;

/// A stamp this much older than the newest taken from the same sender is refused.
pub const REORDER_MS: i64 = 5_000;

/// Slack on a receiver's start time, for messages already in flight when it started.
pub const START_SKEW_MS: i64 = 2_000;

const COUNTER_BITS: u32 = 16;

/// Windows not used for this long are dropped: any stamp they would refuse is stale by then.
const IDLE_MS: i64 = 2 * FRESHNESS_MS;

/// The millisecond a stamp was made in.
pub fn stamp_ms(stamp: u64) -> i64 {
    i64::try_from(stamp >> COUNTER_BITS).unwrap_or(i64::MAX)
}

fn ms_to_stamp(ms: i64) -> u64 {
    u64::try_from(ms.max(0)).unwrap_or(0) << COUNTER_BITS
}

/// Makes a sender's stamps: strictly rising, never below the clock. Each stamper starts its
/// counter at a random point within the millisecond, so that two processes speaking with one
/// name (a worker restarted under its id, a test speaking as a worker) almost never make the
/// same stamp.
#[derive(Debug)]
pub struct Stamper {
    last: AtomicU64,
    offset: u64,
}

impl Default for Stamper {
    fn default() -> Self {
        let mut bytes = [0u8; 2];
        // Without a random source the offset is 0: stamps are as unique as before, only less
        // spread.
        let _ = getrandom::fill(&mut bytes);
        Self {
            last: AtomicU64::new(0),
            offset: u64::from(u16::from_le_bytes(bytes) >> 1),
        }
    }
}

impl Stamper {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn next(&self, now_ms: i64) -> u64 {
        let floor = ms_to_stamp(now_ms) + self.offset;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = floor.max(last + 1);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }
}

/// Why a stamp was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum ReplayError {
    #[error("the message was already received (a replay)")]
    Replayed,
    #[error("the message is too old ({age_ms} ms); check the sender's clock")]
    Stale { age_ms: i64 },
    #[error("the message is dated {ahead_ms} ms ahead; check the sender's clock")]
    Future { ahead_ms: i64 },
    #[error("the message is older than its sender's newer messages (sent before a restart?)")]
    Superseded,
}

#[derive(Debug)]
struct Window {
    highest: u64,
    /// Stamps taken within `REORDER_MS` of `highest`.
    seen: HashSet<u64>,
    last_used_ms: i64,
}

/// The stamps a receiver has taken, per sender.
#[derive(Debug)]
pub struct ReplayGuard {
    floor_ms: i64,
    windows: Mutex<HashMap<String, Window>>,
    checks: AtomicU64,
}

impl ReplayGuard {
    /// A guard for a receiver starting at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        Self {
            floor_ms: now_ms - START_SKEW_MS,
            windows: Mutex::new(HashMap::new()),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes `stamp` from `sender` (any string naming the key and the sender, such as
    /// `w/3/worker-1`) if it is fresh and new.
    pub fn check(&self, sender: &str, stamp: u64, now_ms: i64) -> Result<(), ReplayError> {
        let at = stamp_ms(stamp);
        if at > now_ms + FRESHNESS_MS {
            return Err(ReplayError::Future {
                ahead_ms: at - now_ms,
            });
        }
        if at < now_ms - FRESHNESS_MS || at < self.floor_ms {
            return Err(ReplayError::Stale {
                age_ms: now_ms - at,
            });
        }
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        if self.checks.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
            windows.retain(|_, w| w.last_used_ms >= now_ms - IDLE_MS);
        }
        let window = match windows.get_mut(sender) {
            Some(w) => w,
            None => {
                windows.insert(
                    sender.to_owned(),
                    Window {
                        highest: stamp,
                        seen: HashSet::from([stamp]),
                        last_used_ms: now_ms,
                    },
                );
                return Ok(());
            }
        };
        window.last_used_ms = now_ms;
        let oldest = window.highest.saturating_sub(ms_to_stamp(REORDER_MS));
        if stamp < oldest {
            return Err(ReplayError::Superseded);
        }
        if !window.seen.insert(stamp) {
            return Err(ReplayError::Replayed);
        }
        if stamp > window.highest {
            window.highest = stamp;
            // Prune now and then, not on every message: the set holds a few seconds of stamps.
            if window.seen.len() > 1024 && window.seen.len().is_power_of_two() {
                let oldest = stamp.saturating_sub(ms_to_stamp(REORDER_MS));
                window.seen.retain(|s| *s >= oldest);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: i64 = 1_800_000_000_000;

    #[test]
    fn stamps_rise_and_follow_the_clock() {
        let s = Stamper::new();
        let a = s.next(T);
        let b = s.next(T);
        assert!(b > a);
        assert_eq!(stamp_ms(a), T);
        assert_eq!(stamp_ms(b), T);
        // A clock that steps back does not make stamps fall.
        let c = s.next(T - 10);
        assert!(c > b);
        assert_eq!(stamp_ms(s.next(T + 5)), T + 5);
    }

    #[test]
    fn a_stamp_is_taken_once() {
        let g = ReplayGuard::new(T);
        let s = Stamper::new();
        let a = s.next(T);
        assert_eq!(g.check("w1", a, T), Ok(()));
        assert_eq!(g.check("w1", a, T), Err(ReplayError::Replayed));
        // Another sender's identical stamp is its own.
        assert_eq!(g.check("w2", a, T), Ok(()));
    }

    #[test]
    fn messages_may_arrive_a_little_out_of_order() {
        let g = ReplayGuard::new(T);
        let s = Stamper::new();
        let first = s.next(T);
        let second = s.next(T + 1);
        assert_eq!(g.check("w", second, T + 2), Ok(()));
        assert_eq!(g.check("w", first, T + 2), Ok(()));
        assert_eq!(g.check("w", first, T + 2), Err(ReplayError::Replayed));
        let late = s.next(T + 3);
        let newest = s.next(T + 3 + REORDER_MS + 1);
        assert_eq!(g.check("w", newest, T + 3 + REORDER_MS + 1), Ok(()));
        assert_eq!(
            g.check("w", late, T + 3 + REORDER_MS + 1),
            Err(ReplayError::Superseded)
        );
    }

    #[test]
    fn stale_future_and_pre_start_stamps_are_refused() {
        let g = ReplayGuard::new(T);
        let s = Stamper::new();
        assert!(matches!(
            g.check("w", s.next(T + FRESHNESS_MS + 1), T),
            Err(ReplayError::Future { .. })
        ));
        // Recorded before the receiver started: refused although it is still fresh.
        let before = Stamper::new().next(T - START_SKEW_MS - 1);
        assert!(matches!(
            g.check("x", before, T),
            Err(ReplayError::Stale { .. })
        ));
        let old = Stamper::new().next(T + 10);
        assert!(matches!(
            g.check("y", old, T + 10 + FRESHNESS_MS + 1),
            Err(ReplayError::Stale { .. })
        ));
    }

    #[test]
    fn many_stamps_stay_bounded() {
        let g = ReplayGuard::new(T);
        let s = Stamper::new();
        // One message a millisecond for 50 s: only about the last REORDER_MS of them are kept.
        for i in 0..50_000 {
            let now = T + i;
            assert_eq!(g.check("w", s.next(now), now), Ok(()));
        }
        let windows = g.windows.lock().unwrap();
        let kept = windows["w"].seen.len();
        assert!(kept <= 8192, "{kept} stamps kept");
    }
}
