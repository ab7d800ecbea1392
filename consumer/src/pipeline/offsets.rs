//! Which offset of each partition may be stored: the lowest record not yet finished.
//!
//! Records of one partition finish out of order (different users run concurrently), but Kafka
//! offsets are a single position per partition. The tracker keeps, per assigned partition, the
//! set of offsets in flight and the next offset not yet received; the storable position is the
//! smallest in-flight offset, or the next unreceived one when nothing is in flight. It only moves
//! forward, and it is handed to librdkafka *inside* the tracker's lock, so two finishing records
//! can never store positions out of order.
//!
//! Each assignment of a partition gets a new generation. A record remembers the generation it
//! was received in; after a revoke (or a revoke and re-assign) its completion no longer stores
//! anything — the partition's new owner redelivers it from the committed offset, and the send
//! ledger keeps the replies from being sent twice.
//!
//! Each generation also has an end signal, fired by its revoke (and, through the tracker's
//! parent token, by shutdown): a record's run waits on it, so a send waiting in a backoff or on
//! another sender's mark ends and gives its claim back, instead of holding the reply while the
//! new owner waits out its lease (see [`crate::ledger::ClaimOwner`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct PartitionState {
    generation: u64,
    in_flight: BTreeSet<i64>,
    next_unseen: i64,
    stored: i64,
    /// Fired when this generation ends (revoke, or the parent's shutdown).
    end: CancellationToken,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: Mutex<HashMap<(String, i32), PartitionState>>,
    generations: Mutex<u64>,
    /// Every generation's end signal is a child of this one (the process's shutdown).
    parent: CancellationToken,
}

impl OffsetTracker {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), PartitionState>> {
        // Every update leaves the map consistent, so a panic elsewhere cannot poison its meaning.
        self.partitions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_generation(&self) -> u64 {
        let mut generation = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        *generation += 1;
        *generation
    }

    /// A tracker whose generations all end when `parent` fires.
    pub fn under(parent: CancellationToken) -> OffsetTracker {
        OffsetTracker {
            parent,
            ..OffsetTracker::default()
        }
    }

    /// The partition was assigned to this process: a fresh generation, nothing in flight.
    pub fn assign(&self, topic: &str, partition: i32) {
        let generation = self.next_generation();
        let replaced = self.lock().insert(
            (topic.to_owned(), partition),
            PartitionState {
                generation,
                in_flight: BTreeSet::new(),
                next_unseen: -1,
                stored: -1,
                end: self.parent.child_token(),
            },
        );
        if let Some(old) = replaced {
            old.end.cancel();
        }
    }

    /// The partition was taken away: records still in flight for it will store nothing, and
    /// their runs end.
    pub fn revoke(&self, topic: &str, partition: i32) {
        if let Some(state) = self.lock().remove(&(topic.to_owned(), partition)) {
            state.end.cancel();
        }
    }

    /// A record was received; returns the generation to finish it with and the signal that ends
    /// its run.
    pub fn begin(&self, topic: &str, partition: i32, offset: i64) -> (u64, CancellationToken) {
        let mut partitions = self.lock();
        let key = (topic.to_owned(), partition);
        if !partitions.contains_key(&key) {
            // Received before the assignment callback registered it (should not happen).
            drop(partitions);
            self.assign(topic, partition);
            partitions = self.lock();
        }
        let state = partitions
            .get_mut(&key)
            .expect("the partition was registered just above");
        state.in_flight.insert(offset);
        state.next_unseen = state.next_unseen.max(offset.saturating_add(1));
        (state.generation, state.end.clone())
    }

    /// Whether a record received in `generation` still belongs to this process.
    pub fn is_current(&self, topic: &str, partition: i32, generation: u64) -> bool {
        self.lock()
            .get(&(topic.to_owned(), partition))
            .is_some_and(|s| s.generation == generation)
    }

    /// A record's outcome is final. If that advances the storable position, `store(next)` is
    /// called with it (the offset of the next record to consume) while the lock is held.
    pub fn complete<F>(&self, topic: &str, partition: i32, offset: i64, generation: u64, store: F)
    where
        F: FnOnce(i64),
    {
        let mut partitions = self.lock();
        let Some(state) = partitions.get_mut(&(topic.to_owned(), partition)) else {
            return;
        };
        if state.generation != generation {
            return;
        }
        state.in_flight.remove(&offset);
        let next = state
            .in_flight
            .first()
            .copied()
            .unwrap_or(state.next_unseen);
        if next > state.stored {
            state.stored = next;
            store(next);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(t: &OffsetTracker, offset: i64, generation: u64) -> Option<i64> {
        let mut stored = None;
        t.complete("in", 0, offset, generation, |next| stored = Some(next));
        stored
    }

    #[test]
    fn stores_only_up_to_the_lowest_unfinished_record() {
        let t = OffsetTracker::default();
        t.assign("in", 0);
        let (g, _) = t.begin("in", 0, 10);
        t.begin("in", 0, 11);
        t.begin("in", 0, 12);
        assert_eq!(
            complete(&t, 12, g),
            Some(10),
            "10 is unfinished: nothing past it"
        );
        assert_eq!(complete(&t, 11, g), None, "still waiting on 10");
        assert_eq!(complete(&t, 10, g), Some(13), "all done: resume after 12");
        t.begin("in", 0, 13);
        assert_eq!(complete(&t, 13, g), Some(14));
    }

    #[test]
    fn a_revoked_generation_stores_nothing() {
        let t = OffsetTracker::default();
        t.assign("in", 0);
        let (old, old_end) = t.begin("in", 0, 5);
        assert!(!old_end.is_cancelled());
        t.revoke("in", 0);
        assert!(old_end.is_cancelled(), "the revoked generation's runs end");
        assert!(!t.is_current("in", 0, old));
        assert_eq!(complete(&t, 5, old), None);
        t.assign("in", 0);
        let (new, new_end) = t.begin("in", 0, 5);
        assert_ne!(old, new);
        assert!(!new_end.is_cancelled(), "the new generation runs");
        assert_eq!(
            complete(&t, 5, old),
            None,
            "the old generation stays fenced"
        );
        assert_eq!(complete(&t, 5, new), Some(6));
    }

    #[test]
    fn the_parent_ends_every_generation() {
        let parent = CancellationToken::new();
        let t = OffsetTracker::under(parent.clone());
        t.assign("in", 0);
        t.assign("in", 1);
        let (_, a) = t.begin("in", 0, 1);
        let (_, b) = t.begin("in", 1, 1);
        parent.cancel();
        assert!(a.is_cancelled() && b.is_cancelled());
    }
}
