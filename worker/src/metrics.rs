//! The machine's metrics for the heartbeat: cores, load, memory and disk.
//!
//! Every figure that cannot be read is zero, which the server's health score counts as "free":
//! a worker on a system without `/proc` still works, it just is not ranked by load.

use rota_shared::message::SystemMetrics;

const MIB: u64 = 1024 * 1024;

/// Reads the current metrics of this machine.
pub(crate) async fn collect() -> SystemMetrics {
    let cpu_cores = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(0);
    let load1 = tokio::fs::read_to_string("/proc/loadavg")
        .await
        .ok()
        .and_then(|text| parse_loadavg(&text))
        .unwrap_or(0.0);
    let (memory_total_mb, memory_used_mb) = tokio::fs::read_to_string("/proc/meminfo")
        .await
        .ok()
        .and_then(|text| parse_meminfo(&text))
        .unwrap_or((0, 0));
    let (disk_total_mb, disk_free_mb) = disk_of_root();
    SystemMetrics {
        cpu_cores,
        load1,
        memory_total_mb,
        memory_used_mb,
        disk_total_mb,
        disk_free_mb,
    }
}

/// The one-minute load average, the first field of `/proc/loadavg`.
pub(crate) fn parse_loadavg(text: &str) -> Option<f64> {
    text.split_whitespace()
        .next()?
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
}

/// Total and used memory in MiB from `/proc/meminfo`. "Used" is what is not available: the
/// kernel's `MemAvailable` where it exists, else free memory plus buffers and page cache.
pub(crate) fn parse_meminfo(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        text.lines().find_map(|line| {
            let rest = line.strip_prefix(name)?.strip_prefix(':')?;
            let kib: u64 = rest.split_whitespace().next()?.parse().ok()?;
            Some(kib * 1024)
        })
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable").or_else(|| {
        Some(field("MemFree")? + field("Buffers").unwrap_or(0) + field("Cached").unwrap_or(0))
    })?;
    Some((total / MIB, total.saturating_sub(available) / MIB))
}

/// Total and free (for unprivileged users) space of the root file system, in MiB.
// The statvfs field types are u64 on 64-bit targets only; the conversions are for the others.
#[allow(clippy::useless_conversion)]
fn disk_of_root() -> (u64, u64) {
    match nix::sys::statvfs::statvfs("/") {
        Ok(st) => {
            let fragment = u64::from(st.fragment_size());
            let total = u64::from(st.blocks()).saturating_mul(fragment);
            let free = u64::from(st.blocks_available()).saturating_mul(fragment);
            (total / MIB, free / MIB)
        }
        Err(_) => (0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:        8192000 kB\n\
                           MemFree:          512000 kB\n\
                           MemAvailable:    2048000 kB\n\
                           Buffers:          102400 kB\n\
                           Cached:          1024000 kB\n";

    #[test]
    fn loadavg_is_parsed() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/467 12345\n"), Some(0.52));
        assert_eq!(parse_loadavg(""), None);
        assert_eq!(parse_loadavg("abc"), None);
    }

    #[test]
    fn meminfo_is_parsed() {
        // 8192000 kB = 8000 MiB, of which 2048000 kB = 2000 MiB are available.
        assert_eq!(parse_meminfo(MEMINFO), Some((8000, 6000)));
        let old_kernel =
            "MemTotal: 1048576 kB\nMemFree: 262144 kB\nBuffers: 0 kB\nCached: 262144 kB\n";
        assert_eq!(parse_meminfo(old_kernel), Some((1024, 512)));
        assert_eq!(parse_meminfo("nothing here"), None);
        // A field whose name only starts like another one is not taken for it.
        assert_eq!(
            parse_meminfo("MemTotalX: 5 kB\nMemTotal: 2048 kB\nMemAvailable: 1024 kB\n"),
            Some((2, 1))
        );
    }

    #[tokio::test]
    async fn this_machine_has_metrics() {
        let metrics = collect().await;
        assert!(metrics.cpu_cores >= 1);
        assert!(metrics.memory_total_mb >= metrics.memory_used_mb);
        assert!(metrics.disk_total_mb >= metrics.disk_free_mb);
    }
}
