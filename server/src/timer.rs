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

use crate::clock::{now_ms, until};

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
pub fn start(fired: mpsc::UnboundedSender<i64>, shutdown: CancellationToken) -> TimerHandle {
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
                        slot.insert(queue.insert(id, until(due, now_ms())));
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
