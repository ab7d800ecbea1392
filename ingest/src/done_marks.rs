//! The `done` marks of one worker, written in gathered rounds after the answers went out.
//!
//! A stored push is answered at once ([`crate::intake`]); its claim becomes `done` a moment
//! later. Writing each mark on its own costs one Redis round trip per push, and on a quiet
//! service every round trip is a wake-up of this worker and of Redis. Marks are therefore
//! gathered for [`GATHER`] after the first one arrives and then written together: the commands
//! of a round leave in one write on the worker's multiplexed connection and their answers come
//! back together, one wake-up for the round. Each mark is still its own `SET` (a Redis Cluster
//! routes it to the primary of its slot), so a round needs no pipeline that spans slots.
//!
//! What the delay changes: for [`GATHER`] longer, a concurrent delivery of the same push finds the
//! claim `pending` and waits for it (`redis.pending_poll`). Nothing is answered later, and a
//! mark lost in a crash or a Redis error only means that a later retry may store a duplicate,
//! which the consumer's send ledger absorbs.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::mpsc;

use crate::dedup::{ClaimToken, DedupStore};
use crate::metrics::Metrics;

/// How long the first mark of a round waits for others.
pub const GATHER: Duration = Duration::from_millis(5);

/// A worker's queue of claims to mark `done`. The writer task starts with the first mark, on the
/// runtime of the worker that owns the queue.
#[derive(Debug)]
pub struct DoneMarks {
    dedup: Arc<DedupStore>,
    metrics: Metrics,
    queue: OnceLock<mpsc::UnboundedSender<ClaimToken>>,
}

impl DoneMarks {
    pub fn new(dedup: Arc<DedupStore>, metrics: Metrics) -> DoneMarks {
        DoneMarks {
            dedup,
            metrics,
            queue: OnceLock::new(),
        }
    }

    /// Queues the claim to be marked `done` in the next round.
    pub fn push(&self, token: ClaimToken) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(write_rounds(
                Arc::clone(&self.dedup),
                self.metrics.clone(),
                rx,
            ));
            tx
        });
        if let Err(mpsc::error::SendError(token)) = queue.send(token) {
            // The writer is gone (the runtime is shutting down): mark this one directly.
            let dedup = Arc::clone(&self.dedup);
            let metrics = self.metrics.clone();
            tokio::spawn(async move { write_round(&dedup, &metrics, vec![token]).await });
        }
    }
}

async fn write_rounds(
    dedup: Arc<DedupStore>,
    metrics: Metrics,
    mut queue: mpsc::UnboundedReceiver<ClaimToken>,
) {
    while let Some(first) = queue.recv().await {
        tokio::time::sleep(GATHER).await;
        let mut round = vec![first];
        while let Ok(token) = queue.try_recv() {
            round.push(token);
        }
        write_round(&dedup, &metrics, round).await;
    }
}

async fn write_round(dedup: &DedupStore, metrics: &Metrics, round: Vec<ClaimToken>) {
    let results = join_all(round.iter().map(|token| dedup.complete(token))).await;
    let failed: Vec<_> = results.into_iter().filter_map(Result::err).collect();
    if let Some(first) = failed.first() {
        metrics
            .dedup_errors
            .with_label_values(&["complete"])
            .inc_by(failed.len() as u64);
        tracing::warn!(
            error = %first,
            failed = failed.len(),
            of = round.len(),
            "could not mark pushes done"
        );
    }
}
