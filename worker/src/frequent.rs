//! The frequent tracker: runs a frequent job's processor again and again within one attempt.
//!
//! A frequent job (fixed rate or fixed delay) is one instance that lives on its worker until it
//! is stopped: by the server's answer to a report, by a stop request, by shutdown, or by the
//! end of the job's lifecycle. Every run gets a fresh [`TaskContext`] with its own cancellation
//! token (a child of the instance's), so that the job's `timeout_ms`, applied per run, cancels
//! one run and not the instance.
//!
//! Runs are counted and reported: RUNNING at once (runs 0) and then every progress interval with
//! the count. A failed run raises an alert; the alert (and the failure as the result) is repeated
//! in every report until the server has answered one that carried it, so that an alert is not
//! lost with a report the server could not store. The tracker writes at most one line of its
//! own per report to the instance's log (a summary of the failures since the last one), so that
//! a job that fails every 50 ms does not flood the log; the processor's own lines are logged as
//! usual.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rota_shared::InstanceStatus;
use rota_shared::message::{
    DispatchRequest, Frequent, FrequentMode, LogLevel, LogLine, StatusReport,
};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::context::{TaskContext, now_ms};
use crate::instances::{InstanceState, StopCause};
use crate::logs::LogSink;
use crate::processor::Processor;
use crate::tracker::{AbortOnDrop, Outcome, cap_result};

/// The shortest interval honoured. A zero interval would start runs back to back without ever
/// giving the runtime a timer to wait on; the server is expected to refuse such jobs anyway.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(10);

/// Where a frequent tracker's progress reports go: the owning server, or a fake in tests.
pub(crate) trait ProgressSink: Sync {
    /// Sends one report; a lost report is repaired by the next one, so this does not fail.
    fn publish(&self, report: &StatusReport) -> impl Future<Output = ()> + Send;
}

/// When runs start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cadence {
    mode: FrequentMode,
    interval: Duration,
}

impl Cadence {
    pub(crate) fn new(frequent: &Frequent) -> Self {
        Self {
            mode: frequent.mode,
            interval: Duration::from_millis(frequent.interval_ms).max(MIN_INTERVAL),
        }
    }

    /// When the run after one that started at `started` and ended at `ended` starts. At a fixed
    /// rate a run that overran its interval is followed at once, and the ticks it missed are
    /// skipped rather than made up in a burst.
    pub(crate) fn next_start(&self, started: Instant, ended: Instant) -> Instant {
        match self.mode {
            FrequentMode::FixedRate => (started + self.interval).max(ended),
            FrequentMode::FixedDelay => ended + self.interval,
        }
    }
}

/// The end of the job's lifecycle, on both clocks: the wall clock, which the server's
/// `lifecycle_end_ms` is on, and tokio's, so that the tracker can sleep until it (and tests can
/// run on paused time).
#[derive(Debug, Clone, Copy)]
struct Lifecycle {
    end_ms: Option<i64>,
    at: Option<Instant>,
}

impl Lifecycle {
    fn new(end_ms: Option<i64>, now_ms: i64, now: Instant) -> Self {
        let at = end_ms.map(|end| {
            let left = u64::try_from(end.saturating_sub(now_ms)).unwrap_or(0);
            now + Duration::from_millis(left)
        });
        Self { end_ms, at }
    }

    fn over(&self) -> bool {
        self.end_ms.is_some_and(|end| now_ms() >= end)
            || self.at.is_some_and(|at| Instant::now() >= at)
    }
}

/// Sleeps until `at`, or forever without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A failed run whose alert the server has not yet taken.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failure {
    message: String,
    /// The first report sent after this failure; an answer to it or to any later report means
    /// that the server has seen the alert.
    first_sent_in: Option<i64>,
}

/// What the runs came to, as far as the reports need it.
#[derive(Debug, Default)]
struct Tally {
    runs: i64,
    last_success: Option<String>,
    failure: Option<Failure>,
    /// Runs and failures since the last summary written to the instance's log.
    runs_since_note: i64,
    failures_since_note: i64,
}

