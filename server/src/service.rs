//! `ScheduledService`: a background loop with a lifecycle (DESIGN §7), after Guava's
//! `AbstractScheduledService`.
//!
//! A service is started, runs one iteration per tick of its schedule, and is stopped cleanly. An
//! iteration that fails is logged and counted, and the loop goes on: a database that is down for a
//! minute must not end the reconcile loop for good. The schedule loop, presence, health, reconcile
//! and clean-up all run on it.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The lifecycle: NEW → STARTING → RUNNING → STOPPING → TERMINATED, or FAILED when `start_up`
/// or `shut_down` fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceState {
    New,
    Starting,
    Running,
    Stopping,
    Terminated,
    Failed,
}

impl fmt::Display for ServiceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::New => "NEW",
            Self::Starting => "STARTING",
            Self::Running => "RUNNING",
            Self::Stopping => "STOPPING",
            Self::Terminated => "TERMINATED",
            Self::Failed => "FAILED",
        })
    }
}

/// When iterations run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    /// The next iteration starts this long after the previous one ended.
    FixedDelay(Duration),
    /// Iterations start this far apart; one that overruns delays the next, with no burst after.
    FixedRate(Duration),
}

pub type ServiceError = Box<dyn std::error::Error + Send + Sync>;

/// A background loop. Only `run_one_iteration` is required.
pub trait ScheduledService: Send + 'static {
    fn name(&self) -> &'static str;

    fn every(&self) -> Every;

    fn start_up(&mut self) -> impl Future<Output = Result<(), ServiceError>> + Send {
        async { Ok(()) }
    }

    fn run_one_iteration(&mut self) -> impl Future<Output = Result<(), ServiceError>> + Send;

    fn shut_down(&mut self) -> impl Future<Output = Result<(), ServiceError>> + Send {
        async { Ok(()) }
    }
}

#[derive(Default)]
struct Counters {
    iterations: AtomicU64,
    failures: AtomicU64,
}

/// A read-only view of a running service, for reporting.
#[derive(Clone)]
pub struct ServiceProbe {
    pub name: &'static str,
    state: watch::Receiver<ServiceState>,
    counters: Arc<Counters>,
}

/// The services of a running server, for their states in `rota server stats`: filled once,
/// after they were spawned.
#[derive(Default)]
pub struct ServiceBoard {
    probes: std::sync::OnceLock<Vec<ServiceProbe>>,
}

impl ServiceBoard {
    /// Shows these services; a second call changes nothing.
    pub fn show(&self, probes: Vec<ServiceProbe>) {
        let _ = self.probes.set(probes);
    }

    /// The services shown (none before `show`).
    pub fn probes(&self) -> &[ServiceProbe] {
        self.probes.get().map_or(&[], Vec::as_slice)
    }
}

impl ServiceProbe {
    pub fn state(&self) -> ServiceState {
        *self.state.borrow()
    }

    pub fn iterations(&self) -> (u64, u64) {
        (
            self.counters.iterations.load(Ordering::Relaxed),
            self.counters.failures.load(Ordering::Relaxed),
        )
    }
}

