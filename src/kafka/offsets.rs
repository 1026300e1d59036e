//! Which offsets may be committed, and which partitions this instance owns.
//!
//! An offset is committed only once everything before it in its partition is durable in the store
//! (or dead-lettered). See `docs/offsets.md`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// Per-partition values, looked up by `(&str, i32)` without allocating a key.
#[derive(Debug)]
pub(crate) struct PartitionMap<V>(HashMap<String, HashMap<i32, V>>);

impl<V> Default for PartitionMap<V> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

impl<V> PartitionMap<V> {
    pub(crate) fn get(&self, topic: &str, partition: i32) -> Option<&V> {
        self.0.get(topic)?.get(&partition)
    }

    pub(crate) fn get_mut(&mut self, topic: &str, partition: i32) -> Option<&mut V> {
        self.0.get_mut(topic)?.get_mut(&partition)
    }

    pub(crate) fn insert(&mut self, topic: &str, partition: i32, value: V) {
        match self.0.get_mut(topic) {
            Some(m) => {
                m.insert(partition, value);
            }
            None => {
                self.0.insert(topic.to_owned(), HashMap::from([(partition, value)]));
            }
        }
    }

    pub(crate) fn remove(&mut self, topic: &str, partition: i32) -> Option<V> {
        let m = self.0.get_mut(topic)?;
        let v = m.remove(&partition);
        if m.is_empty() {
            self.0.remove(topic);
        }
        v
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&String, i32, &mut V)> {
        self.0.iter_mut().flat_map(|(t, m)| m.iter_mut().map(move |(p, v)| (t, *p, v)))
    }

    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, i32, &V)> {
        self.0.iter().flat_map(|(t, m)| m.iter().map(move |(p, v)| (t, *p, v)))
    }
}

#[derive(Debug)]
struct PartitionOffsets {
    /// Consumed, not yet durable.
    pending: BTreeSet<i64>,
    /// One past the highest offset seen; `None` before the first record.
    next: Option<i64>,
    /// Last position handed out for commit.
    committed: i64,
    /// Which tracking of the partition this is: a new one at every [`OffsetTracker::assign`].
    epoch: u64,
}

impl PartitionOffsets {
    fn watermark(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }
}

/// Tracks consumed-but-not-durable offsets per partition.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    parts: Mutex<PartitionMap<PartitionOffsets>>,
    epochs: std::sync::atomic::AtomicU64,
}

impl OffsetTracker {
    /// Start tracking an assigned partition (anew: what an earlier assignment left is forgotten).
    pub fn assign(&self, topic: &str, partition: i32) {
        let epoch = self.epochs.fetch_add(1, Ordering::Relaxed) + 1;
        let fresh = PartitionOffsets { pending: BTreeSet::new(), next: None, committed: -1, epoch };
        self.parts.lock().expect("offset lock").insert(topic, partition, fresh);
    }

    /// A record was consumed. Records of partitions not assigned (any more) are ignored: their
    /// positions are the new owner's to commit.
    pub fn track(&self, topic: &str, partition: i32, offset: i64) -> bool {
        let mut parts = self.parts.lock().expect("offset lock");
        let Some(p) = parts.get_mut(topic, partition) else {
            return false;
        };
        p.pending.insert(offset);
        p.next = Some(p.next.map_or(offset + 1, |n| n.max(offset + 1)));
        true
    }

    /// The message at `offset` is durable (or dead-lettered, or skipped as already stored).
    pub fn done(&self, topic: &str, partition: i32, offset: i64) {
        let mut parts = self.parts.lock().expect("offset lock");
        if let Some(p) = parts.get_mut(topic, partition) {
            p.pending.remove(&offset);
        }
    }

    /// Which tracking of the partition is current ([`OffsetTracker::done_in`]); `None` when it is not tracked.
    pub fn epoch(&self, topic: &str, partition: i32) -> Option<u64> {
        self.parts.lock().expect("offset lock").get(topic, partition).map(|p| p.epoch)
    }

    /// As [`OffsetTracker::done`], for an offset tracked in `epoch`: ignored once the partition is tracked
    /// anew (another assignment, or a new log whose offsets reuse the numbers).
    pub fn done_in(&self, topic: &str, partition: i32, epoch: u64, offset: i64) {
        let mut parts = self.parts.lock().expect("offset lock");
        if let Some(p) = parts.get_mut(topic, partition)
            && p.epoch == epoch
        {
            p.pending.remove(&offset);
        }
    }

    pub fn done_many<'a>(&self, offsets: impl IntoIterator<Item = (&'a str, i32, i64)>) {
        let mut parts = self.parts.lock().expect("offset lock");
        for (topic, partition, offset) in offsets {
            if let Some(p) = parts.get_mut(topic, partition) {
                p.pending.remove(&offset);
            }
        }
    }

    /// Positions (next offset to read) that advanced since the last call.
    pub fn commitable(&self) -> Vec<(String, i32, i64)> {
        let mut parts = self.parts.lock().expect("offset lock");
        let mut out = Vec::new();
        for (topic, partition, p) in parts.iter_mut() {
            let Some(w) = p.watermark() else { continue };
            if w > p.committed {
                p.committed = w;
                out.push((topic.clone(), partition, w));
            }
        }
        out
    }

    /// A commit of `positions` failed: hand them out again next time.
    pub fn rollback(&self, positions: &[(String, i32, i64)]) {
        let mut parts = self.parts.lock().expect("offset lock");
        for (topic, partition, pos) in positions {
            if let Some(p) = parts.get_mut(topic, *partition) {
                p.committed = p.committed.min(pos - 1);
            }
        }
    }

    /// Forget a revoked partition, returning its last safe position if it advanced.
    pub fn revoke(&self, topic: &str, partition: i32) -> Option<i64> {
        let mut parts = self.parts.lock().expect("offset lock");
        let p = parts.remove(topic, partition)?;
        let w = p.watermark()?;
        (w > p.committed).then_some(w)
    }

    /// Consumed messages not yet durable, over all partitions.
    pub fn pending(&self) -> usize {
        self.parts.lock().expect("offset lock").iter().map(|(_, _, p)| p.pending.len()).sum()
    }
}

