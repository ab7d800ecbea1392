//! The live half of `replay` and `dlq redrive`: records from a [`RangeReader`] through the same
//! [`Processor::process`] the consumer group runs, one user at a time and users concurrently
//! (the group's own [`Dispatcher`], keyed by the record key), with a line per record, progress
//! on stderr and a [`Summary`].
//!
//! Transient failures (Redis, token endpoint, a sink) are retried like the live loop does, but a
//! bounded number of times: an operator run must end. When a record still fails, the run stops
//! taking new records, lets the running ones finish and reports the rest as not finished —
//! re-running the same command is safe because the send ledger never sends a reply twice.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::envelope::{Envelope, EnvelopeError};
use futures::future::BoxFuture;
use futures::FutureExt;
use prometheus::IntGauge;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::range::{RangeReader, RawRecord};
use super::summary::{Progress, Summary, Tally};
use crate::actions::calls::exponential_jitter;
use crate::config::Settings;
use crate::dead_letter::{DeadLetter, Reason};
use crate::pipeline::dispatch::Dispatcher;
use crate::processor::{Outcome, ProcessError, Processor};

/// Attempts of one record whose processing fails transiently, before the run stops.
pub const ATTEMPTS: u32 = 5;
/// How long records still running may take to finish once a run stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// The dead letter of a record value that is not a readable envelope, as the live loop writes it.
pub fn poison(error: EnvelopeError) -> DeadLetter {
    DeadLetter::record(match error {
        EnvelopeError::UnknownVersion(v) => Reason::UnknownVersion(v),
        EnvelopeError::Malformed(detail) => Reason::Undecodable(detail),
    })
}

/// One record value through the processor, retrying transient failures a bounded number of times.
#[derive(Debug, Clone)]
pub struct Driver {
    pub processor: Processor,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Driver {
    pub fn new(settings: &Settings, mut processor: Processor) -> Driver {
        processor.actions.show_typing = false;
        Driver {
            processor,
            initial_backoff: settings.processing.retry_initial_backoff,
            max_backoff: settings.processing.retry_max_backoff,
        }
    }

    /// The record's outcome; a value that is not an envelope is dead-lettered as poison.
    pub async fn drive(
        &self,
        value: &[u8],
        stop: &CancellationToken,
    ) -> Result<Outcome, ProcessError> {
        let envelope = match Envelope::from_bytes(value) {
            Ok(envelope) => envelope,
            Err(e) => return Ok(Outcome::DeadLettered(poison(e))),
        };
        let mut attempt = 0;
        loop {
            match self.processor.process(envelope.v1()).await {
                Ok(outcome) => return Ok(outcome),
                Err(e) => {
                    attempt += 1;
                    if attempt >= ATTEMPTS || stop.is_cancelled() {
                        return Err(e);
                    }
                    tracing::warn!(error = %e, attempt, "record failed transiently; retrying");
                    let wait = exponential_jitter(attempt, self.initial_backoff, self.max_backoff);
                    tokio::select! {
                        _ = stop.cancelled() => return Err(e),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }
}

/// How a finished outcome counts, and its line in the run's output.
pub fn tally(outcome: &Outcome) -> (Tally, String) {
    match outcome {
        Outcome::Replied { sent, already_sent } if *sent > 0 => (
            Tally::Replied,
            format!("replied ({sent} sent, {already_sent} already sent before)"),
        ),
        Outcome::Replied { already_sent, .. } => (
            Tally::AlreadySent,
            format!("already sent ({already_sent} in the ledger; nothing sent)"),
        ),
        Outcome::Skipped(skip) => (Tally::Skipped, format!("skipped ({skip:?})")),
        Outcome::DeadLettered(letter) => (
            Tally::DeadLettered {
                reason: letter.reason.kind().to_owned(),
                written: false,
            },
            format!(
                "dead letter: {} ({})",
                letter.reason.kind(),
                letter.reason.detail()
            ),
        ),
    }
}

/// A record the caller chose, ready to run.
#[derive(Debug)]
pub struct Job<J> {
    /// The record key: one key's jobs run in order.
    pub key: Vec<u8>,
    pub label: String,
    pub item: J,
}

/// What running a job did.
#[derive(Debug)]
struct Finished {
    label: String,
    tally: Tally,
    line: String,
}

/// Decides, per record read, whether it is run (counting what it skips in the summary).
pub type Select<'a, J> = dyn FnMut(RawRecord, &mut Summary) -> Option<Job<J>> + 'a;
/// Runs one job to its tally and output line; cancelling the token stops the whole run.
pub type Handle<J> =
    Arc<dyn Fn(J, CancellationToken) -> BoxFuture<'static, (Tally, String)> + Send + Sync>;

/// Runs every selected record of `reader` through `handle`, `concurrency` users at a time.
#[allow(clippy::too_many_arguments)]
pub async fn run_live<J: Send + 'static>(
    reader: &mut RangeReader,
    select: &mut Select<'_, J>,
    handle: Handle<J>,
    concurrency: usize,
    summary: &mut Summary,
    progress: &mut Progress,
    out: &mut dyn Write,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    // A failing record cancels `stop`, not the caller's token.
    let stop = cancel.child_token();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Finished>();
    let concurrency = concurrency.max(1);
    let gauge = IntGauge::new("operator_in_flight_keys", "users in progress")?;
    let handler_stop = stop.clone();
    let dispatcher = Dispatcher::new(
        concurrency,
        concurrency * 16,
        gauge,
        move |(label, item): (String, J)| {
            let (handle, stop, done) = (Arc::clone(&handle), handler_stop.clone(), done_tx.clone());
            async move {
                let (tally, line) = handle(item, stop).await;
                let _ = done.send(Finished { label, tally, line });
            }
            .boxed()
        },
    );
    let mut dispatched = 0u64;
    let mut finished = 0u64;
    let mut read_error = None;
    loop {
        progress.tick(summary);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            Some(f) = done_rx.recv() => {
                finished += 1;
                report(f, summary, out)?;
            }
            next = reader.next() => match next {
                Ok(Some(record)) => {
                    summary.read += 1;
                    let Some(job) = select(record, summary) else { continue };
                    summary.selected += 1;
                    tokio::select! {
                        biased;
                        _ = stop.cancelled() => break,
                        _ = dispatcher.dispatch(job.key, (job.label, job.item)) => dispatched += 1,
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    read_error = Some(e);
                    break;
                }
            },
        }
    }
    // Everything read is dispatched: wait for it, unless the run was stopped.
    while finished < dispatched {
        tokio::select! {
            biased;
            Some(f) = done_rx.recv() => {
                finished += 1;
                report(f, summary, out)?;
                progress.tick(summary);
            }
            _ = stop.cancelled() => break,
        }
    }
    // Stopped: records running finish, queued ones are dropped (never started).
    dispatcher.shutdown(STOP_TIMEOUT).await;
    while let Ok(f) = done_rx.try_recv() {
        finished += 1;
        report(f, summary, out)?;
    }
    summary.unfinished += summary.selected.saturating_sub(finished);
    match read_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

fn report(f: Finished, summary: &mut Summary, out: &mut dyn Write) -> std::io::Result<()> {
    summary.add(&f.tally);
    writeln!(out, "{} -> {}", f.label, f.line)
}
