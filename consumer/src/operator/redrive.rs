//! `consumer dlq redrive`: dead letters back through processing once their cause is fixed.
//!
//! Each selected dead letter's original record (kept byte for byte in the dead letter) runs
//! through [`crate::processor::Processor::process`], as the live consumer would run it now:
//! - replies the send ledger already holds are not sent again, so a record that failed at its
//!   second reply resumes there;
//! - a record that succeeds is replied (or skipped by the rules);
//! - one that fails again is written back to the dead-letter topic with its new reason, the same
//!   original `source`, and a `redrive` lineage (count, and the dead letter it replaces).
//!
//! Bookkeeping: a mark per dead letter in Redis ([`super::marks`]), claimed before and finalised
//! after the outcome, so running the same redrive twice does nothing new, concurrent runs do not
//! process one dead letter twice, and `dlq list` shows each dead letter's fate. The range end is
//! fixed when the run starts, so the dead letters it writes are left for the next run.
//!
//! `ambiguous` dead letters (the send timed out; the reply may have arrived) are held back unless
//! `--include-ambiguous`: then their ledger entry is cleared first ([`crate::ledger::Ledger::
//! clear_ambiguous`]) and the reply sent again — an operator's decision to risk a duplicate.

use std::io::Write;
use std::sync::Arc;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::args::RedriveArgs;
use super::dlq::Entry;
use super::engine::{run_live, tally, Driver, Handle, Job, Select};
use super::marks::{describe, Marks};
use super::range::{self, RangeReader, RawRecord};
use super::replay::{check_ledger, count_plan};
use super::summary::{Progress, Summary, Tally};
use crate::config::Settings;
use crate::dead_letter::{DeadLetterWriter, Position, Reason, Redrive};
use crate::explain::Explainer;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::processor::Outcome;
use crate::startup::{rules_context, Services};
use crate::store::now_ms;

const AMBIGUOUS: &str = "ambiguous";

/// Redrives the dead letters `args` selects; decisions or outcomes and the summary go to `out`.
pub async fn run(
    settings: &Settings,
    args: &RedriveArgs,
    out: &mut (dyn Write + Send),
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    for reason in &args.filter.reason {
        if !Reason::KINDS.contains(&reason.as_str()) {
            anyhow::bail!(
                "unknown reason `{reason}`; reasons are {}",
                Reason::KINDS.join(", ")
            );
        }
    }
    if args.filter.reason.iter().any(|r| r == AMBIGUOUS) && !args.include_ambiguous {
        anyhow::bail!(
            "redriving `ambiguous` dead letters may send a reply the user already has: \
             add --include-ambiguous to do it anyway"
        );
    }
    let mut settings = settings.clone();
    if let Some(rules) = &args.run.rules {
        settings.rules.path = rules.clone();
    }
    let group = super::throwaway_group(&settings, "redrive");
    let topic = settings.kafka.dead_letter_topic.clone();
    let spec = args.range.spec(now_ms());
    let range = range::resolve(&settings.kafka, &group, &topic, &spec).await?;
    writeln!(
        out,
        "redrive{} of {} ({} dead letters)",
        if args.run.dry_run { " (dry run)" } else { "" },
        range.describe(),
        range.len()
    )?;
    let metrics = Metrics::unregistered();
    // Live or not, the marks say what was redriven before, so Redis is needed either way.
    let services = Services::build(&settings, &metrics).await?;
    let marks = Marks::new(services.store.clone(), &topic);
    let mut summary = Summary {
        group: group.clone(),
        ..Summary::default()
    };
    let mut progress = Progress::new("redrive", range.len(), args.run.progress);
    let mut reader = RangeReader::open(&settings.kafka, &group, &range)?;
    if args.run.dry_run {
        dry_run(
            &settings,
            args,
            &marks,
            &services.processor.actions.ledger,
            &mut reader,
            &mut summary,
            &mut progress,
            out,
            &cancel,
        )
        .await?;
        summary.print_dry_run("redrive", out)?;
        return Ok(summary);
    }
    let driver = Arc::new(Driver::new(&settings, services.processor));
    let writer = DeadLetterWriter {
        group: format!("{}-redrive", settings.kafka.group_id),
        ..services.dead_letters
    };
    let include_ambiguous = args.include_ambiguous;
    let handle: Handle<Entry> = Arc::new(move |entry: Entry, stop| {
        let (driver, marks, writer) = (Arc::clone(&driver), marks.clone(), writer.clone());
        async move { redrive(&driver, &marks, &writer, include_ambiguous, entry, &stop).await }
            .boxed()
    });
    let mut choose = |raw: RawRecord, summary: &mut Summary| {
        select(args, &raw, summary).map(|entry| Job {
            key: raw.key.clone().unwrap_or_default(),
            label: format!("dlq {}", entry.position()),
            item: entry,
        })
    };
    let select_fn: &mut Select<'_, Entry> = &mut choose;
    let result = run_live(
        &mut reader,
        select_fn,
        handle,
        args.run.concurrency,
        &mut summary,
        &mut progress,
        out,
        &cancel,
    )
    .await;
    summary.take_sends(&metrics);
    // What was done is reported even when reading stopped early (Kafka gone).
    summary.print_live("redrive", out)?;
    result?;
    Ok(summary)
}

