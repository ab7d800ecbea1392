//! `consumer replay`: inbound records from Kafka, by time or offsets and filters, through the
//! current rules again.
//!
//! For when the records were handled wrongly or not at all: a rules file that missed them, an
//! app that was not configured, replies lost to an outage that was not dead-lettered. It reads
//! with a throwaway group id, `assign` and no commit (see [`super::range`]), so the live
//! consumer group's membership and committed offsets are untouched.
//!
//! - `--dry-run` prints, for every selected record, `consumer explain`'s account (matched rules,
//!   the exact requests) and touches nothing: no Redis, no WeChat, no Kafka writes.
//! - Live, each record runs through [`crate::processor::Processor::process`]: a reply already
//!   in the send ledger is not sent again (`already sent`), the reply window is checked as
//!   always (old records mostly meet a closed window — the summary says so), and a record that
//!   ends dead-lettered is written to the dead-letter topic unless `--no-dead-letters`.
//!
//! Records that are not readable envelopes are counted and left out: the live consumer
//! dead-lettered each of them when it first read it, and no rules change can alter that.

use std::io::Write;
use std::sync::Arc;

use common::envelope::Envelope;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::args::ReplayArgs;
use super::engine::{poison, run_live, tally, Driver, Handle, Job, Select};
use super::range::{self, RangeReader, RawRecord};
use super::summary::{Progress, Summary, Tally};
use crate::actions::{plan, Step};
use crate::config::Settings;
use crate::dead_letter::DeadLetterWriter;
use crate::explain::Explainer;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::processor::Outcome;
use crate::rules::RuleSet;
use crate::startup::{rules_context, Services};
use crate::store::now_ms;

/// Replays the records `args` selects, writing decisions or outcomes and the summary to `out`.
pub async fn run(
    settings: &Settings,
    args: &ReplayArgs,
    out: &mut (dyn Write + Send),
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let mut settings = settings.clone();
    if let Some(rules) = &args.run.rules {
        settings.rules.path = rules.clone();
    }
    let group = super::throwaway_group(&settings, "replay");
    let now = now_ms();
    let range = range::resolve(
        &settings.kafka,
        &group,
        &settings.kafka.inbound_topic,
        &args.range.spec(now),
    )
    .await?;
    writeln!(
        out,
        "replay{} of {} ({} records)",
        if args.run.dry_run { " (dry run)" } else { "" },
        range.describe(),
        range.len()
    )?;
    let mut summary = Summary {
        group: group.clone(),
        ..Summary::default()
    };
    let mut progress = Progress::new("replay", range.len(), args.run.progress);
    let mut reader = RangeReader::open(&settings.kafka, &group, &range)?;
    if args.run.dry_run {
        dry_run(
            &settings,
            args,
            &mut reader,
            &mut summary,
            &mut progress,
            out,
            &cancel,
        )
        .await?;
        summary.print_dry_run("replay", out)?;
    } else {
        let result = live(
            &settings,
            args,
            &mut reader,
            &mut summary,
            &mut progress,
            out,
            &cancel,
        )
        .await;
        // What was done is reported even when reading stopped early (Kafka gone).
        summary.print_live("replay", out)?;
        result?;
    }
    Ok(summary)
}

/// The envelope of `record` if it passes the filters; counts what it leaves out.
fn select(args: &ReplayArgs, record: &RawRecord, summary: &mut Summary, now: i64) -> bool {
    let Ok(envelope) = Envelope::from_bytes(&record.value) else {
        summary.unreadable += 1;
        return false;
    };
    let env = envelope.v1();
    if !args.filter.matches(env) {
        return false;
    }
    summary.note_age(env.message.create_time, now);
    true
}

