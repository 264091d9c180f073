//! The master's tasks: every task of a distributed instance's attempt, kept in an embedded
//! store (redb) in a file of its own on the master's disk, so that a map of a million sub-tasks
//! keeps the master's memory bounded. In memory are only the ids of the tasks waiting for a
//! worker (8 bytes each) and the counts; names, payloads, states and results are on disk.
//!
//! The store belongs to one attempt: the master's death loses the attempt, which the server
//! retries like any instance, so nothing here is made to survive a crash (commits are not
//! synced) and the file is removed when the store is dropped.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, TableDefinition};
use rota_shared::task::{
    Shard, Task, TaskCounts, TaskInfo, TaskNext, TaskResult, TaskStatus, WorkerShare, after_task,
};
use serde::{Deserialize, Serialize};

const TASKS: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("tasks");

/// The store's page cache: small, because tasks are written once, read once when handed out
/// and once when they end, mostly in id order.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// Why the task store failed (the disk is full or unreadable, a record does not decode).
#[derive(Debug, thiserror::Error)]
#[error("task store: {0}")]
pub struct StoreError(String);

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        Self(e.to_string())
    }
}

macro_rules! from_redb {
    ($($ty:ty),*) => {$(
        impl From<$ty> for StoreError {
            fn from(e: $ty) -> Self {
                Self(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    serde_json::Error,
    std::io::Error
);

pub(crate) type StoreResult<T> = Result<T, StoreError>;

/// A task as it is kept.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    name: String,
    #[serde(default)]
    payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<Shard>,
    status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    worker: Option<String>,
    attempts: u32,
    /// Attempts that failed (attempts lost with their worker are not failures).
    #[serde(default)]
    failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    result: Option<String>,
}

/// A task to add.
#[derive(Debug, Clone)]
pub(crate) struct NewTask {
    pub name: String,
    pub payload: String,
    pub shard: Option<Shard>,
}

/// What became of one reported result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Applied {
    /// It ended the task (succeeded or failed for good).
    Finished,
    /// The task failed and is to run again: back in the queue, or, when `pinned`, to be sent
    /// again to the same worker (the caller does that).
    Retry { id: u64 },
    /// Not the task's current attempt on that worker (late, repeated, or not given to it):
    /// it changes nothing.
    Stale,
}

/// One finished task, as `reduce` and `post` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskOutput {
    pub id: u64,
    pub name: String,
    pub success: bool,
    pub result: String,
    /// The worker whose attempt ended it.
    pub worker_id: String,
}

/// The tasks of one attempt.
pub(crate) struct TaskStore {
    db: Arc<Database>,
    path: PathBuf,
    next_id: u64,
    pending: VecDeque<u64>,
    counts: Counts,
    task_retries: u32,
    /// Tasks that go back to their worker when they are run again (broadcast).
    pinned: bool,
}

#[derive(Debug, Default)]
struct Counts {
    total: u64,
    succeeded: u64,
    failed: u64,
    running: u64,
    shares: BTreeMap<String, (u64, u64)>,
}

impl TaskStore {
    /// Creates the store in a new file under `dir`.
    pub(crate) fn create(dir: &Path, task_retries: u32, pinned: bool) -> StoreResult<Self> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(format!("rota-tasks-{}.redb", uuid::Uuid::new_v4()));
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)?;
        Ok(Self {
            db: Arc::new(db),
            path,
            // Task ids start at 1: 0 is the root task, which runs on the master and is not kept.
            next_id: 1,
            pending: VecDeque::new(),
            counts: Counts::default(),
            task_retries,
            pinned,
        })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&mut redb::Table<'_, u64, &'static [u8]>) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut txn = self.db.begin_write()?;
        // The file dies with the attempt: no commit needs to reach the disk.
        txn.set_durability(Durability::Eventual);
        let out = {
            let mut table = txn.open_table(TASKS)?;
            f(&mut table)?
        };
        txn.commit()?;
        Ok(out)
    }

    /// Adds tasks, waiting for a worker; returns their ids.
    pub(crate) fn add(&mut self, tasks: Vec<NewTask>) -> StoreResult<Vec<u64>> {
        let first = self.next_id;
        let added = tasks.len() as u64;
        self.write(|table| {
            for (i, t) in tasks.into_iter().enumerate() {
                let record = Record {
                    name: t.name,
                    payload: t.payload,
                    shard: t.shard,
                    status: TaskStatus::Pending,
                    worker: None,
                    attempts: 0,
                    failures: 0,
                    result: None,
                };
                table.insert(first + i as u64, serde_json::to_vec(&record)?.as_slice())?;
            }
            Ok(())
        })?;
        self.next_id += added;
        self.counts.total += added;
        let ids: Vec<u64> = (first..self.next_id).collect();
        // A pinned task is handed to its own worker by id (`take_ids`), never from the queue.
        if !self.pinned {
            self.pending.extend(&ids);
        }
        Ok(ids)
    }

    /// Tasks waiting for a worker.
    pub(crate) fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Hands up to `n` waiting tasks to `worker`, each with its next attempt number.
    pub(crate) fn take(&mut self, n: usize, worker: &str) -> StoreResult<Vec<Task>> {
        let n = n.min(self.pending.len());
        let ids: Vec<u64> = self.pending.drain(..n).collect();
        self.take_ids(&ids, worker)
    }

    /// Hands these tasks to `worker` (a broadcast task to its own worker).
    pub(crate) fn take_ids(&mut self, ids: &[u64], worker: &str) -> StoreResult<Vec<Task>> {
        let tasks = self.write(|table| {
            let mut tasks = Vec::with_capacity(ids.len());
            for &id in ids {
                let Some(mut record) = get(table, id)? else {
                    continue;
                };
                record.status = TaskStatus::Running;
                record.attempts += 1;
                record.worker = Some(worker.to_owned());
                table.insert(id, serde_json::to_vec(&record)?.as_slice())?;
                tasks.push(Task {
                    id,
                    attempt: record.attempts,
                    name: record.name,
                    payload: record.payload,
                    shard: record.shard,
                });
            }
            Ok(tasks)
        })?;
        self.counts.running += tasks.len() as u64;
        Ok(tasks)
    }

    /// Applies results reported by `worker`: a result counts only for the task's current
    /// attempt on that worker.
    pub(crate) fn finish(
        &mut self,
        worker: &str,
        results: &[TaskResult],
    ) -> StoreResult<Vec<Applied>> {
        let retries = self.task_retries;
        let mut finished = Vec::new();
        let applied = self.write(|table| {
            let mut applied = Vec::with_capacity(results.len());
            for r in results {
                let current = get(table, r.id)?.filter(|rec| {
                    rec.status == TaskStatus::Running
                        && rec.attempts == r.attempt
                        && rec.worker.as_deref() == Some(worker)
                });
                let Some(mut record) = current else {
                    applied.push(Applied::Stale);
                    continue;
                };
                record.result = Some(r.result.clone());
                if !r.success {
                    record.failures += 1;
                }
                let next = after_task(r.success, record.failures, retries);
                record.status = match next {
                    TaskNext::Succeeded => TaskStatus::Succeeded,
                    TaskNext::Failed => TaskStatus::Failed,
                    TaskNext::Retry => TaskStatus::Pending,
                };
                table.insert(r.id, serde_json::to_vec(&record)?.as_slice())?;
                applied.push(match next {
                    TaskNext::Retry => Applied::Retry { id: r.id },
                    _ => {
                        finished.push(next == TaskNext::Succeeded);
                        Applied::Finished
                    }
                });
            }
            Ok(applied)
        })?;
        let ended = applied.iter().filter(|a| **a != Applied::Stale).count() as u64;
        self.counts.running = self.counts.running.saturating_sub(ended);
        if !self.pinned {
            for a in &applied {
                if let Applied::Retry { id } = a {
                    self.pending.push_back(*id);
                }
            }
        }
        if finished.is_empty() {
            return Ok(applied);
        }
        let share = self.counts.shares.entry(worker.to_owned()).or_default();
        for ok in finished {
            if ok {
                self.counts.succeeded += 1;
                share.0 += 1;
            } else {
                self.counts.failed += 1;
                share.1 += 1;
            }
        }
        Ok(applied)
    }

    /// Whether `worker` may emit sub-tasks as task `parent` at `attempt`: only while that
    /// attempt runs there.
    pub(crate) fn may_map(&self, parent: u64, attempt: u32, worker: &str) -> StoreResult<bool> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        let record: Option<Record> = match table.get(parent)? {
            Some(value) => Some(serde_json::from_slice(value.value())?),
            None => None,
        };
        Ok(record.is_some_and(|r| {
            r.status == TaskStatus::Running
                && r.attempts == attempt
                && r.worker.as_deref() == Some(worker)
        }))
    }

    /// Tasks whose worker was lost: waiting again, for another worker (their next attempt is
    /// not a retry: they did not fail). Tasks that are no longer running are left alone.
    pub(crate) fn requeue(&mut self, ids: &[u64]) -> StoreResult<()> {
        let back = self.write(|table| {
            let mut back = Vec::new();
            for &id in ids {
                if let Some(mut record) = get(table, id)?
                    && record.status == TaskStatus::Running
                {
                    record.status = TaskStatus::Pending;
                    table.insert(id, serde_json::to_vec(&record)?.as_slice())?;
                    back.push(id);
                }
            }
            Ok(back)
        })?;
        self.counts.running = self.counts.running.saturating_sub(back.len() as u64);
        self.pending.extend(back);
        Ok(())
    }

    /// Tasks that cannot run anywhere else (a broadcast task whose worker was lost): failed,
    /// with `reason` as their result.
    pub(crate) fn fail(&mut self, ids: &[u64], reason: &str) -> StoreResult<()> {
        let failed = self.write(|table| {
            let mut failed = Vec::new();
            for &id in ids {
                if let Some(mut record) = get(table, id)?
                    && !record.status.is_finished()
                {
                    let was_running = record.status == TaskStatus::Running;
                    record.status = TaskStatus::Failed;
                    record.result = Some(reason.to_owned());
                    table.insert(id, serde_json::to_vec(&record)?.as_slice())?;
                    failed.push((was_running, record.worker.unwrap_or_default()));
                }
            }
            Ok(failed)
        })?;
        for (was_running, worker) in failed {
            if was_running {
                self.counts.running = self.counts.running.saturating_sub(1);
            }
            self.counts.failed += 1;
            self.counts.shares.entry(worker).or_default().1 += 1;
        }
        Ok(())
    }

    /// Where the tasks stand.
    pub(crate) fn counts(&self) -> TaskCounts {
        TaskCounts {
            total: self.counts.total,
            succeeded: self.counts.succeeded,
            failed: self.counts.failed,
            running: self.counts.running,
            workers: self
                .counts
                .shares
                .iter()
                .map(|(w, (ok, failed))| WorkerShare {
                    worker_id: w.clone(),
                    succeeded: *ok,
                    failed: *failed,
                })
                .collect(),
        }
    }

    /// Whether every task ended.
    pub(crate) fn all_finished(&self) -> bool {
        self.counts.succeeded + self.counts.failed == self.counts.total
    }

    /// A page of tasks in id order, after `after`.
    pub(crate) fn page(&self, after: Option<u64>, limit: usize) -> StoreResult<Vec<TaskInfo>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut page = Vec::new();
        for entry in table.range(start..)?.take(limit) {
            let (id, value) = entry?;
            let record: Record = serde_json::from_slice(value.value())?;
            page.push(TaskInfo {
                id: id.value(),
                name: record.name,
                status: record.status,
                worker_id: record.worker,
                attempts: record.attempts,
                result: record.result,
            });
        }
        Ok(page)
    }

    /// The results of the finished tasks, read from the store as they are iterated.
    pub(crate) fn results(&self) -> TaskResults {
        TaskResults {
            db: Arc::clone(&self.db),
            counts: self.counts(),
        }
    }
}

