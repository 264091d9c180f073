//! Process groups of the processes that runs start (shell and container entries), for tests
//! that check a timeout, a stop or a killed worker ends every process of a run.

use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::killpg;
use nix::unistd::Pid;

use crate::wait;

/// The live (not zombie) processes of a process group, found by scanning `/proc`.
///
/// A process whose parent has died is re-parented to PID 1, which in this environment may never
/// reap it, so a killed process can linger as a zombie. A zombie runs nothing, so it counts as
/// gone; that is why the group's members are read from `/proc` rather than only probed with a
/// signal (a signal to a group of zombies still succeeds).
pub fn live_members(pgid: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // The process may have ended since the directory was listed; it is then not a
            // member.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // The command name is in parentheses and may itself hold spaces or parentheses,
            // so the fields are read after the last ')': state, ppid, pgrp, …
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields
                .first()
                .is_some_and(|state| !matches!(*state, "Z" | "X"))
                && fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(pgid)
        })
        .collect()
}

/// Whether no process of the group runs any more.
pub fn is_gone(pgid: i32) -> bool {
    match killpg(Pid::from_raw(pgid), None) {
        Err(Errno::ESRCH) => true,
        // Only zombies may be left, which run nothing.
        _ => live_members(pgid).is_empty(),
    }
}

/// Waits until every process of the group has ended.
pub async fn wait_gone(pgid: i32, what: &str, timeout: Duration) {
    wait::until(
        &format!("every process of {what} (process group {pgid}) to be gone"),
        timeout,
        || async move { is_gone(pgid).then_some(()) },
    )
    .await;
}

/// Waits until a script has written its process id (`$$`, the group leader's id, which is the
/// process group id) to `path`, and returns it.
pub async fn read_pid_file(path: &Path) -> i32 {
    wait::until(
        &format!("the script to write its pid to {}", path.display()),
        Duration::from_secs(10),
        || async {
            let text = tokio::fs::read_to_string(path).await.ok()?;
            text.trim().parse::<i32>().ok()
        },
    )
    .await
}
