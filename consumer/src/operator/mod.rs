//! Operator commands: `consumer replay` and `consumer dlq list|show|redrive`.
//!
//! They are built from the consumer's own parts, so what they do is what the live consumer does:
//! [`crate::processor::Processor::process`] and the rules for every record, the send ledger for
//! at-most-once replies, the dead-letter record format ([`crate::dead_letter`]) and writer,
//! `consumer explain`'s printer for dry runs, the group's per-user [`crate::pipeline::dispatch`]
//! for concurrency.
//!
//! Two promises hold for all of them:
//! - **The live consumer group is not disturbed.** They read with `assign` and a throwaway group
//!   id, never subscribe and never commit ([`range`]).
//! - **No reply goes out twice.** Every reply passes the send ledger, whatever is re-driven and
//!   however often; the reply window still applies (records older than 48 h mostly cannot be
//!   answered, and the summaries say so).
//!
//! `consumer/OPERATIONS.md` says which incident calls for which command.

pub mod args;
pub mod dlq;
pub mod engine;
pub mod marks;
pub mod range;
pub mod redrive;
pub mod replay;
pub mod summary;
pub mod timespec;

use std::io::Write;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::store::Store;
use args::{DlqArgs, DlqCommand, ReplayArgs};

/// A librdkafka group id for a reader that never joins or commits (see [`range`]); unique per
/// run, so it can never share anything with the live group or another run.
pub fn throwaway_group(settings: &Settings, purpose: &str) -> String {
    format!(
        "{}-{purpose}-{}",
        settings.kafka.group_id,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Redis, if it answers. Read-only commands (dry runs, `dlq list/show`) use it to say more and
/// work without it: a Redis outage is when one most needs to look.
pub async fn optional_store(
    settings: &Settings,
    missing: &str,
    out: &mut dyn Write,
) -> Option<Store> {
    let r = &settings.redis;
    match Store::connect(&r.url, &r.key_prefix, r.command_timeout).await {
        Ok(store) => Some(store),
        Err(e) => {
            let _ = writeln!(out, "note: Redis unreachable ({e}); {missing}");
            None
        }
    }
}

/// A token cancelled by Ctrl-C or SIGTERM: the run stops taking records, lets the running ones
/// finish, and prints its summary.
pub fn interruptible() -> CancellationToken {
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

/// `consumer replay` from `main`: the process exit code (0 done, 1 records left unfinished).
pub async fn replay_command(settings: &Settings, args: &ReplayArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout();
    let summary = replay::run(settings, args, &mut out, interruptible()).await?;
    Ok(i32::from(summary.unfinished > 0))
}

/// `consumer dlq …` from `main`: the process exit code.
pub async fn dlq_command(settings: &Settings, args: &DlqArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout();
    match &args.command {
        DlqCommand::List(list) => dlq::list(settings, list, &mut out).await.map(|_| 0),
        DlqCommand::Show(show) => dlq::show(settings, show, &mut out).await.map(|_| 0),
        DlqCommand::Redrive(redrive) => {
            let summary = redrive::run(settings, redrive, &mut out, interruptible()).await?;
            Ok(i32::from(summary.unfinished > 0))
        }
    }
}
