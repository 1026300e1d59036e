//! Duplicate payload ids: a window of the payload ids this instance took most recently, each with the
//! position it came from. A payload id seen again at another position is a duplicate; at the same
//! position it is the same record delivered again (after a rebalance), which is not.

use std::collections::{HashMap, VecDeque};

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// The last `capacity` payload ids (as 64-bit hashes: about 30 bytes each, collisions negligible).
#[derive(Debug, Default)]
pub struct DuplicateWindow {
    capacity: usize,
    /// Payload id hash → position hash.
    seen: HashMap<u64, u64>,
    order: VecDeque<u64>,
}

impl DuplicateWindow {
    /// A window of `capacity` ids; `0` never reports a duplicate.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, seen: HashMap::new(), order: VecDeque::new() }
    }

    /// Note `payload_id` at this position; true when it was taken before from another position.
    pub fn is_duplicate(&mut self, payload_id: &str, topic: &str, partition: i32, offset: i64) -> bool {
        if self.capacity == 0 {
            return false;
        }
        let id = xxh3_64(payload_id.as_bytes());
        let position = xxh3_64_with_seed(topic.as_bytes(), ((partition as u64) << 48) ^ offset as u64);
        if let Some(&first) = self.seen.get(&id) {
            return first != position;
        }
        self.seen.insert(id, position);
        self.order.push_back(id);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        false
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_copy_is_a_duplicate_and_a_redelivery_is_not() {
        let mut w = DuplicateWindow::new(10);
        assert!(!w.is_duplicate("p1", "t", 0, 5));
        assert!(w.is_duplicate("p1", "t", 0, 9), "same id, another offset");
        assert!(w.is_duplicate("p1", "t", 1, 5), "same id, another partition");
        assert!(w.is_duplicate("p1", "u", 0, 5), "same id, another topic");
        assert!(!w.is_duplicate("p1", "t", 0, 5), "the same record again");
        assert!(!w.is_duplicate("p2", "t", 0, 6));
    }

    #[test]
    fn the_window_forgets_the_oldest_and_zero_turns_it_off() {
        let mut w = DuplicateWindow::new(2);
        for (i, id) in ["a", "b", "c"].into_iter().enumerate() {
            assert!(!w.is_duplicate(id, "t", 0, i as i64));
        }
        assert_eq!(w.len(), 2);
        assert!(!w.is_duplicate("a", "t", 0, 10), "forgotten");
        assert!(w.is_duplicate("c", "t", 0, 11));
        let mut off = DuplicateWindow::new(0);
        assert!(!off.is_duplicate("a", "t", 0, 1));
        assert!(!off.is_duplicate("a", "t", 0, 2));
        assert!(off.is_empty());
    }
}
