//! `rota server` as a real process, for tests that kill servers (SIGKILL) and restart them.
//!
//! The binary's path comes from the caller: only the `rota` package's own tests can name it
//! (`env!("CARGO_BIN_EXE_rota")`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// A running `rota server`; killed when dropped.
pub struct ServerProcess {
    id: String,
    bin: PathBuf,
    nats_url: String,
    database_url: String,
    log: PathBuf,
    child: Option<Child>,
}

impl ServerProcess {
    /// Starts `rota server --server-id {id}` and waits until it answers pings.
    pub async fn start(
        bin: &Path,
        id: &str,
        nats_url: &str,
        database_url: &str,
        log_dir: &Path,
    ) -> anyhow::Result<Self> {
        let mut server = Self {
            id: id.to_owned(),
            bin: bin.to_owned(),
            nats_url: nats_url.to_owned(),
            database_url: database_url.to_owned(),
            log: log_dir.join(format!("{id}.log")),
            child: None,
        };
        server.spawn().await?;
        Ok(server)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let child = Command::new(&self.bin)
            .args(["server", "--server-id", &self.id])
            .env("ROTA_NATS_URL", &self.nats_url)
            .env("ROTA_DATABASE_URL", &self.database_url)
            .env("RUST_LOG", "info")
            .env_remove("ROTA_CONFIG")
            .env_remove("ROTA_PREFIX")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        self.child = Some(child);
        self.wait_ready().await
    }

    /// Waits until the server answers the NATS service API's `$SRV.PING` (which it serves once
    /// every endpoint is subscribed).
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let nats = async_nats::connect(&self.nats_url).await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if service_ids(&nats, Duration::from_millis(300))
                .await?
                .contains(&self.id)
            {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!(
                    "server {} exited with {status}: {}",
                    self.id,
                    self.log_tail()
                );
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "server {} did not answer pings within 30 s: {}",
                    self.id,
                    self.log_tail()
                );
            }
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// The last lines the server logged.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Kills the server with SIGKILL, as a crash would, and reaps it.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops the server with SIGTERM and waits for it to exit.
    pub async fn terminate(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(pid)?);
                nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
            }
            tokio::time::timeout(Duration::from_secs(20), child.wait())
                .await
                .context("server did not exit within 20 s of SIGTERM")??;
        }
        Ok(())
    }

    /// Freezes the server (SIGSTOP), as a long pause or a stuck host would: it holds its
    /// connections and answers nothing until [`Self::thaw`].
    pub fn freeze(&self) -> anyhow::Result<()> {
        self.signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) -> anyhow::Result<()> {
        self.signal(nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("the server is not running")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }

    /// Starts the server again with the same id and configuration.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }
}

/// The server ids of every `rota server` that answers `$SRV.PING.rota-server` within `wait`.
pub async fn service_ids(nats: &async_nats::Client, wait: Duration) -> anyhow::Result<Vec<String>> {
    Ok(crate::bus::service_api(nats, "PING", wait)
        .await?
        .iter()
        .filter_map(|pong| pong["metadata"]["server_id"].as_str().map(str::to_owned))
        .collect())
}
