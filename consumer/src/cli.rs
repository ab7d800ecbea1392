//! The command line: `consumer [run]`, `consumer setup`, `consumer explain`, and the operator
//! commands `consumer replay` and `consumer dlq list|show|redrive` (arguments in
//! [`crate::operator::args`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::explain::Source;
use crate::operator::args::{DlqArgs, ReplayArgs, REPLAY_ABOUT};

#[derive(Debug, Parser)]
#[command(
    name = "consumer",
    version,
    about = "Routes inbound WeChat customer-service records through rules and sends the replies."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join the consumer group and process records until SIGTERM (the default).
    Run,
    /// Create the inbound, dead-letter and hand-off topics (idempotent).
    Setup,
    /// Dry run: show which rules match recorded records and the requests they would make.
    Explain(ExplainArgs),
    /// Re-drive inbound records from Kafka (by time or offsets, filtered) through the current
    /// rules; --dry-run to only show what would be sent.
    #[command(long_about = REPLAY_ABOUT)]
    Replay(ReplayArgs),
    /// Inspect the dead-letter topic and redrive dead letters once their cause is fixed.
    Dlq(DlqArgs),
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A JSON-lines file of record values (envelopes), one per line.
    #[arg(long, conflicts_with = "topic")]
    pub file: Option<PathBuf>,
    /// Read records from this topic (defaults to partition 0 from offset 0).
    #[arg(long)]
    pub topic: Option<String>,
    #[arg(long, default_value_t = 0, requires = "topic")]
    pub partition: i32,
    /// First offset to read.
    #[arg(long, default_value_t = 0, requires = "topic")]
    pub from: i64,
    /// Offset to stop before (default: the end of the partition).
    #[arg(long, requires = "topic")]
    pub to: Option<i64>,
    /// A rules file other than the configured one (e.g. a candidate before deploying it).
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

impl ExplainArgs {
    pub fn source(&self) -> Option<Source> {
        match (&self.file, &self.topic) {
            (Some(file), None) => Some(Source::File(file.clone())),
            (None, Some(topic)) => Some(Source::Topic {
                topic: topic.clone(),
                partition: self.partition,
                from: self.from,
                to: self.to,
            }),
            _ => None,
        }
    }
}
