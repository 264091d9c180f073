//! The table of instances this worker runs, and the admission of new dispatches into it.
//!
//! Admission (duplicate check, capacity check, insert) happens under one lock, so that two
//! dispatches arriving together can neither both take the last slot nor both run one attempt.
//!
//! A fire handed over ahead of its instant is *held* until then: it takes no execution slot
//! while it waits (held fires have their own bound, [`Gate::max_held`]), and at its instant it
//! takes a slot like any dispatch, waiting for one should the worker be full.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use rota_shared::InstanceStatus;
use rota_shared::message::{DispatchRequest, InstanceRuntime};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;

use crate::dedupe::SeenAttempts;

/// Why an instance's work was cancelled before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StopCause {
    /// A stop request from the server (`rota instance stop`).
    Stop,
    /// The answer to a report said the server no longer wants this attempt.
    ServerStop,
    /// The job's `timeout_ms` passed (for a frequent job this cancels one run, not the
    /// instance, and is never a cause here).
    Timeout(u64),
    /// The worker shut down before the work ended.
    Shutdown,
}

/// One attempt of an instance that this worker runs (or is still reporting on).
#[derive(Debug)]
pub(crate) struct InstanceState {
    pub instance_id: i64,
    pub attempt: i32,
    pub started_at_ms: i64,
    /// A frequent job's attempt, which runs until it is stopped or its lifecycle ends.
    pub frequent: bool,
    cancel: CancellationToken,
    inner: Mutex<Inner>,
    seq: AtomicI64,
    /// The highest sequence number of a progress report the server has answered (stored or
    /// judged), so that a frequent tracker knows which alerts reached it.
    answered_seq: AtomicI64,
    /// When the processor started (0: not yet; a held fire starts at its instant).
    run_started_ms: AtomicI64,
    /// Admitted ahead of its start time and not yet given an execution slot.
    held: std::sync::atomic::AtomicBool,
    /// A distributed instance's task counts, as its master last published them.
    pub tasks: Arc<Mutex<Option<rota_shared::task::TaskCounts>>>,
}

