//! What the unit tests of process handling share: whether a process is gone, and waiting for it.

use std::time::Duration;

/// Whether a process is gone: no such process, or a zombie that only waits for its reaper
/// (which in a container may be an init that never reaps).
pub(crate) fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to five seconds for a process to be gone: a kill is sent at once, only its delivery
/// may lag.
pub(crate) async fn wait_gone(pid: i32) -> bool {
    for _ in 0..100 {
        if gone(pid) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}
