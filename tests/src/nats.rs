//! A private nats-server per test.
//!
//! Every test gets its own nats-server process on a free port of 127.0.0.1, with JetStream and its
//! store in a temporary directory, so tests never share subjects, streams or connection state with
//! each other or with a NATS that happens to run on the machine.
//!
//! The server's log is read from its stderr as it is written: the line announcing the client port
//! tells us both which port the kernel picked and that the server is ready, so starting waits for
//! exactly as long as it takes and no sleep is involved. The log is also kept in `nats.log` in the
//! temporary directory, and its tail goes into every start error.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::time::Instant;

/// The environment variable naming the nats-server binary to run.
pub const BINARY_ENV: &str = "ROTA_NATS_SERVER_BIN";

/// The oldest nats-server the tests accept; Rota relies on features of 2.10.
const MIN_VERSION: (u32, u32) = (2, 10);

/// How long a start or restart may take before it counts as failed. A nats-server starts in
/// milliseconds; the margin is for a loaded CI machine.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The log line that carries the client port. nats-server prints it once the listener is bound,
/// after JetStream has started, so a client connecting after it is served.
const LISTENING: &str = "Listening for client connections on ";

/// How many lines of the server's log an error message shows.
const LOG_TAIL_LINES: usize = 40;

/// A running nats-server, private to one test. Dropping it kills the process and removes its
/// temporary directory.
pub struct NatsServer {
    binary: PathBuf,
    dir: TempDir,
    port: u16,
    /// A configuration file (`-c`), for servers with users, TLS or an operator.
    config: Option<PathBuf>,
    /// Whether JetStream runs.
    jetstream: bool,
    process: Option<Process>,
}

impl NatsServer {
    /// Starts a nats-server with JetStream on a free port of 127.0.0.1 and waits until it accepts
    /// connections.
    ///
    /// The binary is `$ROTA_NATS_SERVER_BIN`, else `<repo>/.tools/bin/nats-server` if it exists,
    /// else `nats-server` on `PATH`; a version older than 2.10 is refused.
    pub fn start() -> anyhow::Result<NatsServer> {
        Self::start_on(None)
    }

    /// Starts the server on `port`, or on a port the kernel picks when `None`.
    fn start_on(port: Option<u16>) -> anyhow::Result<NatsServer> {
        Self::start_inner(port, None, true)
    }

    /// Starts a server with `config` (nats-server's configuration syntax: `authorization`,
    /// `tls`, `operator` …) on a free port of 127.0.0.1, with JetStream when `jetstream`.
    pub fn start_with_config(config: &str, jetstream: bool) -> anyhow::Result<NatsServer> {
        Self::start_inner(None, Some(config), jetstream)
    }

    fn start_inner(
        port: Option<u16>,
        config: Option<&str>,
        jetstream: bool,
    ) -> anyhow::Result<NatsServer> {
        let binary = binary()?;
        let dir = tempfile::Builder::new()
            .prefix("rota-nats-")
            .tempdir()
            .context("cannot create a temporary directory for nats-server")?;
        let config = match config {
            Some(text) => {
                let path = dir.path().join("nats.conf");
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Some(path)
            }
            None => None,
        };
        let (process, port) =
            Process::spawn(&binary, dir.path(), port, config.as_deref(), jetstream)?;
        Ok(NatsServer {
            binary,
            dir,
            port,
            config,
            jetstream,
            process: Some(process),
        })
    }

    /// The server's temporary directory (its store and log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL clients connect to: `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port. It stays the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (abruptly, like a crash) and waits for it to exit. Clients see the
    /// connection drop and start reconnecting. Does nothing if it is already stopped.
    pub fn stop(&mut self) {
        // Dropping the process kills it and waits for it.
        self.process = None;
    }

    /// Stops the server if it runs and starts it again on the same port with the same JetStream
    /// store, then waits until it accepts connections, so clients can reconnect to the same URL.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let (process, port) = Process::spawn(
            &self.binary,
            self.dir.path(),
            Some(self.port),
            self.config.as_deref(),
            self.jetstream,
        )
        .with_context(|| format!("cannot restart nats-server on port {}", self.port))?;
        debug_assert_eq!(
            port, self.port,
            "a restarted nats-server listens on its old port"
        );
        self.process = Some(process);
        Ok(())
    }

    /// The process id of the running server, `None` while it is stopped.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|process| process.child.id())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        // The process must be gone before the temporary directory (its store and log) is removed,
        // which happens when the fields are dropped right after this.
        self.stop();
    }
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("url", &self.url())
            .field("pid", &self.pid())
            .field("dir", &self.dir.path())
            .finish()
    }
}

