//! `TaskContext`: what a processor gets to know about the instance it runs, and its log.

use std::fmt;

use std::sync::Arc;

use rota_shared::message::{DispatchRequest, LogLevel, LogLine};
use rota_shared::task::{ROOT_TASK, Shard, TaskBatch};
use tokio_util::sync::CancellationToken;

use crate::logs::{LogSink, truncate_line};
use crate::master::MasterInbox;
use crate::tasks::Outbox;

/// The task a processor runs: of a standalone instance, its root task (the whole work); of a
/// distributed one, the root task on the master, or one sub-task, broadcast share or shard
/// item on any worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskPart {
    /// 0 for the root task.
    pub id: u64,
    /// `ROOT` for the root task, else the name given to `map` (`BROADCAST`, `SHARD`).
    pub name: String,
    /// What `map` gave this sub-task.
    pub payload: String,
    /// A sharded job's item, or a broadcast task's place among the workers.
    pub shard: Option<Shard>,
    /// Which attempt of the task this is, from 1.
    pub attempt: u32,
}

impl TaskPart {
    fn root() -> Self {
        Self {
            id: 0,
            name: ROOT_TASK.to_owned(),
            payload: String::new(),
            shard: None,
            attempt: 1,
        }
    }
}

/// Where `map` sends sub-tasks, and where log lines go.
#[derive(Clone)]
pub(crate) enum Route {
    /// A standalone instance: the worker's log; `map` is refused.
    Worker(LogSink),
    /// A task on the master (the root task): straight into its task store.
    Master(LogSink, MasterInbox),
    /// A task on a task worker: through its outbox to the master.
    Remote(Arc<Outbox>),
}

/// Why `map` did not emit the sub-tasks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    /// The job is not a map or map-reduce job.
    #[error("map is only for map and map-reduce jobs")]
    NotAMap,
    /// The attempt ended (it was stopped, or the master is gone).
    #[error("the instance's attempt is over")]
    Ended,
    #[error("{0}")]
    Refused(String),
}

/// The instance a processor runs, its log, and the token that tells it to stop.
///
/// A frequent job's processor gets a fresh context for every run, with the same instance and
/// attempt.
#[derive(Clone)]
pub struct TaskContext {
    pub instance_id: i64,
    /// The id of the worker that runs the instance.
    pub worker_id: String,
    pub attempt: i32,
    pub job_id: i64,
    pub job_name: String,
    /// The processor's configuration: a script for `shell`, a JSON request for `http`.
    pub config: String,
    pub job_params: Option<String>,
    pub instance_params: Option<String>,
    /// The fire time this instance was scheduled for (CRON and one-shot jobs), in ms since the
    /// Unix epoch: processors can tell how late they start.
    pub expected_trigger_time_ms: Option<i64>,
    /// The task this run is: see [`TaskPart`].
    pub task: TaskPart,
    /// For the `container` processor: the container and the entry to run.
    pub container: Option<rota_shared::container::ContainerJob>,
    /// Whether the job's work is split (`map` is allowed only in map and map-reduce jobs).
    can_map: bool,
    route: Route,
    cancel: CancellationToken,
}

