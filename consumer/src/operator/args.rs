//! The command-line arguments several operator commands share: which records of a topic
//! ([`RangeArgs`]), which users and messages ([`FilterArgs`]), and how a live re-drive runs
//! ([`RunArgs`]). Each command's own arguments live in its module; the `--help` texts are the
//! operator's first documentation, and `consumer/OPERATIONS.md` says which command answers which
//! incident.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use common::envelope::EnvelopeV1;

use super::range::{End, RangeSpec, Start};
use super::timespec::TimeSpec;

/// Which records of a topic to read.
#[derive(Debug, Clone, Args)]
pub struct RangeArgs {
    /// From this time: RFC 3339 (2024-05-01T08:00:00+08:00) or an age before now (2h, 90m, 3d).
    /// Times are Kafka record timestamps, resolved per partition with offsets_for_times.
    #[arg(long, value_name = "TIME", conflicts_with = "from_offset")]
    pub since: Option<TimeSpec>,
    /// Up to this time (exclusive), same forms as --since. Default: the end of each partition
    /// when the command starts (records arriving later are not read).
    #[arg(long, value_name = "TIME", conflicts_with = "to_offset")]
    pub until: Option<TimeSpec>,
    /// Only this partition (required with --from-offset / --to-offset).
    #[arg(long, value_name = "N")]
    pub partition: Option<i32>,
    /// First offset to read, in --partition.
    #[arg(long, value_name = "A", requires = "partition")]
    pub from_offset: Option<i64>,
    /// Offset to stop before (exclusive, as in `consumer explain --to`), in --partition.
    #[arg(long, value_name = "B", requires = "partition")]
    pub to_offset: Option<i64>,
}

impl RangeArgs {
    /// The range with relative times resolved against `now_ms`.
    pub fn spec(&self, now_ms: i64) -> RangeSpec {
        let start = match (self.since, self.from_offset) {
            (Some(t), _) => Start::Time(t.resolve(now_ms)),
            (None, Some(o)) => Start::Offset(o),
            (None, None) => Start::Beginning,
        };
        let end = match (self.until, self.to_offset) {
            (Some(t), _) => End::Time(t.resolve(now_ms)),
            (None, Some(o)) => End::Offset(o),
            (None, None) => End::Now,
        };
        RangeSpec {
            partition: self.partition,
            start,
            end,
        }
    }
}

/// Which users and messages; each option may repeat (any of its values), options combine (all).
#[derive(Debug, Clone, Default, Args)]
pub struct FilterArgs {
    /// Only records of this app (the name in [apps.<name>]).
    #[arg(long, value_name = "APP")]
    pub app: Vec<String>,
    /// Only records from this user.
    #[arg(long, value_name = "OPENID")]
    pub openid: Vec<String>,
    /// Only this message type: text, image, miniprogrampage, event, ...
    #[arg(long, value_name = "TYPE")]
    pub msg_type: Vec<String>,
    /// Only this event (implies msg type `event`): user_enter_tempsession, ...
    #[arg(long, value_name = "EVENT")]
    pub event: Vec<String>,
}

impl FilterArgs {
    pub fn is_empty(&self) -> bool {
        self.app.is_empty()
            && self.openid.is_empty()
            && self.msg_type.is_empty()
            && self.event.is_empty()
    }

    pub fn matches(&self, env: &EnvelopeV1) -> bool {
        let any = |wanted: &[String], value: Option<&str>| {
            wanted.is_empty() || value.is_some_and(|v| wanted.iter().any(|w| w == v))
        };
        let msg = &env.message;
        any(&self.app, Some(&env.app))
            && any(&self.openid, Some(msg.from_user_name.as_str()))
            && any(&self.msg_type, Some(msg.msg_type()))
            && any(&self.event, msg.event())
    }
}

/// Settings of a live run.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Print every decision and the exact requests (method, URL, JSON body) without sending,
    /// publishing or writing anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Use this rules file instead of the configured one (e.g. the fixed one, before deploying).
    #[arg(long, value_name = "PATH")]
    pub rules: Option<PathBuf>,
    /// Users processed at the same time; one user's records always run in order.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub concurrency: usize,
    /// How often a progress line goes to stderr (0 for never).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub progress: Duration,
}
