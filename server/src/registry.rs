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

    /// Records a heartbeat of a worker of app `app_id` (the gate verified both).
    pub fn record(&self, app_id: i64, heartbeat: WorkerHeartbeat) {
        let mut apps = self.apps.lock().unwrap_or_else(|e| e.into_inner());
        let workers = apps.entry(app_id).or_default();
        workers.insert(
            heartbeat.worker_id.clone(),
            Entry {
                app_id,
                heartbeat,
                last_seen: Instant::now(),
            },
        );
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

    /// The live workers that may run `job`, in the order its dispatch strategy tries them.
    pub fn candidates(&self, job: &Job) -> Vec<WorkerSummary> {
        let mut eligible: Vec<WorkerSummary> = self
            .live(Some(job.app_id))
            .into_iter()
            .filter(|w| may_run(w, job))
            .collect();
        match job.spec.dispatch {
            DispatchStrategy::HealthFirst => {
                eligible.sort_by(|a, b| b.health.total_cmp(&a.health));
            }
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

/// A worker may run a job when it has the processor, all the job's tags, is designated (if the
/// job names workers) and has a free slot by its last heartbeat.
fn may_run(w: &WorkerSummary, job: &Job) -> bool {
    w.processors.contains(&job.spec.processor)
        && job.spec.tags.iter().all(|t| w.tags.contains(t))
        && (job.spec.designated_workers.is_empty()
            || job.spec.designated_workers.contains(&w.worker_id))
        && w.running < w.capacity
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
        health: hb.metrics.health_score(),
        metrics: hb.metrics.clone(),
        version: hb.version.clone(),
        last_seen_ago_ms: u64::try_from(now.duration_since(e.last_seen).as_millis())
            .unwrap_or(u64::MAX),
    }
}
