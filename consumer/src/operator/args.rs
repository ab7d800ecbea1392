//! The command-line arguments of `consumer replay` and `consumer dlq …`, and the filters they
//! share. The `--help` texts are the operator's first documentation; `consumer/OPERATIONS.md`
//! says which command answers which incident.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Subcommand};
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

/// `consumer dlq`.
#[derive(Debug, Clone, Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List dead letters with their reasons and whether they were redriven; counts by reason.
    List(DlqListArgs),
    /// Show one dead letter in full: reason, detail, errcode, origin, envelope and payload.
    Show(DlqShowArgs),
    /// Send a selection of dead letters through processing again, after fixing their cause.
    #[command(long_about = REDRIVE_ABOUT)]
    Redrive(RedriveArgs),
}

/// Which dead letters.
#[derive(Debug, Clone, Default, Args)]
pub struct DlqFilterArgs {
    /// Only this reason (repeatable): token_unavailable, retries_exhausted, window_closed, ...
    #[arg(long, value_name = "REASON")]
    pub reason: Vec<String>,
    /// Only dead letters of this app (repeatable).
    #[arg(long, value_name = "APP")]
    pub app: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DlqListArgs {
    #[command(flatten)]
    pub range: RangeArgs,
    #[command(flatten)]
    pub filter: DlqFilterArgs,
    /// Only dead letters not redriven yet.
    #[arg(long)]
    pub open: bool,
    /// Only the counts by reason, no line per dead letter.
    #[arg(long)]
    pub counts: bool,
}

#[derive(Debug, Clone, Args)]
pub struct DlqShowArgs {
    /// The dead letter's place in the dead-letter topic, as `dlq list` prints it.
    #[arg(value_name = "PARTITION:OFFSET", value_parser = parse_position)]
    pub position: (i32, i64),
}

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

fn parse_position(s: &str) -> Result<(i32, i64), String> {
    let (p, o) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not PARTITION:OFFSET"))?;
    let p = p.parse().map_err(|_| format!("bad partition `{p}`"))?;
    let o = o.parse().map_err(|_| format!("bad offset `{o}`"))?;
    Ok((p, o))
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<Option<Command>, clap::Error> {
        Cli::try_parse_from(["consumer"].iter().chain(args)).map(|cli| cli.command)
    }

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn replay_needs_a_start_and_offsets_need_a_partition() {
        assert!(
            parse(&["replay"]).is_err(),
            "no range: refuse rather than replay everything"
        );
        assert!(parse(&["replay", "--from-offset", "5"]).is_err());
        assert!(parse(&[
            "replay",
            "--since",
            "2h",
            "--from-offset",
            "5",
            "--partition",
            "0"
        ])
        .is_err());
        let Ok(Some(Command::Replay(args))) = parse(&[
            "replay",
            "--partition",
            "2",
            "--from-offset",
            "5",
            "--to-offset",
            "9",
            "--app",
            "shop",
            "--app",
            "outlet",
            "--dry-run",
        ]) else {
            panic!("a valid replay");
        };
        assert_eq!(args.filter.app, ["shop", "outlet"]);
        assert_eq!(
            args.range.spec(0),
            RangeSpec {
                partition: Some(2),
                start: Start::Offset(5),
                end: End::Offset(9)
            }
        );
        let Ok(Some(Command::Replay(args))) = parse(&["replay", "--since", "2h", "--until", "1h"])
        else {
            panic!("a valid replay");
        };
        assert_eq!(
            args.range.spec(10_000_000).start,
            Start::Time(10_000_000 - 7_200_000)
        );
        assert_eq!(
            args.range.spec(10_000_000).end,
            End::Time(10_000_000 - 3_600_000)
        );
    }

    #[test]
    fn dlq_show_takes_partition_colon_offset() {
        let Ok(Some(Command::Dlq(DlqArgs {
            command: DlqCommand::Show(show),
        }))) = parse(&["dlq", "show", "2:41"])
        else {
            panic!("a valid show");
        };
        assert_eq!(show.position, (2, 41));
        assert!(parse(&["dlq", "show", "41"]).is_err());
        assert!(parse(&["dlq", "show", "a:1"]).is_err());
    }

    #[test]
    fn filters_combine_options_and_accept_any_value_of_one() {
        let env: EnvelopeV1 = serde_json::from_value(serde_json::json!({
            "app": "shop", "appid": "wx1", "dedup_key": "shop:msg:1", "dedup": "checked",
            "received_at_ms": 0, "format": "json", "mode": "safe", "payload": "{}",
            "message": {"to_user_name": "gh", "from_user_name": "o-1", "create_time": 0,
                        "body": {"kind": "text", "msg_id": "1", "content": "hi"}}
        }))
        .expect("envelope");
        let filter = |app: &[&str], msg_type: &[&str], event: &[&str]| FilterArgs {
            app: app.iter().map(|s| s.to_string()).collect(),
            openid: Vec::new(),
            msg_type: msg_type.iter().map(|s| s.to_string()).collect(),
            event: event.iter().map(|s| s.to_string()).collect(),
        };
        assert!(filter(&[], &[], &[]).matches(&env));
        assert!(filter(&["outlet", "shop"], &["text"], &[]).matches(&env));
        assert!(!filter(&["shop"], &["image"], &[]).matches(&env));
        assert!(
            !filter(&[], &[], &["user_enter_tempsession"]).matches(&env),
            "a text has no event"
        );
    }
}