/// One nats-server process and the thread that copies its log. Dropping it kills the process.
struct Process {
    child: Child,
    log_pump: Option<JoinHandle<()>>,
}

impl Process {
    /// Starts nats-server with its store and log in `dir` and waits until it listens. Returns the
    /// process and its client port.
    fn spawn(
        binary: &Path,
        dir: &Path,
        port: Option<u16>,
        config: Option<&Path>,
        jetstream: bool,
    ) -> anyhow::Result<(Process, u16)> {
        let log_path = dir.join("nats.log");
        // Append, so that after a restart the log still shows what happened before it.
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |port| port.to_string());
        let mut command = Command::new(binary);
        if let Some(config) = config {
            command.arg("-c").arg(config);
        }
        command.args(["-a", "127.0.0.1", "-p", &port_arg]);
        if jetstream {
            command.arg("-js");
        }
        let mut child = command
            .arg("-sd")
            .arg(dir.join("store"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run {}", binary.display()))?;
        let stderr = child.stderr.take();
        // From here on the process is owned by `process`, whose drop kills it, so every early
        // return below leaves nothing running.
        let mut process = Process {
            child,
            log_pump: None,
        };
        let stderr = stderr.context("nats-server's stderr was not captured")?;
        let (lines_tx, lines_rx) = mpsc::channel();
        process.log_pump = Some(
            std::thread::Builder::new()
                .name("nats-server-log".to_owned())
                .spawn(move || pump_log(stderr, log, lines_tx))
                .context("cannot start the thread that reads nats-server's log")?,
        );

        let deadline = Instant::now() + START_TIMEOUT;
        let port = loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match lines_rx.recv_timeout(remaining) {
                Ok(line) => {
                    if let Some(port) = listening_port(&line) {
                        break port;
                    }
                }
                Err(RecvTimeoutError::Timeout) => bail!(
                    "nats-server did not start listening within {START_TIMEOUT:?}\n{}",
                    log_tail(&log_path)
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    // The log closed, so the process has exited; wait for the pump to have
                    // written everything so the tail shows why.
                    let status = process.child.wait().map_or_else(
                        |error| format!("an unknown status ({error})"),
                        |status| status.to_string(),
                    );
                    process.join_log_pump();
                    bail!(
                        "nats-server exited with {status} before it started listening\n{}",
                        log_tail(&log_path)
                    );
                }
            }
        };
        // The announcement means the listener is bound; a real connection proves it.
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(100));
        if let Err(error) = TcpStream::connect_timeout(&address, remaining) {
            bail!(
                "nats-server announced port {port} but a connection to it failed: {error}\n{}",
                log_tail(&log_path)
            );
        }
        Ok((process, port))
    }

    fn join_log_pump(&mut self) {
        if let Some(pump) = self.log_pump.take() {
            // The pump ends when the process's stderr closes; a panic in it has nothing left to
            // tell us that the log file does not.
            drop(pump.join());
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A server that ended before the test stopped it explains a test whose clients all lost
        // NATS at once: say how it ended, so that such a failure names its cause.
        if let Ok(Some(status)) = self.child.try_wait() {
            tracing::warn!(
                target: "nats_server",
                "nats-server (pid {}) had already ended before it was stopped: {status}",
                self.child.id()
            );
            eprintln!(
                "testkit: nats-server (pid {}) had already ended before it was stopped: {status}",
                self.child.id()
            );
        }
        // Both fail only if the process has already exited and been reaped, which is the state
        // we want anyway.
        drop(self.child.kill());
        drop(self.child.wait());
        self.join_log_pump();
    }
}

