//! `consumer dlq list|show|redrive` on the real Kafka and Redis: after the fake API is healed a
//! redrive sends exactly the missing replies (and a second run nothing); a record that fails
//! again goes back to the dead-letter topic with its new reason and lineage; `ambiguous` dead
//! letters wait for an explicit flag.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser;
use consumer::cli::{Cli, Command};
use consumer::dead_letter::DeadLetterRecord;
use consumer::operator::dlq::{DlqCommand, DlqListArgs, DlqShowArgs};
use consumer::operator::summary::Summary;
use consumer::operator::Command as Operator;
use rdkafka::message::Message as _;
use tokio_util::sync::CancellationToken;
use wiremock::matchers::{body_partial_json, path};
use wiremock::Mock;

use crate::helpers::*;
use crate::replay::{consume, nothing_may_be_called, redrive_args};

/// Two replies per message: a redrive must resume at the one that failed.
const TWO_REPLIES: &str = r#"
[[rule]]
name = "answer"
[[rule.actions]]
type = "text"
content = "first: {content}"
[[rule.actions]]
type = "text"
content = "second: {content}"
"#;

const ECHO: &str =
    "[[rule]]\nname = \"echo\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"{content}\"\n";

async fn redrive(h: &Harness, args: &[&str]) -> (Summary, String) {
    let mut out = Vec::new();
    let summary = consumer::operator::redrive::run(
        &h.settings,
        &redrive_args(args),
        &mut out,
        CancellationToken::new(),
    )
    .await
    .expect("redrive runs");
    (summary, String::from_utf8(out).expect("utf8"))
}

fn dlq(args: &[&str]) -> DlqCommand {
    let argv = ["consumer", "dlq"].iter().chain(args);
    match Cli::try_parse_from(argv).expect("valid arguments").command {
        Some(Command::Operator(Operator::Dlq(dlq))) => dlq.command,
        other => panic!("not dlq: {other:?}"),
    }
}

/// `dlq list`'s output and its counts per reason: (all, open).
async fn list(h: &Harness, args: &[&str]) -> (BTreeMap<String, (u64, u64)>, String) {
    let list: DlqListArgs = match dlq(&[&["list"], args].concat()) {
        DlqCommand::List(list) => list,
        other => panic!("{other:?}"),
    };
    let mut out = Vec::new();
    let counts = consumer::operator::dlq::list(&h.settings, &list, &mut out)
        .await
        .expect("dlq list");
    (counts, String::from_utf8(out).expect("utf8"))
}

async fn show(h: &Harness, position: &str) -> String {
    let show: DlqShowArgs = match dlq(&["show", position]) {
        DlqCommand::Show(show) => show,
        other => panic!("{other:?}"),
    };
    let mut out = Vec::new();
    consumer::operator::dlq::show(&h.settings, &show, &mut out)
        .await
        .expect("dlq show");
    String::from_utf8(out).expect("utf8")
}

async fn dead_letters(h: &Harness, count: usize) -> Vec<(i64, DeadLetterRecord)> {
    read_topic(
        &h.settings.kafka.dead_letter_topic,
        1,
        count,
        Duration::from_secs(15),
    )
    .await
    .iter()
    .map(|m| {
        let record = serde_json::from_slice(m.payload().expect("body")).expect("dead letter");
        (m.offset(), record)
    })
    .collect()
}

