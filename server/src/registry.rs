//! The live workers a server has heard from, per app. In memory only: liveness is the time the
//! server received the last heartbeat, on the server's own clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::seq::SliceRandom;
use rota_shared::admin::DispatchStrategy;
use rota_shared::message::{WorkerHeartbeat, WorkerSummary};
use tokio::time::Instant;

use crate::store::Job;

struct Entry {
    app_id: i64,
    heartbeat: WorkerHeartbeat,
    last_seen: Instant,
    /// Dispatches handed to it since this heartbeat.
    handed: u32,
}

/// What a heartbeat told about its worker's process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// The same process as the last heartbeat.
    Known,
    /// A worker this server has not heard from (or not within its timeout).
    New,
    /// The same worker id from a new process: the old one's work is gone.
    Restarted,
}

pub struct WorkerRegistry {
    timeout: Duration,
    apps: Mutex<HashMap<i64, HashMap<String, Entry>>>,
    round_robin: Mutex<HashMap<i64, usize>>,
}

impl WorkerRegistry {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            apps: Mutex::new(HashMap::new()),
            round_robin: Mutex::new(HashMap::new()),
        }
    }

    /// Records a heartbeat of a worker of app `app_id` (the gate verified both), and says
    /// whether this server knew the worker's process already.
    pub fn record(&self, app_id: i64, heartbeat: WorkerHeartbeat) -> Seen {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let workers = apps.entry(app_id).or_default();
        let seen = match workers.get(&heartbeat.worker_id) {
            None => Seen::New,
            Some(e) if e.heartbeat.incarnation != heartbeat.incarnation => Seen::Restarted,
            Some(_) => Seen::Known,
        };
        workers.insert(
            heartbeat.worker_id.clone(),
            Entry {
                app_id,
                heartbeat,
                last_seen: Instant::now(),
                handed: 0,
            },
        );
        seen
    }

    /// Counts a dispatch handed to a worker, so that the next choice, before its heartbeat
    /// says how busy it is, sees it busier: a burst is spread instead of all going to the
    /// worker that looked best a moment ago.
    pub fn note_handed(&self, app_id: i64, worker_id: &str) {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = apps.get_mut(&app_id).and_then(|w| w.get_mut(worker_id)) {
            entry.handed = entry.handed.saturating_add(1);
        }
    }

    /// Live workers of an app (all apps with `None`), dropping the dead ones.
    pub fn live(&self, app_id: Option<i64>) -> Vec<WorkerSummary> {
        let now = Instant::now();
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (id, workers) in apps.iter_mut() {
            workers.retain(|_, e| now.duration_since(e.last_seen) <= self.timeout);
            if app_id.is_none_or(|a| a == *id) {
                out.extend(workers.values().map(|e| summary(e, now)));
            }
        }
        out.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        out
    }

    /// How many live workers each app has, without building their summaries (for `/metrics`,
    /// which reads it at every scrape).
    pub fn live_counts(&self) -> HashMap<i64, u64> {
        let now = Instant::now();
        let apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        apps.iter()
            .map(|(id, workers)| {
                let live = workers
                    .values()
                    .filter(|e| now.duration_since(e.last_seen) <= self.timeout)
                    .count();
                (*id, live as u64)
            })
            .collect()
    }

    /// The live workers eligible for `job`'s tasks (the cluster query of a distributed
    /// instance's master): tasks take no instance slot, so free capacity does not matter.
    pub fn eligible(&self, job: &Job) -> Vec<WorkerSummary> {
        self.live(Some(job.app_id))
            .into_iter()
            .filter(|w| eligible(w, job))
            .collect()
    }

    /// The live workers that may run `job`, in the order its dispatch strategy tries them.
    pub fn candidates(&self, job: &Job) -> Vec<WorkerSummary> {
        let mut eligible: Vec<WorkerSummary> = self
            .live(Some(job.app_id))
            .into_iter()
            .filter(|w| may_run(w, job))
            .collect();
        match job.spec.dispatch {
            DispatchStrategy::HealthFirst => spread(&mut eligible),
            DispatchStrategy::Random => eligible.shuffle(&mut rand::rng()),
            DispatchStrategy::RoundRobin => {
                if !eligible.is_empty() {
                    let mut rr = self.round_robin.lock().unwrap_or_else(|e| e.into_inner());
                    let next = rr.entry(job.id).or_insert(0);
                    let start = *next % eligible.len();
                    *next = next.wrapping_add(1);
                    eligible.rotate_left(start);
                }
            }
        }
        eligible
    }
}

/// Orders workers for a health-first dispatch: by free capacity weighted by health, counting
/// what was handed to each since its heartbeat (and the fires it holds), then by that load
/// alone, so that equally healthy workers take turns.
pub fn spread(workers: &mut [WorkerSummary]) {
    let load = |w: &WorkerSummary| {
        let busy = w.running.saturating_add(w.held).saturating_add(w.handed);
        match w.capacity {
            0 => f64::INFINITY,
            c => f64::from(busy) / f64::from(c),
        }
    };
    let score = |w: &WorkerSummary| w.health * (1.0 - load(w)).max(0.0);
    workers.sort_by(|a, b| {
        score(b)
            .total_cmp(&score(a))
            .then(load(a).total_cmp(&load(b)))
    });
}