/// Copies nats-server's log lines to `log` and, while someone listens, to `lines`. It keeps
/// reading until the process closes stderr, whatever fails, because a server whose stderr pipe
/// fills up would block on its next log line.
fn pump_log(stderr: impl Read, mut log: File, lines: mpsc::Sender<String>) {
    let mut reader = BufReader::new(stderr);
    let mut buffer = Vec::new();
    loop {
        buffer.clear();
        match reader.read_until(b'\n', &mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        // Failing to keep a copy of the log must not stop the pump; the line is still forwarded.
        drop(log.write_all(&buffer));
        let line = String::from_utf8_lossy(&buffer).trim_end().to_owned();
        forward_to_tracing(&line);
        // Nobody listens once the server has started; later lines only go to the file.
        drop(lines.send(line));
    }
}

/// Shows nats-server's warnings and errors in the test's log output and its other lines at debug
/// level, so `RUST_LOG=nats_server=debug` shows everything.
fn forward_to_tracing(line: &str) {
    if line.contains("[ERR]") || line.contains("[FTL]") || line.contains("[WRN]") {
        tracing::warn!(target: "nats_server", "{line}");
    } else {
        tracing::debug!(target: "nats_server", "{line}");
    }
}

/// The port in a line like `[42] 2026/01/01 00:00:00.000000 [INF] Listening for client
/// connections on 127.0.0.1:4222`.
fn listening_port(line: &str) -> Option<u16> {
    let (_, address) = line.split_once(LISTENING)?;
    let (_, port) = address.trim().rsplit_once(':')?;
    port.parse().ok()
}

/// The last lines of the log at `path`, ready to append to an error message.
fn log_tail(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            format!(
                "--- last {} lines of {} ---\n{}",
                tail.len(),
                path.display(),
                tail.join("\n")
            )
        }
        Err(error) => format!("(cannot read the log {}: {error})", path.display()),
    }
}

/// The nats-server binary to run, found and version-checked once per process: every test starts
/// servers, and the answer cannot change while the tests run.
fn binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| find_binary().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn find_binary() -> anyhow::Result<PathBuf> {
    let installed = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(|repo| repo.join(".tools/bin/nats-server"));
    let (binary, source) = match std::env::var_os(BINARY_ENV).filter(|value| !value.is_empty()) {
        Some(value) => (PathBuf::from(value), format!("${BINARY_ENV}")),
        None => match installed {
            Some(path) if path.is_file() => (path, "scripts/install-nats.sh".to_owned()),
            _ => (PathBuf::from("nats-server"), "PATH".to_owned()),
        },
    };
    let output = Command::new(&binary)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| {
            format!(
                "cannot run nats-server `{}` (from {source}); run scripts/install-nats.sh, or set \
                 {BINARY_ENV} to a nats-server 2.10 or newer",
                binary.display()
            )
        })?;
    let reported = String::from_utf8_lossy(&output.stdout);
    let Some(version) = parse_version(&reported) else {
        bail!(
            "`{} --version` (from {source}) printed {:?}, which names no nats-server version",
            binary.display(),
            reported.trim()
        );
    };
    if version < MIN_VERSION {
        bail!(
            "`{}` (from {source}) is nats-server {}.{}, but Rota's tests need {}.{} or newer: run \
             scripts/install-nats.sh and set {BINARY_ENV}=<repo>/.tools/bin/nats-server \
             (scripts/test.sh does both)",
            binary.display(),
            version.0,
            version.1,
            MIN_VERSION.0,
            MIN_VERSION.1
        );
    }
    Ok(binary)
}

