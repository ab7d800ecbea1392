//! `consumer replay` on the real Kafka and Redis: a dry run sends and writes nothing; a live
//! replay of answered records sends nothing new and leaves the live group's offsets alone; a
//! replay with fixed rules answers what the old rules missed, once; old records meet a closed
//! window and the summary says why.

use std::time::Duration;

use clap::Parser;
use consumer::cli::{Cli, Command};
use consumer::operator::dlq::DlqCommand;
use consumer::operator::redrive::RedriveArgs;
use consumer::operator::replay::ReplayArgs;
use consumer::operator::summary::Summary;
use consumer::operator::Command as Operator;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::any;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

const RULES: &str = r#"
[[rule]]
name = "welcome"
[rule.when]
event = "user_enter_tempsession"
[[rule.actions]]
type = "typing"
[[rule.actions]]
type = "text"
content = "Welcome ({session_from})"

[default]
[[default.actions]]
type = "text"
content = "You said {content}"
"#;

const ECHO: &str =
    "[[rule]]\nname = \"echo\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"{content}\"\n";

/// The arguments of `consumer replay ARGS…`, parsed by the real command line.
pub fn replay_args(args: &[&str]) -> ReplayArgs {
    let argv = ["consumer", "replay", "--progress", "0"].iter().chain(args);
    match Cli::try_parse_from(argv).expect("valid arguments").command {
        Some(Command::Operator(Operator::Replay(args))) => args,
        other => panic!("not a replay: {other:?}"),
    }
}

/// The arguments of `consumer dlq redrive ARGS…`.
pub fn redrive_args(args: &[&str]) -> RedriveArgs {
    let argv = ["consumer", "dlq", "redrive", "--progress", "0"]
        .iter()
        .chain(args);
    match Cli::try_parse_from(argv).expect("valid arguments").command {
        Some(Command::Operator(Operator::Dlq(dlq))) => match dlq.command {
            DlqCommand::Redrive(args) => args,
            other => panic!("not a redrive: {other:?}"),
        },
        other => panic!("not dlq: {other:?}"),
    }
}

pub async fn replay(h: &Harness, args: &[&str]) -> (Summary, String) {
    let mut out = Vec::new();
    let summary = consumer::operator::replay::run(
        &h.settings,
        &replay_args(args),
        &mut out,
        CancellationToken::new(),
    )
    .await
    .expect("replay runs");
    (summary, String::from_utf8(out).expect("utf8"))
}

pub async fn nothing_may_be_called(h: &Harness) {
    Mock::given(any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&h.wechat)
        .await;
}

/// Every offset of the inbound topic committed by the live group.
/// Runs the live consumer until it committed `records` offsets, then stops it.
pub async fn consume(h: &Harness, records: i64) {
    let app = spawn_app(h).await;
    assert!(
        eventually(Duration::from_secs(40), || async {
            total_committed(h).await == records
        })
        .await,
        "the live consumer finished and committed {records} records"
    );
    app.stop().await;
}

async fn redis_keys(h: &Harness) -> Vec<String> {
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    redis::cmd("KEYS")
        .arg(format!("{}*", h.settings.redis.key_prefix))
        .query_async(&mut conn)
        .await
        .expect("keys")
}

