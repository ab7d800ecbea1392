//! The edge's local spool: where a push becomes durable when Kafka cannot acknowledge it in time.
//!
//! An append-only log of records on local disk, in numbered segment files ([`files`]), each record
//! a checksummed frame ([`frame`]). [`Spool::append`] resolves only after the record's bytes are
//! fsynced, so answering `success` after it keeps the edge's first promise: nothing acknowledged
//! is lost, whether Kafka, the process or the machine goes down next.
//!
//! - **Group commit** ([`writer`]): one thread writes and fsyncs; appends that arrive while it
//!   syncs are written together and share the next fsync, so a burst costs one sync per batch,
//!   not one per push.
//! - **Draining** ([`drain`]): a task publishes the spooled records to Kafka in order once it
//!   acknowledges again, and deletes spool data only after Kafka acknowledged it.
//! - **Per-user order**: while the spool holds any record, every new push joins the spool behind
//!   it ([`Spool::holds_records`]) instead of overtaking it to Kafka; pushes go straight to Kafka
//!   again only once everything spooled before them has been acknowledged.
//! - **Bounds**: `spool.max_bytes`, and optionally `spool.max_age` of the oldest record. A full
//!   spool refuses the append, and the push is answered 503 as it would be without a spool.
//! - **Recovery**: at start, what the directory holds is read back, torn tails cut and counted,
//!   and the drainer picks up where it stopped.
//!
//! The walk-through, with the failure cases, is in `docs/spool.md`.

mod drain;
pub mod files;
pub mod frame;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
mod writer;

use std::collections::VecDeque;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, Notify};

use crate::config::SpoolSettings;
use crate::metrics::SpoolMetrics;

pub use drain::{DrainHandle, Drainer};

/// Why a record could not be spooled.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({max_bytes} bytes)")]
    Full { max_bytes: u64 },
    #[error("the oldest spooled record is older than spool.max_age ({0:?})")]
    TooOld(Duration),
    #[error("the record is too large to spool")]
    TooLarge,
    #[error("writing the spool failed")]
    Io(#[source] Arc<std::io::Error>),
    #[error("the spool did not confirm the write within {0:?}")]
    Timeout(Duration),
    #[error("the spool is shut down")]
    Closed,
}

impl SpoolError {
    /// The bounded metrics label of this refusal.
    pub fn reason(&self) -> &'static str {
        match self {
            SpoolError::Full { .. } => "full",
            SpoolError::TooOld(_) => "too_old",
            SpoolError::TooLarge => "too_large",
            SpoolError::Io(_) => "io",
            SpoolError::Timeout(_) => "timeout",
            SpoolError::Closed => "closed",
        }
    }
}

/// Every value of `ingest_spool_refused_total{reason}`.
pub const REFUSAL_REASONS: &[&str] = &["full", "too_old", "too_large", "io", "timeout", "closed"];

/// What the spool holds, for readiness and the metrics gauges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolStats {
    /// Durable records not yet acknowledged by Kafka.
    pub records: u64,
    pub bytes: u64,
    /// Age of the oldest of them.
    pub oldest_age: Option<Duration>,
    /// Whether a new record of average size would be refused for the byte bound.
    pub full: bool,
}

/// A handle for appending; cheap to clone (one per HTTP worker). The writer thread stops when the
/// last handle is dropped.
#[derive(Clone)]
pub struct Spool {
    appends: std::sync::mpsc::Sender<writer::Append>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Spool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.shared.dir)
            .finish_non_exhaustive()
    }
}

/// State shared by the appenders, the writer thread and the drainer.
struct Shared {
    dir: PathBuf,
    settings: SpoolSettings,
    state: Mutex<State>,
    /// Appends handed to the writer and not yet drained (or refused). Non-zero means "the spool
    /// holds records", counted from the moment of the hand-off so that a push arriving while an
    /// earlier one is still being fsynced already queues behind it.
    outstanding: AtomicU64,
    /// Wakes the drainer when records were committed.
    committed: Notify,
    metrics: SpoolMetrics,
    /// The directory's lock, held while anything uses the spool.
    _lock: File,
}

/// Segment bookkeeping, behind [`Shared::state`].
#[derive(Debug)]
struct State {
    /// Segments holding undrained records, oldest first; the writer appends to the last one.
    segments: VecDeque<Segment>,
    /// Drain position in the first segment.
    cursor: u64,
    /// Durable records and bytes not yet drained.
    records: u64,
    bytes: u64,
    oldest_at_ms: Option<u64>,
    /// The number of the next segment the writer creates.
    next_seq: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    seq: u64,
    /// Bytes of this segment known durable; the drainer never reads past them.
    len: u64,
}