/// A worker may run a job when it has the processor, all the job's tags, is designated (if the
/// job names workers) and has a free slot by its last heartbeat.
/// Whether a worker may run the job's work at all: it offers the processor and meets the
/// job's tags and designated workers.
fn eligible(w: &WorkerSummary, job: &Job) -> bool {
    w.processors.contains(&job.spec.processor)
        && job.spec.tags.iter().all(|t| w.tags.contains(t))
        && (job.spec.designated_workers.is_empty()
            || job.spec.designated_workers.contains(&w.worker_id))
}

/// Whether a worker may take an instance of the job now: eligible, with a free slot.
fn may_run(w: &WorkerSummary, job: &Job) -> bool {
    eligible(w, job) && w.running < w.capacity
}

fn summary(e: &Entry, now: Instant) -> WorkerSummary {
    let hb = &e.heartbeat;
    WorkerSummary {
        worker_id: hb.worker_id.clone(),
        app_id: e.app_id,
        tags: hb.tags.clone(),
        processors: hb.processors.clone(),
        capacity: hb.capacity,
        running: u32::try_from(hb.running.len()).unwrap_or(u32::MAX),
        held: u32::try_from(hb.held.len()).unwrap_or(u32::MAX),
        handed: e.handed,
        health: hb.metrics.health_score(),
        metrics: hb.metrics.clone(),
        version: hb.version.clone(),
        last_seen_ago_ms: u64::try_from(now.duration_since(e.last_seen).as_millis())
            .unwrap_or(u64::MAX),
        containers: hb.containers.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, health: f64, running: u32, handed: u32) -> WorkerSummary {
        WorkerSummary {
            worker_id: id.to_owned(),
            app_id: 1,
            tags: vec![],
            processors: vec![],
            capacity: 16,
            running,
            held: 0,
            handed,
            health,
            metrics: Default::default(),
            version: String::new(),
            last_seen_ago_ms: 0,
            containers: Vec::new(),
        }
    }

    fn heartbeat(id: &str) -> WorkerHeartbeat {
        WorkerHeartbeat {
            worker_id: id.to_owned(),
            tags: vec![],
            processors: vec!["p".to_owned()],
            capacity: 16,
            running: vec![],
            held: vec![],
            attempts: vec![],
            incarnation: String::new(),
            metrics: Default::default(),
            version: String::new(),
            dropped_log_lines: 0,
            containers: Vec::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn live_counts_leave_out_the_workers_not_heard_within_the_timeout() {
        let registry = WorkerRegistry::new(Duration::from_secs(9));
        registry.record(1, heartbeat("a"));
        registry.record(1, heartbeat("b"));
        registry.record(2, heartbeat("c"));
        tokio::time::advance(Duration::from_secs(5)).await;
        registry.record(1, heartbeat("b"));
        assert_eq!(registry.live_counts(), HashMap::from([(1, 2), (2, 1)]));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(
            registry.live_counts(),
            HashMap::from([(1, 1), (2, 0)]),
            "a and c were last heard 10 s ago"
        );
        assert_eq!(registry.live(None).len(), 1, "the same view as `live`");
    }

    fn order(workers: &mut [WorkerSummary]) -> Vec<String> {
        spread(workers);
        workers.iter().map(|w| w.worker_id.clone()).collect()
    }

    #[test]
    fn the_healthiest_worker_goes_first_only_while_it_is_not_busier() {
        // Equally loaded: health decides.
        let mut ws = [worker("a", 60.0, 0, 0), worker("b", 90.0, 0, 0)];
        assert_eq!(order(&mut ws), ["b", "a"]);
        // A slightly healthier worker that already got half its capacity gives way.
        let mut ws = [worker("a", 88.0, 0, 0), worker("b", 90.0, 0, 8)];
        assert_eq!(order(&mut ws), ["a", "b"]);
    }

    #[test]
    fn a_burst_takes_turns_over_equal_workers() {
        let registry = WorkerRegistry::new(Duration::from_secs(60));
        for id in ["a", "b", "c"] {
            registry.record(1, heartbeat(id));
        }
        let mut first_choices = Vec::new();
        for _ in 0..9 {
            let mut ws = registry.live(Some(1));
            spread(&mut ws);
            let chosen = ws[0].worker_id.clone();
            registry.note_handed(1, &chosen);
            first_choices.push(chosen);
        }
        let count = |id: &str| first_choices.iter().filter(|c| *c == id).count();
        assert_eq!(
            (count("a"), count("b"), count("c")),
            (3, 3, 3),
            "{first_choices:?}"
        );

        // A heartbeat says how busy the worker really is: its count starts again.
        registry.record(1, heartbeat("a"));
        let mut ws = registry.live(Some(1));
        spread(&mut ws);
        assert_eq!(ws[0].worker_id, "a");
    }
}