/// The dead letter in `raw` if the filters select it; counts what it leaves out.
fn select(args: &RedriveArgs, raw: &RawRecord, summary: &mut Summary) -> Option<Entry> {
    let Some(entry) = Entry::parse(raw) else {
        summary.unreadable += 1;
        return None;
    };
    if !args.filter.matches(&entry) {
        return None;
    }
    if entry.record.reason == AMBIGUOUS && !args.include_ambiguous {
        summary.held_ambiguous += 1;
        return None;
    }
    if let Some(env) = &entry.envelope {
        summary.note_age(env.message.create_time, now_ms());
    }
    Some(entry)
}

/// One dead letter, start to finish: claim, (clear an ambiguous entry,) process, write back a
/// failure, mark.
async fn redrive(
    driver: &Driver,
    marks: &Marks,
    writer: &DeadLetterWriter,
    include_ambiguous: bool,
    entry: Entry,
    stop: &CancellationToken,
) -> (Tally, String) {
    let (p, o) = (entry.partition, entry.offset);
    let unfinished = |why: String| {
        stop.cancel();
        (Tally::Unfinished, format!("not finished: {why}"))
    };
    match marks.claim(p, o).await {
        Ok(None) => {}
        Ok(Some(mark)) => return (Tally::AlreadyRedriven, describe(Some(&mark))),
        Err(e) => return unfinished(e.to_string()),
    }
    let record = &entry.record;
    if include_ambiguous && record.reason == AMBIGUOUS {
        if let (Some(env), Some(rule), Some(index)) =
            (&entry.envelope, &record.rule, record.action_index)
        {
            let key = format!("{}:{rule}:{index}", env.dedup_key.as_str());
            if let Err(e) = driver.processor.actions.ledger.clear_ambiguous(&key).await {
                let _ = marks.release(p, o).await;
                return unfinished(e.to_string());
            }
        }
    }
    let outcome = match driver.drive(&entry.original, stop).await {
        Ok(outcome) => outcome,
        Err(e) => {
            let _ = marks.release(p, o).await;
            return unfinished(e.to_string());
        }
    };
    let (mut tally, mut line) = tally(&outcome);
    let mark = match &outcome {
        Outcome::DeadLettered(letter) => {
            let lineage = Redrive {
                count: record.redrive.as_ref().map_or(0, |r| r.count) + 1,
                previous: Position {
                    topic: writer.topic.clone(),
                    partition: p,
                    offset: o,
                },
                previous_reason: record.reason.clone(),
            };
            let written = writer
                .write_at(
                    letter,
                    record.source.clone(),
                    &entry.original,
                    Some(lineage),
                )
                .await;
            match written {
                Ok((np, no)) => {
                    tally = Tally::DeadLettered {
                        reason: letter.reason.kind().to_owned(),
                        written: true,
                    };
                    line.push_str(&format!(" -> written back at {np}:{no}"));
                    format!("dead_lettered:{}:{np}:{no}", letter.reason.kind())
                }
                Err(e) => {
                    let _ = marks.release(p, o).await;
                    return unfinished(e.to_string());
                }
            }
        }
        Outcome::Replied { sent, .. } if *sent > 0 => "replied".into(),
        Outcome::Replied { .. } => "already_sent".into(),
        Outcome::Skipped(_) => "skipped".into(),
    };
    // The outcome is final; a lost mark only means a later run processes it again harmlessly.
    if let Err(e) = marks.finish(p, o, &mark).await {
        line.push_str(&format!(" (redrive mark not written: {e})"));
    }
    (tally, line)
}

#[allow(clippy::too_many_arguments)]
async fn dry_run(
    settings: &Settings,
    args: &RedriveArgs,
    marks: &Marks,
    ledger: &Ledger,
    reader: &mut RangeReader,
    summary: &mut Summary,
    progress: &mut Progress,
    out: &mut dyn Write,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let rules = crate::rules::load_file(&settings.rules.path, &rules_context(settings))?;
    let explainer = Explainer::new(settings, &rules)?;
    summary.replies_in_ledger = Some(0);
    loop {
        progress.tick(summary);
        let Some(raw) = reader.next_or_cancelled(cancel).await? else {
            break;
        };
        summary.read += 1;
        let Some(entry) = select(args, &raw, summary) else {
            continue;
        };
        summary.selected += 1;
        let r = &entry.record;
        if let Some(mark) = marks.status(&[(entry.partition, entry.offset)]).await?[0].take() {
            summary.add(&Tally::AlreadyRedriven);
            writeln!(
                out,
                "== dlq {}: {}",
                entry.position(),
                describe(Some(&mark))
            )?;
            continue;
        }
        writeln!(
            out,
            "== dlq {}: reason={} ({}), would redrive:",
            entry.position(),
            r.reason,
            r.detail
        )?;
        let s = &r.source;
        let label = format!("{}/{}@{}", s.topic, s.partition, s.offset);
        explainer.record(&label, &entry.original, out)?;
        let keys = count_plan(settings, &rules, &entry.original, summary);
        check_ledger(Some(ledger), &keys, summary, out).await?;
    }
    Ok(())
}