impl Spool {
    /// Opens (creating if needed) the spool in `settings.dir`: takes its lock, recovers what it
    /// holds and starts the writer thread. The returned [`Drainer`] must be run for the spool to
    /// empty into Kafka.
    pub fn open(
        settings: &SpoolSettings,
        metrics: SpoolMetrics,
    ) -> std::io::Result<(Spool, Drainer)> {
        let lock = files::lock(&settings.dir)?;
        let recovered = files::recover(&settings.dir)?;
        if recovered.torn_bytes > 0 {
            metrics
                .discarded_bytes
                .with_label_values(&["torn_tail"])
                .inc_by(recovered.torn_bytes);
            tracing::warn!(
                bytes = recovered.torn_bytes,
                "spool: cut a torn tail (a write interrupted by a crash, never acknowledged)"
            );
        }
        if recovered.corrupt_bytes > 0 {
            metrics
                .discarded_bytes
                .with_label_values(&["corrupt"])
                .inc_by(recovered.corrupt_bytes);
            tracing::error!(
                bytes = recovered.corrupt_bytes,
                "spool: damaged data in a synced segment was cut; records in it are lost"
            );
        }
        if recovered.records > 0 {
            tracing::info!(
                records = recovered.records,
                bytes = recovered.bytes,
                "spool: recovered records to drain"
            );
        }
        let state = State {
            segments: recovered
                .segments
                .iter()
                .map(|s| Segment {
                    seq: s.seq,
                    len: s.len,
                })
                .collect(),
            cursor: recovered.cursor,
            records: recovered.records,
            bytes: recovered.bytes,
            oldest_at_ms: recovered.oldest_at_ms,
            next_seq: recovered.next_seq,
        };
        let shared = Arc::new(Shared {
            dir: settings.dir.clone(),
            settings: settings.clone(),
            state: Mutex::new(state),
            outstanding: AtomicU64::new(recovered.records),
            committed: Notify::new(),
            metrics,
            _lock: lock,
        });
        let (appends, writer) = writer::start(shared.clone())?;
        let drainer = Drainer::new(shared.clone(), writer);
        Ok((Spool { appends, shared }, drainer))
    }

    /// Whether any record is spooled or being spooled. While it is, new pushes must be spooled
    /// too, behind it, so no user's newer message overtakes an older one on its way to Kafka.
    pub fn holds_records(&self) -> bool {
        self.shared.outstanding.load(Ordering::Acquire) > 0
    }

    /// Appends one record and resolves once it is durable (fsynced, unless `spool.fsync = "off"`).
    pub async fn append(&self, key: &[u8], value: &[u8]) -> Result<(), SpoolError> {
        let result = self.append_unbounded(key, value);
        let limit = self.shared.settings.write_timeout;
        let outcome = match tokio::time::timeout(limit, result).await {
            Ok(outcome) => outcome,
            // The write may still complete; the record is then drained like any other, and the
            // push (answered 503) is retried by WeChat: a duplicate at worst, never a loss.
            Err(_) => Err(SpoolError::Timeout(limit)),
        };
        if let Err(e) = &outcome {
            self.shared
                .metrics
                .refused
                .with_label_values(&[e.reason()])
                .inc();
        }
        outcome
    }

    async fn append_unbounded(&self, key: &[u8], value: &[u8]) -> Result<(), SpoolError> {
        let frame = frame::encode(unix_ms(), key, value).ok_or(SpoolError::TooLarge)?;
        let (done, answer) = oneshot::channel();
        self.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        if self.appends.send(writer::Append { frame, done }).is_err() {
            self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
            return Err(SpoolError::Closed);
        }
        answer.await.unwrap_or(Err(SpoolError::Closed))
    }

    pub fn stats(&self) -> SpoolStats {
        self.shared.stats()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stats(&self) -> SpoolStats {
        let state = self.lock();
        let now = unix_ms();
        SpoolStats {
            records: state.records,
            bytes: state.bytes,
            oldest_age: state
                .oldest_at_ms
                .map(|at| Duration::from_millis(now.saturating_sub(at))),
            // Pushes are a few KiB; with less than 64 KiB left the next one may be refused.
            full: state.bytes + 64 * 1024 > self.settings.max_bytes,
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}
