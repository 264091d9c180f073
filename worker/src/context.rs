//! `TaskContext`: what a processor gets to know about the instance it runs, and its log.

use std::fmt;

use rota_shared::message::{DispatchRequest, LogLevel, LogLine};
use tokio_util::sync::CancellationToken;

use crate::logs::{LogSink, truncate_line};

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
    logs: LogSink,
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
            logs,
            cancel,
        }
    }

    /// Adds a line to the instance's log. It never blocks: when the worker's log buffer is
    /// full the line is dropped and counted, so that a chatty processor cannot stall.
    pub fn log(&self, level: LogLevel, text: impl Into<String>) {
        self.logs.push(LogLine {
            instance_id: self.instance_id,
            attempt: self.attempt,
            ts_ms: now_ms(),
            level,
            text: truncate_line(text.into()),
        });
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
    }
}
