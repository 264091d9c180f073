//! The task worker's side of distributed execution: the tasks a master sends this worker
//! ([`TaskCall::Run`]) run here, at most `capacity` at once per instance, and their results,
//! the sub-tasks they emit and their log lines go back to the master in batches
//! ([`TaskReport`]), one batch in flight at a time.
//!
//! A run (the tasks of one instance's attempt) ends when the master says so (a stop, or an
//! answer that says the attempt is over), when the master cannot be reached for
//! [`MASTER_LOST_AFTER`] (its death loses the attempt; the server retries the instance), or when
//! it has had nothing to do for [`IDLE_END`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rota_shared::message::LogLine;
use rota_shared::subject::WorkerEndpoint;
use rota_shared::task::{
    MAX_TASK_BYTES_PER_MESSAGE, MAX_TASKS_PER_MESSAGE, Task, TaskBatch, TaskMap, TaskReport,
    TaskReportAck, TaskResult,
};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::agent::Agent;
use crate::context::{MapError, TaskContext};
use crate::link::{CallError, Link};
use crate::processor::{ProcessResult, Processor};
use crate::tracker::{AbortOnDrop, Outcome, cap_result};

/// How long a master may stay unreachable before its tasks here are dropped.
pub(crate) const MASTER_LOST_AFTER: Duration = Duration::from_secs(15);

/// A run with no task and nothing to send for this long ends by itself (its master went away
/// without a stop).
const IDLE_END: Duration = Duration::from_secs(60);

/// How long results wait to be joined by others before they are sent.
const GATHER: Duration = Duration::from_millis(5);

/// How long a task report may take to be answered.
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// While a run has unfinished tasks, it tells its master at least this often that it still
/// holds them (an empty report), so that the master can tell a worker that dropped its tasks
/// from one whose tasks take long, and the run notices a master that is gone.
pub(crate) const TASK_HEARTBEAT: Duration = Duration::from_secs(2);

/// Log lines a run keeps for its master at most; more are dropped (and said so).
const MAX_BUFFERED_LOG_LINES: usize = 10_000;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The runs of this worker, by instance and attempt.
#[derive(Default)]
pub(crate) struct TaskRuns {
    runs: Mutex<HashMap<(i64, i32), Arc<Run>>>,
    /// Tasks whose processor runs now, over all runs (a stopped run's tasks count until their
    /// processors have ended).
    running: Arc<AtomicUsize>,
}

/// Counts one task as running while it lives.
struct Running(Arc<AtomicUsize>);

