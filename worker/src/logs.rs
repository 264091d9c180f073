//! Instance logs: the bounded buffer processors write to, and the flusher that sends it to the
//! owning server in batches.
//!
//! Writing never blocks a processor. Lines go into one bounded FIFO shared by every instance;
//! the lines not yet stored by a server (queued, and the batch being sent) never exceed
//! `log_buffer_lines`, and a line that would exceed it is dropped and counted. The count travels
//! with the next batch and every heartbeat. The flusher sends a batch every
//! `log_flush_interval`, when `log_batch_lines` have accumulated, and when a task tracker asks
//! it to (before a terminal report, so that an instance's log is complete once the instance
//! is).
//!
//! A batch the server does not store because it is unreachable, no longer owns the app, or its
//! database is down is kept and sent again (with backoff, asking discovery again) until it is
//! stored: a database outage of a few seconds must not lose lines that fit in the buffer. Only
//! one batch is in flight at a time, so every instance's lines arrive in the order written.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rota_shared::ErrorCode;
use rota_shared::message::{LogAck, LogBatch, LogLine};
use tokio::sync::{Notify, watch};
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use rota_shared::subject::ServerEndpoint as Endpoint;

use crate::link::{CallError, Link, REQUEST_TIMEOUT};
use crate::retry::{Next, Policy, Retrier};

/// The longest line kept; longer text is cut, so that a single line always fits in a batch.
pub(crate) const MAX_LINE_BYTES: usize = 32 * 1024;

/// The most JSON a batch's lines may take, well below `rota_shared::MAX_PAYLOAD_BYTES`.
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;

/// How a batch is sent again: for as long as the server is away; a few times on an unclear
/// answer (an `INTERNAL` one, say), which may never end, while a batch that is never stored
/// would hold the whole buffer up; never on an answer that cannot change.
const BATCH_RETRY: Policy = Policy {
    first: Duration::from_millis(200),
    max: Duration::from_secs(5),
    unclear_tries: 5,
    transient_tries: None,
};

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update under this lock is a handful of assignments that cannot panic half-way, so a
    // poisoned lock still guards consistent data.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The lines not yet stored by a server.
#[derive(Debug, Default)]
struct Buffer {
    queue: VecDeque<LogLine>,
    /// Lines of the batch being sent, which still count against the capacity.
    in_flight: usize,
    /// Lines accepted into the buffer since the worker started.
    accepted: u64,
}

struct Shared {
    buffer: Mutex<Buffer>,
    capacity: usize,
    batch_lines: usize,
    /// Wakes the flusher: a batch is full, or a flush was asked for.
    wake: Notify,
    dropped: AtomicU64,
    /// Lines whose fate is settled (stored, or given up), in the order accepted; flushes wait
    /// on it.
    settled: watch::Sender<u64>,
}

/// Where processors write log lines, shared by every task context and the flusher.
#[derive(Clone)]
pub(crate) struct LogSink {
    shared: Arc<Shared>,
}

impl LogSink {
    /// A sink that holds at most `capacity` unsent lines and wakes the flusher whenever
    /// `batch_lines` are queued.
    pub(crate) fn new(capacity: usize, batch_lines: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                buffer: Mutex::new(Buffer::default()),
                capacity: capacity.max(1),
                batch_lines: batch_lines.max(1),
                wake: Notify::new(),
                dropped: AtomicU64::new(0),
                settled: watch::Sender::new(0),
            }),
        }
    }

    pub(crate) fn push(&self, line: LogLine) {
        let mut buffer = lock(&self.shared.buffer);
        if buffer.queue.len() + buffer.in_flight >= self.shared.capacity {
            drop(buffer);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.queue.push_back(line);
        buffer.accepted += 1;
        let batch_full = buffer.queue.len() >= self.shared.batch_lines;
        drop(buffer);
        if batch_full {
            self.shared.wake.notify_one();
        }
    }

    /// Lines dropped since the worker started.
    pub(crate) fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Lines waiting to be stored, the batch in flight included.
    #[cfg(test)]
    pub(crate) fn unsent(&self) -> usize {
        let buffer = lock(&self.shared.buffer);
        buffer.queue.len() + buffer.in_flight
    }

    /// Waits until every line written before the call has been stored (or given up), at most
    /// `wait`. Returns whether that happened in time; if not, the lines still go out later.
    pub(crate) async fn flush(&self, wait: Duration) -> bool {
        let target = lock(&self.shared.buffer).accepted;
        let mut settled = self.shared.settled.subscribe();
        self.shared.wake.notify_one();
        matches!(
            tokio::time::timeout(wait, settled.wait_for(|n| *n >= target)).await,
            Ok(Ok(_))
        )
    }

    /// Takes the next batch off the queue; its lines stay counted until [`Self::settle`].
    fn take_batch(&self) -> Vec<LogLine> {
        let mut buffer = lock(&self.shared.buffer);
        let batch = take_batch(&mut buffer.queue, self.shared.batch_lines, MAX_BATCH_BYTES);
        buffer.in_flight = batch.len();
        batch
    }

    /// The batch in flight is stored or given up: its room is free again.
    fn settle(&self, lines: usize) {
        lock(&self.shared.buffer).in_flight = 0;
        self.shared.settled.send_modify(|n| *n += lines as u64);
    }

    /// Takes the oldest queued line, as a test reads what a processor wrote.
    #[cfg(test)]
    pub(crate) fn try_recv(&self) -> Option<LogLine> {
        lock(&self.shared.buffer).queue.pop_front()
    }
}

