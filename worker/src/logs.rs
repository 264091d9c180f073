//! Instance logs: the bounded buffer processors write to, and the flusher that sends it to the
//! owning server in batches.
//!
//! Writing never blocks a processor. Lines go into a bounded channel; when it is full the line
//! is dropped and counted, and the count travels with the next batch and every heartbeat. The
//! flusher sends a batch every `log_flush_interval`, when `log_batch_lines` have accumulated,
//! and whenever a task tracker asks it to (before a terminal report, so that an instance's log
//! is complete once the instance is).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rota_shared::ErrorCode;
use rota_shared::message::{LogAck, LogBatch, LogLine};
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::link::{CallError, Endpoint, Link, REQUEST_TIMEOUT};

/// The longest line kept; longer text is cut, so that a single line always fits in a batch.
pub(crate) const MAX_LINE_BYTES: usize = 32 * 1024;

/// The most JSON a batch's lines may take, well below `rota_shared::MAX_PAYLOAD_BYTES`.
pub(crate) const MAX_BATCH_BYTES: usize = 256 * 1024;

/// How often a batch is tried before it is dropped.
const SEND_ATTEMPTS: u32 = 3;

/// Where processors write log lines. Cloned into every task context.
#[derive(Clone)]
pub(crate) struct LogSink {
    tx: mpsc::Sender<LogLine>,
    dropped: Arc<AtomicU64>,
}

impl LogSink {
    /// A sink with room for `capacity` lines, and the receiving end for the flusher.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<LogLine>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let sink = Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (sink, rx)
    }

    pub(crate) fn push(&self, line: LogLine) {
        if self.tx.try_send(line).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lines dropped since the worker started.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
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

/// Asks the flusher to send everything written so far.
#[derive(Clone)]
pub(crate) struct FlushHandle {
    tx: mpsc::Sender<oneshot::Sender<()>>,
}

impl FlushHandle {
    /// Sends every line written before the call, waiting at most `wait`. Returns whether the
    /// flush finished (sent or given up on) in time.
    pub(crate) async fn flush(&self, wait: Duration) -> bool {
        let (done_tx, done_rx) = oneshot::channel();
        let asked = tokio::time::timeout(wait, async {
            self.tx.send(done_tx).await.is_ok() && done_rx.await.is_ok()
        });
        matches!(asked.await, Ok(true))
    }
}

/// The task that sends log batches.
pub(crate) struct LogFlusher {
    link: Arc<Link>,
    worker_id: String,
    lines: mpsc::Receiver<LogLine>,
    flushes: mpsc::Receiver<oneshot::Sender<()>>,
    dropped: Arc<AtomicU64>,
    /// The dropped count the server has been told about.
    reported_dropped: u64,
    pending: VecDeque<LogLine>,
    buffer_lines: usize,
    batch_lines: usize,
    interval: Duration,
}

impl LogFlusher {
    pub(crate) fn new(
        link: Arc<Link>,
        worker_id: String,
        sink: &LogSink,
        lines: mpsc::Receiver<LogLine>,
        buffer_lines: usize,
        batch_lines: usize,
        interval: Duration,
    ) -> (Self, FlushHandle) {
        let (tx, flushes) = mpsc::channel(64);
        let flusher = Self {
            link,
            worker_id,
            lines,
            flushes,
            dropped: Arc::clone(&sink.dropped),
            reported_dropped: 0,
            pending: VecDeque::new(),
            buffer_lines,
            batch_lines: batch_lines.max(1),
            interval,
        };
        (flusher, FlushHandle { tx })
    }

    pub(crate) async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                Some(done) = self.flushes.recv() => {
                    self.drain_buffer();
                    self.send_pending().await;
                    // The asker may have given up waiting; that is its business.
                    let _ = done.send(());
                }
                line = self.lines.recv() => match line {
                    Some(line) => {
                        self.enqueue(line);
                        if self.pending.len() >= self.batch_lines {
                            self.send_pending().await;
                        }
                    }
                    None => {
                        self.send_pending().await;
                        return;
                    }
                },
                _ = ticker.tick() => {
                    self.drain_buffer();
                    self.send_pending().await;
                }
            }
        }
    }

    /// Moves what the buffer holds now into `pending`. Bounded by the buffer's size, so that
    /// a processor that writes without pause cannot keep the flusher here.
    fn drain_buffer(&mut self) {
        for _ in 0..self.buffer_lines {
            match self.lines.try_recv() {
                Ok(line) => self.enqueue(line),
                Err(_) => break,
            }
        }
    }

    /// Queues a line for sending. The queue is bounded like the buffer, so that lines pile up
    /// nowhere while the server is unreachable: what does not fit is dropped and counted.
    fn enqueue(&mut self, line: LogLine) {
        if self.pending.len() >= self.buffer_lines {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            self.pending.push_back(line);
        }
    }

    async fn send_pending(&mut self) {
        while !self.pending.is_empty() {
            let lines = take_batch(&mut self.pending, self.batch_lines, MAX_BATCH_BYTES);
            if !self.send_batch(lines).await {
                // The server is not taking logs now; the rest waits for the next round rather
                // than holding up those who asked for a flush.
                return;
            }
        }
        // Lines dropped while nothing else was to be sent still have to be told.
        if self.dropped.load(Ordering::Relaxed) > self.reported_dropped {
            self.send_batch(Vec::new()).await;
        }
    }

    /// Sends one batch, trying a few times. Returns whether it was stored; if not, its lines
    /// are counted as dropped.
    async fn send_batch(&mut self, lines: Vec<LogLine>) -> bool {
        let dropped_total = self.dropped.load(Ordering::Relaxed);
        let batch = LogBatch {
            worker_id: self.worker_id.clone(),
            lines,
            dropped: dropped_total.saturating_sub(self.reported_dropped),
        };
        let mut attempt = 1;
        let error = loop {
            match self
                .link
                .call::<_, LogAck>(Endpoint::Logs, &batch, REQUEST_TIMEOUT)
                .await
            {
                Ok(_) => {
                    self.reported_dropped = dropped_total;
                    return true;
                }
                Err(e) if attempt < SEND_ATTEMPTS && worth_retrying(&e) => {
                    debug!(attempt, "log batch not stored: {e}; retrying");
                    // The pause leaves the re-acquire that `call` may have triggered time to
                    // find the new owner before the next try.
                    tokio::time::sleep(Duration::from_millis(300) * attempt).await;
                    attempt += 1;
                }
                Err(e) => break e,
            }
        };
        let lost = batch.lines.len() as u64;
        self.dropped.fetch_add(lost, Ordering::Relaxed);
        warn!(lines = lost, "dropped a log batch: {error}");
        false
    }
}

/// Whether sending the same batch again may succeed.
fn worth_retrying(error: &CallError) -> bool {
    match error {
        CallError::Remote(body) => !matches!(
            body.code,
            ErrorCode::BadRequest | ErrorCode::PayloadTooLarge | ErrorCode::InvalidArgument
        ),
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rota_shared::message::LogLevel;

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
        let (sink, mut rx) = LogSink::new(2);
        for i in 0..5 {
            sink.push(line(&i.to_string()));
        }
        assert_eq!(sink.dropped(), 3);
        assert_eq!(rx.try_recv().unwrap().text, "0");
        assert_eq!(rx.try_recv().unwrap().text, "1");
        assert!(rx.try_recv().is_err());
    }
}
