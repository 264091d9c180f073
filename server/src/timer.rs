//! The in-memory timer that fires each instance at its exact due time (tokio-util DelayQueue).
//!
//! The database is the source of truth: the timer only holds what this server will dispatch
//! soon, and anything lost with it (a restart) is found again by the schedule loop's scan of
//! waiting instances.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;
use tokio_util::time::delay_queue::Key;

use crate::clock::Clock;

#[derive(Clone)]
pub struct TimerHandle {
    tx: mpsc::UnboundedSender<(i64, i64)>,
    /// The instances on the timer now.
    queued: Arc<Mutex<HashSet<i64>>>,
    /// The dispatcher's input, for instances due now.
    fired: mpsc::UnboundedSender<i64>,
}

impl TimerHandle {
    /// Fires `instance_id` at `due_ms` (at once if that is past). An instance already on the
    /// timer keeps its place; the answer says whether this call put it there.
    pub fn schedule(&self, instance_id: i64, due_ms: i64) -> bool {
        let added = self
            .queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(instance_id);
        // The receiver only goes away at shutdown, when nothing needs firing any more.
        let _ = self.tx.send((instance_id, due_ms));
        added
    }

    /// Hands an instance due now straight to the dispatcher, past the timer task.
    pub fn fire_now(&self, instance_id: i64) {
        // The dispatcher only goes away at shutdown.
        let _ = self.fired.send(instance_id);
    }
}

/// Starts the timer task; due instance ids come out of `fired`.
pub fn start(
    fired: mpsc::UnboundedSender<i64>,
    clock: Clock,
    shutdown: CancellationToken,
) -> TimerHandle {
    let (tx, mut rx) = mpsc::unbounded_channel::<(i64, i64)>();
    let queued: Arc<Mutex<HashSet<i64>>> = Arc::default();
    let fired_ids = queued.clone();
    let direct = fired.clone();
    tokio::spawn(async move {
        let mut queue: DelayQueue<i64> = DelayQueue::new();
        let mut keys: HashMap<i64, Key> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                next = rx.recv() => {
                    let Some((id, due)) = next else { break };
                    if let Entry::Vacant(slot) = keys.entry(id) {
                        slot.insert(queue.insert(id, clock.until(due)));
                    }
                }
                Some(expired) = queue.next(), if !queue.is_empty() => {
                    let id = expired.into_inner();
                    keys.remove(&id);
                    fired_ids.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
                    if fired.send(id).is_err() {
                        break;
                    }
                }
            }
        }
    });
    TimerHandle {
        tx,
        queued,
        fired: direct,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// 2026-12-02T00:00:00Z.
    const T0: i64 = 1_796_169_600_000;

    /// The timer fires by the server's clock: on paused time, an instance due in 90 s (a retry
    /// after its job's `retry_delay`, say) fires exactly 90 s of clock time later, not a
    /// millisecond before; one already due fires at once; a second schedule keeps the first.
    #[tokio::test(start_paused = true)]
    async fn instances_fire_at_their_due_time_on_the_clock() {
        let clock = Clock::following_tokio(T0);
        let (fired_tx, mut fired) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let timer = start(fired_tx, clock, shutdown.clone());

        assert!(timer.schedule(7, T0 + 90_000));
        assert!(
            !timer.schedule(7, T0 + 10),
            "an instance on the timer keeps its place"
        );
        assert!(timer.schedule(8, T0 - 5_000));
        assert_eq!(fired.recv().await, Some(8), "a past due time fires at once");
        assert_eq!(clock.now_ms(), T0);

        let early = tokio::time::timeout(Duration::from_millis(89_999), fired.recv()).await;
        assert!(early.is_err(), "fired before its due time: {early:?}");
        // Nothing else is pending, so paused time runs on to the next timer: the instance's.
        assert_eq!(fired.recv().await, Some(7));
        assert_eq!(clock.now_ms(), T0 + 90_000, "fired late");

        // Once fired, it may be put on the timer again.
        assert!(timer.schedule(7, T0 + 100_000));
        shutdown.cancel();
    }
}
