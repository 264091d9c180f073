//! Process groups die with their worker.
//!
//! A `shell` run is a process group of its own, so that a timeout or a stop can signal all of
//! it. That also means a worker that is SIGKILLed (or crashes, or is OOM-killed) leaves its runs
//! going on their own: the server, rightly, gives their instances to another worker once this one
//! is lost, and the work would run twice. Two things prevent it:
//!
//! - **A watcher process.** At start the worker spawns a small `/bin/sh` loop in a process group
//!   of its own, whose standard input is a pipe from the worker. The worker writes `+ PGID` when a
//!   group starts and `- PGID` when it has ended. When the worker dies, for whatever reason, the
//!   kernel closes the pipe; the watcher reads end-of-file and SIGKILLs every group still listed.
//!   This covers the whole group, not only its leader (a parent-death signal would reach the
//!   leader alone, and would need `unsafe` code between fork and exec).
//! - **A record in the state directory** (when one is configured): the live groups with their
//!   leaders' start times. A worker starting again with the same id kills what a previous run of
//!   it left, should the watcher have died with it (a whole-machine OOM kill, a `kill -9` of both),
//!   and only groups whose leader is still the process recorded, never a reused id.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;

/// The watcher: keeps the listed groups and kills those left when its input ends. Interrupts
/// and hang-ups of a terminal are ignored: it ends with the worker's pipe, not with a Ctrl-C.
const WATCHER: &str = r#"trap '' INT HUP
groups=' '
while read -r op pgid; do
  case "$op" in
    +) groups="$groups$pgid " ;;
    -) rest=' '; for g in $groups; do [ "$g" = "$pgid" ] || rest="$rest$g "; done; groups=$rest ;;
  esac
done
for g in $groups; do kill -s KILL -- "-$g" 2>/dev/null; done
"#;

/// The name the watcher runs under (`$0`), so that an operator can tell what it is.
const WATCHER_NAME: &str = "rota-worker-reaper";

pub struct Reaper {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The watcher's input; `None` when it could not be started or has gone.
    watcher: Option<ChildStdin>,
    /// Where the live groups are recorded, if anywhere.
    record: Option<PathBuf>,
    /// Live groups and their leaders' start times (clock ticks since boot, from /proc).
    groups: BTreeMap<i32, u64>,
}

impl Reaper {
    /// Kills what a previous run of this worker left (per `record`), then starts the watcher.
    /// A worker that cannot start the watcher still runs, and says so: its runs then outlive a
    /// crash of the worker as they did before.
    pub fn start(record: Option<PathBuf>) -> Self {
        if let Some(path) = &record {
            kill_leftovers(path);
        }
        let watcher = match spawn_watcher() {
            Ok(stdin) => Some(stdin),
            Err(e) => {
                tracing::warn!(
                    "cannot start the process-group watcher ({e}): shell runs will outlive a \
                     crash of this worker"
                );
                None
            }
        };
        let reaper = Self {
            inner: Mutex::new(Inner {
                watcher,
                record,
                groups: BTreeMap::new(),
            }),
        };
        reaper.lock().save();
        reaper
    }

