//! The intake protocol: from a verified, parsed push to a durable record, once per message.
//!
//! The whole two-phase deduplication lives here, around the durable write:
//!
//! 1. **Claim** the push's dedup key in Redis ([`DedupStore::claim`], `SET NX` with a lease).
//! 2. **Write** the record durably ([`DurableLog::write`]: Kafka, or the spool).
//! 3. **Complete** the claim (`done`, a TTL beyond WeChat's retry horizon), so WeChat's retries
//!    are answered `success` without a second record. The answer does not wait for this mark
//!    (`done_marks.rs` writes the marks in gathered rounds): the record is durable, and until the
//!    mark lands the claim reads `pending`, which makes a concurrent delivery wait rather than
//!    write. When the write failed, the claim is
//!    **released** instead, before the 503, so WeChat's retry is not mistaken for a duplicate of a
//!    push that was never stored.
//!
//! A claim found `pending` means another delivery of the same push is being written right now:
//! wait for its outcome (polling), never write beside it. A claim found `done` is a duplicate.
//! Redis unreachable means *fail open*: write anyway, with the record marked unchecked — a
//! duplicate is recoverable downstream, a lost message is not.
//!
//! The HTTP handler (`routes/push.rs`) only verifies, parses, builds the envelope and maps the
//! outcome to an answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::envelope::{record_key, DedupStatus, Envelope, EnvelopeV1};

use crate::dedup::{Claim, DedupStore};
use crate::done_marks::DoneMarks;
use crate::durable::{Durability, DurableLog, WriteError, ANSWER_RESERVE};
use crate::metrics::Metrics;

/// How an accepted push was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// This delivery was written.
    Stored(Durability),
    /// An earlier delivery of this push was already written.
    Duplicate,
}

/// Why a push was not accepted; each is answered 503, and WeChat retries.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("push not stored")]
    NotStored(#[source] WriteError),
    #[error("an earlier delivery of this push is still being stored")]
    DuplicateInFlight,
}

/// One worker's intake: its own Redis connection, the shared durable log.
#[derive(Debug)]
pub struct Intake {
    dedup: Arc<DedupStore>,
    /// Marks stored pushes `done` after their answers went out.
    done: DoneMarks,
    log: Arc<DurableLog>,
    metrics: Metrics,
    /// How often a delivery that found a `pending` claim looks again.
    pending_poll: Duration,
}

impl Intake {
    pub fn new(
        dedup: DedupStore,
        log: Arc<DurableLog>,
        metrics: Metrics,
        pending_poll: Duration,
    ) -> Intake {
        let dedup = Arc::new(dedup);
        Intake {
            done: DoneMarks::new(Arc::clone(&dedup), metrics.clone()),
            dedup,
            log,
            metrics,
            pending_poll,
        }
    }

    pub fn dedup(&self) -> &DedupStore {
        &self.dedup
    }

    pub fn log(&self) -> &DurableLog {
        &self.log
    }

    /// Runs the protocol for one push whose envelope is built (its `dedup` field is set here).
    pub async fn accept(
        &self,
        mut record: EnvelopeV1,
        deadline: Instant,
    ) -> Result<Accepted, IntakeError> {
        let metrics = &self.metrics;
        let mut seen_pending = false;
        loop {
            match self.dedup.claim(record.dedup_key.as_str()).await {
                Ok(Claim::Acquired(token)) => {
                    record.dedup = DedupStatus::Checked;
                    return match self.write(record, deadline).await {
                        Ok(durability) => {
                            self.done.push(token);
                            Ok(Accepted::Stored(durability))
                        }
                        Err(e) => {
                            // Not stored: free the key so WeChat's retry is not taken for a
                            // duplicate. If even that fails, the lease runs out before WeChat's
                            // next retry.
                            if let Err(e) = self.dedup.release(&token).await {
                                metrics.dedup_errors.with_label_values(&["release"]).inc();
                                tracing::warn!(error = %e, "could not release the claim");
                            }
                            Err(IntakeError::NotStored(e))
                        }
                    };
                }
                Ok(Claim::Done) => {
                    metrics.duplicates.with_label_values(&["done"]).inc();
                    return Ok(Accepted::Duplicate);
                }
                Ok(Claim::Pending) => {
                    // Another delivery of this push is being written right now. Never write
                    // beside it: wait for its outcome. If it fails and releases the key, the next
                    // claim attempt here takes over.
                    if !seen_pending {
                        metrics.duplicates.with_label_values(&["pending"]).inc();
                        seen_pending = true;
                    }
                    if Instant::now() + self.pending_poll + ANSWER_RESERVE >= deadline {
                        return Err(IntakeError::DuplicateInFlight);
                    }
                    tokio::time::sleep(self.pending_poll).await;
                }
                Err(e) => {
                    // Fail open: Redis cannot tell whether this is a retry, so store it and say so.
                    metrics.dedup_errors.with_label_values(&["claim"]).inc();
                    metrics.unchecked_records.inc();
                    tracing::warn!(error = %e, "dedup store unavailable; storing unchecked");
                    record.dedup = DedupStatus::Unchecked;
                    return self
                        .write(record, deadline)
                        .await
                        .map(Accepted::Stored)
                        .map_err(IntakeError::NotStored);
                }
            }
        }
    }

    async fn write(&self, record: EnvelopeV1, deadline: Instant) -> Result<Durability, WriteError> {
        let key = record_key(&record.app, &record.message.from_user_name);
        let value = Envelope::V1(record).to_bytes();
        self.log.write(key.as_bytes(), &value, deadline).await
    }
}
