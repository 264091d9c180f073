//! The bounded memory of dispatches already accepted, so that a repeated dispatch of one
//! `(instance, attempt)` runs the work once.

use std::collections::{HashSet, VecDeque};

/// How many accepted attempts a worker remembers by default. Servers repeat a dispatch within
/// seconds, so a few thousand covers any realistic repeat window.
pub(crate) const DEFAULT_MEMORY: usize = 4096;

/// A set of `(instance_id, attempt)` pairs that forgets its oldest entries beyond a limit.
#[derive(Debug)]
pub(crate) struct SeenAttempts {
    limit: usize,
    order: VecDeque<(i64, i32)>,
    set: HashSet<(i64, i32)>,
}

impl SeenAttempts {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            order: VecDeque::new(),
            set: HashSet::new(),
        }
    }

    pub(crate) fn contains(&self, instance_id: i64, attempt: i32) -> bool {
        self.set.contains(&(instance_id, attempt))
    }

    /// Records a pair; returns `false` if it was already known.
    pub(crate) fn insert(&mut self, instance_id: i64, attempt: i32) -> bool {
        let key = (instance_id, attempt);
        if !self.set.insert(key) {
            return false;
        }
        self.order.push_back(key);
        while self.order.len() > self.limit {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_pairs_and_forgets_the_oldest() {
        let mut seen = SeenAttempts::new(3);
        assert!(seen.insert(1, 1));
        assert!(!seen.insert(1, 1));
        assert!(seen.insert(1, 2), "another attempt is another dispatch");
        assert!(seen.insert(2, 1));
        assert!(seen.insert(3, 1));
        assert_eq!(seen.len(), 3);
        assert!(!seen.contains(1, 1), "the oldest pair is forgotten");
        assert!(seen.contains(1, 2) && seen.contains(2, 1) && seen.contains(3, 1));
    }
}
