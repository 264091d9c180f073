//! The task tracker: runs one attempt of an instance and reports on it.
//!
//! It holds a dispatch that came ahead of its start time until then, reports RUNNING after
//! `running_report_delay` (unless the processor ended first) and then every `progress_interval` (published, with a reply
//! subject so that the server may answer "stop"), runs the processor in a task of its own so that
//! a panic cannot take the worker down, enforces the timeout, and finally sends the terminal
//! report as a request, repeated with backoff (and re-acquire) until the owner acknowledges it.
//! A frequent job's attempt runs the processor again and again instead (see `frequent`), and
//! ends with the same kind of terminal report.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::message::{DispatchRequest, Frequent, LogLevel, LogLine, StatusReport};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use crate::agent::Agent;
use crate::context::{TaskContext, now_ms};
use crate::frequent::{FrequentEnd, FrequentRunner, ProgressSink};
use crate::instances::{InstanceState, StopCause};
use rota_shared::subject::ServerEndpoint as Endpoint;

use crate::processor::{ProcessResult, Processor};
use crate::retry::{Policy, Retrier};

/// How long a cancelled processor gets to end, beyond the shell's kill grace, before its task
/// is dropped.
const CANCEL_SLACK: Duration = Duration::from_secs(2);

/// How long the tracker waits for the instance's log to be sent before its terminal report.
const LOG_FLUSH_WAIT: Duration = Duration::from_secs(10);

/// How a terminal report is sent again: for as long as the server is away, a few times on an
/// unclear answer (a server bug), never on one that cannot change.
const REPORT_RETRY: Policy = Policy {
    first: Duration::from_millis(100),
    max: Duration::from_secs(5),
    unclear_tries: 5,
    transient_tries: None,
};

/// The longest result message sent, so that a processor's huge message cannot make the terminal
/// report too large to be accepted.
const MAX_RESULT_BYTES: usize = 16 * 1024;

/// Aborts the processor's task when the tracker is dropped (the worker was aborted, or the
/// shutdown deadline passed), which in turn lets the shell processor kill its process group.
pub(crate) struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How the processor's task ended.
pub(crate) enum Outcome {
    Finished(ProcessResult),
    Panicked(String),
    /// It did not end in time after cancellation and was dropped.
    Abandoned,
}