impl Running {
    fn start(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Self(Arc::clone(count))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TaskRuns {
    /// Stops the tasks of an attempt; whether there were any.
    pub(crate) fn stop(&self, instance_id: i64, attempt: i32) -> bool {
        let run = lock(&self.runs).remove(&(instance_id, attempt));
        if let Some(run) = &run {
            run.outbox.cancel.cancel();
        }
        run.is_some()
    }

    /// Stops every run (the worker shuts down).
    pub(crate) fn stop_all(&self) {
        for (_, run) in lock(&self.runs).drain() {
            run.outbox.cancel.cancel();
        }
    }

    /// How many tasks run here now, over all runs.
    pub(crate) fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    fn remove_if_same(&self, key: (i64, i32), run: &Arc<Run>) {
        let mut runs = lock(&self.runs);
        if runs.get(&key).is_some_and(|r| Arc::ptr_eq(r, run)) {
            runs.remove(&key);
        }
    }
}

/// The tasks of one instance's attempt on this worker.
struct Run {
    agent: std::sync::Weak<Agent>,
    processor: Arc<dyn Processor>,
    /// The batch's description of the job, without its tasks.
    job: TaskBatch,
    can_map: bool,
    permits: Arc<Semaphore>,
    running: Arc<AtomicUsize>,
    outbox: Arc<Outbox>,
}

impl Run {
    fn metrics_task(&self, success: bool) {
        if let Some(agent) = self.agent.upgrade() {
            agent.metrics.task(success);
        }
    }
}

/// Takes a batch of tasks from a master: starts each (they wait for a slot of the run) and
/// says how many it took. The processor must be known; the caller checked the seal and that
/// the sender is the batch's master.
pub(crate) fn accept(
    agent: &Arc<Agent>,
    mut batch: TaskBatch,
    processor: Arc<dyn Processor>,
    can_map: bool,
) -> u32 {
    let key = (batch.instance_id, batch.attempt);
    let tasks = std::mem::take(&mut batch.tasks);
    let run = {
        let mut runs = lock(&agent.task_runs.runs);
        // A run that has closed (idle for long, or ending) takes no more tasks: a new one
        // does. Reserving and closing exclude each other, so a batch never lands in a run that
        // is about to end and drop it.
        let reused = runs
            .get(&key)
            .filter(|r| r.outbox.reserve(tasks.len()))
            .map(Arc::clone);
        if let Some(run) = reused {
            run
        } else {
            runs.remove(&key);
            let run = new_run(agent, processor, batch, can_map, key);
            run.outbox.reserve(tasks.len());
            runs.insert(key, Arc::clone(&run));
            run
        }
    };
    let accepted = tasks.len() as u32;
    for task in tasks {
        tokio::spawn(run_task(agent.worker_id.clone(), Arc::clone(&run), task));
    }
    accepted
}

/// A run of a master's tasks, with the loop that reports its results.
fn new_run(
    agent: &Arc<Agent>,
    processor: Arc<dyn Processor>,
    batch: TaskBatch,
    can_map: bool,
    key: (i64, i32),
) -> Arc<Run> {
    let capacity = agent.config.capacity as usize;
    let outbox = Arc::new(Outbox::new(
        Arc::clone(&agent.link),
        agent.worker_id.clone(),
        &batch,
    ));
    let run = Arc::new(Run {
        agent: Arc::downgrade(agent),
        processor,
        job: batch,
        can_map,
        permits: Arc::new(Semaphore::new(capacity)),
        running: Arc::clone(&agent.task_runs.running),
        outbox,
    });
    tokio::spawn(supervise(Arc::clone(agent), key, Arc::clone(&run)));
    info!(
        instance = key.0,
        attempt = key.1,
        master = %run.job.master,
        "running tasks for a master"
    );
    run
}

/// Sends the run's results until it ends, then forgets it.
async fn supervise(agent: Arc<Agent>, key: (i64, i32), run: Arc<Run>) {
    Arc::clone(&run.outbox).flush_until_done().await;
    lock(&run.outbox.state).closed = true;
    run.outbox.cancel.cancel();
    agent.task_runs.remove_if_same(key, &run);
    debug!(instance = key.0, attempt = key.1, "task run ended");
}

async fn run_task(worker_id: String, run: Arc<Run>, task: Task) {
    let cancel = run.outbox.cancel.child_token();
    let permit = tokio::select! {
        biased;
        () = cancel.cancelled() => return,
        permit = Arc::clone(&run.permits).acquire_owned() => match permit {
            Ok(permit) => permit,
            Err(_) => return,
        },
    };
    let running = Running::start(&run.running);
    let ctx = TaskContext::for_task(
        &run.job,
        &task,
        &worker_id,
        run.can_map,
        Arc::clone(&run.outbox),
        cancel.clone(),
    );
    let outcome = execute(
        Arc::clone(&run.processor),
        ctx,
        run.job.task_timeout_ms,
        &cancel,
    )
    .await;
    drop(running);
    drop(permit);
    let Some(result) = outcome else {
        // Dropped with its run: nothing to report.
        return;
    };
    run.metrics_task(result.success);
    run.outbox.push(TaskResult {
        id: task.id,
        attempt: task.attempt,
        success: result.success,
        result: cap_result(result.message),
    });
}

/// Runs one task's processor in a task of its own (a panic is a failed task), with the task
/// timeout. `None` when the run was cancelled.
pub(crate) async fn execute(
    processor: Arc<dyn Processor>,
    ctx: TaskContext,
    timeout_ms: u64,
    cancel: &CancellationToken,
) -> Option<ProcessResult> {
    let mut work = AbortOnDrop(tokio::spawn(async move { processor.process(ctx).await }));
    let timeout = async {
        if timeout_ms == 0 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(Duration::from_millis(timeout_ms)).await;
    };
    tokio::select! {
        biased;
        joined = &mut work.0 => Some(match Outcome::from(joined) {
            Outcome::Finished(result) => result,
            Outcome::Panicked(message) => ProcessResult::failed(format!("task panicked: {message}")),
            Outcome::Abandoned => ProcessResult::failed("task abandoned"),
        }),
        () = cancel.cancelled() => {
            // The processor is dropped (a shell's process group is killed with it); the task
            // counts as running until that has happened.
            work.0.abort();
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut work.0).await;
            None
        }
        () = timeout => {
            cancel.cancel();
            Some(ProcessResult::failed(format!("task timeout: exceeded {timeout_ms} ms")))
        }
    }
}

/// What a run owes its master: results and log lines, sent in batches by one loop.
pub(crate) struct Outbox {
    link: Arc<Link>,
    worker_id: String,
    master: String,
    instance_id: i64,
    attempt: i32,
    state: Mutex<Pending>,
    ready: Notify,
    /// Cancelled when the run ends: its tasks stop.
    pub(crate) cancel: CancellationToken,
    /// Serializes what is sent, so that sub-tasks a task emits reach the master before its
    /// result, and numbers the reports in the order they are sent.
    sending: tokio::sync::Mutex<u64>,
}

#[derive(Default)]
struct Pending {
    results: Vec<TaskResult>,
    logs: Vec<LogLine>,
    dropped_logs: u64,
    /// Tasks started and not yet reported.
    unfinished: usize,
    /// The run takes no more tasks: it is ending.
    closed: bool,
}

impl Pending {
    /// Counts `tasks` more as started, unless the run has closed.
    fn reserve(&mut self, tasks: usize) -> bool {
        if self.closed {
            return false;
        }
        self.unfinished += tasks;
        true
    }