impl Tally {
    /// Counts a run that ended by itself (or by its timeout).
    fn record(&mut self, result: Result<String, String>) {
        self.runs += 1;
        self.runs_since_note += 1;
        match result {
            Ok(message) => self.last_success = Some(message),
            Err(message) => {
                self.failures_since_note += 1;
                // A new failure needs a report sent after it, even if an older one was seen.
                self.failure = Some(Failure {
                    message,
                    first_sent_in: None,
                });
            }
        }
    }

    /// Counts a run cut short by the end of the instance: it was made, but it neither succeeded
    /// nor failed.
    fn record_cut_short(&mut self) {
        self.runs += 1;
    }

    /// Forgets the failure once the server has answered a report that carried it.
    fn settle(&mut self, answered_seq: i64) {
        if self
            .failure
            .as_ref()
            .is_some_and(|f| f.first_sent_in.is_some_and(|seq| answered_seq >= seq))
        {
            self.failure = None;
        }
    }

    /// The result and alert of report `seq`: the unseen failure if there is one, else the last
    /// success.
    fn for_report(&mut self, answered_seq: i64, seq: i64) -> (Option<String>, bool) {
        self.settle(answered_seq);
        match &mut self.failure {
            Some(failure) => {
                failure.first_sent_in.get_or_insert(seq);
                (Some(failure.message.clone()), true)
            }
            None => (self.last_success.clone(), false),
        }
    }

    /// A line for the instance's log about the failures since the last one, if there were any.
    fn take_note(&mut self) -> Option<String> {
        let note = (self.failures_since_note > 0).then(|| {
            let last = self.failure.as_ref().map_or("", |f| f.message.as_str());
            format!(
                "{} of {} since the last report failed; the last failure: {last}",
                self.failures_since_note,
                runs_text(self.runs_since_note),
            )
        });
        self.runs_since_note = 0;
        self.failures_since_note = 0;
        note
    }
}

fn runs_text(runs: i64) -> String {
    if runs == 1 {
        "1 run".to_owned()
    } else {
        format!("{runs} runs")
    }
}

/// How one run ended.
enum RunEnd {
    /// By itself or by its timeout: a success or failure message.
    Finished(Result<String, String>),
    /// The instance was cancelled while it ran.
    Cancelled,
}

/// Why the runs ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndedBy {
    Lifecycle,
    Cancel,
}

/// How a frequent attempt ended, for its terminal report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FrequentEnd {
    pub status: InstanceStatus,
    pub result: String,
    pub runs: i64,
    /// A failed run whose alert no answered report carried.
    pub alert: bool,
}

/// One frequent attempt: what it runs, and where it reports.
pub(crate) struct FrequentRunner<'a, P> {
    pub req: &'a DispatchRequest,
    pub frequent: Frequent,
    pub state: &'a InstanceState,
    pub processor: Arc<dyn Processor>,
    pub logs: LogSink,
    pub worker_id: &'a str,
    pub progress_every: Duration,
    /// How long a cancelled run gets to end before it is dropped.
    pub cancel_grace: Duration,
    pub sink: &'a P,
}

