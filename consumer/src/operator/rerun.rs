//! What `replay` and `dlq redrive` share: both re-drive records of a topic through the current
//! rules, and differ only in which topic they read, which records they select and what they do
//! with an outcome. The shared skeleton is here:
//!
//! - [`Rerun`]: the settings with `--rules` applied, a throwaway group, the topic's range resolved
//!   once and announced, the reader, the progress line and the [`Summary`] printed at the end;
//! - [`Preview`]: a dry run's account of one record (`consumer explain`'s lines, what `process`
//!   would decide, which planned replies the send ledger already holds);
//! - [`run_live`]: records from the [`RangeReader`] through the same [`Processor::process`] the
//!   consumer group runs, one user at a time and users concurrently (the group's own
//!   [`Dispatcher`], keyed by the record key), with a line per record.
//!
//! Transient failures (Redis, token endpoint, a sink) are retried like the live loop does, but a
//! bounded number of times: an operator run must end. When a record still fails, the run stops
//! taking new records, lets the running ones finish and reports the rest as not finished —
//! re-running the same command is safe because the send ledger never sends a reply twice.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use common::envelope::Envelope;
use futures::future::BoxFuture;
use futures::FutureExt;
use prometheus::IntGauge;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::args::{RangeArgs, RunArgs};
use super::explain::Explainer;
use super::range::{self, RangeReader};
use super::summary::{Progress, Summary, Tally};
use crate::actions::{plan, Step};
use crate::backoff::exponential_jitter;
use crate::clock::now_ms;
use crate::config::Settings;
use crate::dead_letter::{DeadLetter, DeadLetterWriter};
use crate::error::ProcessError;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::pipeline::dispatch::Dispatcher;
use crate::processor::{Outcome, Processor};
use crate::record::KafkaRecord;
use crate::rules::RuleSet;

/// Attempts of one record whose processing fails transiently, before the run stops.
pub const ATTEMPTS: u32 = 5;
/// How long records still running may take to finish once a run stops.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// One run of `replay` or `dlq redrive`, from the resolved range to the printed summary.
#[derive(Debug)]
pub struct Rerun {
    /// `replay` or `redrive`: the summary's title, the progress line's and the group's tag.
    name: &'static str,
    dry_run: bool,
    /// The configuration, with `--rules` applied.
    pub settings: Settings,
    pub reader: RangeReader,
    pub summary: Summary,
    progress: Progress,
}

impl Rerun {
    /// Resolves the range of `topic` the arguments ask for (its end fixed now), says what will
    /// be read (`unit`: what the records are to the operator) and opens the reader.
    pub async fn open(
        settings: &Settings,
        name: &'static str,
        topic: &str,
        unit: &str,
        range: &RangeArgs,
        run: &RunArgs,
        out: &mut dyn Write,
    ) -> anyhow::Result<Rerun> {
        let mut settings = settings.clone();
        if let Some(rules) = &run.rules {
            settings.rules.path = rules.clone();
        }
        let group = super::throwaway_group(&settings, name);
        let range = range::resolve(&settings.kafka, &group, topic, &range.spec(now_ms())).await?;
        writeln!(
            out,
            "{name}{} of {} ({} {unit})",
            if run.dry_run { " (dry run)" } else { "" },
            range.describe(),
            range.len()
        )?;
        let summary = Summary {
            group: group.clone(),
            ..Summary::default()
        };
        let progress = Progress::new(name, range.len(), run.progress);
        let reader = RangeReader::open(&settings.kafka, &group, &range)?;
        Ok(Rerun {
            name,
            dry_run: run.dry_run,
            settings,
            reader,
            summary,
            progress,
        })
    }

    /// The next record of the range, counted as read; `None` at its end or once `cancel` fired.
    pub async fn next(
        &mut self,
        cancel: &CancellationToken,
    ) -> anyhow::Result<Option<KafkaRecord>> {
        self.progress.tick(&self.summary);
        let record = self.reader.next_or_cancelled(cancel).await?;
        if record.is_some() {
            self.summary.read += 1;
        }
        Ok(record)
    }

    /// The rules the run applies: the configured file, or `--rules`.
    pub fn rules(&self) -> anyhow::Result<RuleSet> {
        let context = crate::startup::rules_context(&self.settings);
        Ok(crate::rules::load_file(
            &self.settings.rules.path,
            &context,
        )?)
    }

    /// The dead-letter writer of this run: dead letters name the run as their writer
    /// (`{group}-replay`, `{group}-redrive`), so `dlq list` tells them from the live group's.
    pub fn dead_letter_writer(&self, live: DeadLetterWriter) -> DeadLetterWriter {
        DeadLetterWriter {
            group: format!("{}-{}", self.settings.kafka.group_id, self.name),
            ..live
        }
    }

