//! The operator's tools: every `consumer` subcommand but `run` — `setup`, `explain`, `replay`,
//! `dlq list|show|redrive` and `quota status|resume`. The runtime (the group loop and everything
//! it calls) lives outside this folder and never depends on it; the tools are built on the
//! runtime's parts, so what they do is what the live consumer does:
//! [`crate::processor::Processor::process`] and the rules for every record, the send ledger for
//! at-most-once replies, the dead-letter record format ([`crate::dead_letter`]) and writer, the
//! group's per-user [`crate::pipeline::dispatch`] for concurrency.
//!
//! Adding a command: a module here with its arguments (a clap `Args` struct) and its `run`, a
//! variant of [`Command`] and its arm in [`Command::run`]. Arguments several commands share are
//! in [`args`]; `replay` and `dlq redrive` share their skeleton in [`rerun`].
//!
//! Two promises hold for every command that reads a topic:
//! - **The live consumer group is not disturbed.** They read with `assign` and a throwaway group
//!   id, never subscribe and never commit ([`range`]).
//! - **No reply goes out twice.** Every reply passes the send ledger, whatever is re-driven and
//!   however often; the reply window still applies (records older than 48 h mostly cannot be
//!   answered, and the summaries say so).
//!
//! `consumer/OPERATIONS.md` says which incident calls for which command.

pub mod args;
pub mod dlq;
pub mod explain;
pub(crate) mod marks;
pub mod quota;
pub mod range;
pub mod redrive;
pub mod replay;
pub(crate) mod rerun;
pub mod setup;
pub mod summary;
pub mod timespec;

use std::io::Write;

use clap::Subcommand;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::store::Store;
use dlq::{DlqArgs, DlqCommand};
use explain::ExplainArgs;
use replay::{ReplayArgs, REPLAY_ABOUT};

/// The operator commands (flattened into `consumer`'s own subcommands by [`crate::cli`]).
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the inbound, dead-letter, hand-off and per-app hold topics (idempotent); exits 1 when an
    /// existing topic differs from the configuration, printing each difference and its fix.
    Setup(setup::SetupArgs),
    /// Dry run: show which rules match recorded records and the requests they would make.
    Explain(ExplainArgs),
    /// Re-drive inbound records from Kafka (by time or offsets, filtered) through the current
    /// rules; --dry-run to only show what would be sent.
    #[command(long_about = REPLAY_ABOUT)]
    Replay(ReplayArgs),
    /// Inspect the dead-letter topic and redrive dead letters once their cause is fixed.
    Dlq(DlqArgs),
    /// The daily API quota pause of each app (errcode 45009): status, or resume an app early.
    Quota(quota::QuotaArgs),
}

impl Command {
    /// Whether the command's report is stdout, so logs must go to stderr and stay quiet.
    pub fn reports_on_stdout(&self) -> bool {
        matches!(
            self,
            Command::Replay(_) | Command::Dlq(_) | Command::Quota(_)
        )
    }

    /// Runs the command to its process exit code: 0 done, 1 records left unfinished (a re-drive
    /// cut short; running it again is safe), 2 for a usage or configuration error.
    pub async fn run(self, settings: &Settings) -> anyhow::Result<i32> {
        let mut out = std::io::stdout();
        match self {
            Command::Setup(args) => {
                let report = setup::create_all_topics(settings).await?;
                print!("{}", report.render());
                // A difference is not fixed here (see `setup`): it fails the run unless the
                // operator asked only to be warned.
                Ok(i32::from(report.differs() && !args.warn_only))
            }
            Command::Explain(args) => explain::command(settings, &args),
            Command::Replay(args) => {
                let summary = replay::run(settings, &args, &mut out, interruptible()).await?;
                Ok(i32::from(summary.unfinished > 0))
            }
            Command::Quota(args) => quota::command(settings, &args, &mut out).await,
            Command::Dlq(args) => match &args.command {
                DlqCommand::List(list) => dlq::list(settings, list, &mut out).await.map(|_| 0),
                DlqCommand::Show(show) => dlq::show(settings, show, &mut out).await.map(|_| 0),
                DlqCommand::Redrive(redrive) => {
                    let summary =
                        redrive::run(settings, redrive, &mut out, interruptible()).await?;
                    Ok(i32::from(summary.unfinished > 0))
                }
            },
        }
    }
}

/// A librdkafka group id for a reader that never joins or commits (see [`range`]); unique per
/// run, so it can never share anything with the live group or another run.
pub(crate) fn throwaway_group(settings: &Settings, purpose: &str) -> String {
    format!(
        "{}-{purpose}-{}",
        settings.kafka.group_id,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Redis, if it answers. Read-only commands (dry runs, `dlq list/show`) use it to say more and
/// work without it: a Redis outage is when one most needs to look.
pub(crate) async fn optional_store(
    settings: &Settings,
    missing: &str,
    out: &mut dyn Write,
) -> Option<Store> {
    let r = &settings.redis;
    match Store::connect(r).await {
        Ok(store) => Some(store),
        Err(e) => {
            let _ = writeln!(out, "note: Redis unreachable ({e}); {missing}");
            None
        }
    }
}

/// A token cancelled by Ctrl-C or SIGTERM: the run stops taking records, lets the running ones
/// finish, and prints its summary.
fn interruptible() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        eprintln!("interrupted: finishing the records in progress");
        cancel.cancel();
    });
    token
}
