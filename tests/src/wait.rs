//! Bounded waiting: poll a condition until it holds or a deadline passes.
//!
//! Distributed behaviour is asynchronous, so tests must wait for it; sleeping for a guessed time
//! makes a test both slow and flaky. These helpers instead ask the system, every
//! [`POLL_INTERVAL`], whether the awaited state has arrived, return as soon as it has, and panic
//! with a message naming what was awaited when the deadline passes.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long the helpers pause between two probes.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Calls `probe` until it returns `Some`, and returns that value.
///
/// The first probe runs at once, then one every [`POLL_INTERVAL`]. A probe that is still running
/// at the deadline is abandoned. Panics with `timed out after {timeout:?} waiting for {what}` when
/// `timeout` passes first.
///
/// ```no_run
/// # async fn example(count: impl Fn() -> usize) {
/// use std::time::Duration;
/// let n = rota_tests::wait::until("three instances", Duration::from_secs(10), || async {
///     let n = count();
///     (n >= 3).then_some(n)
/// })
/// .await;
/// # }
/// ```
pub async fn until<F, Fut, T>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll(what, timeout, || {
        let attempt = probe();
        async move { attempt.await.ok_or(None) }
    })
    .await
}

/// Calls `probe` until it returns `Ok`, and returns that value.
///
/// Like [`until`], but the panic message at the deadline also shows the last error, which usually
/// says why the awaited state never came (for example the last reply of a request that kept
/// failing).
pub async fn until_ok<F, Fut, T, E>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Debug,
{
    poll(what, timeout, || {
        let attempt = probe();
        async move { attempt.await.map_err(|error| Some(format!("{error:?}"))) }
    })
    .await
}

/// The loop behind [`until`] and [`until_ok`]: a probe fails with an optional description of
/// why, and the last description goes into the panic message.
async fn poll<F, Fut, T>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Option<String>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_failure: Option<String> = None;
    loop {
        // The probe itself is bounded by the deadline too, so a probe that hangs (a request to a
        // process that never answers) cannot stretch the wait beyond what the caller asked for.
        match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(value)) => return value,
            Ok(Err(failure)) => {
                if failure.is_some() {
                    last_failure = failure;
                }
            }
            Err(_elapsed) => {
                let detail = match &last_failure {
                    Some(failure) => format!("; last error: {failure}"),
                    None => String::new(),
                };
                panic!(
                    "timed out after {timeout:?} waiting for {what} (the last probe was still \
                     running at the deadline){detail}"
                );
            }
        }
        let now = Instant::now();
        if now >= deadline {
            match &last_failure {
                Some(failure) => {
                    panic!("timed out after {timeout:?} waiting for {what}; last error: {failure}")
                }
                None => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        // The last pause ends at the deadline, so one more probe runs right at it.
        tokio::time::sleep_until((now + POLL_INTERVAL).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_the_first_some() {
        let calls = Arc::new(AtomicUsize::new(0));
        let value = until("the third call", Duration::from_secs(5), || {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                (n == 3).then_some(n * 10)
            }
        })
        .await;
        assert_eq!(value, 30);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 200ms waiting for something that never happens")]
    async fn panics_at_the_deadline() {
        until(
            "something that never happens",
            Duration::from_millis(200),
            || async { None::<()> },
        )
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "last error: \"still 3\"")]
    async fn until_ok_reports_the_last_error() {
        until_ok("an Ok", Duration::from_millis(200), || async {
            Err::<(), _>("still 3")
        })
        .await;
    }

    #[tokio::test]
    #[should_panic(expected = "still running at the deadline")]
    async fn a_hanging_probe_is_cut_off_at_the_deadline() {
        until("a probe that hangs", Duration::from_millis(200), || {
            std::future::pending::<Option<()>>()
        })
        .await;
    }
}