    /// The live run: every record `select` takes through `handle`, `concurrency` users at a
    /// time; the sends `metrics` counted go into the summary.
    pub async fn live<J: Send + 'static>(
        &mut self,
        select: &mut Select<'_, J>,
        handle: Handle<J>,
        concurrency: usize,
        metrics: &Metrics,
        out: &mut dyn Write,
        cancel: &CancellationToken,
    ) -> anyhow::Result<()> {
        let result = run_live(
            &mut self.reader,
            select,
            handle,
            concurrency,
            &mut self.summary,
            &mut self.progress,
            out,
            cancel,
        )
        .await;
        self.summary.take_sends(metrics);
        result
    }

    /// Prints the summary and passes on `result`. A live run's summary is printed even when
    /// reading stopped early (Kafka gone): what was done must be reported.
    pub fn finish(
        self,
        result: anyhow::Result<()>,
        out: &mut dyn Write,
    ) -> anyhow::Result<Summary> {
        if self.dry_run {
            result?;
            self.summary.print_dry_run(self.name, out)?;
        } else {
            self.summary.print_live(self.name, out)?;
            result?;
        }
        Ok(self.summary)
    }
}

/// A dry run's account of one record, touching nothing: `consumer explain`'s lines, what
/// `process` would decide before any Redis or WeChat call, and — when Redis answers — which
/// planned replies the send ledger already holds (read only).
#[derive(Debug)]
pub struct Preview<'a> {
    rules: &'a RuleSet,
    explainer: Explainer<'a>,
    ledger: Option<Ledger>,
    /// The apps configured (static and app files), by name.
    apps: std::collections::BTreeSet<String>,
}

impl<'a> Preview<'a> {
    pub fn new(
        settings: &'a Settings,
        rules: &'a RuleSet,
        ledger: Option<Ledger>,
        summary: &mut Summary,
    ) -> anyhow::Result<Preview<'a>> {
        summary.replies_in_ledger = ledger.as_ref().map(|_| 0);
        Ok(Preview {
            apps: crate::apps::names(settings),
            rules,
            explainer: Explainer::new(settings, rules)?,
            ledger,
        })
    }

    /// Explains the record `value`, headed by `label`, and counts its decision.
    pub async fn show(
        &self,
        label: &str,
        value: &[u8],
        summary: &mut Summary,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        self.explainer.record(label, value, out)?;
        let keys = self.count_plan(value, summary);
        self.check_ledger(&keys, summary, out).await
    }

    /// Counts what `process` would decide; returns the idempotency keys of the replies it would
    /// send.
    fn count_plan(&self, value: &[u8], summary: &mut Summary) -> Vec<String> {
        let dead_letter = |reason: &str| Tally::DeadLettered {
            reason: reason.to_owned(),
            written: false,
        };
        let envelope = match Envelope::from_bytes(value) {
            Ok(envelope) => envelope,
            Err(e) => {
                summary.add(&dead_letter(DeadLetter::poison(e).reason.kind()));
                return Vec::new();
            }
        };
        let env = envelope.v1();
        if !self.apps.contains(&env.app) {
            summary.add(&dead_letter("unknown_app"));
            return Vec::new();
        }
        let matches = self.rules.evaluate(env);
        let keys: Vec<String> = plan(env, &matches)
            .into_iter()
            .filter(|a| matches!(a.step, Step::Send { .. }))
            .map(|a| a.idempotency_key)
            .collect();
        if keys.is_empty() {
            summary.skipped += 1;
        } else {
            summary.planned_replies += 1;
            summary.replies_planned += keys.len() as u64;
        }
        keys
    }

    /// Says which of `keys` the send ledger already holds.
    async fn check_ledger(
        &self,
        keys: &[String],
        summary: &mut Summary,
        out: &mut dyn Write,
    ) -> anyhow::Result<()> {
        let Some(ledger) = &self.ledger else {
            return Ok(());
        };
        for key in keys {
            let state = ledger.peek(key).await?;
            let note = match state.as_deref() {
                None => continue,
                Some("sent") => "sent before: will not be sent again",
                Some("ambiguous") => {
                    "ambiguous (may have arrived): not sent; see `dlq redrive --include-ambiguous`"
                }
                Some(_) => "being sent right now by another process",
            };
            if state.as_deref() == Some("sent") {
                summary.replies_in_ledger = summary.replies_in_ledger.map(|n| n + 1);
            }
            writeln!(out, "   ledger {key}: {note}")?;
        }
        Ok(())
    }
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
            Err(e) => return Ok(Outcome::DeadLettered(DeadLetter::poison(e))),
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
        Outcome::Parked => (
            Tally::Parked,
            "parked (the app's daily API quota is spent; sent when it resumes)".into(),
        ),
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
pub type Select<'a, J> = dyn FnMut(KafkaRecord, &mut Summary) -> Option<Job<J>> + 'a;
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