async fn dry_run(
    settings: &Settings,
    args: &ReplayArgs,
    reader: &mut RangeReader,
    summary: &mut Summary,
    progress: &mut Progress,
    out: &mut dyn Write,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let rules = crate::rules::load_file(&settings.rules.path, &rules_context(settings))?;
    let explainer = Explainer::new(settings, &rules)?;
    let ledger = super::optional_store(settings, "the send ledger is not consulted", out)
        .await
        .map(|store| Ledger::new(store, &settings.ledger));
    summary.replies_in_ledger = ledger.as_ref().map(|_| 0);
    let now = now_ms();
    loop {
        progress.tick(summary);
        let Some(record) = reader.next_or_cancelled(cancel).await? else {
            break;
        };
        summary.read += 1;
        if !select(args, &record, summary, now) {
            continue;
        }
        summary.selected += 1;
        explainer.record(&record.label(), &record.value, out)?;
        let keys = count_plan(settings, &rules, &record.value, summary);
        check_ledger(ledger.as_ref(), &keys, summary, out).await?;
    }
    Ok(())
}

/// Counts, for a dry run, what `process` would decide before any Redis or WeChat call; returns
/// the idempotency keys of the replies it would send.
pub(super) fn count_plan(
    settings: &Settings,
    rules: &RuleSet,
    value: &[u8],
    summary: &mut Summary,
) -> Vec<String> {
    let dead_letter = |reason: &str| Tally::DeadLettered {
        reason: reason.to_owned(),
        written: false,
    };
    let envelope = match Envelope::from_bytes(value) {
        Ok(envelope) => envelope,
        Err(e) => {
            summary.add(&dead_letter(poison(e).reason.kind()));
            return Vec::new();
        }
    };
    let env = envelope.v1();
    if !settings.apps.contains_key(&env.app) {
        summary.add(&dead_letter("unknown_app"));
        return Vec::new();
    }
    let matches = rules.evaluate(env);
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

/// Says, for a dry run, which planned replies the send ledger already holds (read only).
pub(super) async fn check_ledger(
    ledger: Option<&Ledger>,
    keys: &[String],
    summary: &mut Summary,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    let Some(ledger) = ledger else {
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

#[allow(clippy::too_many_arguments)]
async fn live(
    settings: &Settings,
    args: &ReplayArgs,
    reader: &mut RangeReader,
    summary: &mut Summary,
    progress: &mut Progress,
    out: &mut dyn Write,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::unregistered();
    let services = Services::build(settings, &metrics).await?;
    let driver = Arc::new(Driver::new(settings, services.processor));
    // Dead letters of a replay name it as their writer, so `dlq list` tells them apart.
    let dead_letters = (!args.no_dead_letters).then(|| DeadLetterWriter {
        group: format!("{}-replay", settings.kafka.group_id),
        ..services.dead_letters
    });
    let handle: Handle<RawRecord> = Arc::new(move |record: RawRecord, stop| {
        let (driver, dead_letters) = (Arc::clone(&driver), dead_letters.clone());
        async move {
            let outcome = match driver.drive(&record.value, &stop).await {
                Ok(outcome) => outcome,
                Err(e) => {
                    stop.cancel();
                    return (Tally::Unfinished, format!("not finished: {e}"));
                }
            };
            let (mut tally, mut line) = tally(&outcome);
            if let (Outcome::DeadLettered(letter), Some(writer)) = (&outcome, &dead_letters) {
                match writer
                    .write_at(letter, record.source(), &record.value, None)
                    .await
                {
                    Ok((p, o)) => {
                        tally = Tally::DeadLettered {
                            reason: letter.reason.kind().to_owned(),
                            written: true,
                        };
                        line.push_str(&format!(" -> written to the dead-letter topic at {p}:{o}"));
                    }
                    Err(e) => {
                        stop.cancel();
                        return (Tally::Unfinished, format!("dead letter not written: {e}"));
                    }
                }
            }
            (tally, line)
        }
        .boxed()
    });
    let now = now_ms();
    let mut choose = |record: RawRecord, summary: &mut Summary| {
        select(args, &record, summary, now).then(|| Job {
            key: record.key.clone().unwrap_or_default(),
            label: record.label(),
            item: record,
        })
    };
    let select_fn: &mut Select<'_, RawRecord> = &mut choose;
    let result = run_live(
        reader,
        select_fn,
        handle,
        args.run.concurrency,
        summary,
        progress,
        out,
        cancel,
    )
    .await;
    summary.take_sends(&metrics);
    result
}
