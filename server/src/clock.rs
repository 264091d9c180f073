//! Wall-clock time in milliseconds since the Unix epoch: the unit of every stored time.

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Milliseconds to a tokio duration, with past times as zero.
pub fn until(due_ms: i64, now_ms: i64) -> std::time::Duration {
    std::time::Duration::from_millis(u64::try_from(due_ms.saturating_sub(now_ms)).unwrap_or(0))
}

/// A configured duration in milliseconds, the unit stored times are compared in.
pub fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}
