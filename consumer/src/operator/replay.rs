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

use clap::{ArgGroup, Args};

use common::envelope::Envelope;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;

use super::args::{FilterArgs, RangeArgs, RunArgs};
use super::rerun::{tally, Driver, Handle, Job, Preview, Rerun, Select};
use super::summary::{Summary, Tally};
use crate::clock::now_ms;
use crate::config::Settings;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::processor::Outcome;
use crate::record::KafkaRecord;
use crate::startup::Services;

/// `consumer replay`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("start").required(true).args(["since", "from_offset"])))]
pub struct ReplayArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    #[command(flatten)]
    pub filter: FilterArgs,
    #[command(flatten)]
    pub run: RunArgs,
    /// Count the replay's dead letters in the summary without writing them to the dead-letter
    /// topic (for old traffic, where most replies meet a closed window).
    #[arg(long)]
    pub no_dead_letters: bool,
}

/// The long help of `consumer replay`.
pub const REPLAY_ABOUT: &str = "\
Re-drive inbound records from Kafka through the current rules: by time (--since/--until) or by \
offsets (--partition, --from-offset, --to-offset), filtered by app, openid, message type and \
event. For records handled wrongly or not at all: a rules file that missed them, an app that was \
not configured yet, an outage.

--dry-run prints every selected record's decision and the exact requests it would make (method, \
URL, JSON body), as `consumer explain` does, and sends, publishes and writes nothing.

Live, every record runs through the same processing as the live consumer. Replies already sent \
are never sent again (the send ledger answers `already sent`), so replaying answered records is \
harmless. The reply window still applies: WeChat accepts replies only within 48 h of the user's \
last message, so replaying older records mostly ends in `window_closed` dead letters, which is \
correct (the summary counts them). Dead letters are written to the dead-letter topic unless \
--no-dead-letters. Typing indicators are not sent by replays.

The live consumer group is not disturbed: the replay reads with its own throwaway group id, by \
assignment (no group membership, no rebalance) and never commits an offset.

Progress goes to stderr; the summary (records read, selected, replied, already sent, skipped, \
dead-lettered by reason, not finished) to stdout. Exit code 1 if records were left unfinished \
(a transient failure such as Redis being down, or Ctrl-C); running the same command again is \
safe.";

/// Replays the records `args` selects, writing decisions or outcomes and the summary to `out`.
pub async fn run(
    settings: &Settings,
    args: &ReplayArgs,
    out: &mut (dyn Write + Send),
    cancel: CancellationToken,
) -> anyhow::Result<Summary> {
    let topic = settings.kafka.inbound_topic.clone();
    let mut rerun = Rerun::open(
        settings,
        "replay",
        &topic,
        "records",
        &args.range,
        &args.run,
        out,
    )
    .await?;
    let result = if args.run.dry_run {
        dry_run(args, &mut rerun, out, &cancel).await
    } else {
        live(args, &mut rerun, out, &cancel).await
    };
    rerun.finish(result, out)
}

/// The envelope of `record` if it passes the filters; counts what it leaves out.
fn select(args: &ReplayArgs, record: &KafkaRecord, summary: &mut Summary, now: i64) -> bool {
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
    args: &ReplayArgs,
    rerun: &mut Rerun,
    out: &mut dyn Write,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let settings = rerun.settings.clone();
    let rules = rerun.rules()?;
    let ledger = super::optional_store(&settings, "the send ledger is not consulted", out)
        .await
        .map(|store| Ledger::new(store, &settings.ledger));
    let preview = Preview::new(&settings, &rules, ledger, &mut rerun.summary)?;
    let now = now_ms();
    while let Some(record) = rerun.next(cancel).await? {
        if !select(args, &record, &mut rerun.summary, now) {
            continue;
        }
        rerun.summary.selected += 1;
        preview
            .show(&record.label(), &record.value, &mut rerun.summary, out)
            .await?;
    }
    Ok(())
}

async fn live(
    args: &ReplayArgs,
    rerun: &mut Rerun,
    out: &mut dyn Write,
    cancel: &CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Metrics::unregistered();
    let services = Services::build(&rerun.settings, &metrics).await?;
    let driver = Arc::new(Driver::new(&rerun.settings, services.processor));
    let dead_letters =
        (!args.no_dead_letters).then(|| rerun.dead_letter_writer(services.dead_letters));
    let handle: Handle<KafkaRecord> = Arc::new(move |record: KafkaRecord, stop| {
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
                    .write_at(letter, (&record).into(), &record.value, None)
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
    let mut choose = |record: KafkaRecord, summary: &mut Summary| {
        select(args, &record, summary, now).then(|| Job {
            key: record.ordering_key(),
            label: record.label(),
            item: record,
        })
    };
    let select_fn: &mut Select<'_, KafkaRecord> = &mut choose;
    rerun
        .live(
            select_fn,
            handle,
            args.run.concurrency,
            &metrics,
            out,
            cancel,
        )
        .await
}