#[derive(Debug)]
struct Inner {
    status: InstanceStatus,
    cause: Option<StopCause>,
    tracker: Option<AbortHandle>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves the data consistent (every update
    // is a single assignment), so a poisoned lock is used as it is.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl InstanceState {
    pub(crate) fn new(instance_id: i64, attempt: i32, started_at_ms: i64, frequent: bool) -> Self {
        Self {
            instance_id,
            attempt,
            started_at_ms,
            frequent,
            cancel: CancellationToken::new(),
            inner: Mutex::new(Inner {
                status: InstanceStatus::Running,
                cause: None,
                tracker: None,
            }),
            seq: AtomicI64::new(0),
            answered_seq: AtomicI64::new(0),
            run_started_ms: AtomicI64::new(0),
            held: std::sync::atomic::AtomicBool::new(false),
            tasks: Arc::new(Mutex::new(None)),
        }
    }

    fn is_held(&self) -> bool {
        self.held.load(Ordering::Relaxed)
    }

    /// Records that the processor started now.
    pub(crate) fn mark_started(&self, now_ms: i64) {
        self.run_started_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The task counts a distributed instance's reports carry.
    pub(crate) fn task_counts(&self) -> Option<rota_shared::task::TaskCounts> {
        lock(&self.tasks).clone()
    }

    /// When the processor started, once it has.
    pub(crate) fn run_started_ms(&self) -> Option<i64> {
        Some(self.run_started_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// The token the processor watches.
    pub(crate) fn token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Cancels the work for `cause`, unless it has already ended or been cancelled (the first
    /// cause is the one reported). Returns whether the work was still running.
    pub(crate) fn stop(&self, cause: StopCause) -> bool {
        let mut inner = lock(&self.inner);
        if inner.status != InstanceStatus::Running {
            return false;
        }
        if inner.cause.is_none() {
            inner.cause = Some(cause);
        }
        drop(inner);
        self.cancel.cancel();
        true
    }

    pub(crate) fn cause(&self) -> Option<StopCause> {
        lock(&self.inner).cause
    }

    /// Records the terminal status once the work has ended, before it is reported.
    pub(crate) fn finish(&self, status: InstanceStatus) {
        lock(&self.inner).status = status;
    }

    /// The next report's sequence number: 1, 2, 3, … per attempt.
    pub(crate) fn next_seq(&self) -> i64 {
        self.seq.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Records that the server answered the progress report `seq`. Answers may arrive out of
    /// order; the highest counts.
    pub(crate) fn note_answered(&self, seq: i64) {
        self.answered_seq.fetch_max(seq, Ordering::SeqCst);
    }

    pub(crate) fn answered_seq(&self) -> i64 {
        self.answered_seq.load(Ordering::SeqCst)
    }

    pub(crate) fn set_tracker(&self, handle: AbortHandle) {
        lock(&self.inner).tracker = Some(handle);
    }

    /// Ends the tracker task at once, without a report (for crashes and the shutdown deadline).
    pub(crate) fn abort_tracker(&self) {
        if let Some(handle) = lock(&self.inner).tracker.take() {
            handle.abort();
        }
    }

    pub(crate) fn runtime(&self) -> InstanceRuntime {
        InstanceRuntime {
            instance_id: self.instance_id,
            attempt: self.attempt,
            status: lock(&self.inner).status,
            started_at_ms: self.started_at_ms,
            last_seq: self.seq.load(Ordering::SeqCst),
        }
    }
}

/// What admission decided about a dispatch.
#[derive(Debug)]
pub(crate) enum Admission {
    /// This attempt was accepted before; the repeat is ignored.
    Duplicate,
    /// Refused, with the reason for the `REJECTED` reply.
    Rejected(String),
    Accepted(Arc<InstanceState>),
}

/// Whether the worker's clock (`now_ms`) is past the dispatch's deadline. A dispatch without a
/// deadline never expires.
pub(crate) fn expired(req: &DispatchRequest, now_ms: i64) -> bool {
    req.deadline_ms.is_some_and(|deadline| now_ms > deadline)
}

/// Why a dispatch may be refused regardless of the table, as the caller sees it.
pub(crate) struct Gate {
    pub accepting: bool,
    pub processor_known: bool,
    /// Instances run at once at most.
    pub capacity: u32,
    /// Fires held for their instant at once at most.
    pub max_held: u32,
}

/// The instances this worker runs, keyed by `(instance_id, attempt)`.
#[derive(Debug)]
pub(crate) struct Instances {
    table: Mutex<Table>,
    /// Woken when an attempt leaves the table, for held fires waiting for a slot.
    freed: tokio::sync::Notify,
}

#[derive(Debug)]
struct Table {
    running: HashMap<(i64, i32), Arc<InstanceState>>,
    seen: SeenAttempts,
}

impl Table {
    /// How many attempts take an execution slot, and how many are held for later.
    fn counts(&self) -> (usize, usize) {
        let held = self.running.values().filter(|s| s.is_held()).count();
        (self.running.len() - held, held)
    }
}

impl Instances {
    pub(crate) fn new(memory: usize) -> Self {
        Self {
            table: Mutex::new(Table {
                running: HashMap::new(),
                seen: SeenAttempts::new(memory),
            }),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Decides about a dispatch and, if it is accepted, enters it into the table.
    pub(crate) fn admit(&self, req: &DispatchRequest, gate: &Gate, now_ms: i64) -> Admission {
        let mut table = lock(&self.table);
        if table.seen.contains(req.instance_id, req.attempt) {
            return Admission::Duplicate;
        }
        if expired(req, now_ms) {
            // The server gave up waiting for the answer and may have handed the instance to
            // another worker, so running it here could run it twice. It is not remembered, so
            // that nothing about it outlives the refusal.
            return Admission::Rejected("dispatch expired".to_owned());
        }
        if !gate.accepting {
            return Admission::Rejected("shutting down".to_owned());
        }
        if !gate.processor_known {
            // The processors that run code off by default say how to turn them on.
            let hint = match req.processor.as_str() {
                "shell" => " (start the worker with --allow-shell)",
                rota_shared::container::CONTAINER_PROCESSOR => {
                    " (start the worker with --allow-containers)"
                }
                _ => "",
            };
            return Admission::Rejected(format!("unknown processor {}{hint}", req.processor));
        }
        let held = req.start_at_ms.is_some_and(|at| at > now_ms);
        let (executing, holding) = table.counts();
        if held && holding >= gate.max_held as usize {
            return Admission::Rejected("holding too many fires for later".to_owned());
        }
        if !held && executing >= gate.capacity as usize {
            return Admission::Rejected("overloaded".to_owned());
        }
        table.seen.insert(req.instance_id, req.attempt);
        let state = Arc::new(InstanceState::new(
            req.instance_id,
            req.attempt,
            now_ms,
            req.frequent.is_some(),
        ));
        state.held.store(held, Ordering::Relaxed);
        table
            .running
            .insert((req.instance_id, req.attempt), Arc::clone(&state));
        Admission::Accepted(state)
    }

    pub(crate) fn remove(&self, instance_id: i64, attempt: i32) {
        let removed = lock(&self.table)
            .running
            .remove(&(instance_id, attempt))
            .is_some();
        if removed {
            self.freed.notify_waiters();
        }
    }

    /// Gives a held fire, at its instant, an execution slot: at once when one is free, else
    /// when one frees up. Returns `false` if it was stopped while it waited.
    pub(crate) async fn take_slot(&self, state: &InstanceState, capacity: u32) -> bool {
        loop {
            // Registered before the check, so that a slot freed in between is not missed.
            let freed = self.freed.notified();
            {
                let table = lock(&self.table);
                if !state.is_held() {
                    return true;
                }
                if table.counts().0 < capacity as usize {
                    state.held.store(false, Ordering::Relaxed);
                    return true;
                }
            }
            tokio::select! {
                biased;
                () = state.token().cancelled() => return false,
                () = freed => {}
            }
        }
    }

    pub(crate) fn get(&self, instance_id: i64, attempt: i32) -> Option<Arc<InstanceState>> {
        lock(&self.table)
            .running
            .get(&(instance_id, attempt))
            .cloned()
    }

    /// Every attempt of `instance_id` the worker holds.
    fn attempts_of(&self, instance_id: i64) -> Vec<Arc<InstanceState>> {
        lock(&self.table)
            .running
            .values()
            .filter(|s| s.instance_id == instance_id)
            .cloned()
            .collect()
    }

    /// Stops every attempt of an instance; returns whether any was running.
    pub(crate) fn stop(&self, instance_id: i64, cause: StopCause) -> bool {
        // Every attempt is stopped, so this must not short-circuit.
        let mut any = false;
        for state in self.attempts_of(instance_id) {
            any |= state.stop(cause);
        }
        any
    }

    /// What the worker knows about the latest attempt of an instance.
    pub(crate) fn query(&self, instance_id: i64) -> Option<InstanceRuntime> {
        self.attempts_of(instance_id)
            .iter()
            .max_by_key(|s| s.attempt)
            .map(|s| s.runtime())
    }

    /// The ids of the instances running now (not those held for later), for the heartbeat.
    pub(crate) fn running_ids(&self) -> Vec<i64> {
        self.ids(false)
    }

    /// Every attempt in the table, running or held, for the heartbeat.
    pub(crate) fn attempts(&self) -> Vec<rota_shared::message::AttemptRef> {
        let mut attempts: Vec<_> = lock(&self.table)
            .running
            .keys()
            .map(|(instance_id, attempt)| rota_shared::message::AttemptRef {
                instance_id: *instance_id,
                attempt: *attempt,
            })
            .collect();
        attempts.sort_unstable_by_key(|a| (a.instance_id, a.attempt));
        attempts
    }

    /// The ids of the fires held for their instant, for the heartbeat.
    pub(crate) fn held_ids(&self) -> Vec<i64> {
        self.ids(true)
    }

    fn ids(&self, held: bool) -> Vec<i64> {
        let mut ids: Vec<i64> = lock(&self.table)
            .running
            .iter()
            .filter(|(_, s)| s.is_held() == held)
            .map(|((id, _), _)| *id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub(crate) fn all(&self) -> Vec<Arc<InstanceState>> {
        lock(&self.table).running.values().cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        lock(&self.table).running.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(instance_id: i64, attempt: i32) -> DispatchRequest {
        DispatchRequest {
            server_id: "s1".to_owned(),
            app_id: 1,
            job_id: 1,
            job_name: "j".to_owned(),
            instance_id,
            attempt,
            processor: "p".to_owned(),
            config: String::new(),
            job_params: None,
            instance_params: None,
            timeout_ms: 0,
            expected_trigger_time_ms: None,
            frequent: None,
            deadline_ms: None,
            start_at_ms: None,
            execution: Default::default(),
            task_retries: 0,
            container: None,
        }
    }

    const OPEN: Gate = Gate {
        accepting: true,
        processor_known: true,
        capacity: 2,
        max_held: 2,
    };

    #[test]
    fn admission_checks_duplicates_capacity_and_gate() {
        let table = Instances::new(100);
        assert!(matches!(
            table.admit(&req(1, 1), &OPEN, 0),
            Admission::Accepted(_)
        ));
        assert!(matches!(
            table.admit(&req(1, 1), &OPEN, 0),
            Admission::Duplicate
        ));
        assert!(matches!(
            table.admit(&req(2, 1), &OPEN, 0),
            Admission::Accepted(_)
        ));
        match table.admit(&req(3, 1), &OPEN, 0) {
            Admission::Rejected(reason) => assert_eq!(reason, "overloaded"),
            other => panic!("{other:?}"),
        }
        let unknown = Gate {
            processor_known: false,
            ..OPEN
        };
        match table.admit(&req(4, 1), &unknown, 0) {
            Admission::Rejected(reason) => assert_eq!(reason, "unknown processor p"),
            other => panic!("{other:?}"),
        }
        let closed = Gate {
            accepting: false,
            ..OPEN
        };
        match table.admit(&req(5, 1), &closed, 0) {
            Admission::Rejected(reason) => assert_eq!(reason, "shutting down"),
            other => panic!("{other:?}"),
        }
        // A finished attempt frees its slot but is still remembered as seen.
        table.remove(1, 1);
        assert!(matches!(
            table.admit(&req(1, 1), &OPEN, 0),
            Admission::Duplicate
        ));
        assert!(matches!(
            table.admit(&req(3, 1), &OPEN, 0),
            Admission::Accepted(_)
        ));
        assert_eq!(table.running_ids(), vec![2, 3]);
    }

    #[tokio::test]
    async fn held_fires_take_no_slot_until_their_instant_and_then_wait_for_one() {
        let table = Instances::new(100);
        let later = |id| DispatchRequest {
            start_at_ms: Some(10_000),
            ..req(id, 1)
        };
        // Two held fires and two running instances fit a capacity of two.
        let Admission::Accepted(first_held) = table.admit(&later(1), &OPEN, 0) else {
            panic!("a held fire is accepted");
        };
        assert!(matches!(
            table.admit(&later(2), &OPEN, 0),
            Admission::Accepted(_)
        ));
        match table.admit(&later(3), &OPEN, 0) {
            Admission::Rejected(reason) => assert!(reason.contains("holding"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            table.admit(&req(4, 1), &OPEN, 0),
            Admission::Accepted(_)
        ));
        assert!(matches!(
            table.admit(&req(5, 1), &OPEN, 0),
            Admission::Accepted(_)
        ));
        assert_eq!(table.held_ids(), vec![1, 2]);
        assert_eq!(table.running_ids(), vec![4, 5]);

        // At its instant the held fire waits for a slot, and takes the first one freed.
        let waiting = table.take_slot(&first_held, OPEN.capacity);
        tokio::pin!(waiting);
        assert!(
            futures::poll!(&mut waiting).is_pending(),
            "both slots are taken"
        );
        table.remove(4, 1);
        assert!(waiting.await, "a freed slot is taken");
        assert_eq!(table.running_ids(), vec![1, 5]);
        assert_eq!(table.held_ids(), vec![2]);

        // A held fire stopped while it waits for a slot gives up.
        let Admission::Accepted(second_held) = table.admit(&later(6), &OPEN, 0) else {
            panic!("room for one more held fire");
        };
        second_held.stop(StopCause::Stop);
        assert!(!table.take_slot(&second_held, OPEN.capacity).await);
    }

    #[test]
    fn expired_dispatches_are_refused_and_not_remembered() {
        let table = Instances::new(100);
        let late = DispatchRequest {
            deadline_ms: Some(1_000),
            ..req(1, 1)
        };
        assert!(!expired(&req(1, 1), i64::MAX), "no deadline, no expiry");
        assert!(
            !expired(&late, 1_000),
            "the deadline itself is still in time"
        );
        assert!(expired(&late, 1_001));

        match table.admit(&late, &OPEN, 1_001) {
            Admission::Rejected(reason) => assert_eq!(reason, "dispatch expired"),
            other => panic!("{other:?}"),
        }
        assert!(
            table.running_ids().is_empty(),
            "an expired dispatch takes no slot"
        );
        // Not remembered as accepted: the same attempt in time is accepted, not a duplicate.
        assert!(matches!(
            table.admit(&late, &OPEN, 999),
            Admission::Accepted(_)
        ));
        // A repeat of an attempt already accepted is still a duplicate, late or not.
        assert!(matches!(
            table.admit(&late, &OPEN, 5_000),
            Admission::Duplicate
        ));
    }

    #[test]
    fn frequent_dispatches_are_marked_and_answers_are_kept() {
        let table = Instances::new(100);
        let frequent = DispatchRequest {
            frequent: Some(rota_shared::message::Frequent {
                mode: rota_shared::message::FrequentMode::FixedRate,
                interval_ms: 50,
                lifecycle_end_ms: None,
            }),
            ..req(2, 1)
        };
        let Admission::Accepted(state) = table.admit(&frequent, &OPEN, 0) else {
            panic!("not accepted");
        };
        assert!(state.frequent);
        let Admission::Accepted(plain) = table.admit(&req(3, 1), &OPEN, 0) else {
            panic!("not accepted");
        };
        assert!(!plain.frequent);

        assert_eq!(state.answered_seq(), 0);
        state.note_answered(3);
        state.note_answered(2);
        assert_eq!(
            state.answered_seq(),
            3,
            "a late answer to an older report counts less"
        );
    }

    #[test]
    fn stop_and_query_follow_the_instance() {
        let table = Instances::new(100);
        let Admission::Accepted(state) = table.admit(&req(7, 1), &OPEN, 1000) else {
            panic!("not accepted");
        };
        assert_eq!(state.next_seq(), 1);
        assert_eq!(state.next_seq(), 2);
        let rt = table.query(7).unwrap();
        assert_eq!(
            (rt.attempt, rt.status, rt.last_seq),
            (1, InstanceStatus::Running, 2)
        );
        assert!(table.query(8).is_none());

        assert!(table.stop(7, StopCause::Stop));
        assert!(state.token().is_cancelled());
        // The first cause stays.
        assert!(table.stop(7, StopCause::Shutdown));
        assert_eq!(state.cause(), Some(StopCause::Stop));
        state.finish(InstanceStatus::Stopped);
        assert!(
            !table.stop(7, StopCause::Stop),
            "an ended attempt is not running"
        );
        assert!(!table.stop(99, StopCause::Stop));
    }
}