/// Cuts `text` to [`MAX_LINE_BYTES`] on a character boundary, saying so at the end.
pub(crate) fn truncate_line(mut text: String) -> String {
    if text.len() <= MAX_LINE_BYTES {
        return text;
    }
    let mut end = MAX_LINE_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str(" … [truncated]");
    text
}

/// The bytes `line` adds to a batch's JSON (its encoding and a comma).
fn encoded_len(line: &LogLine) -> usize {
    serde_json::to_vec(line)
        .map(|v| v.len())
        // Escaping can grow text six-fold at worst; overestimating keeps the batch small.
        .unwrap_or(line.text.len() * 6 + 128)
        + 1
}

/// Takes the next batch off the front of `pending`: at most `max_lines` lines and
/// `max_bytes` of JSON, but always at least one line so that the queue moves.
pub(crate) fn take_batch(
    pending: &mut VecDeque<LogLine>,
    max_lines: usize,
    max_bytes: usize,
) -> Vec<LogLine> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(line) = pending.front() {
        let cost = encoded_len(line);
        if !batch.is_empty() && (batch.len() >= max_lines || bytes + cost > max_bytes) {
            break;
        }
        bytes += cost;
        if let Some(line) = pending.pop_front() {
            batch.push(line);
        }
    }
    batch
}

/// Where the flusher sends batches: the owning server over the [`Link`], or a fake in tests.
pub(crate) trait BatchSender: Send + Sync + 'static {
    fn send(&self, batch: &LogBatch) -> impl Future<Output = Result<(), CallError>> + Send;

    /// Asks discovery again which server owns the app.
    fn reacquire(&self);
}

impl BatchSender for Link {
    async fn send(&self, batch: &LogBatch) -> Result<(), CallError> {
        // `call` itself re-acquires when the server is gone or no longer the owner.
        self.call::<_, LogAck>(Endpoint::Logs, batch, REQUEST_TIMEOUT)
            .await
            .map(|_| ())
    }

    fn reacquire(&self) {
        self.trigger_reacquire();
    }
}

/// The task that sends log batches.
pub(crate) struct LogFlusher<S> {
    sender: Arc<S>,
    worker_id: String,
    sink: LogSink,
    /// The dropped count the server has been told about.
    reported_dropped: u64,
    interval: Duration,
}

impl<S: BatchSender> LogFlusher<S> {
    pub(crate) fn new(
        sender: Arc<S>,
        worker_id: String,
        sink: LogSink,
        interval: Duration,
    ) -> Self {
        Self {
            sender,
            worker_id,
            sink,
            reported_dropped: 0,
            interval,
        }
    }