    /// A reaper that watches nothing, for processors run outside a worker (unit tests).
    pub fn none() -> Self {
        Self {
            inner: Mutex::new(Inner {
                watcher: None,
                record: None,
                groups: BTreeMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches a process group that has just started (its leader's id is its id).
    pub fn watch(&self, pgid: i32) {
        let mut inner = self.lock();
        inner.send(&format!("+ {pgid}\n"));
        inner.groups.insert(pgid, start_time(pgid).unwrap_or(0));
        inner.save();
    }

    /// Stops watching a group that has ended: its id may be reused from now on.
    pub fn release(&self, pgid: i32) {
        let mut inner = self.lock();
        inner.send(&format!("- {pgid}\n"));
        inner.groups.remove(&pgid);
        inner.save();
    }
}

impl Inner {
    fn send(&mut self, line: &str) {
        let Some(watcher) = &mut self.watcher else {
            return;
        };
        if let Err(e) = watcher.write_all(line.as_bytes()) {
            tracing::warn!("the process-group watcher has gone ({e}); runs may outlive a crash");
            self.watcher = None;
        }
    }

    /// Writes the record whole, through a temporary file, so that a crash mid-write leaves the
    /// previous record rather than half of one.
    fn save(&self) {
        let Some(path) = &self.record else {
            return;
        };
        let text: String = self
            .groups
            .iter()
            .map(|(pgid, started)| format!("{pgid} {started}\n"))
            .collect();
        let tmp = path.with_extension("tmp");
        let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), "cannot record the running process groups: {e}");
        }
    }
}

fn spawn_watcher() -> std::io::Result<ChildStdin> {
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(WATCHER)
        .arg0(WATCHER_NAME)
        // Its own group: a signal to a run's group, or to the worker's, does not reach it.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    child
        .stdin
        .take()
        .ok_or_else(|| std::io::Error::other("the watcher has no input"))
}

/// The start time of a process (field 22 of `/proc/PID/stat`, in clock ticks since boot), which
/// tells a process from a later one that got the same id.
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Kills the groups a previous run recorded whose leaders are still the processes recorded.
fn kill_leftovers(path: &Path) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return;
    };
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let (Some(Ok(pgid)), Some(Ok(started))) = (
            fields.next().map(str::parse::<i32>),
            fields.next().map(str::parse::<u64>),
        ) else {
            continue;
        };
        if pgid <= 1 || start_time(pgid) != Some(started) {
            // Gone, or the id now names another process: not ours to kill.
            continue;
        }
        match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
            Ok(()) => tracing::warn!(
                pgid,
                "killed a process group a previous run of this worker left"
            ),
            Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(
                pgid,
                "cannot kill a process group left by a previous run: {e}"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{gone, wait_gone};

    /// A process group like a shell run's: a shell and its `sleep`.
    fn sleeper() -> std::process::Child {
        Command::new("/bin/sh")
            .args(["-c", "sleep 30; true"])
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("sh starts")
    }

    #[tokio::test]
    async fn a_restart_kills_the_recorded_groups_that_are_still_the_same_processes() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let record = dir.path().join("groups");
        let mut ours = sleeper();
        let mut reused = sleeper();
        let ours_pid = i32::try_from(ours.id()).expect("a pid");
        let reused_pid = i32::try_from(reused.id()).expect("a pid");
        let ours_started = start_time(ours_pid).expect("the start time");
        // A record naming `reused` with another start time stands for an id reused since.
        std::fs::write(
            &record,
            format!("{ours_pid} {ours_started}\n{reused_pid} 1\ngarbage\n"),
        )
        .expect("write the record");

        let reaper = Reaper::start(Some(record.clone()));
        assert!(wait_gone(ours_pid).await, "the recorded group was killed");
        let _ = ours.wait();
        assert!(!gone(reused_pid), "a reused id is left alone");
        assert_eq!(
            std::fs::read_to_string(&record).expect("the record"),
            "",
            "the new run starts with a clean record"
        );

        reaper.watch(reused_pid);
        let started = start_time(reused_pid).expect("the start time");
        assert_eq!(
            std::fs::read_to_string(&record).expect("the record"),
            format!("{reused_pid} {started}\n")
        );
        reaper.release(reused_pid);
        assert_eq!(std::fs::read_to_string(&record).expect("the record"), "");
        let _ = killpg(Pid::from_raw(reused_pid), Signal::SIGKILL);
        let _ = reused.wait();
    }

    #[tokio::test]
    async fn the_watcher_kills_the_watched_groups_when_its_worker_goes() {
        let mut watched = sleeper();
        let mut released = sleeper();
        let watched_pid = i32::try_from(watched.id()).expect("a pid");
        let released_pid = i32::try_from(released.id()).expect("a pid");
        let reaper = Reaper::start(None);
        reaper.watch(watched_pid);
        reaper.watch(released_pid);
        reaper.release(released_pid);
        // Dropping the reaper closes the pipe, as the death of the worker's process would.
        drop(reaper);
        assert!(wait_gone(watched_pid).await, "the watched group was killed");
        let _ = watched.wait();
        assert!(!gone(released_pid), "a released group is not the watcher's");
        let _ = killpg(Pid::from_raw(released_pid), Signal::SIGKILL);
        let _ = released.wait();
    }
}
