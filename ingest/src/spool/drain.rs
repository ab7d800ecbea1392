//! Draining the spool into Kafka, in order, deleting only what Kafka acknowledged.
//!
//! One task reads the oldest segment from the cursor in batches, publishes each batch (the
//! idempotent producer keeps the order within each partition), and advances the cursor over the
//! acknowledged prefix of the batch. On any failure it backs off and tries again from the
//! cursor: a record is deleted only after Kafka acknowledged it. Records acknowledged behind one
//! that failed are remembered and not sent again on the next attempt (a process restart forgets
//! them: then they are published again, duplicates with the same dedup key, which the consumer's
//! send ledger absorbs).
//!
//! A drained segment is deleted once the writer has moved on to a newer one. When the spool is
//! empty and nothing is being appended, the last segment is retired too, and the writer starts a
//! new one for the next outage.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::files::{self, Cursor};
use super::frame::SpooledRecord;
use super::Shared;
use crate::publisher::Publisher;

/// Bytes read and published per batch.
const BATCH_BYTES: u64 = 1024 * 1024;
/// Longest pause between attempts while Kafka does not acknowledge.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// How often an idle drainer looks again even without a wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// The drainer of an opened spool, not yet running.
pub struct Drainer {
    shared: Arc<Shared>,
    writer: std::thread::JoinHandle<()>,
}

impl std::fmt::Debug for Drainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drainer").finish_non_exhaustive()
    }
}

/// A running drainer.
#[derive(Debug)]
pub struct DrainHandle {
    /// Stop once the spool is empty.
    finish: CancellationToken,
    /// Stop now (between batches).
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    writer: std::thread::JoinHandle<()>,
}

/// How long a stopping process waits for the writer thread to let go of the spool.
const WRITER_EXIT: Duration = Duration::from_secs(5);

impl Drainer {
    pub(super) fn new(shared: Arc<Shared>, writer: std::thread::JoinHandle<()>) -> Drainer {
        Drainer { shared, writer }
    }

    /// Starts draining on the current runtime, publishing with `publisher` — one made with
    /// [`Publisher::unbounded`], which retries each record until Kafka acknowledges it.
    pub fn spawn(self, publisher: Arc<Publisher>) -> DrainHandle {
        let finish = CancellationToken::new();
        let stop = CancellationToken::new();
        let task = tokio::spawn(
            Run {
                ahead: Ahead::default(),
                shared: self.shared,
                publisher,
                finish: finish.clone(),
                stop: stop.clone(),
            }
            .run(),
        );
        DrainHandle {
            finish,
            stop,
            task,
            writer: self.writer,
        }
    }
}

impl DrainHandle {
    /// Drains what is left, for at most `within`, then stops. What is not drained stays on disk
    /// and is drained after the next start. Call it once nothing appends any more (the server
    /// stopped): it also waits for the writer thread to end, which releases the spool's lock.
    pub async fn finish(mut self, within: Duration) {
        self.finish.cancel();
        if tokio::time::timeout(within, &mut self.task).await.is_err() {
            self.stop.cancel();
            let _ = self.task.await;
        }
        let writer = self.writer;
        let joined = tokio::task::spawn_blocking(move || writer.join());
        if tokio::time::timeout(WRITER_EXIT, joined).await.is_err() {
            tracing::warn!("spool: the writer thread did not end; an append handle is still alive");
        }
    }
}

/// The next thing to do.
enum Next {
    Read { seq: u64, from: u64, to: u64 },
    Idle,
}

/// Records of one segment acknowledged by Kafka beyond the cursor (behind one that failed), by
/// the offset where each ends.
#[derive(Debug, Default)]
struct Ahead {
    seq: u64,
    ends: BTreeSet<u64>,
}

struct Run {
    ahead: Ahead,
    shared: Arc<Shared>,
    publisher: Arc<Publisher>,
    finish: CancellationToken,
    stop: CancellationToken,
}

impl Run {
    async fn run(mut self) {
        let mut backoff = FIRST_BACKOFF;
        while !self.stop.is_cancelled() {
            match self.next() {
                Next::Idle => {
                    if self.finish.is_cancelled() {
                        return;
                    }
                    tokio::select! {
                        () = self.shared.committed.notified() => {}
                        () = self.finish.cancelled() => {}
                        () = self.stop.cancelled() => {}
                        () = tokio::time::sleep(IDLE_RECHECK) => {}
                    }
                }
                Next::Read { seq, from, to } => match self.drain_batch(seq, from, to).await {
                    Ok(()) => backoff = FIRST_BACKOFF,
                    Err(e) => {
                        self.shared.metrics.drain_failures.inc();
                        tracing::warn!(error = %e, retry_in = ?backoff, "spool: draining to Kafka failed");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = self.stop.cancelled() => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                },
            }
        }
    }

    /// Looks at the oldest segment: a range to drain, or nothing. Removes drained segments.
    fn next(&self) -> Next {
        let mut state = self.shared.lock();
        while let Some(&front) = state.segments.front() {
            if state.cursor < front.len {
                return Next::Read {
                    seq: front.seq,
                    from: state.cursor,
                    to: front.len,
                };
            }
            // The oldest segment is drained. Remove it once the writer has moved past it, or,
            // when it is the only one, once nothing is being appended (the writer then starts a
            // new segment for its next append).
            let retire =
                state.segments.len() > 1 || self.shared.outstanding.load(Ordering::Acquire) == 0;
            if !retire {
                break;
            }
            let path = files::segment_path(&self.shared.dir, front.seq);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(error = %e, path = %path.display(), "spool: could not remove a drained segment");
            }
            state.segments.pop_front();
            state.cursor = 0;
            if state.segments.is_empty() {
                state.oldest_at_ms = None;
            }
        }
        Next::Idle
    }

