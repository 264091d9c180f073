//! Repairs and clean-ups done, by reason, for operators (`rota server stats`).

use std::collections::BTreeMap;
use std::sync::Mutex;

#[derive(Default)]
pub struct Repairs {
    by_reason: Mutex<BTreeMap<String, u64>>,
}

impl Repairs {
    /// Counts `n` repairs of `reason`.
    pub fn count(&self, reason: &str, n: u64) {
        if n == 0 {
            return;
        }
        tracing::info!(reason, n, "repaired");
        *self
            .by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(reason.to_owned())
            .or_default() += n;
    }

    /// The counts so far.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_reason
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_by_reason_and_zero_is_not_recorded() {
        let r = Repairs::default();
        r.count("worker_lost", 2);
        r.count("worker_lost", 3);
        r.count("silent", 0);
        assert_eq!(
            r.snapshot(),
            BTreeMap::from([("worker_lost".to_owned(), 5)])
        );
    }
}
