//! Where a record becomes durable: Kafka, or the local spool when Kafka cannot in time.
//!
//! A record goes to Kafka and waits for its acknowledgement for at most
//! `kafka.delivery_timeout`. If Kafka does not acknowledge it in that time — or refuses it at once
//! (producer queue full, no broker) — it is appended to the spool and fsynced instead. While the
//! spool holds records, a new record skips Kafka and joins the spool behind them: the drainer
//! publishes them all in order, so a user's newer message never reaches Kafka before an older one.
//!
//! With the spool turned off, Kafka's answer is the only one, as it was before the spool existed.

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

/// Kafka first, the spool second. Shared by every worker.
#[derive(Debug)]
pub struct DurableLog {
    publisher: Arc<Publisher>,
    spool: Option<Spool>,
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
        let kafka = if spool.holds_records() {
            // Records wait in the spool: this one goes behind them, never past them.
            None
        } else {
            let for_spool = reserved
                .checked_sub(self.spool_write_timeout)
                .unwrap_or(reserved);
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
