//! The consumer's librdkafka callbacks: rebalances, commits, statistics.
//!
//! - **Assign**: each partition gets a fresh generation in the [`OffsetTracker`], and the process
//!   counts as joined (for `/readyz`).
//! - **Assign and revoke** both make the process forget the quota gates it remembers
//!   ([`Gates::forget_all`]): records of a partition that just arrived must see its app's
//!   backlog as Redis holds it now.
//! - **Revoke**: the partitions leave the tracker first (records still running for them will
//!   store nothing, and their runs end: a send waiting in a backoff or on another sender's mark
//!   stops and gives its claim back), then the offsets stored so far are committed
//!   synchronously, so the next owner starts right after the last record this process finished.
//!   Records in flight for a revoked partition are redelivered to the new owner; the send ledger
//!   makes that safe.
//! - **Statistics**: `consumer_lag_records{partition}` from librdkafka's own lag per partition.
//!
//! These run on the thread polling the consumer, inside `recv()`, and must stay short.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, TopicPartitionList};

use super::offsets::OffsetTracker;
use crate::metrics::Metrics;
use crate::quota::gates::Gates;

#[derive(Debug)]
pub struct PipelineContext {
    pub tracker: Arc<OffsetTracker>,
    /// The quota gates this process remembers: forgotten whenever its partitions change.
    pub(crate) gates: Arc<Gates>,
    pub metrics: Metrics,
    pub topic: String,
    /// Set at the first assignment (possibly empty: more processes than partitions): the process
    /// has joined the group.
    pub joined: Arc<AtomicBool>,
}

impl ClientContext for PipelineContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for partition in topic.partitions.values() {
            // Partition -1 is librdkafka's internal "unassigned" bucket; lag -1 means unknown.
            if partition.partition >= 0 && partition.consumer_lag >= 0 {
                self.metrics
                    .lag
                    .with_label_values(&[&partition.partition.to_string()])
                    .set(partition.consumer_lag);
            }
        }
    }
}

pub(crate) fn is_no_offset(e: &KafkaError) -> bool {
    matches!(e, KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset))
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                self.gates.forget_all();
                for p in partitions.elements() {
                    self.tracker.assign(p.topic(), p.partition());
                }
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                self.joined.store(true, Ordering::SeqCst);
                tracing::info!(partitions = ?names(partitions), "partitions assigned");
            }
            Rebalance::Revoke(partitions) => {
                self.gates.forget_all();
                self.metrics.rebalances.with_label_values(&["revoke"]).inc();
                for p in partitions.elements() {
                    self.tracker.revoke(p.topic(), p.partition());
                    let _ = self
                        .metrics
                        .lag
                        .remove_label_values(&[&p.partition().to_string()]);
                }
                // Commit what finished records stored, before the partitions move on.
                match consumer.commit_consumer_state(CommitMode::Sync) {
                    Ok(()) => {}
                    Err(e) if is_no_offset(&e) => {}
                    Err(e) => tracing::warn!(error = %e, "commit on revoke failed"),
                }
                tracing::info!(partitions = ?names(partitions), "partitions revoked");
            }
            Rebalance::Error(e) => tracing::warn!(error = %e, "rebalance error"),
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {}
            Err(e) if is_no_offset(&e) => {}
            Err(e) => tracing::warn!(error = %e, "offset commit failed"),
        }
    }
}

fn names(partitions: &TopicPartitionList) -> Vec<String> {
    partitions
        .elements()
        .iter()
        .map(|p| format!("{}/{}", p.topic(), p.partition()))
        .collect()
}