/// A started service: its state can be watched, its counters read, and it can be stopped.
pub struct ServiceHandle {
    name: &'static str,
    state: watch::Receiver<ServiceState>,
    counters: Arc<Counters>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl ServiceHandle {
    pub fn probe(&self) -> ServiceProbe {
        ServiceProbe {
            name: self.name,
            state: self.state.clone(),
            counters: self.counters.clone(),
        }
    }

    pub fn state(&self) -> ServiceState {
        *self.state.borrow()
    }

    /// Iterations run so far, and how many of them failed.
    pub fn iterations(&self) -> (u64, u64) {
        (
            self.counters.iterations.load(Ordering::Relaxed),
            self.counters.failures.load(Ordering::Relaxed),
        )
    }

    /// Waits until the service reaches `state` (or any state after it that it can no longer
    /// leave: TERMINATED or FAILED).
    pub async fn wait_for(&self, state: ServiceState) -> ServiceState {
        let mut rx = self.state.clone();
        let reached = rx
            .wait_for(|s| {
                *s == state || matches!(s, ServiceState::Terminated | ServiceState::Failed)
            })
            .await
            .map(|s| *s);
        reached.unwrap_or(ServiceState::Terminated)
    }

    /// Stops the service: the current iteration finishes, then `shut_down` runs.
    pub async fn stop(self) -> ServiceState {
        self.stop.cancel();
        let _ = self.task.await;
        *self.state.borrow()
    }

    /// Stops at once, as a crash would: no `shut_down`.
    pub fn abort(&self) {
        self.task.abort();
    }
}

/// Starts `service` on the runtime. It stops when `shutdown` (or the handle's `stop`) fires.
pub fn spawn<S: ScheduledService>(mut service: S, shutdown: &CancellationToken) -> ServiceHandle {
    let name = service.name();
    let (state_tx, state) = watch::channel(ServiceState::New);
    let counters = Arc::new(Counters::default());
    let stop = shutdown.child_token();
    let task = {
        let (counters, stop) = (counters.clone(), stop.clone());
        tokio::spawn(async move {
            // Supervised: a panic anywhere in the service ends it FAILED, in its state (and so
            // in `rota server stats`) and in the log, instead of leaving it RUNNING and dead.
            let lifecycle = std::panic::AssertUnwindSafe(async {
                state_tx.send_replace(ServiceState::Starting);
                if let Err(e) = service.start_up().await {
                    tracing::error!(service = name, error = %e, "service failed to start");
                    state_tx.send_replace(ServiceState::Failed);
                    return;
                }
                state_tx.send_replace(ServiceState::Running);
                run_loop(&mut service, &counters, &stop).await;
                state_tx.send_replace(ServiceState::Stopping);
                let end = match service.shut_down().await {
                    Ok(()) => ServiceState::Terminated,
                    Err(e) => {
                        tracing::error!(service = name, error = %e, "service failed to shut down");
                        ServiceState::Failed
                    }
                };
                state_tx.send_replace(end);
            });
            if let Err(panic) = futures::FutureExt::catch_unwind(lifecycle).await {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                tracing::error!(service = name, panic = %message, "service panicked; it is FAILED");
                state_tx.send_replace(ServiceState::Failed);
            }
        })
    };
    ServiceHandle {
        name,
        state,
        counters,
        stop,
        task,
    }
}

async fn run_loop<S: ScheduledService>(
    service: &mut S,
    counters: &Counters,
    stop: &CancellationToken,
) {
    let every = service.every();
    let mut rate = match every {
        Every::FixedRate(period) => {
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            Some(ticker)
        }
        Every::FixedDelay(_) => None,
    };
    loop {
        // Wait for the next start, or the stop.
        let next = async {
            match (&mut rate, every) {
                (Some(ticker), _) => {
                    ticker.tick().await;
                }
                (None, Every::FixedDelay(delay)) => {
                    // The first iteration runs at once; the delay follows each one.
                    if counters.iterations.load(Ordering::Relaxed) > 0 {
                        tokio::time::sleep(delay).await;
                    }
                }
                (None, Every::FixedRate(_)) => {}
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = next => {}
        }
        let result = service.run_one_iteration().await;
        counters.iterations.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = result {
            counters.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(service = service.name(), error = %e, "iteration failed; the loop goes on");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use tokio::time::Instant;

    /// A service that records when its iterations start and can be told to fail.
    struct Probe {
        every: Every,
        starts: Arc<Mutex<Vec<Instant>>>,
        work: Duration,
        fail_every_other: bool,
        fail_start: bool,
    }

    impl ScheduledService for Probe {
        fn name(&self) -> &'static str {
            "probe"
        }

        fn every(&self) -> Every {
            self.every
        }

        async fn start_up(&mut self) -> Result<(), ServiceError> {
            if self.fail_start {
                Err("no database".into())
            } else {
                Ok(())
            }
        }

        async fn run_one_iteration(&mut self) -> Result<(), ServiceError> {
            let n = {
                let mut starts = self.starts.lock().unwrap();
                starts.push(Instant::now());
                starts.len()
            };
            tokio::time::sleep(self.work).await;
            if self.fail_every_other && n % 2 == 0 {
                return Err("iteration failed".into());
            }
            Ok(())
        }
    }

    fn probe(every: Every, work: Duration) -> (Probe, Arc<Mutex<Vec<Instant>>>) {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let p = Probe {
            every,
            starts: starts.clone(),
            work,
            fail_every_other: false,
            fail_start: false,
        };
        (p, starts)
    }

    fn gaps(starts: &[Instant]) -> Vec<u128> {
        starts
            .windows(2)
            .map(|w| (w[1] - w[0]).as_millis())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_delay_waits_after_each_iteration() {
        let (p, starts) = probe(
            Every::FixedDelay(Duration::from_millis(100)),
            Duration::from_millis(30),
        );
        let token = CancellationToken::new();
        let handle = spawn(p, &token);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(handle.stop().await, ServiceState::Terminated);
        let starts = starts.lock().unwrap();
        assert!(starts.len() >= 3, "{}", starts.len());
        assert!(
            gaps(&starts).iter().all(|g| *g == 130),
            "{:?}",
            gaps(&starts)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_rate_keeps_its_period() {
        let (p, starts) = probe(
            Every::FixedRate(Duration::from_millis(100)),
            Duration::from_millis(30),
        );
        let token = CancellationToken::new();
        let handle = spawn(p, &token);
        tokio::time::sleep(Duration::from_millis(450)).await;
        handle.stop().await;
        let starts = starts.lock().unwrap();
        assert_eq!(starts.len(), 5);
        assert!(
            gaps(&starts).iter().all(|g| *g == 100),
            "{:?}",
            gaps(&starts)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_iteration_is_counted_and_the_loop_goes_on() {
        let (mut p, starts) = probe(Every::FixedDelay(Duration::from_millis(10)), Duration::ZERO);
        p.fail_every_other = true;
        let token = CancellationToken::new();
        let handle = spawn(p, &token);
        tokio::time::sleep(Duration::from_millis(95)).await;
        let (iterations, failures) = handle.iterations();
        assert_eq!(iterations, starts.lock().unwrap().len() as u64);
        assert!(iterations >= 8, "{iterations}");
        assert_eq!(failures, iterations / 2);
        assert_eq!(handle.state(), ServiceState::Running);
        // The shared shutdown token stops it too.
        token.cancel();
        assert_eq!(
            handle.wait_for(ServiceState::Terminated).await,
            ServiceState::Terminated
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_start_up_ends_in_failed() {
        let (mut p, starts) = probe(Every::FixedDelay(Duration::from_millis(10)), Duration::ZERO);
        p.fail_start = true;
        let handle = spawn(p, &CancellationToken::new());
        assert_eq!(
            handle.wait_for(ServiceState::Running).await,
            ServiceState::Failed
        );
        assert!(starts.lock().unwrap().is_empty());
    }

    /// A service whose period is zero: `tokio::time::interval` panics on it.
    struct Broken;

    impl ScheduledService for Broken {
        fn name(&self) -> &'static str {
            "broken"
        }

        fn every(&self) -> Every {
            Every::FixedRate(Duration::ZERO)
        }

        async fn run_one_iteration(&mut self) -> Result<(), ServiceError> {
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_service_ends_failed() {
        let token = CancellationToken::new();
        let handle = spawn(Broken, &token);
        assert_eq!(
            handle.wait_for(ServiceState::Terminated).await,
            ServiceState::Failed
        );
        assert_eq!(handle.probe().state(), ServiceState::Failed);
    }
}