impl From<Result<ProcessResult, JoinError>> for Outcome {
    fn from(joined: Result<ProcessResult, JoinError>) -> Self {
        match joined {
            Ok(result) => Self::Finished(result),
            Err(e) if e.is_panic() => Self::Panicked(panic_message(e.into_panic())),
            Err(_) => Self::Abandoned,
        }
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// The terminal status and result message for an attempt. A cancellation the tracker acted on
/// decides, whatever the processor returned while winding down.
fn verdict(cause: Option<StopCause>, outcome: Outcome) -> (InstanceStatus, String) {
    match (cause, outcome) {
        (Some(StopCause::Timeout(ms)), _) => {
            (InstanceStatus::Failed, format!("timeout: exceeded {ms} ms"))
        }
        (Some(StopCause::Stop), _) => (InstanceStatus::Stopped, "stopped".to_owned()),
        (Some(StopCause::ServerStop), _) => {
            (InstanceStatus::Stopped, "stopped by server".to_owned())
        }
        (Some(StopCause::Shutdown), _) => {
            (InstanceStatus::Failed, "worker shutting down".to_owned())
        }
        (None, Outcome::Finished(r)) if r.success => (InstanceStatus::Succeeded, r.message),
        (None, Outcome::Finished(r)) => (InstanceStatus::Failed, r.message),
        (None, Outcome::Panicked(_)) => (InstanceStatus::Failed, "processor panicked".to_owned()),
        (None, Outcome::Abandoned) => (
            InstanceStatus::Failed,
            "processor did not end after cancellation".to_owned(),
        ),
    }
}

/// Cuts a result message to [`MAX_RESULT_BYTES`] on a character boundary.
pub(crate) fn cap_result(mut text: String) -> String {
    if text.len() > MAX_RESULT_BYTES {
        let mut end = MAX_RESULT_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

struct Tracker {
    agent: Arc<Agent>,
    state: Arc<InstanceState>,
    req: DispatchRequest,
}

/// Runs one accepted attempt to its acknowledged end, then frees its slot.
pub(crate) async fn run(
    agent: Arc<Agent>,
    req: DispatchRequest,
    state: Arc<InstanceState>,
    processor: Arc<dyn Processor>,
) {
    let tracker = Tracker { agent, state, req };
    tracker.execute(processor).await;
    tracker
        .agent
        .instances
        .remove(tracker.req.instance_id, tracker.req.attempt);
}

impl ProgressSink for Tracker {
    /// Publishes a report. Its answer, if the server sends one, arrives at the ack inbox under
    /// the report's own subject; a lost progress report is repaired by the next one.
    async fn publish(&self, report: &StatusReport) {
        let reply = self
            .agent
            .ack_subject(report.instance_id, report.attempt, report.seq);
        if let Err(e) = self
            .agent
            .link
            .publish(Endpoint::Status, report, Some(reply))
            .await
        {
            debug!(
                instance = self.req.instance_id,
                "progress report not sent: {e}"
            );
        }
    }
}

impl Tracker {
    async fn execute(&self, processor: Arc<dyn Processor>) {
        let started = self.wait_for_start().await
            && self
                .agent
                .instances
                .take_slot(&self.state, self.agent.config.capacity)
                .await;
        if started {
            self.state.mark_started(now_ms());
        }
        if !started {
            // Stopped before it started: the processor never runs.
            let (status, result) = verdict(self.state.cause(), Outcome::Abandoned);
            self.state.finish(status);
            info!(
                instance = self.req.instance_id,
                attempt = self.req.attempt,
                %status,
                "ended before its start time: {result}"
            );
            let report = self.report(status, Some(result), None, false);
            self.send_terminal(report).await;
            return;
        }
        if let Some(frequent) = self.req.frequent {
            return self.execute_frequent(frequent, processor).await;
        }
        let config = &self.agent.config;
        info!(
            instance = self.req.instance_id,
            attempt = self.req.attempt,
            processor = %self.req.processor,
            "running"
        );
        // The first RUNNING report waits a moment: a processor that ends by then is reported
        // once, by its terminal report (which starts the run on the server just the same).
        let first_report = tokio::time::sleep(config.running_report_delay);
        tokio::pin!(first_report);
        let mut first_reported = false;
        if config.running_report_delay.is_zero() {
            first_reported = true;
            self.send_progress().await;
        }

        let ctx = TaskContext::new(
            &self.req,
            &self.agent.worker_id,
            self.agent.logs.clone(),
            self.state.token().clone(),
        );
        // The processor is called inside its task, so that even a panic in `process` itself
        // (before it returns a future) is caught as a JoinError.
        let began = Instant::now();
        let mut work = if self.req.execution.is_distributed() {
            // This worker is the instance's master: it splits the work into tasks.
            let master = crate::master::run(
                Arc::clone(&self.agent),
                self.req.clone(),
                processor,
                self.state.token().clone(),
                Arc::clone(&self.state.tasks),
            );
            drop(ctx);
            AbortOnDrop(tokio::spawn(master))
        } else {
            AbortOnDrop(tokio::spawn(async move { processor.process(ctx).await }))
        };

        let every = config.progress_interval;
        let mut progress = tokio::time::interval_at(Instant::now() + every, every);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let deadline = (self.req.timeout_ms > 0)
            .then(|| Instant::now() + Duration::from_millis(self.req.timeout_ms));
        let timeout = async move {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(timeout);
        let mut timed_out = false;

        let outcome = loop {
            tokio::select! {
                biased;
                joined = &mut work.0 => break Some(Outcome::from(joined)),
                () = self.state.token().cancelled() => break None,
                () = &mut timeout, if !timed_out => {
                    timed_out = true;
                    self.state.stop(StopCause::Timeout(self.req.timeout_ms));
                }
                () = &mut first_report, if !first_reported => {
                    first_reported = true;
                    self.send_progress().await;
                }
                _ = progress.tick() => self.send_progress().await,
            }
        };
        let outcome = match outcome {
            Some(outcome) => outcome,
            None => self.wind_down(&mut work).await,
        };

        let cause = self.state.cause();
        if let Outcome::Panicked(message) = &outcome {
            warn!(
                instance = self.req.instance_id,
                "processor panicked: {message}"
            );
            self.log(LogLevel::Error, format!("processor panicked: {message}"));
        }
        let (status, result) = verdict(cause, outcome);
        self.state.finish(status);
        self.agent
            .metrics
            .processed(&self.req.processor, status, began.elapsed());
        info!(
            instance = self.req.instance_id,
            attempt = self.req.attempt,
            %status,
            "finished: {result}"
        );

        self.flush_logs().await;
        let report = self.report(status, Some(cap_result(result)), None, false);
        self.send_terminal(report).await;
    }

    /// Runs a frequent job's attempt until it is stopped or its lifecycle ends, then reports
    /// how it ended.
    async fn execute_frequent(&self, frequent: Frequent, processor: Arc<dyn Processor>) {
        info!(
            instance = self.req.instance_id,
            attempt = self.req.attempt,
            processor = %self.req.processor,
            mode = ?frequent.mode,
            interval_ms = frequent.interval_ms,
            "running a frequent job"
        );
        let runner = FrequentRunner {
            req: &self.req,
            frequent,
            state: &self.state,
            processor,
            logs: self.agent.logs.clone(),
            worker_id: &self.agent.worker_id,
            progress_every: self.agent.config.progress_interval,
            cancel_grace: self.agent.config.kill_grace + CANCEL_SLACK,
            sink: self,
        };
        let FrequentEnd {
            status,
            result,
            runs,
            alert,
        } = runner.run().await;
        self.state.finish(status);
        info!(
            instance = self.req.instance_id,
            attempt = self.req.attempt,
            %status,
            runs,
            "finished: {result}"
        );
        self.flush_logs().await;
        let report = self.report(status, Some(result), Some(runs), alert);
        self.send_terminal(report).await;
    }

    /// Holds a dispatch that came ahead of its start time until then. `false` when it was
    /// stopped (or the worker began shutting down) while it waited.
    async fn wait_for_start(&self) -> bool {
        let Some(start_at) = self.req.start_at_ms else {
            return true;
        };
        let wait = start_at.saturating_sub(now_ms());
        if wait <= 0 {
            return true;
        }
        let wait = Duration::from_millis(u64::try_from(wait).unwrap_or(0));
        tokio::select! {
            biased;
            () = self.state.token().cancelled() => false,
            () = tokio::time::sleep(wait) => true,
        }
    }

    /// Sends the instance's log before its terminal report, so that whoever sees the instance
    /// terminal also sees all of its output. The wait is bounded: a terminal report must not
    /// wait for an unreachable log store, and the lines still go out once it is back.
    async fn flush_logs(&self) {
        if !self.agent.logs.flush(LOG_FLUSH_WAIT).await {
            warn!(
                instance = self.req.instance_id,
                "the instance's log could not be flushed in time; it is sent later"
            );
        }
    }

    /// After cancellation: gives the processor time to end, then drops it.
    async fn wind_down(&self, work: &mut AbortOnDrop<ProcessResult>) -> Outcome {
        match self.state.cause() {
            Some(StopCause::Timeout(ms)) => {
                self.log(
                    LogLevel::Error,
                    format!("timeout: exceeded {ms} ms; stopping"),
                );
            }
            Some(StopCause::Stop | StopCause::ServerStop) => {
                self.log(LogLevel::Warn, "stop requested; stopping");
            }
            Some(StopCause::Shutdown) => {
                self.log(LogLevel::Warn, "worker shutting down; stopping");
            }
            None => {}
        }
        let grace = self.agent.config.kill_grace + CANCEL_SLACK;
        match tokio::time::timeout(grace, &mut work.0).await {
            Ok(joined) => Outcome::from(joined),
            Err(_) => {
                warn!(
                    instance = self.req.instance_id,
                    "processor ignored cancellation for {grace:?}; dropping it"
                );
                work.0.abort();
                Outcome::Abandoned
            }
        }
    }

    /// Writes a line of the worker's own to the instance's log.
    fn log(&self, level: LogLevel, text: impl Into<String>) {
        self.agent.logs.push(LogLine {
            instance_id: self.req.instance_id,
            attempt: self.req.attempt,
            ts_ms: now_ms(),
            level,
            text: text.into(),
        });
    }

    fn report(
        &self,
        status: InstanceStatus,
        result: Option<String>,
        runs: Option<i64>,
        alert: bool,
    ) -> StatusReport {
        StatusReport {
            instance_id: self.req.instance_id,
            attempt: self.req.attempt,
            seq: self.state.next_seq(),
            worker_id: self.agent.worker_id.clone(),
            status,
            result,
            runs,
            alert,
            reported_at_ms: now_ms(),
            started_at_ms: self.state.run_started_ms(),
            tasks: self.state.task_counts(),
        }
    }

    /// Publishes a RUNNING report.
    async fn send_progress(&self) {
        let report = self.report(InstanceStatus::Running, None, None, false);
        self.publish(&report).await;
    }

    /// Sends the terminal report until the owner acknowledges it.
    async fn send_terminal(&self, report: StatusReport) {
        // Every try carries the same report: it is one report, and a server that applied it but
        // whose answer was lost recognises the repeat by its sequence number.
        let mut retrier = Retrier::new(REPORT_RETRY);
        loop {
            let error = match self.agent.reporter.send(report.clone()).await {
                Ok(_) => {
                    debug!(
                        instance = self.req.instance_id,
                        tries = retrier.tries() + 1,
                        "terminal report acknowledged"
                    );
                    return;
                }
                Err(e) => e,
            };
            if let Err(why) = retrier.wait_after(&error).await {
                // The server settles the instance without it: its reconcile loop ends a run
                // that sends no report for `report_timeout`.
                warn!(
                    instance = self.req.instance_id,
                    tries = retrier.tries(),
                    "terminal report given up, {why}: {error}"
                );
                return;
            }
            if retrier.worth_logging() {
                warn!(
                    instance = self.req.instance_id,
                    tries = retrier.tries(),
                    "terminal report not acknowledged: {error}; retrying now"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let ok = || Outcome::Finished(ProcessResult::ok("done"));
        assert_eq!(
            verdict(None, ok()),
            (InstanceStatus::Succeeded, "done".to_owned())
        );
        assert_eq!(
            verdict(None, Outcome::Finished(ProcessResult::failed("bad"))),
            (InstanceStatus::Failed, "bad".to_owned())
        );
        assert_eq!(
            verdict(None, Outcome::Panicked("boom".to_owned())),
            (InstanceStatus::Failed, "processor panicked".to_owned())
        );
        assert_eq!(
            verdict(Some(StopCause::Timeout(250)), ok()),
            (
                InstanceStatus::Failed,
                "timeout: exceeded 250 ms".to_owned()
            )
        );
        assert_eq!(
            verdict(Some(StopCause::Stop), Outcome::Abandoned),
            (InstanceStatus::Stopped, "stopped".to_owned())
        );
        assert_eq!(
            verdict(Some(StopCause::Shutdown), ok()).0,
            InstanceStatus::Failed
        );
    }

    async fn explode() -> ProcessResult {
        panic!("kaboom")
    }

    #[tokio::test]
    async fn panics_are_caught_as_outcomes() {
        let joined = tokio::spawn(explode()).await;
        match Outcome::from(joined) {
            Outcome::Panicked(message) => assert_eq!(message, "kaboom"),
            _ => panic!("expected a panic outcome"),
        }
    }

    #[test]
    fn results_are_capped() {
        let long = "ü".repeat(MAX_RESULT_BYTES);
        let capped = cap_result(long);
        assert!(capped.len() <= MAX_RESULT_BYTES);
        assert_eq!(cap_result("short".to_owned()), "short");
    }
}