    fn idle(&self) -> bool {
        self.unfinished == 0 && self.results.is_empty() && self.logs.is_empty()
    }

    /// Closes the run if it is idle: from then on it takes no tasks.
    fn close_if_idle(&mut self) -> bool {
        if self.idle() {
            self.closed = true;
        }
        self.closed
    }
}

impl Outbox {
    fn new(link: Arc<Link>, worker_id: String, batch: &TaskBatch) -> Self {
        Self {
            link,
            worker_id,
            master: batch.master.clone(),
            instance_id: batch.instance_id,
            attempt: batch.attempt,
            state: Mutex::new(Pending::default()),
            ready: Notify::new(),
            cancel: CancellationToken::new(),
            sending: tokio::sync::Mutex::new(0),
        }
    }

    /// Counts a batch's tasks as started, unless the run has closed.
    fn reserve(&self, tasks: usize) -> bool {
        lock(&self.state).reserve(tasks)
    }

    fn push(&self, result: TaskResult) {
        {
            let mut state = lock(&self.state);
            state.results.push(result);
            state.unfinished = state.unfinished.saturating_sub(1);
        }
        self.ready.notify_one();
    }

    pub(crate) fn log(&self, line: LogLine) {
        let mut state = lock(&self.state);
        if state.logs.len() >= MAX_BUFFERED_LOG_LINES {
            state.dropped_logs += 1;
        } else {
            state.logs.push(line);
        }
    }

    fn report(&self) -> TaskReport {
        TaskReport {
            worker_id: self.worker_id.clone(),
            instance_id: self.instance_id,
            attempt: self.attempt,
            seq: 0,
            results: Vec::new(),
            maps: Vec::new(),
            logs: Vec::new(),
        }
    }

    /// Numbers a report and sends it; one report at a time, in the order of their numbers.
    async fn send_next(&self, mut report: TaskReport) -> Result<TaskReportAck, CallError> {
        let mut seq = self.sending.lock().await;
        *seq += 1;
        report.seq = *seq;
        self.send(&report).await
    }

    /// Sends sub-tasks to the master, in messages of at most [`MAX_TASKS_PER_MESSAGE`]
    /// payloads and [`MAX_TASK_BYTES_PER_MESSAGE`] bytes; returns once the master has them all.
    pub(crate) async fn map(
        &self,
        parent: u64,
        parent_attempt: u32,
        name: &str,
        payloads: Vec<String>,
    ) -> Result<(), MapError> {
        for chunk in chunks(payloads) {
            let mut report = self.report();
            report.maps.push(TaskMap {
                parent,
                parent_attempt,
                name: name.to_owned(),
                payloads: chunk,
            });
            match self.send_next(report).await {
                Ok(ack) if ack.stop => {
                    self.cancel.cancel();
                    return Err(MapError::Ended);
                }
                Ok(_) => {}
                Err(CallError::Remote(body)) => return Err(MapError::Refused(body.message)),
                Err(_) => return Err(MapError::Ended),
            }
        }
        Ok(())
    }