#[tokio::test]
async fn a_dry_run_prints_the_exact_requests_and_sends_nothing() {
    let mut h = Harness::new(RULES).await;
    // One partition, so offsets below name known records.
    h.settings.kafka.topics.inbound_partitions = 1;
    h.create_topics().await;
    nothing_may_be_called(&h).await;
    let inbound = &h.settings.kafka.inbound_topic;
    let envs = [
        text("o-1", "1", "hello"),
        text("o-2", "2", "price?"),
        enter("o-1", "vip"),
    ];
    produce_envelopes(inbound, &envs).await;
    produce(inbound, &[("demo:o-bad".into(), b"\x00not json".to_vec())]).await;

    let (summary, out) = replay(&h, &["--since", "1h", "--dry-run"]).await;

    assert_eq!(
        (summary.read, summary.selected, summary.unreadable),
        (4, 3, 1),
        "{out}"
    );
    assert_eq!(summary.planned_replies, 3, "{out}");
    assert_eq!(summary.replies_in_ledger, Some(0), "{out}");
    let base = h.wechat.uri();
    assert!(
        out.contains(&format!(
            "[default #1] POST {base}/cgi-bin/message/custom/send?access_token=ACCESS_TOKEN"
        )),
        "{out}"
    );
    for body in [
        r#"{"touser":"o-1","msgtype":"text","text":{"content":"You said hello"}}"#,
        r#"{"touser":"o-2","msgtype":"text","text":{"content":"You said price?"}}"#,
        r#"{"touser":"o-1","msgtype":"text","text":{"content":"Welcome (vip)"}}"#,
    ] {
        assert!(out.contains(body), "{body} missing from:\n{out}");
    }
    assert!(
        out.contains("dry run: nothing sent, nothing written"),
        "{out}"
    );

    let (summary, out) = replay(
        &h,
        &[
            "--since",
            "1h",
            "--dry-run",
            "--openid",
            "o-1",
            "--msg-type",
            "text",
        ],
    )
    .await;
    assert_eq!((summary.read, summary.selected), (4, 1), "{out}");
    assert!(!out.contains("o-2") && !out.contains("Welcome"), "{out}");

    let (summary, out) = replay(
        &h,
        &[
            "--partition",
            "0",
            "--from-offset",
            "1",
            "--to-offset",
            "3",
            "--dry-run",
        ],
    )
    .await;
    assert_eq!((summary.read, summary.selected), (2, 2), "{out}");
    let topic = &h.settings.kafka.inbound_topic;
    for (offset, read) in [(0, false), (1, true), (2, true), (3, false)] {
        assert_eq!(out.contains(&format!("{topic}/0@{offset}:")), read, "{out}");
    }
    let (before, out) = replay(&h, &["--since", "2h", "--until", "1h", "--dry-run"]).await;
    assert_eq!(before.read, 0, "nothing was stored an hour ago\n{out}");
    let future = "2999-01-01T00:00:00+08:00";
    let (after, out) = replay(&h, &["--since", future, "--dry-run"]).await;
    assert_eq!(after.read, 0, "{out}");

    assert!(
        redis_keys(&h).await.is_empty(),
        "a dry run touches no ledger, window or token"
    );
    assert!(
        read_topic(
            &h.settings.kafka.dead_letter_topic,
            1,
            1,
            Duration::from_secs(2)
        )
        .await
        .is_empty(),
        "a dry run writes no dead letter"
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_live_replay_of_answered_records_sends_nothing_new_and_leaves_the_group_alone() {
    let h = Harness::new(ECHO).await;
    h.create_topics().await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 3).await;
    let envs = [
        text("o-1", "1", "one"),
        text("o-2", "2", "two"),
        text("o-3", "3", "three"),
    ];
    produce_envelopes(&h.settings.kafka.inbound_topic, &envs).await;
    consume(&h, 3).await;
    let partitions = h.settings.kafka.topics.inbound_partitions;
    let group_before = committed(
        &h.settings.kafka.group_id,
        &h.settings.kafka.inbound_topic,
        partitions,
    )
    .await;

    let (dry, out) = replay(&h, &["--since", "1h", "--dry-run"]).await;
    assert_eq!(
        (dry.replies_planned, dry.replies_in_ledger),
        (3, Some(3)),
        "a dry run reads the ledger: nothing would go out\n{out}"
    );
    assert_eq!(
        out.matches("sent before: will not be sent again").count(),
        3,
        "{out}"
    );

    let (summary, out) = replay(&h, &["--since", "1h"]).await;

    assert_eq!(summary.selected, 3, "{out}");
    assert_eq!(summary.already_sent, 3, "{out}");
    assert_eq!((summary.replied, summary.replies_sent), (0, 0), "{out}");
    assert!(summary.dead_lettered.is_empty(), "{out}");
    assert_eq!(
        committed(
            &h.settings.kafka.group_id,
            &h.settings.kafka.inbound_topic,
            partitions
        )
        .await,
        group_before,
        "the live group's committed offsets are unchanged"
    );
    assert!(
        summary
            .group
            .starts_with(&format!("{}-replay-", h.settings.kafka.group_id)),
        "{}",
        summary.group
    );
    assert!(
        committed(&summary.group, &h.settings.kafka.inbound_topic, partitions)
            .await
            .iter()
            .all(|o| *o == -1001),
        "the replay's own group committed nothing"
    );
    assert_eq!(received(&h.wechat, SEND).await.len(), 3, "no reply twice");
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_replay_with_fixed_rules_answers_what_the_old_rules_missed_exactly_once() {
    // The deployed rules answer only "hi": the two questions below are skipped (no match).
    let h = Harness::new(
        "[[rule]]\nname = \"hi\"\n[rule.when]\ntext = \"hi\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"hello\"\n",
    )
    .await;
    h.create_topics().await;
    h.mount_token().await;
    let envs = [text("o-1", "1", "price?"), text("o-2", "2", "hours?")];
    produce_envelopes(&h.settings.kafka.inbound_topic, &envs).await;
    nothing_may_be_called(&h).await;
    consume(&h, 2).await;
    h.wechat.verify().await;
    h.wechat.reset().await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 2).await;
    let fixed = h.dir.join("fixed.toml");
    std::fs::write(&fixed, ECHO).expect("fixed rules");
    let fixed = fixed.to_str().expect("utf8 path");

    let (first, out) = replay(&h, &["--since", "1h", "--rules", fixed]).await;
    let (second, again) = replay(&h, &["--since", "1h", "--rules", fixed]).await;

    assert_eq!((first.replied, first.replies_sent), (2, 2), "{out}");
    assert!(
        out.contains("replied (1 sent, 0 already sent before)"),
        "{out}"
    );
    assert_eq!(
        (second.already_sent, second.replies_sent),
        (2, 0),
        "{again}"
    );
    let contents: Vec<_> = received(&h.wechat, SEND)
        .await
        .iter()
        .map(|s| s["text"]["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(contents.len(), 2);
    assert!(contents.contains(&"price?".to_owned()) && contents.contains(&"hours?".to_owned()));
    h.wechat.verify().await;
}

#[tokio::test]
async fn old_records_meet_a_closed_window_and_the_summary_says_it_is_expected() {
    let h = Harness::new(ECHO).await;
    h.create_topics().await;
    h.mount_token().await;
    nothing_may_be_called(&h).await;
    let three_days_ago = now() - 3 * 24 * 3600;
    let envs = [
        text_at("o-old", "1", "anyone?", three_days_ago),
        text_at("o-old2", "2", "hello?", three_days_ago),
    ];
    produce_envelopes(&h.settings.kafka.inbound_topic, &envs).await;

    let (quiet, out) = replay(&h, &["--since", "1h", "--no-dead-letters"]).await;
    assert_eq!(quiet.dead_lettered.get("window_closed"), Some(&2), "{out}");
    assert_eq!(
        (quiet.dead_letters_written, quiet.older_than_window),
        (0, 2),
        "{out}"
    );
    assert!(out.contains("older than 48 h"), "{out}");
    assert!(out.contains("That is expected"), "{out}");

    let (written, out) = replay(&h, &["--since", "1h"]).await;
    assert_eq!(written.dead_letters_written, 2, "{out}");
    let letters = read_topic(
        &h.settings.kafka.dead_letter_topic,
        1,
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(letters.len(), 2, "written, and only by the second replay");
    h.wechat.verify().await;
}