/// The major and minor version in `nats-server --version` output such as `nats-server: v2.12.8`.
fn parse_version(output: &str) -> Option<(u32, u32)> {
    let version = output.trim().rsplit(' ').next()?;
    let version = version.strip_prefix('v').unwrap_or(version);
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::wait;

    #[test]
    fn versions_are_parsed() {
        assert_eq!(parse_version("nats-server: v2.12.8\n"), Some((2, 12)));
        assert_eq!(parse_version("nats-server: v2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("nats-server: 2.10.0-beta.1"), Some((2, 10)));
        assert_eq!(parse_version("garbage"), None);
        assert!(parse_version("nats-server: v2.9.10").unwrap() < MIN_VERSION);
    }

    #[test]
    fn the_port_is_read_from_the_log_line() {
        let line = "[17195] 2026/11/21 15:42:12.635590 [INF] Listening for client connections \
                    on 127.0.0.1:44065";
        assert_eq!(listening_port(line), Some(44065));
        assert_eq!(listening_port("[1] [INF] Server is ready"), None);
    }

    /// Answers every request on `subject` with its own payload.
    async fn echo(client: &async_nats::Client, subject: &str) {
        let mut requests = client.subscribe(subject.to_owned()).await.unwrap();
        let replier = client.clone();
        tokio::spawn(async move {
            while let Some(request) = requests.next().await {
                if let Some(reply) = request.reply {
                    drop(replier.publish(reply, request.payload).await);
                }
            }
        });
        // The subscription must reach the server before anyone sends a request to it.
        client.flush().await.unwrap();
    }

    async fn request(
        client: &async_nats::Client,
        subject: &str,
        body: &str,
    ) -> anyhow::Result<String> {
        let reply = tokio::time::timeout(
            Duration::from_secs(1),
            client.request(subject.to_owned(), body.to_owned().into()),
        )
        .await??;
        Ok(String::from_utf8(reply.payload.to_vec())?)
    }

    /// A JetStream API call over plain NATS: the workspace does not enable async-nats' jetstream
    /// feature, and the raw API is all this check needs.
    async fn jetstream_api(
        client: &async_nats::Client,
        subject: &str,
        body: &str,
    ) -> serde_json::Value {
        let reply = client
            .request(subject.to_owned(), body.to_owned().into())
            .await
            .unwrap();
        serde_json::from_slice(&reply.payload).unwrap()
    }

    #[tokio::test]
    async fn request_reply_works_and_survives_a_restart() {
        crate::init_tracing();
        let mut nats = NatsServer::start().unwrap();
        assert_eq!(nats.url(), format!("nats://127.0.0.1:{}", nats.port()));
        assert_ne!(
            nats.port(),
            4222,
            "the test must not use the machine's NATS"
        );

        let client = async_nats::connect(nats.url()).await.unwrap();
        echo(&client, "smoke.echo").await;
        assert_eq!(
            request(&client, "smoke.echo", "hello").await.unwrap(),
            "hello"
        );

        // A file-backed stream, to show that JetStream runs and that a restart keeps the store.
        let created = jetstream_api(
            &client,
            "$JS.API.STREAM.CREATE.SMOKE",
            r#"{"name":"SMOKE","subjects":["smoke.stream.>"],"storage":"file"}"#,
        )
        .await;
        assert!(
            created.get("error").is_none(),
            "stream not created: {created}"
        );

        let (port, pid) = (nats.port(), nats.pid());
        nats.restart().unwrap();
        assert_eq!(nats.port(), port);
        assert!(nats.pid().is_some());
        assert_ne!(nats.pid(), pid);

        // The old client reconnects by itself and re-subscribes, so the echo answers again.
        let answer = wait::until_ok(
            "the old client to reconnect",
            Duration::from_secs(10),
            || request(&client, "smoke.echo", "again"),
        )
        .await;
        assert_eq!(answer, "again");

        let fresh = async_nats::connect(nats.url()).await.unwrap();
        assert_eq!(
            request(&fresh, "smoke.echo", "fresh").await.unwrap(),
            "fresh"
        );
        let info = jetstream_api(&fresh, "$JS.API.STREAM.INFO.SMOKE", "").await;
        assert!(
            info.get("error").is_none(),
            "stream lost in the restart: {info}"
        );
    }

    #[tokio::test]
    async fn stop_ends_the_process_and_drop_cleans_up() {
        let mut nats = NatsServer::start().unwrap();
        let dir = nats.dir.path().to_owned();
        assert!(dir.join("nats.log").is_file());
        nats.stop();
        assert_eq!(nats.pid(), None);
        // Stopping twice is harmless.
        nats.stop();
        drop(nats);
        assert!(!dir.exists(), "the temporary directory outlived the server");
    }

    #[tokio::test]
    async fn a_failed_start_shows_the_log() {
        // A port that is taken makes nats-server give up at once, as a restart would if another
        // process grabbed the port in the meantime.
        let taken = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let error = NatsServer::start_on(Some(port)).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("exited with"), "{message}");
        assert!(message.contains("nats.log"), "{message}");
        assert!(message.contains(&port.to_string()), "{message}");
    }
}