impl TaskContext {
    pub(crate) fn new(
        req: &DispatchRequest,
        worker_id: &str,
        logs: LogSink,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            instance_id: req.instance_id,
            worker_id: worker_id.to_owned(),
            attempt: req.attempt,
            job_id: req.job_id,
            job_name: req.job_name.clone(),
            config: req.config.clone(),
            job_params: req.job_params.clone(),
            expected_trigger_time_ms: req.expected_trigger_time_ms,
            instance_params: req.instance_params.clone(),
            task: TaskPart::root(),
            container: req.container.clone(),
            can_map: false,
            route: Route::Worker(logs),
            cancel,
        }
    }

    /// The context of a distributed instance's step on its master: the root task (which may
    /// map, in map and map-reduce jobs), broadcast's `pre` and `post`, or `reduce` (which may
    /// not: the tasks are over by then).
    pub(crate) fn on_master(
        req: &DispatchRequest,
        worker_id: &str,
        logs: LogSink,
        inbox: MasterInbox,
        cancel: CancellationToken,
        can_map: bool,
    ) -> Self {
        let mut ctx = Self::new(req, worker_id, logs.clone(), cancel);
        ctx.can_map = can_map && req.execution.has_root();
        ctx.route = Route::Master(logs, inbox);
        ctx
    }

    /// The context of one task a master sent this worker.
    pub(crate) fn for_task(
        batch: &TaskBatch,
        task: &rota_shared::task::Task,
        worker_id: &str,
        can_map: bool,
        outbox: Arc<Outbox>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            instance_id: batch.instance_id,
            worker_id: worker_id.to_owned(),
            attempt: batch.attempt,
            job_id: batch.job_id,
            job_name: batch.job_name.clone(),
            config: batch.config.clone(),
            job_params: batch.job_params.clone(),
            instance_params: batch.instance_params.clone(),
            expected_trigger_time_ms: None,
            task: TaskPart {
                id: task.id,
                name: task.name.clone(),
                payload: task.payload.clone(),
                shard: task.shard.clone(),
                attempt: task.attempt,
            },
            container: batch.container.clone(),
            can_map,
            route: Route::Remote(outbox),
            cancel,
        }
    }

    /// Whether this is the root task (the whole work of a standalone instance, the first task
    /// of a map).
    pub fn is_root(&self) -> bool {
        self.task.id == 0 && self.task.name == ROOT_TASK
    }

    /// The shard item of a sharded job's task, or a broadcast task's place among the workers.
    pub fn shard(&self) -> Option<&Shard> {
        self.task.shard.as_ref()
    }

    /// Emits sub-tasks named `name`, one per payload, to be run by the app's workers (map and
    /// map-reduce jobs only). When it returns `Ok`, the master has them: they run even if
    /// this task then ends.
    pub async fn map<I, P>(&self, payloads: I, name: &str) -> Result<(), MapError>
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        if !self.can_map {
            return Err(MapError::NotAMap);
        }
        let payloads: Vec<String> = payloads.into_iter().map(Into::into).collect();
        match &self.route {
            Route::Worker(_) => Err(MapError::NotAMap),
            Route::Master(_, inbox) => inbox.map(self.task.id, name, payloads).await,
            Route::Remote(outbox) => {
                outbox
                    .map(self.task.id, self.task.attempt, name, payloads)
                    .await
            }
        }
    }

    /// Adds a line to the instance's log. It never blocks: when the worker's log buffer is
    /// full the line is dropped and counted, so that a chatty processor cannot stall.
    pub fn log(&self, level: LogLevel, text: impl Into<String>) {
        let text = text.into();
        let text = if self.task.id == 0 {
            text
        } else {
            // A sub-task's lines say which task and worker they come from.
            format!("[task {} on {}] {text}", self.task.id, self.worker_id)
        };
        let line = LogLine {
            instance_id: self.instance_id,
            attempt: self.attempt,
            ts_ms: now_ms(),
            level,
            text: truncate_line(text),
        };
        match &self.route {
            Route::Worker(sink) | Route::Master(sink, _) => sink.push(line),
            Route::Remote(outbox) => outbox.log(line),
        }
    }

    pub fn debug(&self, text: impl Into<String>) {
        self.log(LogLevel::Debug, text);
    }

    pub fn info(&self, text: impl Into<String>) {
        self.log(LogLevel::Info, text);
    }

    pub fn warn(&self, text: impl Into<String>) {
        self.log(LogLevel::Warn, text);
    }

    pub fn error(&self, text: impl Into<String>) {
        self.log(LogLevel::Error, text);
    }

    /// The token cancelled when the instance (or, for a frequent job, this run) times out, or
    /// when the instance is stopped.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("instance_id", &self.instance_id)
            .field("attempt", &self.attempt)
            .field("worker_id", &self.worker_id)
            .field("job_id", &self.job_id)
            .field("job_name", &self.job_name)
            .field("task", &self.task)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch by the wall clock, which is what reports and log lines
/// carry; zero if the clock is before 1970.
pub(crate) fn now_ms() -> i64 {
    rota_transport::wall_ms()
}

/// A context for unit tests, with the sink its log goes to (read it with `LogSink::try_recv`).
#[cfg(test)]
pub(crate) fn test_context(config: &str) -> (TaskContext, LogSink) {
    let sink = LogSink::new(1000, 500);
    (
        TaskContext::new(
            &test_request(config),
            "w-test",
            sink.clone(),
            CancellationToken::new(),
        ),
        sink,
    )
}

/// A dispatch for unit tests: instance 42, attempt 1, job 7.
#[cfg(test)]
pub(crate) fn test_request(config: &str) -> DispatchRequest {
    DispatchRequest {
        server_id: "s1".to_owned(),
        app_id: 1,
        job_id: 7,
        job_name: "job".to_owned(),
        instance_id: 42,
        attempt: 1,
        processor: "test".to_owned(),
        config: config.to_owned(),
        job_params: Some("jp".to_owned()),
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