    pub(crate) async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let shared = Arc::clone(&self.sink.shared);
        loop {
            tokio::select! {
                () = shared.wake.notified() => {}
                _ = ticker.tick() => {}
            }
            self.send_queued().await;
        }
    }

    /// Sends the queue empty, one batch at a time, each until it is stored.
    async fn send_queued(&mut self) {
        loop {
            let lines = self.sink.take_batch();
            if lines.is_empty() {
                break;
            }
            let count = lines.len();
            self.deliver(lines).await;
            self.sink.settle(count);
        }
        // Lines dropped while nothing else was to be sent still have to be told. This batch
        // carries nothing else, so it is tried once; the next round tells again if it failed.
        let dropped = self.sink.dropped();
        if dropped > self.reported_dropped {
            let batch = self.batch(Vec::new(), dropped);
            match self.sender.send(&batch).await {
                Ok(()) => self.reported_dropped = dropped,
                Err(e) => debug!("dropped-lines count not delivered: {e}"),
            }
        }
    }

    fn batch(&self, lines: Vec<LogLine>, dropped_total: u64) -> LogBatch {
        LogBatch {
            worker_id: self.worker_id.clone(),
            lines,
            dropped: dropped_total.saturating_sub(self.reported_dropped),
        }
    }

    /// Sends one batch until the server stores it, or until it is clear that it never will (its
    /// lines are then counted as dropped).
    async fn deliver(&mut self, lines: Vec<LogLine>) {
        let mut batch = self.batch(lines, 0);
        let mut retrier = Retrier::new(BATCH_RETRY);
        loop {
            // Every try tells the drops up to now, so that they are reported without waiting for
            // the outage to end and the next batch to go.
            let dropped_total = self.sink.dropped();
            batch.dropped = dropped_total.saturating_sub(self.reported_dropped);
            let error = match self.sender.send(&batch).await {
                Ok(()) => {
                    self.reported_dropped = dropped_total;
                    if retrier.tries() > 0 {
                        debug!(
                            tries = retrier.tries() + 1,
                            "log batch stored after retrying"
                        );
                    }
                    return;
                }
                Err(e) => e,
            };
            let pause = match retrier.failed(&error) {
                Next::GiveUp(why) => {
                    let lost = batch.lines.len() as u64;
                    self.sink.shared.dropped.fetch_add(lost, Ordering::Relaxed);
                    warn!(
                        lines = lost,
                        tries = retrier.tries(),
                        "dropped a log batch, {why}: {error}"
                    );
                    return;
                }
                Next::Pause(pause) => pause,
            };
            if matches!(&error, CallError::Remote(body) if body.code == ErrorCode::Unavailable) {
                // The server cannot store now; another may have taken the app over, or will.
                self.sender.reacquire();
            }
            if retrier.worth_logging() {
                warn!(
                    lines = batch.lines.len(),
                    tries = retrier.tries(),
                    "log batch not stored: {error}; keeping it and retrying"
                );
            }
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_shared::message::LogLevel;
    use tokio::time::Instant;

    fn line(text: &str) -> LogLine {
        LogLine {
            instance_id: 1,
            attempt: 1,
            ts_ms: 1_700_000_000_000,
            level: LogLevel::Info,
            text: text.to_owned(),
        }
    }

    #[test]
    fn batches_are_capped_by_lines_and_bytes() {
        let mut pending: VecDeque<LogLine> = (0..10).map(|i| line(&format!("l{i}"))).collect();
        let batch = take_batch(&mut pending, 4, MAX_BATCH_BYTES);
        assert_eq!(batch.len(), 4);
        assert_eq!(batch[0].text, "l0");
        assert_eq!(pending.len(), 6);

        let big = "x".repeat(100 * 1024);
        let mut pending: VecDeque<LogLine> = (0..5).map(|_| line(&big)).collect();
        let batch = take_batch(&mut pending, 500, MAX_BATCH_BYTES);
        assert_eq!(batch.len(), 2, "three 100 KiB lines exceed 256 KiB");
        let json = serde_json::to_vec(&batch).unwrap();
        assert!(json.len() <= MAX_BATCH_BYTES);

        // One line larger than the cap still goes, alone, so that the queue moves.
        let mut pending: VecDeque<LogLine> = [line(&big), line("a")].into();
        let batch = take_batch(&mut pending, 500, 1024);
        assert_eq!(batch.len(), 1);
        assert_eq!(pending.len(), 1);
    }

    #[test]
    fn escaping_counts_towards_the_cap() {
        // Control characters are escaped as \u00XX: six bytes of JSON each.
        let nasty = "\u{1}".repeat(20 * 1024);
        let mut pending: VecDeque<LogLine> = (0..5).map(|_| line(&nasty)).collect();
        let batch = take_batch(&mut pending, 500, MAX_BATCH_BYTES);
        assert_eq!(batch.len(), 2);
        assert!(serde_json::to_vec(&batch).unwrap().len() <= MAX_BATCH_BYTES);
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        assert_eq!(truncate_line("short".to_owned()), "short");
        let long = "é".repeat(MAX_LINE_BYTES);
        let cut = truncate_line(long);
        assert!(cut.len() <= MAX_LINE_BYTES + 20);
        assert!(cut.ends_with("[truncated]"));
    }

    #[test]
    fn a_full_buffer_drops_and_counts() {
        let sink = LogSink::new(2, 500);
        for i in 0..5 {
            sink.push(line(&i.to_string()));
        }
        assert_eq!(sink.dropped(), 3);
        assert_eq!(sink.try_recv().unwrap().text, "0");
        assert_eq!(sink.try_recv().unwrap().text, "1");
        assert!(sink.try_recv().is_none());
    }

    /// A log store that refuses with `error` until `down_until`, then stores.
    struct FakeStore {
        down_until: Mutex<Instant>,
        error: ErrorCode,
        stored: Mutex<Vec<LogBatch>>,
        tries: AtomicU64,
        reacquires: AtomicU64,
    }

    impl FakeStore {
        fn down_for(ms: u64, error: ErrorCode) -> Arc<Self> {
            Arc::new(Self {
                down_until: Mutex::new(Instant::now() + Duration::from_millis(ms)),
                error,
                stored: Mutex::new(Vec::new()),
                tries: AtomicU64::new(0),
                reacquires: AtomicU64::new(0),
            })
        }

        fn texts(&self) -> Vec<String> {
            let stored = self.stored.lock().unwrap();
            stored
                .iter()
                .flat_map(|b| b.lines.iter().map(|l| l.text.clone()))
                .collect()
        }

        fn dropped_told(&self) -> u64 {
            self.stored.lock().unwrap().iter().map(|b| b.dropped).sum()
        }
    }

    impl BatchSender for FakeStore {
        async fn send(&self, batch: &LogBatch) -> Result<(), CallError> {
            if !batch.lines.is_empty() {
                self.tries.fetch_add(1, Ordering::Relaxed);
            }
            // A request takes a moment, as over the network.
            tokio::time::sleep(Duration::from_millis(5)).await;
            if Instant::now() < *self.down_until.lock().unwrap() {
                return Err(CallError::Remote(rota_shared::ErrorBody::new(
                    self.error,
                    "database unreachable",
                )));
            }
            self.stored.lock().unwrap().push(batch.clone());
            Ok(())
        }

        fn reacquire(&self) {
            self.reacquires.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn start(store: &Arc<FakeStore>, capacity: usize, batch_lines: usize) -> LogSink {
        let sink = LogSink::new(capacity, batch_lines);
        let flusher = LogFlusher::new(
            Arc::clone(store),
            "w1".to_owned(),
            sink.clone(),
            Duration::from_secs(1),
        );
        tokio::spawn(flusher.run());
        sink
    }

    #[tokio::test(start_paused = true)]
    async fn a_database_outage_loses_no_line_that_fits() {
        let store = FakeStore::down_for(10_000, ErrorCode::Unavailable);
        let sink = start(&store, 1_000, 50);
        // 600 lines over 12 s, while the store is down for the first 10.
        for i in 0..600 {
            sink.push(line(&format!("l{i}")));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(sink.flush(Duration::from_secs(30)).await);
        let expected: Vec<String> = (0..600).map(|i| format!("l{i}")).collect();
        assert_eq!(store.texts(), expected, "every line, in order, once");
        assert_eq!(sink.dropped(), 0);
        assert_eq!(sink.unsent(), 0);
        assert!(
            store.reacquires.load(Ordering::Relaxed) > 0,
            "UNAVAILABLE re-acquires"
        );
        // Backoff: 200 ms doubling to 5 s makes about seven tries in 10 s, not hundreds.
        let tries = store.tries.load(Ordering::Relaxed);
        assert!(tries < 30, "{tries} tries");
    }

    #[tokio::test(start_paused = true)]
    async fn lines_beyond_the_buffer_are_dropped_counted_and_told() {
        let store = FakeStore::down_for(3_000, ErrorCode::Unavailable);
        let sink = start(&store, 10, 4);
        for i in 0..15 {
            sink.push(line(&format!("l{i}")));
        }
        assert_eq!(sink.unsent(), 10);
        assert_eq!(sink.dropped(), 5, "the buffer counts the batch in flight");
        // The flush before a terminal report gives up in time while the store is down...
        assert!(!sink.flush(Duration::from_millis(500)).await);
        // ...and the lines go out once it is back, with the drops told.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let expected: Vec<String> = (0..10).map(|i| format!("l{i}")).collect();
        assert_eq!(store.texts(), expected);
        assert_eq!(store.dropped_told(), 5);
        assert_eq!(sink.unsent(), 0);
        // Room again: new lines are taken.
        sink.push(line("later"));
        assert!(sink.flush(Duration::from_secs(5)).await);
        assert_eq!(store.texts().last().map(String::as_str), Some("later"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hopeless_batch_is_dropped_and_the_queue_moves() {
        let store = FakeStore::down_for(600_000, ErrorCode::PayloadTooLarge);
        let sink = start(&store, 100, 10);
        sink.push(line("doomed"));
        // The first try is refused for good; the flush still ends, with the line counted.
        assert!(sink.flush(Duration::from_secs(5)).await);
        assert_eq!(sink.dropped(), 1);
        assert_eq!(store.tries.load(Ordering::Relaxed), 1);
        *store.down_until.lock().unwrap() = Instant::now();
        sink.push(line("fine"));
        assert!(sink.flush(Duration::from_secs(5)).await);
        assert_eq!(store.texts(), vec!["fine"]);
        assert_eq!(store.dropped_told(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn odd_refusals_are_tried_a_few_times() {
        let store = FakeStore::down_for(600_000, ErrorCode::Internal);
        let sink = start(&store, 100, 10);
        sink.push(line("x"));
        assert!(sink.flush(Duration::from_secs(60)).await);
        assert_eq!(sink.dropped(), 1);
        assert_eq!(
            store.tries.load(Ordering::Relaxed),
            u64::from(BATCH_RETRY.unclear_tries)
        );
    }
}