impl<P: ProgressSink> FrequentRunner<'_, P> {
    /// Runs the processor until the instance is cancelled or its lifecycle ends, reporting
    /// progress on the way. The terminal report is the caller's.
    pub(crate) async fn run(self) -> FrequentEnd {
        let cadence = Cadence::new(&self.frequent);
        let lifecycle = Lifecycle::new(self.frequent.lifecycle_end_ms, now_ms(), Instant::now());
        let token = self.state.token().clone();
        let mut tally = Tally::default();
        let mode = match self.frequent.mode {
            FrequentMode::FixedRate => "fixed rate",
            FrequentMode::FixedDelay => "fixed delay",
        };
        self.log(
            LogLevel::Info,
            format!(
                "frequent job: {mode}, every {} ms",
                cadence.interval.as_millis()
            ),
        );
        self.report(&mut tally).await;
        let every = self.progress_every;
        let mut progress = tokio::time::interval_at(Instant::now() + every, every);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);

        let mut next_start = Instant::now();
        let ended_by = 'runs: loop {
            // Between runs: wait for the next start, reporting on the way.
            loop {
                if token.is_cancelled() {
                    break 'runs EndedBy::Cancel;
                }
                if lifecycle.over() {
                    break 'runs EndedBy::Lifecycle;
                }
                if Instant::now() >= next_start {
                    break;
                }
                tokio::select! {
                    biased;
                    () = token.cancelled() => {}
                    () = tokio::time::sleep_until(next_start) => {}
                    () = until(lifecycle.at) => {}
                    _ = progress.tick() => self.report(&mut tally).await,
                }
            }
            let started = Instant::now();
            match self.run_once(&token, &mut progress, &mut tally).await {
                RunEnd::Finished(result) => {
                    debug!(
                        instance = self.req.instance_id,
                        run = tally.runs + 1,
                        ok = result.is_ok(),
                        "run ended"
                    );
                    tally.record(result);
                }
                RunEnd::Cancelled => {
                    tally.record_cut_short();
                    break 'runs EndedBy::Cancel;
                }
            }
            // A run that outlived the lifecycle is finished, not cut short: the check at the top
            // of the loop ends the runs after it.
            next_start = cadence.next_start(started, Instant::now());
        };
        self.end(ended_by, &mut tally)
    }

    /// Runs the processor once, reporting while it runs.
    async fn run_once(
        &self,
        token: &CancellationToken,
        progress: &mut Interval,
        tally: &mut Tally,
    ) -> RunEnd {
        let run_token = token.child_token();
        let ctx = TaskContext::new(
            self.req,
            self.worker_id,
            self.logs.clone(),
            run_token.clone(),
        );
        let processor = Arc::clone(&self.processor);
        // As for a one-off job, the processor is called inside the task so that a panic in
        // `process` itself is caught as a JoinError.
        let mut work = AbortOnDrop(tokio::spawn(async move { processor.process(ctx).await }));
        let timeout_ms = self.req.timeout_ms;
        let timeout_at =
            (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms));
        // Once the run has timed out: when it is dropped if it has not ended.
        let mut give_up_at: Option<Instant> = None;
        let timed_out = || format!("timeout: exceeded {timeout_ms} ms");
        loop {
            tokio::select! {
                biased;
                joined = &mut work.0 => {
                    if token.is_cancelled() {
                        // The processor saw the instance's cancellation first and ended on it:
                        // the run was cut short, whatever it returned.
                        return RunEnd::Cancelled;
                    }
                    if give_up_at.is_some() {
                        return RunEnd::Finished(Err(timed_out()));
                    }
                    return RunEnd::Finished(match Outcome::from(joined) {
                        Outcome::Finished(r) if r.success => Ok(r.message),
                        Outcome::Finished(r) => Err(r.message),
                        Outcome::Panicked(message) => Err(format!("processor panicked: {message}")),
                        Outcome::Abandoned => Err("the run was aborted".to_owned()),
                    });
                }
                () = token.cancelled() => {
                    // The run's token is a child of the instance's, so the processor has been
                    // told to stop too.
                    if tokio::time::timeout(self.cancel_grace, &mut work.0).await.is_err() {
                        warn!(
                            instance = self.req.instance_id,
                            "run ignored cancellation for {:?}; dropping it", self.cancel_grace
                        );
                        work.0.abort();
                    }
                    return RunEnd::Cancelled;
                }
                () = until(timeout_at), if give_up_at.is_none() => {
                    run_token.cancel();
                    give_up_at = Some(Instant::now() + self.cancel_grace);
                }
                () = until(give_up_at) => {
                    work.0.abort();
                    return RunEnd::Finished(Err(format!(
                        "{}; the run ignored cancellation and was dropped",
                        timed_out()
                    )));
                }
                _ = progress.tick() => self.report(tally).await,
            }
        }
    }

    /// The terminal status and result, and the instance log's last line about the job.
    fn end(&self, ended_by: EndedBy, tally: &mut Tally) -> FrequentEnd {
        let runs = tally.runs;
        let after = runs_text(runs);
        let (status, mut result) = match (ended_by, self.state.cause()) {
            (EndedBy::Lifecycle, _) => (
                InstanceStatus::Succeeded,
                format!("lifecycle ended after {after}"),
            ),
            (EndedBy::Cancel, Some(StopCause::Shutdown)) => {
                (InstanceStatus::Failed, "worker shutting down".to_owned())
            }
            (EndedBy::Cancel, Some(StopCause::ServerStop)) => (
                InstanceStatus::Stopped,
                format!("stopped by server after {after}"),
            ),
            // The tracker never stops the instance for a timeout (it applies per run); were it
            // ever to, that would be a failure like a one-off job's.
            (EndedBy::Cancel, Some(StopCause::Timeout(ms))) => {
                (InstanceStatus::Failed, format!("timeout: exceeded {ms} ms"))
            }
            (EndedBy::Cancel, Some(StopCause::Stop) | None) => {
                (InstanceStatus::Stopped, format!("stopped after {after}"))
            }
        };
        tally.settle(self.state.answered_seq());
        let alert = tally.failure.is_some();
        if let Some(failure) = &tally.failure
            && status != InstanceStatus::Failed
        {
            result.push_str("; last failure: ");
            result.push_str(&failure.message);
        }
        if let Some(note) = tally.take_note() {
            self.log(LogLevel::Warn, note);
        }
        self.log(
            if status == InstanceStatus::Succeeded {
                LogLevel::Info
            } else {
                LogLevel::Warn
            },
            format!("frequent job ended: {result}"),
        );
        FrequentEnd {
            status,
            result: cap_result(result),
            runs,
            alert,
        }
    }

    /// Sends a RUNNING report with the run count.
    async fn report(&self, tally: &mut Tally) {
        let seq = self.state.next_seq();
        let (result, alert) = tally.for_report(self.state.answered_seq(), seq);
        if let Some(note) = tally.take_note() {
            self.log(LogLevel::Warn, note);
        }
        let report = StatusReport {
            instance_id: self.req.instance_id,
            attempt: self.req.attempt,
            seq,
            worker_id: self.worker_id.to_owned(),
            status: InstanceStatus::Running,
            result: result.map(cap_result),
            runs: Some(tally.runs),
            alert,
            reported_at_ms: now_ms(),
            started_at_ms: self.state.run_started_ms(),
            tasks: None,
        };
        self.sink.publish(&report).await;
    }

    /// Writes a line of the tracker's own to the instance's log.
    fn log(&self, level: LogLevel, text: String) {
        self.logs.push(LogLine {
            instance_id: self.req.instance_id,
            attempt: self.req.attempt,
            ts_ms: now_ms(),
            level,
            text,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::context::test_request;
    use crate::processor::{ProcessResult, processor_fn};

    const MS: Duration = Duration::from_millis(1);

    fn frequent(mode: FrequentMode, interval_ms: u64, lifecycle_ms: Option<i64>) -> Frequent {
        Frequent {
            mode,
            interval_ms,
            lifecycle_end_ms: lifecycle_ms.map(|ms| now_ms() + ms),
        }
    }

    /// A server that records reports, answers those at or below `answer_upto` (all when
    /// `None`), and answers "stop" to report `stop_at`.
    struct FakeServer {
        state: Arc<InstanceState>,
        reports: Mutex<Vec<StatusReport>>,
        answer_upto: Mutex<Option<i64>>,
        stop_at: Option<i64>,
    }

    impl FakeServer {
        fn new(state: &Arc<InstanceState>) -> Self {
            Self {
                state: Arc::clone(state),
                reports: Mutex::new(Vec::new()),
                answer_upto: Mutex::new(None),
                stop_at: None,
            }
        }

        fn reports(&self) -> Vec<StatusReport> {
            self.reports.lock().unwrap().clone()
        }
    }

    impl ProgressSink for FakeServer {
        async fn publish(&self, report: &StatusReport) {
            self.reports.lock().unwrap().push(report.clone());
            let limit = *self.answer_upto.lock().unwrap();
            let stop = self.stop_at == Some(report.seq);
            if stop || limit.is_none_or(|l| report.seq <= l) {
                self.state.note_answered(report.seq);
            }
            if stop {
                self.state.stop(StopCause::ServerStop);
            }
        }
    }

    struct Setup {
        req: DispatchRequest,
        state: Arc<InstanceState>,
        logs: LogSink,
    }

    fn setup(freq: Frequent, timeout_ms: u64) -> Setup {
        let req = DispatchRequest {
            frequent: Some(freq),
            timeout_ms,
            ..test_request("")
        };
        Setup {
            state: Arc::new(InstanceState::new(req.instance_id, req.attempt, 0, true)),
            req,
            logs: LogSink::new(10_000, 500),
        }
    }

    async fn run(
        setup: &Setup,
        processor: impl Processor,
        progress_every: Duration,
        server: &FakeServer,
    ) -> FrequentEnd {
        FrequentRunner {
            req: &setup.req,
            frequent: setup.req.frequent.unwrap(),
            state: &setup.state,
            processor: Arc::new(processor),
            logs: setup.logs.clone(),
            worker_id: "w-test",
            progress_every,
            cancel_grace: Duration::from_millis(500),
            sink: server,
        }
        .run()
        .await
    }

    /// A processor that notes when each run starts (in ms since `origin`) and takes
    /// `durations[i]` ms for run `i` (the last duration for the rest), failing when told.
    fn timed(
        origin: Instant,
        starts: Arc<Mutex<Vec<u64>>>,
        durations: Vec<u64>,
        fails: fn(usize) -> bool,
    ) -> impl Processor {
        processor_fn(move |ctx: TaskContext| {
            let starts = Arc::clone(&starts);
            let durations = durations.clone();
            async move {
                let i = {
                    let mut starts = starts.lock().unwrap();
                    starts.push(u64::try_from((Instant::now() - origin).as_millis()).unwrap());
                    starts.len() - 1
                };
                let ms = durations.get(i).or(durations.last()).copied().unwrap_or(0);
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(ms)) => {}
                    () = ctx.cancellation().cancelled_owned() => return ProcessResult::failed("cancelled"),
                }
                if fails(i) {
                    ProcessResult::failed(format!("run {i} failed"))
                } else {
                    ProcessResult::ok(format!("run {i} ok"))
                }
            }
        })
    }

    #[test]
    fn cadence_of_both_modes() {
        let t0 = Instant::now();
        let rate = Cadence::new(&frequent(FrequentMode::FixedRate, 100, None));
        assert_eq!(rate.next_start(t0, t0 + 30 * MS), t0 + 100 * MS);
        // An overrun is followed at once, and the missed ticks are skipped.
        assert_eq!(rate.next_start(t0, t0 + 350 * MS), t0 + 350 * MS);
        let delay = Cadence::new(&frequent(FrequentMode::FixedDelay, 100, None));
        assert_eq!(delay.next_start(t0, t0 + 30 * MS), t0 + 130 * MS);
        let zero = Cadence::new(&frequent(FrequentMode::FixedDelay, 0, None));
        assert_eq!(zero.next_start(t0, t0), t0 + MIN_INTERVAL);
    }

    #[test]
    fn alerts_repeat_until_a_report_carrying_them_is_answered() {
        let mut tally = Tally::default();
        tally.record(Ok("fine".to_owned()));
        assert_eq!(tally.for_report(0, 1), (Some("fine".to_owned()), false));
        tally.record(Err("bad".to_owned()));
        tally.record(Ok("fine again".to_owned()));
        // Report 2 carries the failure; it is not answered, so report 3 carries it again.
        assert_eq!(tally.for_report(1, 2), (Some("bad".to_owned()), true));
        assert_eq!(tally.for_report(1, 3), (Some("bad".to_owned()), true));
        // An answer to report 2 (or later) means the server saw it.
        assert_eq!(
            tally.for_report(2, 4),
            (Some("fine again".to_owned()), false)
        );
        // A failure after a report was sent needs a report of its own, whatever was answered.
        tally.record(Err("worse".to_owned()));
        assert_eq!(tally.for_report(4, 5), (Some("worse".to_owned()), true));
        tally.record(Err("worst".to_owned()));
        assert_eq!(tally.for_report(5, 6), (Some("worst".to_owned()), true));
        assert_eq!(tally.runs, 5);
        let note = tally.take_note().unwrap();
        assert!(
            note.starts_with("3 of 5 runs since the last report failed"),
            "{note}"
        );
        assert_eq!(tally.take_note(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_rate_runs_start_to_start_until_the_lifecycle_ends() {
        let setup = setup(frequent(FrequentMode::FixedRate, 100, Some(1_050)), 0);
        let server = FakeServer::new(&setup.state);
        let starts = Arc::new(Mutex::new(Vec::new()));
        // The third run overruns: the fourth starts as soon as it ends, then the grid resumes
        // from there without a burst of catch-up runs.
        let processor = timed(
            Instant::now(),
            Arc::clone(&starts),
            vec![30, 30, 250, 30],
            |_| false,
        );
        let end = run(&setup, processor, Duration::from_millis(400), &server).await;

        let starts = starts.lock().unwrap().clone();
        assert_eq!(starts, vec![0, 100, 200, 450, 550, 650, 750, 850, 950]);
        assert_eq!(
            end,
            FrequentEnd {
                status: InstanceStatus::Succeeded,
                result: "lifecycle ended after 9 runs".to_owned(),
                runs: 9,
                alert: false,
            }
        );
        let reports = server.reports();
        let seqs: Vec<i64> = reports.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(reports[0].runs, Some(0));
        assert_eq!(reports[0].result, None);
        // At 400 ms runs 0 and 1 have ended (run 2 ends at 450 ms); at 800 ms 2 to 6 as well.
        assert_eq!(reports[1].runs, Some(2));
        assert_eq!(reports[1].result.as_deref(), Some("run 1 ok"));
        assert_eq!(reports[2].runs, Some(7));
        assert!(
            reports
                .iter()
                .all(|r| r.status == InstanceStatus::Running && !r.alert)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_in_progress_at_lifecycle_end_is_finished() {
        let setup = setup(frequent(FrequentMode::FixedRate, 100, Some(150)), 0);
        let server = FakeServer::new(&setup.state);
        let starts = Arc::new(Mutex::new(Vec::new()));
        let origin = Instant::now();
        let processor = timed(origin, Arc::clone(&starts), vec![30, 300], |_| false);
        let end = run(&setup, processor, Duration::from_secs(10), &server).await;
        assert_eq!(*starts.lock().unwrap(), vec![0, 100]);
        assert_eq!(
            Instant::now() - origin,
            400 * MS,
            "the second run was not cut short"
        );
        assert_eq!(end.status, InstanceStatus::Succeeded);
        assert_eq!(end.runs, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_delay_waits_after_each_run() {
        let setup = setup(frequent(FrequentMode::FixedDelay, 100, Some(500)), 0);
        let server = FakeServer::new(&setup.state);
        let starts = Arc::new(Mutex::new(Vec::new()));
        let processor = timed(Instant::now(), Arc::clone(&starts), vec![30], |_| false);
        let end = run(&setup, processor, Duration::from_secs(10), &server).await;
        assert_eq!(*starts.lock().unwrap(), vec![0, 130, 260, 390]);
        assert_eq!(end.runs, 4);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_raise_alerts_and_a_server_stop_ends_the_runs() {
        let setup = setup(frequent(FrequentMode::FixedRate, 50, None), 0);
        let mut server = FakeServer::new(&setup.state);
        server.stop_at = Some(4);
        // Reports 2 and 3 get no answer (the server could not store them), 4 gets "stop".
        *server.answer_upto.lock().unwrap() = Some(1);
        let starts = Arc::new(Mutex::new(Vec::new()));
        let processor = timed(Instant::now(), Arc::clone(&starts), vec![10], |i| i == 3);
        let end = run(&setup, processor, Duration::from_millis(500), &server).await;

        let reports = server.reports();
        assert_eq!(reports.len(), 4);
        assert!(!reports[0].alert);
        // Run 3 (at 150 ms) failed: report 2 at 500 ms raises the alert, and report 3 repeats
        // it because report 2 was not answered.
        assert_eq!((reports[1].runs, reports[1].alert), (Some(10), true));
        assert_eq!(reports[1].result.as_deref(), Some("run 3 failed"));
        assert!(reports[2].alert);
        assert_eq!(reports[2].result.as_deref(), Some("run 3 failed"));
        assert!(reports[3].alert);

        // The server's "stop" answer to report 4 (at 1.5 s) cancels the run in progress then.
        assert_eq!(end.status, InstanceStatus::Stopped);
        assert_eq!(end.runs, 31);
        // The "stop" answer means that report 4, which carried the alert, was taken: the
        // terminal report need not raise it again.
        assert_eq!(end.result, "stopped by server after 31 runs");
        assert!(!end.alert);

        // The tracker's own lines: the start, one summary, and the end.
        let mut own = Vec::new();
        while let Some(line) = setup.logs.try_recv() {
            own.push(line.text);
        }
        assert_eq!(own.len(), 3, "{own:?}");
        assert!(own[1].starts_with("1 of 10 runs since the last report failed"));
        assert!(own[2].starts_with("frequent job ended: stopped by server"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_applies_per_run() {
        let setup = setup(frequent(FrequentMode::FixedDelay, 50, Some(1_000)), 100);
        let server = FakeServer::new(&setup.state);
        let starts = Arc::new(Mutex::new(Vec::new()));
        // Every other run takes too long and is cancelled by its timeout.
        let processor = processor_fn({
            let starts = Arc::clone(&starts);
            move |ctx: TaskContext| {
                let starts = Arc::clone(&starts);
                async move {
                    let n = {
                        let mut s = starts.lock().unwrap();
                        s.push(());
                        s.len()
                    };
                    let ms = if n % 2 == 0 { 1_000 } else { 10 };
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(ms)) => ProcessResult::ok("ok"),
                        () = ctx.cancellation().cancelled_owned() => ProcessResult::ok("cut short"),
                    }
                }
            }
        });
        let end = run(&setup, processor, Duration::from_secs(10), &server).await;
        // 0-10, 60-160 (timeout), 210-220, 270-370 (timeout), 420-430, 480-580 (timeout),
        // 630-640, 690-790 (timeout), 840-850, 900-1000 (timeout).
        assert_eq!(end.runs, 10);
        assert_eq!(end.status, InstanceStatus::Succeeded);
        assert!(end.alert, "the failures were never reported before the end");
        assert_eq!(
            end.result,
            "lifecycle ended after 10 runs; last failure: timeout: exceeded 100 ms"
        );
        assert!(
            !setup.state.token().is_cancelled(),
            "a run's timeout is not the instance's"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn panics_count_as_failed_runs_and_shutdown_fails_the_instance() {
        let setup = setup(frequent(FrequentMode::FixedRate, 100, None), 0);
        let server = FakeServer::new(&setup.state);
        let runs = Arc::new(Mutex::new(0));
        let processor = processor_fn({
            let runs = Arc::clone(&runs);
            move |_ctx: TaskContext| {
                let runs = Arc::clone(&runs);
                async move {
                    *runs.lock().unwrap() += 1;
                    panic!("boom");
                }
            }
        });
        let state = Arc::clone(&setup.state);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(450)).await;
            state.stop(StopCause::Shutdown);
        });
        let end = run(&setup, processor, Duration::from_millis(200), &server).await;
        assert_eq!(*runs.lock().unwrap(), 5);
        assert_eq!(end.status, InstanceStatus::Failed);
        assert_eq!(end.result, "worker shutting down");
        assert_eq!(end.runs, 5);
        let reports = server.reports();
        assert_eq!(
            reports[1].result.as_deref(),
            Some("processor panicked: boom")
        );
        assert!(reports[1].alert);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stop_request_cancels_the_run_in_progress() {
        let setup = setup(frequent(FrequentMode::FixedRate, 100, None), 0);
        let server = FakeServer::new(&setup.state);
        let starts = Arc::new(Mutex::new(Vec::new()));
        let origin = Instant::now();
        let processor = timed(origin, Arc::clone(&starts), vec![10, 10, 10_000], |_| false);
        let state = Arc::clone(&setup.state);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(250)).await;
            state.stop(StopCause::Stop);
        });
        let end = run(&setup, processor, Duration::from_secs(10), &server).await;
        assert_eq!(
            Instant::now() - origin,
            250 * MS,
            "the long run was cancelled at once"
        );
        assert_eq!(end.status, InstanceStatus::Stopped);
        assert_eq!(end.result, "stopped after 3 runs");
        assert_eq!(end.runs, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lifecycle_already_over_makes_no_run() {
        let setup = setup(frequent(FrequentMode::FixedRate, 100, Some(-5)), 0);
        let server = FakeServer::new(&setup.state);
        let processor = processor_fn(|_ctx: TaskContext| async { ProcessResult::ok("") });
        let end = run(&setup, processor, Duration::from_secs(1), &server).await;
        assert_eq!(end.result, "lifecycle ended after 0 runs");
        assert_eq!(server.reports().len(), 1);
    }
}
