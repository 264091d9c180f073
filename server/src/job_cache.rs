//! Jobs read in the last second: dispatches and report batches need them for every instance,
//! and they change rarely. A change made on this server drops its entry at once; one made on
//! another server is seen within [`JOB_CACHE_TTL`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::store::{Job, Store, StoreError};

/// How long a cached job is used before it is read again.
pub const JOB_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(1);
/// Above this many entries, stale ones are dropped.
const JOB_CACHE_MAX: usize = 100_000;

pub struct JobCache {
    store: Store,
    entries: Mutex<HashMap<i64, (Instant, Arc<Job>)>>,
}

impl JobCache {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            entries: Mutex::default(),
        }
    }

    /// Jobs by id, from the cache where fresh; jobs that do not exist are left out.
    pub async fn jobs(&self, ids: &[i64]) -> Result<HashMap<i64, Arc<Job>>, StoreError> {
        let mut found = HashMap::with_capacity(ids.len());
        let mut missing = Vec::new();
        {
            let cache = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            for id in ids {
                match cache.get(id) {
                    Some((at, job)) if at.elapsed() < JOB_CACHE_TTL => {
                        found.insert(*id, job.clone());
                    }
                    _ => missing.push(*id),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if !missing.is_empty() {
            let loaded = self.store.jobs_by_ids(&missing).await?;
            let now = Instant::now();
            let mut cache = self.entries.lock().unwrap_or_else(|e| e.into_inner());
            if cache.len() > JOB_CACHE_MAX {
                cache.retain(|_, (at, _)| at.elapsed() < JOB_CACHE_TTL);
            }
            for job in loaded {
                let job = Arc::new(job);
                cache.insert(job.id, (now, job.clone()));
                found.insert(job.id, job);
            }
        }
        Ok(found)
    }

    /// One job, from the cache where fresh.
    pub async fn job(&self, id: i64) -> Result<Arc<Job>, StoreError> {
        self.jobs(&[id])
            .await?
            .remove(&id)
            .ok_or_else(|| StoreError::NotFound(format!("job {id}")))
    }

    /// Drops a job from the cache after this server changed it.
    pub fn forget(&self, id: i64) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }
}