impl Drop for TaskStore {
    fn drop(&mut self) {
        // The database file is closed once the last `TaskResults` is gone too; on Linux the
        // name can go now.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn get(table: &redb::Table<'_, u64, &'static [u8]>, id: u64) -> StoreResult<Option<Record>> {
    match table.get(id)? {
        Some(value) => Ok(Some(serde_json::from_slice(value.value())?)),
        None => Ok(None),
    }
}

/// The finished tasks of a distributed instance, for `reduce` and broadcast's `post`: iterated
/// from the master's task store a chunk at a time, so that a million results need not fit in
/// memory at once.
#[derive(Clone)]
pub struct TaskResults {
    db: Arc<Database>,
    counts: TaskCounts,
}

/// Results read from the store in one go.
const RESULTS_CHUNK: usize = 4_096;

impl TaskResults {
    /// How many tasks finished.
    pub fn len(&self) -> u64 {
        self.counts.succeeded + self.counts.failed
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The tasks' counts, and each worker's share.
    pub fn counts(&self) -> &TaskCounts {
        &self.counts
    }

    /// Every finished task in id order. A task store that cannot be read ends the iteration
    /// early; [`TaskResults::try_iter`] says so.
    pub fn iter(&self) -> impl Iterator<Item = TaskOutput> + '_ {
        self.try_iter().map_while(Result::ok)
    }