#[tokio::test]
async fn after_the_api_is_healed_a_redrive_sends_exactly_the_missing_replies() {
    let h = Harness::new(TWO_REPLIES).await;
    h.create_topics().await;
    h.mount_token().await;
    // An outage that starts between the first and the second reply of every message.
    for q in ["q1", "q2", "q3"] {
        Mock::given(path(SEND))
            .and(body_partial_json(
                serde_json::json!({"text": {"content": format!("first: {q}")}}),
            ))
            .respond_with(ok())
            .mount(&h.wechat)
            .await;
    }
    Mock::given(path(SEND))
        .respond_with(errcode(-1, "system error"))
        .mount(&h.wechat)
        .await;
    let envs = [
        text("o-1", "1", "q1"),
        text("o-2", "2", "q2"),
        text("o-3", "3", "q3"),
    ];
    produce_envelopes(&h.settings.kafka.inbound_topic, &envs).await;
    consume(&h, 3).await;
    assert_eq!(dead_letters(&h, 3).await.len(), 3);
    assert!(
        dead_letters(&h, 3)
            .await
            .iter()
            .all(|(_, d)| d.reason == "retries_exhausted" && d.action_index == Some(1)),
        "each record failed at its second reply"
    );
    h.wechat.reset().await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 3).await;

    let (first, out) = redrive(&h, &["--reason", "retries_exhausted"]).await;

    assert_eq!(
        (first.selected, first.replied, first.replies_sent),
        (3, 3, 3),
        "{out}"
    );
    assert!(
        out.contains("replied (1 sent, 1 already sent before)"),
        "{out}"
    );
    let mut sent: Vec<_> = received(&h.wechat, SEND)
        .await
        .iter()
        .map(|s| s["text"]["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        ["second: q1", "second: q2", "second: q3"],
        "only the missing replies"
    );

    let (second, out) = redrive(&h, &[]).await;
    assert_eq!(
        (second.already_redriven, second.replies_sent),
        (3, 0),
        "{out}"
    );
    let (counts, listed) = list(&h, &[]).await;
    assert_eq!(listed.matches("[redriven: replied]").count(), 3, "{listed}");
    assert_eq!(counts["retries_exhausted"], (3, 0), "{listed}");
    let (open, listed) = list(&h, &["--open"]).await;
    assert!(open.is_empty(), "nothing is open any more:\n{listed}");
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_redrive_that_fails_again_goes_back_to_the_dead_letter_topic_with_the_new_reason() {
    let h = Harness::new(ECHO).await;
    h.create_topics().await;
    h.mount_token().await;
    Mock::given(path(SEND))
        .respond_with(errcode(-1, "system error"))
        .mount(&h.wechat)
        .await;
    let env = text("o-1", "1", "hello");
    produce_envelopes(&h.settings.kafka.inbound_topic, std::slice::from_ref(&env)).await;
    consume(&h, 1).await;
    let (first_offset, first) = dead_letters(&h, 1).await.remove(0);
    assert_eq!(first.reason, "retries_exhausted");
    h.wechat.reset().await;
    h.mount_token().await;
    h.expect_calls(SEND, errcode(48001, "api unauthorized"), 2)
        .await;

    let (summary, out) = redrive(&h, &["--since", "1h"]).await;

    assert_eq!(
        summary.dead_lettered.get("wechat_rejected"),
        Some(&1),
        "{out}"
    );
    assert_eq!(summary.dead_letters_written, 1, "{out}");
    let letters = dead_letters(&h, 2).await;
    assert_eq!(
        letters.len(),
        2,
        "nothing lost: the old and the new dead letter"
    );
    let (again_offset, again) = &letters[1];
    assert_eq!(again.reason, "wechat_rejected");
    assert_eq!(again.errcode, Some(48001));
    assert_eq!(
        again.source, first.source,
        "still names the original inbound record"
    );
    assert_eq!(again.original().expect("b64"), bytes(&env));
    let lineage = again.redrive.as_ref().expect("lineage");
    assert_eq!((lineage.count, lineage.previous.offset), (1, first_offset));
    assert_eq!(lineage.previous_reason, "retries_exhausted");
    assert_eq!(
        again.consumer_group,
        format!("{}-redrive", h.settings.kafka.group_id)
    );

    let (counts, listed) = list(&h, &[]).await;
    assert!(
        listed.contains(&format!(
            "redriven: failed again (wechat_rejected), now at 0:{again_offset}"
        )),
        "{listed}"
    );
    assert_eq!(counts["wechat_rejected"], (1, 1), "{listed}");
    assert_eq!(counts["retries_exhausted"], (1, 0), "{listed}");
    let (counts, _) = list(&h, &["--app", "elsewhere"]).await;
    assert!(
        counts.is_empty(),
        "the app filter selects nothing of another app"
    );
    let shown = show(&h, &format!("0:{again_offset}")).await;
    for expected in [
        "reason       wechat_rejected",
        "errcode      48001",
        "detail       errcode 48001: api unauthorized",
        &format!(
            "redrive #1, replaces {} 0:{first_offset} (retries_exhausted)",
            h.settings.kafka.dead_letter_topic
        ),
        &format!("original     {}/", h.settings.kafka.inbound_topic),
        "rule `echo` action #1 (key before stable action ids: demo:msg:1:echo:0)",
        "status       open",
        "\"from_user_name\": \"o-1\"",
        "payload (as WeChat sent it):\n{}",
    ] {
        assert!(
            shown.contains(expected),
            "{expected} missing from:\n{shown}"
        );
    }

    // The next redrive takes only the newer dead letter, and counts on.
    let (next, out) = redrive(&h, &[]).await;
    assert_eq!(
        (next.already_redriven, next.dead_letters_written),
        (1, 1),
        "{out}"
    );
    let third = dead_letters(&h, 3).await.remove(2).1;
    assert_eq!(
        third.redrive.map(|r| (r.count, r.previous.offset)),
        Some((2, *again_offset))
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn ambiguous_replies_are_redriven_only_when_the_operator_says_so() {
    let mut h = Harness::new(ECHO).await;
    h.settings.wechat.timeout = Duration::from_millis(500);
    h.create_topics().await;
    h.mount_token().await;
    // The send times out: it may have reached the user, so it is dead-lettered, not repeated.
    h.expect_calls(SEND, ok().set_delay(Duration::from_secs(2)), 1)
        .await;
    produce_envelopes(&h.settings.kafka.inbound_topic, &[text("o-1", "1", "hi")]).await;
    consume(&h, 1).await;
    assert_eq!(dead_letters(&h, 1).await[0].1.reason, "ambiguous");
    h.wechat.verify().await;
    h.wechat.reset().await;
    h.mount_token().await;
    nothing_may_be_called(&h).await;

    let (held, out) = redrive(&h, &[]).await;
    assert_eq!((held.held_ambiguous, held.selected), (1, 0), "{out}");
    let refused = consumer::operator::redrive::run(
        &h.settings,
        &redrive_args(&["--reason", "ambiguous"]),
        &mut Vec::new(),
        CancellationToken::new(),
    )
    .await
    .expect_err("ambiguous needs the flag");
    assert!(
        refused.to_string().contains("--include-ambiguous"),
        "{refused}"
    );
    h.wechat.verify().await;
    h.wechat.reset().await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 1).await;

    let (sent, out) = redrive(&h, &["--include-ambiguous"]).await;

    assert_eq!((sent.replied, sent.replies_sent), (1, 1), "{out}");
    h.wechat.verify().await;
}
