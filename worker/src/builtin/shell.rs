//! The built-in `shell` processor: runs the job's config with `/bin/sh -c`.
//!
//! The shell runs as the leader of a process group of its own, so that timeout and stop can
//! signal everything it started: SIGTERM to the group, SIGKILL after the kill grace. When the
//! leader has exited the group is SIGKILLed once more, so that no background grandchild outlives
//! the instance, and should the future be dropped half-way (the worker aborts), a guard kills
//! the group too.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::context::TaskContext;
use crate::logs::MAX_LINE_BYTES;
use crate::processor::{ProcessResult, Processor};
use crate::reaper::Reaper;

use super::lines::pump;

/// The longest result message taken from the script's output, in characters.
const MAX_RESULT_CHARS: usize = 1000;

/// How long the output pipes may stay open after the group is killed. Only a process that left
/// the group (with `setsid`) can hold them longer, and it is not waited for.
const PIPE_DRAIN_WAIT: Duration = Duration::from_secs(2);

/// Runs shell scripts. Each stdout line becomes an INFO log line and each stderr line an ERROR
/// log line. Exit status 0 succeeds with the last non-blank stdout line as the result.
///
/// The script's environment describes the work: `ROTA_INSTANCE_ID`, `ROTA_WORKER_ID`,
/// `ROTA_JOB_ID`, `ROTA_JOB_NAME`, `ROTA_ATTEMPT`, `ROTA_JOB_PARAMS` and `ROTA_INSTANCE_PARAMS`
/// (the last two empty when absent), and for a scheduled fire its instant, `ROTA_FIRE_TIME`
/// (RFC 3339, UTC, milliseconds) and `ROTA_FIRE_TIME_MS` (milliseconds since the Unix epoch),
/// both empty for other runs: the same for every attempt of a fire, so that a script can make
/// its work idempotent per fire. A task of a broadcast or sharded job also gets
/// `ROTA_SHARD_INDEX`, `ROTA_SHARD_TOTAL` and `ROTA_SHARD_PARAM` (a broadcast task's index is
/// its worker's place among the job's workers, its parameter empty), and every task
/// `ROTA_TASK_ID`, `ROTA_TASK_NAME` and `ROTA_TASK_PAYLOAD`.
#[derive(Clone)]
pub struct ShellProcessor {
    kill_grace: Duration,
    /// Kills the runs' process groups should the worker die (see `reaper`).
    reaper: Arc<Reaper>,
}

impl std::fmt::Debug for ShellProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShellProcessor")
            .field("kill_grace", &self.kill_grace)
            .finish_non_exhaustive()
    }
}

impl ShellProcessor {
    /// A shell processor that waits `kill_grace` between SIGTERM and SIGKILL. The worker
    /// registers its own, whose runs also die with the worker.
    pub fn new(kill_grace: Duration) -> Self {
        Self {
            kill_grace,
            reaper: Arc::new(Reaper::none()),
        }
    }

    pub(crate) fn watched_by(mut self, reaper: Arc<Reaper>) -> Self {
        self.reaper = reaper;
        self
    }
}

impl Processor for ShellProcessor {
    fn process(&self, ctx: TaskContext) -> BoxFuture<'static, ProcessResult> {
        Box::pin(run(ctx, self.kill_grace, Arc::clone(&self.reaper)))
    }
}

/// A process group that is SIGKILLed when this guard is dropped while armed, and watched by the
/// reaper while it lives.
struct ProcessGroup {
    pgid: Pid,
    armed: bool,
    reaper: Arc<Reaper>,
}

impl ProcessGroup {
    fn signal(&self, signal: Signal) {
        match killpg(self.pgid, signal) {
            // ESRCH: the group is already empty, which is what we want.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => debug!(pgid = %self.pgid, "cannot send {signal} to the process group: {e}"),
        }
    }

    /// Kills what is left of the group and stops guarding it: once the group is empty its id
    /// may be reused, and must not be signalled again.
    fn kill_rest(mut self) {
        self.signal(Signal::SIGKILL);
        self.armed = false;
        self.reaper.release(self.pgid.as_raw());
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if self.armed {
            self.signal(Signal::SIGKILL);
            self.reaper.release(self.pgid.as_raw());
        }
    }
}