    /// Every finished task in id order, or the error that stopped the reading.
    pub fn try_iter(&self) -> impl Iterator<Item = Result<TaskOutput, StoreError>> + '_ {
        let mut after: Option<u64> = None;
        let mut chunk: std::vec::IntoIter<TaskOutput> = Vec::new().into_iter();
        let mut done = false;
        std::iter::from_fn(move || {
            loop {
                if let Some(next) = chunk.next() {
                    return Some(Ok(next));
                }
                if done {
                    return None;
                }
                match self.chunk(after) {
                    Ok((outputs, last)) => {
                        done = last.is_none();
                        // The next chunk starts after the last record read, finished or not.
                        if last.is_some() {
                            after = last;
                        }
                        chunk = outputs.into_iter();
                    }
                    Err(e) => {
                        done = true;
                        return Some(Err(e));
                    }
                }
            }
        })
    }

    /// Up to [`RESULTS_CHUNK`] records after `after`: the finished ones, and the last id read
    /// (`None` when there were no more).
    fn chunk(&self, after: Option<u64>) -> StoreResult<(Vec<TaskOutput>, Option<u64>)> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(TASKS)?;
        let start = after.map_or(0, |a| a.saturating_add(1));
        let mut out = Vec::new();
        let mut last = None;
        for entry in table.range(start..)?.take(RESULTS_CHUNK) {
            let (id, value) = entry?;
            last = Some(id.value());
            let record: Record = serde_json::from_slice(value.value())?;
            if record.status.is_finished() {
                out.push(TaskOutput {
                    id: id.value(),
                    name: record.name,
                    success: record.status == TaskStatus::Succeeded,
                    result: record.result.unwrap_or_default(),
                    worker_id: record.worker.unwrap_or_default(),
                });
            }
        }
        Ok((out, last))
    }
}

