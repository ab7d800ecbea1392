//! Where a record becomes durable: Kafka, or the local spool when Kafka cannot in time.
//!
//! A record goes to Kafka and waits for its acknowledgement for at most
//! `kafka.delivery_timeout`. If Kafka does not acknowledge it in that time — or refuses it at once
//! (producer queue full, no broker) — it is appended to the spool and fsynced instead. While the
//! spool holds records, a new record skips Kafka and joins the spool behind them: the drainer
//! publishes them all in order, so a user's newer message never reaches Kafka before an older one.
//!
//! With the spool turned off, Kafka's answer is the only one, as it was before the spool existed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::Metrics;
use crate::publisher::{PublishError, Publisher, Stored};
use crate::spool::{Spool, SpoolError};

/// Time kept back from the budget for the steps after a failed write (releasing the dedup
/// claim, answering), so a timeout still ends in a prompt 503.
pub const ANSWER_RESERVE: Duration = Duration::from_millis(100);
/// Slack past `kafka.delivery_timeout` for the producer's own timeout report to arrive: waiting
/// for it, rather than giving up just before it, means a record given up on is one the producer
/// has given up on too, and will not also reach Kafka later (and be spooled as well: a duplicate).
/// The configuration check counts it into the budget.
pub const REPORT_SLACK: Duration = Duration::from_millis(200);

/// Where a record was made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Kafka(Stored),
    Spool,
}

/// Neither Kafka nor the spool stored the record: the push must be answered 503.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The spool is off and Kafka did not acknowledge.
    #[error("kafka did not store the record")]
    Kafka(#[source] PublishError),
    /// An earlier push of the same user stayed undecided (waiting for Kafka) too long.
    #[error("an earlier push of the same user is still being stored")]
    Busy,
    /// The spool refused or failed (after Kafka, if it was tried, did not acknowledge).
    #[error(
        "the spool could not store the record{}",
        kafka.as_ref().map(|k| format!(" (Kafka before it: {k})")).unwrap_or_default()
    )]
    Spool {
        #[source]
        spool: SpoolError,
        kafka: Option<PublishError>,
    },
}

/// One user's durable writes, one at a time.
///
/// A push waiting for Kafka is undecided: it may be acknowledged, or time out and go to the
/// spool. If the same user's next push went straight to Kafka meanwhile, and the first then ended
/// in the spool, the newer message would reach Kafka before the older one. So a write holds its
/// key's turn until it is decided; the next push of that user then sees the spool holding records
/// and queues behind. A lock exists only for keys with a write in progress, so different users
/// never wait on each other — which matters most exactly when Kafka stalls and every write waits.
#[derive(Debug, Default)]
struct KeyTurns {
    held: std::sync::Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
}

/// A key's turn; the next write of that key may start once it is dropped.
struct Turn<'a> {
    turns: &'a KeyTurns,
    key: Vec<u8>,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyTurns {
    fn new() -> KeyTurns {
        KeyTurns::default()
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn take(&self, key: &[u8]) -> Turn<'_> {
        let lock = self.map().entry(key.to_vec()).or_default().clone();
        let mut turn = Turn {
            turns: self,
            key: key.to_vec(),
            guard: None,
        };
        // Assigned only once the lock is ours: a turn given up while waiting (the caller's
        // deadline) forgets its key the same way a finished one does.
        turn.guard = Some(lock.lock_owned().await);
        turn
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut held = self.turns.map();
        // Nobody else holds or awaits this key's lock: forget it.
        if held
            .get(&self.key)
            .is_some_and(|lock| Arc::strong_count(lock) == 1)
        {
            held.remove(&self.key);
        }
    }
}

/// Kafka first, the spool second. Shared by every worker.
#[derive(Debug)]
pub struct DurableLog {
    publisher: Arc<Publisher>,
    spool: Option<Spool>,
    turns: KeyTurns,
    delivery_timeout: Duration,
    spool_write_timeout: Duration,
    metrics: Metrics,
}

impl DurableLog {
    pub fn new(
        publisher: Arc<Publisher>,
        spool: Option<Spool>,
        delivery_timeout: Duration,
        spool_write_timeout: Duration,
        metrics: Metrics,
    ) -> DurableLog {
        DurableLog {
            publisher,
            spool,
            turns: KeyTurns::new(),
            delivery_timeout,
            spool_write_timeout,
            metrics,
        }
    }

    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub fn spool(&self) -> Option<&Spool> {
        self.spool.as_ref()
    }

    /// Makes the record durable, answering by `deadline`.
    pub async fn write(
        &self,
        key: &[u8],
        value: &[u8],
        deadline: Instant,
    ) -> Result<Durability, WriteError> {
        let reserved = deadline.checked_sub(ANSWER_RESERVE).unwrap_or(deadline);
        let Some(spool) = &self.spool else {
            return self
                .publish(key, value, reserved)
                .await
                .map(Durability::Kafka)
                .map_err(WriteError::Kafka);
        };
        let for_spool = reserved
            .checked_sub(self.spool_write_timeout)
            .unwrap_or(reserved);
        // Waiting longer would leave no time to spool; answering 503 (WeChat retries) keeps the
        // order, where spooling now could put this push ahead of the undecided one.
        let Ok(_turn) = tokio::time::timeout_at(for_spool.into(), self.turns.take(key)).await
        else {
            return Err(WriteError::Busy);
        };
        let kafka = if spool.holds_records() {
            // Records wait in the spool: this one goes behind them, never past them.
            None
        } else {
            let wait = (Instant::now() + self.delivery_timeout + REPORT_SLACK).min(for_spool);
            match self.publish(key, value, wait).await {
                Ok(stored) => return Ok(Durability::Kafka(stored)),
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka did not acknowledge in time; spooling");
                    Some(e)
                }
            }
        };
        match spool.append(key, value).await {
            Ok(()) => Ok(Durability::Spool),
            Err(spool) => Err(WriteError::Spool { spool, kafka }),
        }
    }

    async fn publish(
        &self,
        key: &[u8],
        value: &[u8],
        deadline: Instant,
    ) -> Result<Stored, PublishError> {
        let started = Instant::now();
        let stored = self.publisher.publish(key, value, deadline).await?;
        self.metrics
            .publish_duration
            .observe(started.elapsed().as_secs_f64());
        tracing::debug!(
            partition = stored.partition,
            offset = stored.offset,
            "stored in Kafka"
        );
        Ok(stored)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_users_writes_take_turns_and_other_users_do_not_wait() {
        let turns = KeyTurns::new();
        let user = b"demo:user-a";
        let first = turns.take(user).await;
        let second = turns.take(user);
        tokio::pin!(second);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut second)
                .await
                .is_err(),
            "the same user's next write waits for the first to be decided"
        );
        let _other = tokio::time::timeout(Duration::from_secs(1), turns.take(b"demo:user-b"))
            .await
            .expect("another user goes ahead meanwhile");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(1), second)
            .await
            .expect("the turn passes once the first write is decided");
        drop(second);
        drop(_other);
        assert!(turns.map().is_empty(), "no lock is kept for idle keys");
    }
}
