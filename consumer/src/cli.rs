//! The command line: `consumer [run]` joins the group and processes records; every other
//! subcommand is an operator tool ([`crate::operator::Command`], flattened in here so that
//! adding one never touches this file or `main.rs`).

use clap::{Parser, Subcommand};

use crate::operator;

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

// Parsed once per process, so the size of the operator variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join the consumer group and process records until SIGTERM (the default).
    Run,
    #[command(flatten)]
    Operator(operator::Command),
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};
    use common::envelope::EnvelopeV1;

    use super::*;
    use crate::operator::args::FilterArgs;
    use crate::operator::dlq::{DlqArgs, DlqCommand};
    use crate::operator::range::{End, RangeSpec, Start};
    use crate::operator::Command as Operator;

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
        let Ok(Some(Command::Operator(Operator::Replay(args)))) = parse(&[
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
        let Ok(Some(Command::Operator(Operator::Replay(args)))) =
            parse(&["replay", "--since", "2h", "--until", "1h"])
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
        let Ok(Some(Command::Operator(Operator::Dlq(DlqArgs {
            command: DlqCommand::Show(show),
        })))) = parse(&["dlq", "show", "2:41"])
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