impl std::fmt::Debug for TaskResults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskResults")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(n: usize) -> Vec<NewTask> {
        (0..n)
            .map(|i| NewTask {
                name: "sub".into(),
                payload: i.to_string(),
                shard: None,
            })
            .collect()
    }

    fn result(t: &Task, success: bool) -> TaskResult {
        TaskResult {
            id: t.id,
            attempt: t.attempt,
            success,
            result: format!("r{}", t.payload),
        }
    }

    #[test]
    fn tasks_are_handed_out_once_and_counted() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = TaskStore::create(dir.path(), 0, false).expect("a store");
        assert_eq!(store.add(new(5)).expect("added"), vec![1, 2, 3, 4, 5]);
        let a = store.take(3, "w1").expect("taken");
        let b = store.take(10, "w2").expect("taken");
        assert_eq!(a.len() + b.len(), 5);
        assert_eq!(store.pending(), 0);
        assert!(a.iter().all(|t| t.attempt == 1));
        assert_eq!(store.counts().running, 5);

        let results: Vec<TaskResult> = a.iter().map(|t| result(t, true)).collect();
        // A result from a worker the task was not given to changes nothing.
        assert_eq!(
            store.finish("w2", &results[..1]).expect("applied"),
            vec![Applied::Stale]
        );
        assert_eq!(
            store.finish("w1", &results).expect("applied"),
            vec![Applied::Finished; 3]
        );
        // A repeat is stale.
        assert_eq!(
            store.finish("w1", &results[..1]).expect("applied"),
            vec![Applied::Stale]
        );
        let failed: Vec<TaskResult> = b.iter().map(|t| result(t, false)).collect();
        store.finish("w2", &failed).expect("applied");
        let counts = store.counts();
        assert_eq!(
            (
                counts.total,
                counts.succeeded,
                counts.failed,
                counts.running
            ),
            (5, 3, 2, 0)
        );
        assert_eq!(counts.workers.len(), 2);
        assert!(store.all_finished());
        let outputs: Vec<TaskOutput> = store.results().iter().collect();
        assert_eq!(outputs.len(), 5);
        assert_eq!(outputs.iter().filter(|o| o.success).count(), 3);
        assert_eq!(outputs[0].result, "r0");
    }

    #[test]
    fn a_failed_task_runs_again_until_its_retries_are_used() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = TaskStore::create(dir.path(), 1, false).expect("a store");
        store.add(new(1)).expect("added");
        let first = store.take(1, "w1").expect("taken");
        assert_eq!(
            store
                .finish("w1", &[result(&first[0], false)])
                .expect("applied"),
            vec![Applied::Retry { id: 1 }]
        );
        assert_eq!(store.pending(), 1);
        let second = store.take(1, "w2").expect("taken");
        assert_eq!(second[0].attempt, 2);
        // The first attempt's late answer is stale now.
        assert_eq!(
            store
                .finish("w1", &[result(&first[0], true)])
                .expect("applied"),
            vec![Applied::Stale]
        );
        store
            .finish("w2", &[result(&second[0], false)])
            .expect("applied");
        assert_eq!(store.counts().failed, 1);
        assert!(store.all_finished());
        let page = store.page(None, 10).expect("a page");
        assert_eq!(page[0].attempts, 2);
        assert_eq!(page[0].status, TaskStatus::Failed);
        assert_eq!(page[0].worker_id.as_deref(), Some("w2"));
    }

    #[test]
    fn pinned_tasks_are_handed_out_by_id_only() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = TaskStore::create(dir.path(), 1, true).expect("a store");
        let ids = store.add(new(2)).expect("added");
        assert_eq!(store.pending(), 0, "nothing waits in the queue");
        let a = store.take_ids(&ids[..1], "wa").expect("taken");
        let b = store.take_ids(&ids[1..], "wb").expect("taken");
        // A pinned task that fails is not queued: its worker gets it again.
        assert_eq!(
            store
                .finish("wa", &[result(&a[0], false)])
                .expect("applied"),
            vec![Applied::Retry { id: 1 }]
        );
        assert_eq!(store.pending(), 0);
        let again = store.take_ids(&ids[..1], "wa").expect("taken");
        store
            .finish("wa", &[result(&again[0], true)])
            .expect("applied");
        store.finish("wb", &[result(&b[0], true)]).expect("applied");
        assert!(store.all_finished() && store.pending() == 0);
    }

    #[test]
    fn tasks_of_a_lost_worker_wait_again_and_pages_follow_ids() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = TaskStore::create(dir.path(), 0, false).expect("a store");
        store.add(new(10)).expect("added");
        let taken = store.take(4, "w1").expect("taken");
        let ids: Vec<u64> = taken.iter().map(|t| t.id).collect();
        store.requeue(&ids).expect("requeued");
        assert_eq!(store.pending(), 10);
        assert_eq!(store.counts().running, 0);
        let page = store.page(Some(6), 2).expect("a page");
        assert_eq!(page.iter().map(|t| t.id).collect::<Vec<_>>(), vec![7, 8]);
        store.fail(&[10], "worker lost").expect("failed");
        assert_eq!(store.counts().failed, 1);
    }

    #[test]
    fn results_are_read_in_chunks() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = TaskStore::create(dir.path(), 0, false).expect("a store");
        let n = RESULTS_CHUNK * 2 + 7;
        store.add(new(n)).expect("added");
        let tasks = store.take(n, "w").expect("taken");
        let results: Vec<TaskResult> = tasks.iter().map(|t| result(t, true)).collect();
        store.finish("w", &results).expect("applied");
        let sum: u64 = store
            .results()
            .iter()
            .map(|o| o.result[1..].parse::<u64>().expect("a number"))
            .sum();
        assert_eq!(sum, (0..n as u64).sum::<u64>());
    }

    #[test]
    fn an_attempt_lost_with_its_worker_uses_no_retry() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = TaskStore::create(dir.path(), 1, false).expect("a store");
        store.add(new(1)).expect("added");
        let lost = store.take(1, "w1").expect("taken");
        store.requeue(&[lost[0].id]).expect("requeued");
        let second = store.take(1, "w2").expect("taken");
        assert_eq!(second[0].attempt, 2);
        // Its first failure: one retry is left, because the lost attempt did not fail.
        assert_eq!(
            store
                .finish("w2", &[result(&second[0], false)])
                .expect("applied"),
            vec![Applied::Retry { id: 1 }]
        );
        let third = store.take(1, "w2").expect("taken");
        assert_eq!(
            store
                .finish("w2", &[result(&third[0], false)])
                .expect("applied"),
            vec![Applied::Finished]
        );
        assert_eq!(store.counts().failed, 1);
    }

    #[test]
    fn only_a_running_attempt_may_emit_sub_tasks() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut store = TaskStore::create(dir.path(), 0, false).expect("a store");
        store.add(new(1)).expect("added");
        let t = store.take(1, "w1").expect("taken");
        let id = t[0].id;
        assert!(store.may_map(id, 1, "w1").expect("read"));
        assert!(!store.may_map(id, 1, "w2").expect("read"), "another worker");
        assert!(
            !store.may_map(id, 2, "w1").expect("read"),
            "another attempt"
        );
        assert!(!store.may_map(99, 1, "w1").expect("read"), "no such task");
        store.requeue(&[id]).expect("requeued");
        assert!(
            !store.may_map(id, 1, "w1").expect("read"),
            "a requeued task"
        );
    }
}
