//! A process's short memory of each app's gate: [`Gates`].
//!
//! Every inbound record asks whether its app is open ([`super::Quota::gate`]). Reading the app's
//! quota hash from Redis for each of them costs a round trip per record, for an answer that is
//! nearly always "open" and changes a few times a day. So a gate read from Redis is trusted for
//! [`TRUSTED_FOR`], and forgotten earlier — everything remembered, and every read still under way
//! ([`Gates::forget_all`]) — whenever the process does or learns something that may change a
//! gate: **it parks a record, pauses an app or releases a held record**, and **its partitions
//! change** (the consumer's rebalance callback).
//!
//! This is what keeps a user's records in order. A user's records are parked only by the owner of
//! the user's partition. When it parks one, it forgets every gate before the user's next record
//! starts (a user's records run one after another), so that record reads Redis, where the park is
//! already counted; and a read that was under way during the park, which may have seen the app
//! open, is not remembered (its epoch is older). So a gate remembered as open can only be stale
//! for users whose records this process has not parked — and when partitions move, everything is
//! forgotten, so the records another owner parked are seen too.
//!
//! What the memory delays, by at most [`TRUSTED_FOR`]: another process's pause (a record sent
//! meanwhile meets 45009 itself and is parked), an operator's `consumer quota resume`, and the end
//! of a backlog (records parked meanwhile are released after it, in order).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use tokio::time::{Duration, Instant};

use super::Gate;

/// How long a gate read from Redis is trusted.
pub(crate) const TRUSTED_FOR: Duration = Duration::from_millis(500);

/// The gates read recently, by app.
#[derive(Debug, Default)]
pub(crate) struct Gates {
    /// Raised at every change of this process's partitions.
    epoch: AtomicU64,
    known: Mutex<HashMap<String, Known>>,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    gate: Gate,
    read_at: Instant,
    epoch: u64,
}

/// When and in which epoch a read from Redis started: what [`Gates::learned`] may remember.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    at: Instant,
    epoch: u64,
}

impl Gates {
    /// The app's gate, if one read recently is still trusted.
    pub(crate) fn get(&self, app: &str) -> Option<Gate> {
        let epoch = self.epoch.load(Ordering::Acquire);
        self.known()
            .get(app)
            .filter(|k| k.epoch == epoch && k.read_at.elapsed() < TRUSTED_FOR)
            .map(|k| k.gate)
    }

    /// Marks the start of a read from Redis.
    pub(crate) fn reading(&self) -> Reading {
        Reading {
            at: Instant::now(),
            epoch: self.epoch.load(Ordering::Acquire),
        }
    }

    /// Remembers what a read found, unless the partitions changed since it started.
    pub(crate) fn learned(&self, app: &str, gate: Gate, reading: Reading) {
        let mut known = self.known();
        if reading.epoch == self.epoch.load(Ordering::Acquire) {
            known.insert(
                app.to_owned(),
                Known {
                    gate,
                    read_at: reading.at,
                    epoch: reading.epoch,
                },
            );
        }
    }

    /// Forgets every gate, and every read under way: the partitions changed.
    pub(crate) fn forget_all(&self) {
        let mut known = self.known();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        known.clear();
    }

    fn known(&self) -> MutexGuard<'_, HashMap<String, Known>> {
        // A poisoned map only holds complete entries (each is inserted whole).
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_gate_is_trusted_for_a_while_then_read_again() {
        let gates = Gates::default();
        assert_eq!(gates.get("shop"), None);
        gates.learned("shop", Gate::Open, gates.reading());
        assert_eq!(gates.get("shop"), Some(Gate::Open));
        assert_eq!(gates.get("outlet"), None, "per app");
        tokio::time::advance(TRUSTED_FOR).await;
        assert_eq!(gates.get("shop"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn forgetting_drops_everything_and_every_read_under_way() {
        let gates = Gates::default();
        gates.learned("shop", Gate::Open, gates.reading());
        let under_way = gates.reading();
        gates.forget_all();
        assert_eq!(gates.get("shop"), None);
        // A read that started before a park (or a partition change) may have seen the app open.
        gates.learned("outlet", Gate::Open, under_way);
        assert_eq!(gates.get("outlet"), None);
        gates.learned("outlet", Gate::Paused, gates.reading());
        assert_eq!(gates.get("outlet"), Some(Gate::Paused));
    }
}