/// A fire's instant as RFC 3339 in UTC with milliseconds; empty when there is none.
fn fire_time_rfc3339(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

fn command(ctx: &TaskContext) -> Command {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(&ctx.config);
    cmd
}

/// The environment that describes the work to a process: the instance, the job, the fire
/// time, and the task (with its shard) of a distributed instance.
pub(crate) fn task_env(cmd: &mut Command, ctx: &TaskContext) {
    cmd.env("ROTA_INSTANCE_ID", ctx.instance_id.to_string())
        .env("ROTA_WORKER_ID", &ctx.worker_id)
        .env("ROTA_JOB_ID", ctx.job_id.to_string())
        .env("ROTA_JOB_NAME", &ctx.job_name)
        .env("ROTA_ATTEMPT", ctx.attempt.to_string())
        .env("ROTA_JOB_PARAMS", ctx.job_params.as_deref().unwrap_or(""))
        .env(
            "ROTA_INSTANCE_PARAMS",
            ctx.instance_params.as_deref().unwrap_or(""),
        )
        .env(
            "ROTA_FIRE_TIME",
            fire_time_rfc3339(ctx.expected_trigger_time_ms),
        )
        .env(
            "ROTA_FIRE_TIME_MS",
            ctx.expected_trigger_time_ms
                .map(|ms| ms.to_string())
                .unwrap_or_default(),
        )
        .env("ROTA_TASK_ID", ctx.task.id.to_string())
        .env("ROTA_TASK_NAME", &ctx.task.name)
        .env("ROTA_TASK_PAYLOAD", &ctx.task.payload);
    if let Some(shard) = ctx.shard() {
        cmd.env("ROTA_SHARD_INDEX", shard.index.to_string())
            .env("ROTA_SHARD_TOTAL", shard.total.to_string())
            .env("ROTA_SHARD_PARAM", &shard.param);
    }
}

/// Waits for the shell to exit; on cancellation asks the group to end and then forces it.
async fn wait_or_kill(
    child: &mut Child,
    group: &ProcessGroup,
    cancel: &CancellationToken,
    kill_grace: Duration,
) -> std::io::Result<ExitStatus> {
    tokio::select! {
        status = child.wait() => status,
        () = cancel.cancelled() => {
            group.signal(Signal::SIGTERM);
            match tokio::time::timeout(kill_grace, child.wait()).await {
                Ok(status) => status,
                Err(_) => {
                    group.signal(Signal::SIGKILL);
                    child.wait().await
                }
            }
        }
    }
}

async fn run(ctx: TaskContext, kill_grace: Duration, reaper: Arc<Reaper>) -> ProcessResult {
    let cmd = command(&ctx);
    run_group(ctx, cmd, "/bin/sh", None, kill_grace, reaper).await
}

/// Runs `cmd` as the leader of a process group of its own, with the work's environment
/// ([`task_env`]) and `stdin` on its standard input: its output becomes the instance's log and
/// its last line of standard output the result; cancellation, and the end of the leader, kill
/// the whole group. The `shell` and `container` processors run this way.
pub(crate) async fn run_group(
    ctx: TaskContext,
    mut cmd: Command,
    program: &str,
    stdin: Option<Vec<u8>>,
    kill_grace: Duration,
    reaper: Arc<Reaper>,
) -> ProcessResult {
    task_env(&mut cmd, &ctx);
    cmd.process_group(0)
        .kill_on_drop(true)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return ProcessResult::failed(format!("cannot start {program}: {e}")),
    };
    // The child was just spawned and not yet waited for, so it has an id.
    let Some(pgid) = child.id().and_then(|id| i32::try_from(id).ok()) else {
        return ProcessResult::failed(format!("{program} has no process id"));
    };
    if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // Written beside the run, so that a process that does not read its input cannot
        // block it; the pipe closes when the data is written.
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = pipe.write_all(&data).await;
        });
    }
    reaper.watch(pgid);
    let group = ProcessGroup {
        pgid: Pid::from_raw(pgid),
        armed: true,
        reaper,
    };

    let stdout = pump(child.stdout.take(), MAX_LINE_BYTES, |line| ctx.info(line));
    let stderr = pump(child.stderr.take(), MAX_LINE_BYTES, |line| ctx.error(line));
    let mut readers = std::pin::pin!(futures::future::join(stdout, stderr));
    let cancel = ctx.cancellation();

    // The pipes are read while the shell runs, or it would block on a full pipe.
    let mut output = None;
    let status = {
        let mut waiter = std::pin::pin!(wait_or_kill(&mut child, &group, &cancel, kill_grace));
        loop {
            tokio::select! {
                out = &mut readers, if output.is_none() => output = Some(out),
                status = &mut waiter => break status,
            }
        }
    };
    group.kill_rest();
    let (last_out, last_err) = match output {
        Some(out) => out,
        None => tokio::time::timeout(PIPE_DRAIN_WAIT, readers)
            .await
            .unwrap_or((None, None)),
    };

    if cancel.is_cancelled() {
        return ProcessResult::failed("cancelled");
    }
    // The log says how each attempt ended, next to its output.
    match &status {
        Ok(s) if s.success() => ctx.info("exit status 0"),
        Ok(s) => match (s.code(), s.signal()) {
            (Some(code), _) => ctx.warn(format!("exit status {code}")),
            (None, Some(signal)) => ctx.warn(format!("killed by signal {signal}")),
            (None, None) => ctx.warn("exited abnormally"),
        },
        Err(_) => {}
    }
    match status {
        Ok(status) if status.success() => ProcessResult::ok(match last_out {
            Some(line) => truncate_chars(&line, MAX_RESULT_CHARS),
            None => "exit status 0".to_owned(),
        }),
        Ok(status) => {
            let what = match (status.code(), status.signal()) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(signal)) => format!("killed by signal {signal}"),
                (None, None) => "exited abnormally".to_owned(),
            };
            ProcessResult::failed(match last_err {
                Some(line) => truncate_chars(&format!("{what}: {line}"), MAX_RESULT_CHARS),
                None => what,
            })
        }
        Err(e) => ProcessResult::failed(format!("cannot wait for {program}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::test_context;
    use crate::logs::LogSink;
    use crate::test_support::{gone, wait_gone};
    use rota_shared::message::LogLevel;

    fn drain(rx: &LogSink) -> Vec<(LogLevel, String)> {
        let mut lines = Vec::new();
        while let Some(line) = rx.try_recv() {
            lines.push((line.level, line.text));
        }
        lines
    }

    async fn shell(script: &str) -> (ProcessResult, Vec<(LogLevel, String)>) {
        let (ctx, rx) = test_context(script);
        let result = ShellProcessor::new(Duration::from_secs(1))
            .process(ctx)
            .await;
        (result, drain(&rx))
    }

    #[tokio::test]
    async fn stdout_and_stderr_become_logs() {
        let (result, logs) = shell("echo one; echo two >&2; echo; echo three").await;
        assert_eq!(result, ProcessResult::ok("three"));
        // The four lines, and how the shell ended.
        assert_eq!(logs.len(), 5);
        // stdout and stderr are read concurrently, so only the order within each stream holds.
        let out: Vec<&str> = logs
            .iter()
            .filter(|(l, _)| *l == LogLevel::Info)
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(out, vec!["one", "", "three", "exit status 0"]);
        let err: Vec<&str> = logs
            .iter()
            .filter(|(l, _)| *l == LogLevel::Error)
            .map(|(_, t)| t.as_str())
            .collect();
        assert_eq!(err, vec!["two"]);
    }

    #[tokio::test]
    async fn exit_codes_decide_the_result() {
        assert_eq!(shell("true").await.0, ProcessResult::ok("exit status 0"));
        assert_eq!(
            shell("echo bad >&2; exit 3").await.0,
            ProcessResult::failed("exit status 3: bad")
        );
        assert_eq!(
            shell("exit 7").await.0,
            ProcessResult::failed("exit status 7")
        );
        let long = shell("printf 'x%.0s' $(seq 1 1500)").await.0;
        assert!(long.success);
        assert_eq!(long.message.chars().count(), MAX_RESULT_CHARS);
    }

    #[tokio::test]
    async fn the_environment_describes_the_instance() {
        let (result, _) =
            shell("echo \"$ROTA_INSTANCE_ID/$ROTA_JOB_ID/$ROTA_ATTEMPT/$ROTA_WORKER_ID/$ROTA_JOB_PARAMS/$ROTA_INSTANCE_PARAMS.\"")
                .await;
        assert_eq!(result, ProcessResult::ok("42/7/1/w-test/jp/."));
    }

    #[tokio::test]
    async fn a_scheduled_fire_exports_its_instant_and_other_runs_leave_it_empty() {
        let script = "echo \"$ROTA_FIRE_TIME|$ROTA_FIRE_TIME_MS\"";
        let mut request = crate::context::test_request(script);
        request.expected_trigger_time_ms = Some(1_767_225_600_250);
        let sink = LogSink::new(1000, 500);
        let ctx = TaskContext::new(&request, "w-test", sink, CancellationToken::new());
        let result = ShellProcessor::new(Duration::from_secs(1))
            .process(ctx)
            .await;
        assert_eq!(
            result,
            ProcessResult::ok("2026-01-01T00:00:00.250Z|1767225600250")
        );
        assert_eq!(shell(script).await.0, ProcessResult::ok("|"));
    }

    #[tokio::test]
    async fn cancellation_kills_the_whole_group() {
        let dir = std::env::temp_dir().join(format!("rota-shell-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("bg.pid");
        let script = format!(
            "sleep 600 & echo $! > {}; echo $$ > {}.leader; sleep 600",
            pidfile.display(),
            pidfile.display()
        );
        let (ctx, _rx) = test_context(&script);
        let cancel = ctx.cancellation();
        let run = tokio::spawn(ShellProcessor::new(Duration::from_millis(500)).process(ctx));

        let read_pid = |path: std::path::PathBuf| async move {
            for _ in 0..100 {
                if let Ok(text) = std::fs::read_to_string(&path)
                    && let Ok(pid) = text.trim().parse::<i32>()
                {
                    return pid;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            panic!("no pid in {}", path.display());
        };
        let grandchild = read_pid(pidfile.clone()).await;
        let leader = read_pid(dir.join("bg.pid.leader")).await;
        assert!(!gone(grandchild) && !gone(leader));

        cancel.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the processor ends after cancellation")
            .unwrap();
        assert!(!result.success);
        assert!(wait_gone(leader).await, "the shell survived");
        assert!(
            wait_gone(grandchild).await,
            "the background grandchild survived"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn background_children_do_not_outlive_a_finished_script() {
        let dir = std::env::temp_dir().join(format!("rota-shell-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("bg.pid");
        // The grandchild keeps stdout open; the processor must still end promptly.
        let script = format!("sleep 600 & echo $! > {}; echo done", pidfile.display());
        let (result, _) = tokio::time::timeout(Duration::from_secs(10), shell(&script))
            .await
            .expect("a finished script ends the run");
        assert_eq!(result, ProcessResult::ok("done"));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(wait_gone(pid).await, "the background grandchild survived");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn dropping_the_future_kills_the_group() {
        let dir = std::env::temp_dir().join(format!("rota-shell-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pidfile = dir.join("leader.pid");
        let script = format!("echo $$ > {}; sleep 600", pidfile.display());
        let (ctx, _rx) = test_context(&script);
        let run = tokio::spawn(ShellProcessor::new(Duration::from_secs(1)).process(ctx));
        let mut pid = None;
        for _ in 0..100 {
            if let Ok(Ok(p)) = std::fs::read_to_string(&pidfile).map(|t| t.trim().parse::<i32>()) {
                pid = Some(p);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pid = pid.expect("the script wrote its pid");
        run.abort();
        assert!(run.await.unwrap_err().is_cancelled());
        assert!(
            wait_gone(pid).await,
            "the shell survived its dropped future"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
