//! `rota worker` as a real process, for tests that kill (SIGKILL), freeze (SIGSTOP) and thaw
//! (SIGCONT) workers: faults an in-process worker cannot have.
//!
//! The binary's path comes from the caller: only the `rota` package's own tests can name it
//! (`env!("CARGO_BIN_EXE_rota")`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rota_client::AdminClient;
use rota_shared::admin::WorkerList;
use tokio::process::{Child, Command};

/// How long a worker may take to start and be listed as live by a server.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a worker may take to exit after SIGTERM.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(20);

/// How many lines of the worker's log an error message shows.
const LOG_TAIL_LINES: usize = 30;

/// A running `rota worker --allow-shell`; killed when dropped (thawed first if it is frozen).
pub struct WorkerProcess {
    id: String,
    app: String,
    log: PathBuf,
    child: Option<Child>,
    pid: u32,
    frozen: bool,
}

impl WorkerProcess {
    /// Starts `rota worker` for `app` with the id `worker_id` (heartbeats every 500 ms,
    /// re-acquire every 2 s, the shell processor allowed), its output in
    /// `<log_dir>/<worker_id>.log`, and waits until a server lists it as live.
    pub async fn start(
        bin: &Path,
        worker_id: &str,
        app: &str,
        secret: &str,
        nats_url: &str,
        log_dir: &Path,
        admin: &AdminClient,
    ) -> anyhow::Result<Self> {
        let fast = [
            "--heartbeat-interval",
            "500ms",
            "--reacquire-interval",
            "2s",
        ];
        Self::start_with(bin, worker_id, app, secret, nats_url, log_dir, admin, &fast).await
    }

    /// Like [`Self::start`], with the worker's default timings and `extra` arguments.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_with(
        bin: &Path,
        worker_id: &str,
        app: &str,
        secret: &str,
        nats_url: &str,
        log_dir: &Path,
        admin: &AdminClient,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let log = log_dir.join(format!("{worker_id}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let child = Command::new(bin)
            .args([
                "worker",
                "--app",
                app,
                "--secret",
                secret,
                "--worker-id",
                worker_id,
                "--allow-shell",
                // The test's own directory: another test's worker of the same id must never
                // take this one's process groups for its own leftovers.
                "--state-dir",
            ])
            .arg(log_dir)
            .args(extra)
            .env("ROTA_NATS_URL", nats_url)
            .env("RUST_LOG", "info")
            // Nothing from the test's own environment may change the worker's settings.
            .env_remove("ROTA_CONFIG")
            .env_remove("ROTA_PREFIX")
            .env_remove("ROTA_TAGS")
            .env_remove("ROTA_CAPACITY")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let pid = child
            .id()
            .context("the worker process has no id right after it started")?;
        let mut worker = Self {
            id: worker_id.to_owned(),
            app: app.to_owned(),
            log,
            child: Some(child),
            pid,
            frozen: false,
        };
        worker.wait_live(admin).await?;
        Ok(worker)
    }

    /// Polls the admin `WorkerList` of the app until the worker is in it.
    async fn wait_live(&mut self, admin: &AdminClient) -> anyhow::Result<()> {
        let admin = admin.clone().with_timeout(Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let last_error = match admin
                .call(&WorkerList {
                    app: Some(self.app.clone()),
                    ..Default::default()
                })
                .await
            {
                Ok(list) if list.items.iter().any(|w| w.worker_id == self.id) => return Ok(()),
                Ok(list) => format!(
                    "listed workers: {:?}",
                    list.items.iter().map(|w| &w.worker_id).collect::<Vec<_>>()
                ),
                Err(e) => e.to_string(),
            };
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!(
                    "worker {} exited with {status} before it was live:\n{}",
                    self.id,
                    self.log_tail()
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "worker {} was not listed as live within {START_TIMEOUT:?} ({last_error}):\n{}",
                    self.id,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The worker's process id (also after it exited).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn signal(&self, signal: Signal) -> anyhow::Result<()> {
        let pid = Pid::from_raw(i32::try_from(self.pid)?);
        kill(pid, signal).with_context(|| format!("send {signal} to worker {}", self.id))
    }

    /// Kills the worker with SIGKILL, as a crash would, and reaps it. The shell jobs it ran
    /// live on in their own process groups, as they would after a real crash.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
        self.frozen = false;
    }

    /// Stops the process (SIGSTOP): it keeps its NATS connection open but does nothing, not
    /// even heartbeats, until [`thaw`](Self::thaw).
    pub fn freeze(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_some(), "worker {} is not running", self.id);
        self.signal(Signal::SIGSTOP)?;
        self.frozen = true;
        Ok(())
    }

    /// Lets a frozen process run again (SIGCONT).
    pub fn thaw(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_some(), "worker {} is not running", self.id);
        self.signal(Signal::SIGCONT)?;
        self.frozen = false;
        Ok(())
    }

    /// Stops the worker with SIGTERM (it drains) and waits up to 20 s for it to exit.
    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        if self.frozen {
            self.thaw()?;
        }
        if let Some(mut child) = self.child.take() {
            self.signal(Signal::SIGTERM)?;
            let status = tokio::time::timeout(TERMINATE_TIMEOUT, child.wait())
                .await
                .with_context(|| {
                    format!(
                        "worker {} did not exit within {TERMINATE_TIMEOUT:?} of SIGTERM:\n{}",
                        self.id,
                        self.log_tail()
                    )
                })??;
            tracing::info!(worker = %self.id, %status, "worker exited after SIGTERM");
        }
        Ok(())
    }

    /// The path of the worker's log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The whole log the worker wrote so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines the worker logged.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(LOG_TAIL_LINES)..].join("\n")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A stopped process must not be left behind: let it run, then kill it. (SIGKILL
            // ends a stopped process too; SIGCONT makes sure nothing waits on it frozen.)
            if let Ok(pid) = i32::try_from(self.pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
            }
            let _ = child.start_kill();
            // kill_on_drop and tokio's orphan reaping take care of the zombie.
        }
    }
}
