//! The `sent` mark under asynchronous replication: confirmed by a replica before the record's
//! outcome is final, and written again when its primary dies meanwhile.
//!
//! A redelivered record whose `sent` mark vanished in a failover would send its reply a second
//! time. So after writing `sent` the sender waits (`WAIT`, [`crate::replica_ack`]) until
//! `ledger.sent_replicas` replicas hold it, at most `ledger.sent_replica_timeout`:
//!
//! - **acknowledged**: a failover can no longer lose the mark;
//! - **not acknowledged in time** (a replica down or far behind): the mark stays on the primary,
//!   fsynced by its append-only file, and a warning is logged. Replies go on: holding the record
//!   would not make the mark any safer (its retry would find `sent` on the same primary and finish
//!   without waiting), and stalling every reply of the slot on a replica's health would turn a lost
//!   replica into a reply outage. With no replica attached nothing can be promoted in the
//!   primary's place, so no failover can lose the mark either;
//! - **the write or the wait fails** (the primary died, the slot is failing over): this process
//!   knows the reply went out, so it writes `sent` again until the promoted replica takes it, for
//!   up to `ledger.sending_lease`. Only after that does the error reach the record, whose retry
//!   then finds the `sending` mark (dead-lettered as ambiguous) or, if the failover lost that too,
//!   nothing at all — the window docs/redis-keys.md describes.

use std::time::{Duration, Instant};

use super::{Lease, Ledger};
use crate::config::LedgerSettings;
use crate::replica_ack::wait_for_replicas;
use crate::store::{Store, StoreError};
use common::redis::RedisConnection;

/// Pauses between two writes of a `sent` mark while its slot fails over.
const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// `ledger.sent_replicas`, or when unset: 1 on a Redis Cluster (every primary has replicas that
/// can be promoted), 0 on one server (a standalone Redis has none to wait for).
pub(super) fn replicas_to_wait_for(store: &Store, settings: &LedgerSettings) -> u32 {
    settings.sent_replicas.unwrap_or(match store.conn() {
        RedisConnection::Cluster(_) => 1,
        RedisConnection::Single(_) => 0,
    })
}

impl Ledger {
    pub(super) async fn mark_sent_replicated(&self, lease: &Lease) -> Result<bool, StoreError> {
        let give_up = Instant::now() + self.sending_lease;
        let mut pause = FIRST_PAUSE;
        // What the first write that went through said: whether the mark was still ours.
        let mut ours = None;
        loop {
            let error = match self.write_sent(lease).await {
                Ok(wrote) => {
                    // A later write finds our own `sent` and reports it as not ours: keep the first
                    // answer (a retry after a failed first write counts as ours).
                    let ours = *ours.get_or_insert(wrote || pause > FIRST_PAUSE);
                    match self.confirm(&lease.key).await {
                        Ok(acked) if acked >= self.sent_replicas => return Ok(ours),
                        Ok(acked) => {
                            tracing::warn!(
                                acked,
                                wanted = self.sent_replicas,
                                "a sent mark was not acknowledged by enough replicas within \
                                 {:?}; kept on its primary (a failover before it replicates \
                                 could lose it)",
                                self.sent_replica_timeout
                            );
                            return Ok(ours);
                        }
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            if Instant::now() + pause >= give_up {
                return Err(error);
            }
            tracing::warn!(
                "recording a delivered reply failed ({error}); writing the sent mark again"
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
    }

    /// How many replicas acknowledged the writes so far on `key`'s primary.
    async fn confirm(&self, key: &str) -> Result<u32, StoreError> {
        let mut conn = self.store.conn();
        self.store
            .bounded(wait_for_replicas(
                &mut conn,
                key,
                self.sent_replicas,
                self.sent_replica_timeout,
            ))
            .await
    }
}