/// A lifecycle's claim on its partition: valid while the partition stays assigned to this instance under
/// the same assignment. Checking it is one atomic load, with no lock and no lookup, because it is checked
/// before every ack a lifecycle emits.
#[derive(Clone, Debug)]
pub struct Claim {
    slot: Arc<AtomicU64>,
    generation: u64,
}

impl Claim {
    /// Whether the partition is still owned under the assignment this claim was made in.
    pub fn holds(&self) -> bool {
        self.slot.load(Ordering::Acquire) == self.generation
    }

    /// The assignment generation this claim was made under.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether a record read when [`Assignments::current`] was `read_at` was fetched before this
    /// assignment began: a leftover of an earlier assignment of the partition, which the new assignment's
    /// fetch (from the committed position) delivers again.
    pub fn fetched_before(&self, read_at: u64) -> bool {
        read_at < self.generation
    }
}

/// Partitions owned by this instance, each with the generation of its current assignment. A lifecycle
/// holds a [`Claim`] made under the assignment it was started in and stops emitting once that assignment
/// is gone (revoked, or revoked and assigned again).
#[derive(Debug, Default)]
pub struct Assignments {
    /// Each owned partition's slot holds its current generation; a revoked slot holds 0 and is dropped
    /// from the map, so claims made on it never hold again.
    owned: RwLock<PartitionMap<Arc<AtomicU64>>>,
    next_generation: AtomicU64,
}

impl Assignments {
    pub fn assign(&self, topic: &str, partition: i32) -> u64 {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut owned = self.owned.write().expect("assignment lock");
        if let Some(old) = owned.remove(topic, partition) {
            old.store(0, Ordering::Release);
        }
        owned.insert(topic, partition, Arc::new(AtomicU64::new(generation)));
        generation
    }

    pub fn revoke(&self, topic: &str, partition: i32) {
        if let Some(slot) = self.owned.write().expect("assignment lock").remove(topic, partition) {
            slot.store(0, Ordering::Release);
        }
    }

    /// Give up every partition: running lifecycles stop at their next step (shutdown).
    pub fn revoke_all(&self) {
        let mut owned = self.owned.write().expect("assignment lock");
        for (_, _, slot) in owned.iter() {
            slot.store(0, Ordering::Release);
        }
        owned.clear();
    }

    /// A claim on the partition under its current assignment; `None` when it is not owned.
    pub fn claim(&self, topic: &str, partition: i32) -> Option<Claim> {
        let owned = self.owned.read().expect("assignment lock");
        let slot = owned.get(topic, partition)?;
        Some(Claim { generation: slot.load(Ordering::Acquire), slot: slot.clone() })
    }

    /// The newest generation handed out. A record read when this was `g` was fetched before any
    /// assignment of a later generation: see [`Claim::fetched_before`].
    pub fn current(&self) -> u64 {
        self.next_generation.load(Ordering::Acquire)
    }

    pub fn owned(&self) -> Vec<(String, i32)> {
        self.owned.read().expect("assignment lock").iter().map(|(t, p, _)| (t.clone(), p)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_below_the_first_pending_offset() {
        let t = OffsetTracker::default();
        assert!(!t.track("t", 0, 9), "unassigned partitions are not tracked");
        t.assign("t", 0);
        assert!(t.commitable().is_empty(), "nothing consumed yet");
        for o in 10..15 {
            t.track("t", 0, o);
        }
        t.done("t", 0, 10);
        t.done("t", 0, 12);
        assert_eq!(t.commitable(), vec![("t".into(), 0, 11)]);
        assert!(t.commitable().is_empty(), "nothing new");
        t.done_many([("t", 0, 11), ("t", 0, 13), ("t", 0, 14)]);
        assert_eq!(t.commitable(), vec![("t".into(), 0, 15)]);
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn revoke_forgets_and_reports_the_last_safe_position() {
        let t = OffsetTracker::default();
        t.assign("t", 1);
        t.track("t", 1, 5);
        t.track("t", 1, 6);
        t.done("t", 1, 5);
        assert_eq!(t.revoke("t", 1), Some(6));
        t.done("t", 1, 6);
        assert!(t.commitable().is_empty());
    }

    #[test]
    fn claims_lapse_on_revoke_and_reassignment() {
        let a = Assignments::default();
        assert!(a.claim("t", 0).is_none(), "not owned yet");
        a.assign("t", 0);
        let first = a.claim("t", 0).unwrap();
        assert!(first.holds());
        a.revoke("t", 0);
        assert!(!first.holds());
        assert!(a.claim("t", 0).is_none());
        a.assign("t", 0);
        let second = a.claim("t", 0).unwrap();
        assert!(!first.holds() && second.holds(), "a claim from an earlier assignment never holds again");
        a.assign("t", 0);
        assert!(!second.holds(), "assigned again without a revoke in between");
        let third = a.claim("t", 0).unwrap();
        a.revoke_all();
        assert!(!third.holds());
        assert!(a.owned().is_empty());
    }
}