    /// Publishes the records of `seq` in `from..to` (one batch of them) and advances the cursor
    /// over those Kafka acknowledged.
    async fn drain_batch(&mut self, seq: u64, from: u64, to: u64) -> Result<(), DrainError> {
        let dir = self.shared.dir.clone();
        let (records, end) = tokio::task::spawn_blocking(move || {
            files::read_range(&dir, seq, from, to, BATCH_BYTES)
        })
        .await
        .map_err(|_| DrainError::Read(std::io::Error::other("the read task failed")))?
        .map_err(DrainError::Read)?;
        if records.is_empty() {
            return self.skip_damaged(seq, from, to, end);
        }
        self.shared
            .lock()
            .oldest_at_ms
            .replace(records[0].0.spooled_at_ms);

        if self.ahead.seq != seq {
            self.ahead = Ahead {
                seq,
                ends: BTreeSet::new(),
            };
        }
        // Records Kafka acknowledged in an earlier attempt, behind one that failed, are not sent
        // again: a partition that was back sooner than another must not collect a copy per try.
        let mut pending = Vec::with_capacity(records.len());
        let mut refused = None;
        for (index, (record, end)) in records.iter().enumerate() {
            if self.ahead.ends.contains(end) {
                continue;
            }
            match self.publisher.send(&record.key, &record.value) {
                Ok(ack) => pending.push((index, ack)),
                Err(e) => {
                    refused = Some(e);
                    break;
                }
            }
        }
        // The producer retries each record until Kafka acknowledges it (an outage only makes
        // this wait longer) and reports only permanent failures; stopping abandons the wait, and
        // the records stay in the spool for the next start.
        let settled = futures::future::join_all(
            pending
                .into_iter()
                .map(|(index, ack)| async move { (index, ack.settled().await) }),
        );
        let results = tokio::select! {
            results = settled => results,
            () = self.stop.cancelled() => return Ok(()),
        };
        let mut failure = None;
        for (index, result) in results {
            match result {
                Ok(_) => {
                    self.ahead.ends.insert(records[index].1);
                }
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        let failure = failure.or(refused);
        let acked = records
            .iter()
            .take_while(|(_, end)| self.ahead.ends.contains(end))
            .count();
        if let Some(&(_, cursor)) = records[..acked].last() {
            self.ahead.ends = self.ahead.ends.split_off(&(cursor + 1));
        }
        if acked > 0 {
            self.advance(
                seq,
                from,
                &records[..acked],
                records.get(acked).map(|(r, _)| r),
            );
        }
        match failure {
            Some(e) => Err(DrainError::Publish(e)),
            None => Ok(()),
        }
    }

    fn advance(
        &self,
        seq: u64,
        from: u64,
        acked: &[(SpooledRecord, u64)],
        next: Option<&SpooledRecord>,
    ) {
        let Some(&(_, end)) = acked.last() else {
            return;
        };
        let count = acked.len() as u64;
        {
            let mut state = self.shared.lock();
            if state.segments.front().is_some_and(|s| s.seq == seq) && state.cursor == from {
                state.cursor = end;
            }
            state.records = state.records.saturating_sub(count);
            state.bytes = state.bytes.saturating_sub(end - from);
            state.oldest_at_ms = match next {
                Some(record) => Some(record.spooled_at_ms),
                None if state.records == 0 => None,
                None => state.oldest_at_ms,
            };
        }
        self.shared.outstanding.fetch_sub(count, Ordering::AcqRel);
        self.shared.metrics.drained.inc_by(count);
        if let Err(e) = files::write_cursor(&self.shared.dir, Cursor { seq, offset: end }) {
            // Only costs duplicates after a restart: the records are in Kafka.
            tracing::warn!(error = %e, "spool: could not save the drain cursor");
        }
    }

    /// Bytes below the committed length that are not an intact frame: the disk changed data
    /// that was fsynced. Nothing can be read from them; skip to the end of the segment.
    fn skip_damaged(&self, seq: u64, from: u64, to: u64, end: u64) -> Result<(), DrainError> {
        debug_assert_eq!(end, from);
        self.shared
            .metrics
            .discarded_bytes
            .with_label_values(&["corrupt"])
            .inc_by(to - from);
        let mut state = self.shared.lock();
        if state.segments.front().is_some_and(|s| s.seq == seq) {
            state.cursor = to;
            state.bytes = state.bytes.saturating_sub(to - from);
        }
        tracing::error!(
            segment = seq,
            bytes = to - from,
            "spool: damaged records in a synced segment were skipped; restart ingest to recount the spool"
        );
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum DrainError {
    #[error("reading the spool: {0}")]
    Read(std::io::Error),
    #[error("publishing: {0}")]
    Publish(crate::publisher::PublishError),
}
