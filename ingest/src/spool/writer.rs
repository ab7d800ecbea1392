//! The spool's one writer thread: group commit.
//!
//! Appends queue on a channel. The thread takes everything queued (up to [`MAX_BATCH_BYTES`]),
//! admits what fits the bounds, writes it with one `write`, makes it durable with one fsync, and
//! only then answers each append. Appends that arrive during the fsync form the next batch, so
//! the number of fsyncs per second stays bounded by the disk, not by the push rate.
//!
//! A failed write or fsync fails the whole batch (each push is answered 503 and retried by
//! WeChat) and retires the segment: bytes of a failed write may sit after its last good record,
//! and nothing more is ever appended behind them. Recovery cuts them like a torn tail.

use std::fs::File;
use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{files, unix_ms, Segment, Shared, SpoolError};
use crate::config::FsyncPolicy;

/// Upper bound of one batch's bytes: large enough to absorb a burst, small enough that one
/// write and one fsync stay short.
const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// One queued append.
pub struct Append {
    pub frame: Vec<u8>,
    pub done: oneshot::Sender<Result<(), SpoolError>>,
}

/// Starts the writer thread; it ends when every sender is dropped.
pub fn start(shared: Arc<Shared>) -> std::io::Result<(Sender<Append>, JoinHandle<()>)> {
    let (sender, receiver) = channel();
    let thread = std::thread::Builder::new()
        .name("spool-writer".into())
        .spawn(move || run(shared, receiver))?;
    Ok((sender, thread))
}

/// The writer's loop: commits batches until every sender is gone.
pub(super) fn run(shared: Arc<Shared>, appends: Receiver<Append>) {
    Writer::new(shared).run(appends);
}

struct Writer {
    shared: Arc<Shared>,
    /// The segment being appended to, if one is open.
    current: Option<(u64, File)>,
}

impl Writer {
    fn new(shared: Arc<Shared>) -> Writer {
        Writer {
            shared,
            current: None,
        }
    }

    fn run(mut self, appends: Receiver<Append>) {
        while let Ok(first) = appends.recv() {
            let mut bytes = first.frame.len();
            let mut batch = vec![first];
            while bytes < MAX_BATCH_BYTES {
                match appends.try_recv() {
                    Ok(next) => {
                        bytes += next.frame.len();
                        batch.push(next);
                    }
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    fn commit(&mut self, batch: Vec<Append>) {
        let batch = self.admit(batch);
        if batch.is_empty() {
            return;
        }
        let count = batch.len() as u64;
        match self.write(&batch) {
            Ok((seq, written)) => {
                {
                    let mut state = self.shared.lock();
                    if let Some(segment) = state.segments.iter_mut().find(|s| s.seq == seq) {
                        segment.len += written;
                    }
                    state.records += count;
                    state.bytes += written;
                    state.oldest_at_ms.get_or_insert_with(unix_ms);
                }
                self.shared.metrics.appended.inc_by(count);
                self.shared.metrics.batch_records.observe(count as f64);
                self.shared.committed.notify_one();
                for append in batch {
                    let _ = append.done.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, records = count, "spool: write failed; the pushes are answered 503");
                // Never append behind bytes of a failed write.
                self.current = None;
                let e = Arc::new(e);
                self.shared.outstanding.fetch_sub(count, Ordering::AcqRel);
                for append in batch {
                    let _ = append.done.send(Err(SpoolError::Io(e.clone())));
                }
            }
        }
    }

    /// Answers the appends that would break a bound with their refusal; returns the rest.
    fn admit(&self, batch: Vec<Append>) -> Vec<Append> {
        let settings = &self.shared.settings;
        let (mut bytes, oldest) = {
            let state = self.shared.lock();
            (state.bytes, state.oldest_at_ms)
        };
        let too_old = settings.max_age.filter(|max| {
            oldest.is_some_and(|at| Duration::from_millis(unix_ms().saturating_sub(at)) > *max)
        });
        let mut admitted = Vec::with_capacity(batch.len());
        for append in batch {
            let refusal = if let Some(max) = too_old {
                Some(SpoolError::TooOld(max))
            } else if bytes + append.frame.len() as u64 > settings.max_bytes {
                Some(SpoolError::Full {
                    max_bytes: settings.max_bytes,
                })
            } else {
                None
            };
            match refusal {
                Some(e) => {
                    self.shared.outstanding.fetch_sub(1, Ordering::AcqRel);
                    let _ = append.done.send(Err(e));
                }
                None => {
                    bytes += append.frame.len() as u64;
                    admitted.push(append);
                }
            }
        }
        admitted
    }

    /// Writes and syncs the batch into the current segment; returns the segment and the bytes.
    fn write(&mut self, batch: &[Append]) -> std::io::Result<(u64, u64)> {
        let buffer: Vec<u8> = batch.iter().flat_map(|a| a.frame.iter().copied()).collect();
        let shared = self.shared.clone();
        let (seq, file) = self.segment()?;
        file.write_all(&buffer)?;
        if shared.settings.fsync == FsyncPolicy::Always {
            let started = Instant::now();
            file.sync_data()?;
            shared
                .metrics
                .fsync_duration
                .observe(started.elapsed().as_secs_f64());
        }
        Ok((seq, buffer.len() as u64))
    }

    /// The segment to append to: the current one while the drainer has not retired it and it is
    /// below `spool.segment_bytes`, else a new one.
    fn segment(&mut self) -> std::io::Result<(u64, &mut File)> {
        let reuse = self.current.as_ref().is_some_and(|(seq, _)| {
            let state = self.shared.lock();
            state.segments.back().is_some_and(|last| {
                last.seq == *seq && last.len < self.shared.settings.segment_bytes
            })
        });
        if !reuse {
            let seq = {
                let mut state = self.shared.lock();
                let seq = state.next_seq;
                state.next_seq += 1;
                seq
            };
            let file = files::create_segment(&self.shared.dir, seq)?;
            self.shared
                .lock()
                .segments
                .push_back(Segment { seq, len: 0 });
            self.current = Some((seq, file));
        }
        match self.current.as_mut() {
            Some((seq, file)) => Ok((*seq, file)),
            None => Err(std::io::Error::other("no spool segment is open")),
        }
    }
}
