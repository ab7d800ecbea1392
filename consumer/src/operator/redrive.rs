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

use clap::Args;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::args::{RangeArgs, RunArgs};
use super::dlq::{DlqFilterArgs, Entry};
use super::marks::{describe, Marks};
use super::rerun::{tally, Driver, Handle, Job, Preview, Rerun, Select};
use super::summary::{Summary, Tally};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::dead_letter::{DeadLetterWriter, Position, Reason, Redrive};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::processor::Outcome;
use crate::record::KafkaRecord;
use crate::startup::Services;

#[derive(Debug, Clone, Args)]
pub struct RedriveArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// Also redrive `ambiguous` dead letters: replies whose send timed out or was interrupted,
    /// which WeChat may or may not have delivered. Their ledger entry is cleared and the reply
    /// sent again, so a user who did receive it gets it TWICE. Check first (e.g. with the
    /// business, or WeChat's message log) that they did not arrive.
    #[arg(long)]
    pub include_ambiguous: bool,
}

/// The long help of `consumer dlq redrive`.
pub const REDRIVE_ABOUT: &str = "\
Send a selection of dead letters through processing again, after fixing their cause (a rotated \
AppSecret, an API outage, a rules file, a missing app).

Each selected dead letter's original record runs through the current rules exactly as the live \
consumer would run it. Replies already delivered are never sent again: the send ledger answers \
`already sent` for them. A record that succeeds is replied; one that fails again is written back \
to the dead-letter topic with its new reason, a redrive count and a pointer to the dead letter it \
replaces. Nothing is lost either way.

What was redriven is remembered per dead letter in Redis (`{prefix}redrive:{topic}:{partition}:\
{offset}`, kept 30 days), written once the outcome is final. Running the same redrive twice skips \
what the first run finished and picks up what it did not; the newer dead letters a redrive \
writes are picked up by the next one. The ledger is the guarantee against double replies; the \
marks save the work and keep failures from being dead-lettered twice.

`ambiguous` dead letters (the send timed out; the user may have the reply) are held back unless \
--include-ambiguous is given.";

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
    let topic = settings.kafka.dead_letter_topic.clone();
    let mut rerun = Rerun::open(
        settings,
        "redrive",
        &topic,
        "dead letters",
        &args.range,
        &args.run,
        out,
    )
    .await?;
    let metrics = Metrics::unregistered();
    // Live or not, the marks say what was redriven before, so Redis is needed either way.
    let services = Services::build(&rerun.settings, &metrics).await?;
    let marks = Marks::new(services.store.clone(), &topic);
    if args.run.dry_run {
        let ledger = services.processor.actions.ledger.clone();
        let result = dry_run(args, &marks, ledger, &mut rerun, out, &cancel).await;
        return rerun.finish(result, out);
    }
    let driver = Arc::new(Driver::new(&rerun.settings, services.processor));
    let writer = rerun.dead_letter_writer(services.dead_letters);
    let include_ambiguous = args.include_ambiguous;
    let handle: Handle<Entry> = Arc::new(move |entry: Entry, stop| {
        let (driver, marks, writer) = (Arc::clone(&driver), marks.clone(), writer.clone());
        async move { redrive(&driver, &marks, &writer, include_ambiguous, entry, &stop).await }
            .boxed()
    });
    let mut choose = |raw: KafkaRecord, summary: &mut Summary| {
        select(args, &raw, summary).map(|entry| Job {
            key: raw.ordering_key(),
            label: format!("dlq {}", entry.position()),
            item: entry,
        })
    };
    let select_fn: &mut Select<'_, Entry> = &mut choose;
    let result = rerun
        .live(
            select_fn,
            handle,
            args.run.concurrency,
            &metrics,
            out,
            &cancel,
        )
        .await;
    rerun.finish(result, out)
}

/// The dead letter in `raw` if the filters select it; counts what it leaves out.
fn select(args: &RedriveArgs, raw: &KafkaRecord, summary: &mut Summary) -> Option<Entry> {
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
            // The reply's key under the current rules (its stable action id), and the key it had
            // before action ids were stable; whichever holds the ambiguous entry is cleared.
            let rules = driver.processor.rules.current();
            let planned = crate::actions::plan(env, &rules.evaluate(env));
            let mut keys = vec![format!("{}:{rule}:{index}", env.dedup_key.as_str())];
            keys.extend(
                planned
                    .into_iter()
                    .filter(|a| &a.rule == rule && a.index == index)
                    .map(|a| a.idempotency_key),
            );
            for key in keys {
                if let Err(e) = driver.processor.actions.ledger.clear_ambiguous(&key).await {
                    let _ = marks.release(p, o).await;
                    return unfinished(e.to_string());
                }
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
        Outcome::Parked => "parked".into(),
    };
    // The outcome is final; a lost mark only means a later run processes it again harmlessly.
    if let Err(e) = marks.finish(p, o, &mark).await {
        line.push_str(&format!(" (redrive mark not written: {e})"));
    }
    (tally, line)
}

async fn dry_run(
    args: &RedriveArgs,
    marks: &Marks,
    ledger: Ledger,
    rerun: &mut Rerun,
    out: &mut dyn Write,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let settings = rerun.settings.clone();
    let rules = rerun.rules()?;
    let preview = Preview::new(&settings, &rules, Some(ledger), &mut rerun.summary)?;
    while let Some(raw) = rerun.next(cancel).await? {
        let Some(entry) = select(args, &raw, &mut rerun.summary) else {
            continue;
        };
        rerun.summary.selected += 1;
        let r = &entry.record;
        if let Some(mark) = marks.status(&[(entry.partition, entry.offset)]).await?[0].take() {
            rerun.summary.add(&Tally::AlreadyRedriven);
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
        preview
            .show(&label, &entry.original, &mut rerun.summary, out)
            .await?;
    }
    Ok(())
}