    /// Sends one report, again and again while the master may be reached; gives up after
    /// [`MASTER_LOST_AFTER`] without an answer, or at once on a refusal.
    async fn send(&self, report: &TaskReport) -> Result<TaskReportAck, CallError> {
        let since = Instant::now();
        let mut pause = Duration::from_millis(50);
        loop {
            let result = self
                .link
                .call_worker(
                    &self.master,
                    WorkerEndpoint::TaskReport,
                    report,
                    REPORT_TIMEOUT,
                )
                .await;
            match result {
                Ok(ack) => return Ok(ack),
                Err(e @ CallError::Remote(_)) => return Err(e),
                Err(e) if since.elapsed() >= MASTER_LOST_AFTER || self.cancel.is_cancelled() => {
                    return Err(e);
                }
                Err(e) => {
                    debug!(master = %self.master, "task report not answered: {e}; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Takes what is ready to send: results and log lines up to one message's worth.
    fn take(&self) -> Option<TaskReport> {
        let mut state = lock(&self.state);
        if state.results.is_empty() && state.logs.is_empty() {
            return None;
        }
        let mut report = self.report();
        // At most a message's worth of results, by count and by size (JSON may double a
        // result's bytes when it escapes them).
        let mut bytes = 0;
        let mut n = 0;
        for r in state.results.iter().take(MAX_TASKS_PER_MESSAGE) {
            let size = 2 * r.result.len() + 64;
            if n > 0 && bytes + size > MAX_TASK_BYTES_PER_MESSAGE {
                break;
            }
            bytes += size;
            n += 1;
        }
        report.results = state.results.drain(..n).collect();
        let mut lines = 0;
        for line in &state.logs {
            bytes += 2 * line.text.len() + 96;
            if bytes > MAX_TASK_BYTES_PER_MESSAGE && (lines > 0 || n > 0) {
                break;
            }
            lines += 1;
        }
        report.logs = state.logs.drain(..lines).collect();
        if state.dropped_logs > 0 && state.logs.is_empty() {
            warn!(
                instance = self.instance_id,
                dropped = state.dropped_logs,
                "task log lines dropped: the master's buffer here was full"
            );
            state.dropped_logs = 0;
        }
        Some(report)
    }

    fn idle(&self) -> bool {
        lock(&self.state).idle()
    }

    /// Sends the results as they come, and a heartbeat while tasks run, until the run is
    /// cancelled, the master says the attempt is over or cannot be reached, or the run has been
    /// idle for [`IDLE_END`].
    async fn flush_until_done(self: Arc<Self>) {
        let mut idle_since: Option<Instant> = None;
        let mut last_sent = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return,
                () = self.ready.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            // Results that end together go together.
            tokio::time::sleep(GATHER).await;
            let mut reports = Vec::new();
            while let Some(report) = self.take() {
                reports.push(report);
            }
            if reports.is_empty() && !self.idle() && last_sent.elapsed() >= TASK_HEARTBEAT {
                reports.push(self.report());
            }
            for report in reports {
                last_sent = Instant::now();
                match self.send_next(report).await {
                    Ok(ack) if ack.stop => {
                        info!(
                            instance = self.instance_id,
                            "the master ended the attempt; dropping its tasks"
                        );
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(
                            instance = self.instance_id,
                            master = %self.master,
                            "the master cannot be reached ({e}); dropping its tasks"
                        );
                        return;
                    }
                }
            }
            if self.idle() {
                let since = *idle_since.get_or_insert_with(Instant::now);
                // Closed in the same step as the last idle check: a batch that arrives
                // after it goes to a new run, never to this one as it ends.
                if since.elapsed() >= IDLE_END && lock(&self.state).close_if_idle() {
                    return;
                }
            } else {
                idle_since = None;
            }
        }
    }
}

/// Splits payloads into messages of at most [`MAX_TASKS_PER_MESSAGE`] payloads and about
/// [`MAX_TASK_BYTES_PER_MESSAGE`] bytes.
pub(crate) fn chunks(payloads: Vec<String>) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for p in payloads {
        let size = p.len() + 8;
        if !chunk.is_empty()
            && (chunk.len() >= MAX_TASKS_PER_MESSAGE || bytes + size > MAX_TASK_BYTES_PER_MESSAGE)
        {
            out.push(std::mem::take(&mut chunk));
            bytes = 0;
        }
        bytes += size;
        chunk.push(p);
    }
    if !chunk.is_empty() {
        out.push(chunk);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_run_takes_no_tasks_and_only_an_idle_one_closes() {
        let mut pending = Pending::default();
        assert!(pending.reserve(3), "an open run takes tasks");
        assert!(!pending.close_if_idle(), "three tasks are unfinished");
        pending.unfinished = 0;
        pending.logs.push(LogLine {
            instance_id: 1,
            attempt: 1,
            ts_ms: 0,
            level: rota_shared::message::LogLevel::Info,
            text: "unsent".into(),
        });
        assert!(!pending.close_if_idle(), "a log line is still to be sent");
        pending.logs.clear();
        assert!(pending.close_if_idle());
        assert!(!pending.reserve(1), "a closed run takes no tasks");
        assert_eq!(pending.unfinished, 0);
    }

    #[test]
    fn payloads_are_split_by_count_and_size() {
        let many: Vec<String> = (0..MAX_TASKS_PER_MESSAGE * 2 + 1)
            .map(|i| i.to_string())
            .collect();
        let split = chunks(many);
        assert_eq!(
            split.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![MAX_TASKS_PER_MESSAGE, MAX_TASKS_PER_MESSAGE, 1]
        );
        let big = vec!["x".repeat(100 * 1024); 5];
        let split = chunks(big);
        assert!(split.len() >= 2, "{} chunks", split.len());
        assert!(
            split
                .iter()
                .all(|c| c.iter().map(String::len).sum::<usize>() <= MAX_TASK_BYTES_PER_MESSAGE)
        );
        assert!(chunks(Vec::new()).is_empty());
    }
}
