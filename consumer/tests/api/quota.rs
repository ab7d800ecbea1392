//! The daily API quota (errcode 45009): the app is paused, its records are parked in order in
//! its hold topic, other apps keep flowing, and the parked records are sent once each, in order
//! per user, when the pause ends (by time, or by `consumer quota resume`).

use std::time::Duration;

use common::dedup::DedupKey;
use common::envelope::EnvelopeV1;
use common::ids::AppId;
use consumer::config::AppSettings;
use consumer::processor::Outcome;
use secrecy::SecretString;
use wiremock::matchers::{body_partial_json, path};
use wiremock::{Mock, MockServer};

use crate::helpers::*;

/// Replies to every text with its own content, so the order of the sends shows.
const ECHO: &str =
    "[[rule]]\nname = \"echo\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"{content}\"\n";

const OTHER: &str = "other";

fn quota_used_up() -> wiremock::ResponseTemplate {
    errcode(45009, "reach max api daily quota limit")
}

/// A harness with a second app, [`OTHER`].
async fn two_apps() -> Harness {
    let mut h = Harness::new(ECHO).await;
    h.settings.apps.insert(
        OTHER.to_owned(),
        AppSettings {
            appid: "wx0000000000000other".into(),
            secret: SecretString::from("other-secret"),
        },
    );
    h.settings.quota.check_interval = Duration::from_millis(200);
    h.settings.validate().expect("valid settings");
    h
}

/// `env` as a message to app [`OTHER`].
fn to_other(mut env: EnvelopeV1) -> EnvelopeV1 {
    env.app = OTHER.into();
    env.appid = AppId::new("wx0000000000000other");
    env.dedup_key = DedupKey::for_message(OTHER, &env.message);
    env
}

/// The contents WeChat was asked to send to `user`, in order.
async fn sent_to(server: &MockServer, user: &str) -> Vec<String> {
    received(server, SEND)
        .await
        .iter()
        .filter(|s| s["touser"] == user)
        .map(|s| s["text"]["content"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// WeChat answers 45009 to the first `times` sends to `user`, and `ok` to every other send.
async fn quota_spent_for(h: &Harness, user: &str, times: u64) {
    Mock::given(path(SEND))
        .and(body_partial_json(serde_json::json!({"touser": user})))
        .respond_with(quota_used_up())
        .up_to_n_times(times)
        .with_priority(1)
        .mount(&h.wechat)
        .await;
    Mock::given(path(SEND))
        .respond_with(ok())
        .with_priority(5)
        .mount(&h.wechat)
        .await;
}

/// The first record meets 45009; the second record of the same app must not call WeChat, nor
/// be dead-lettered: both are parked. Another app is answered meanwhile.
#[tokio::test]
async fn after_a_daily_quota_answer_the_next_record_of_the_app_does_not_call_wechat() {
    let h = two_apps().await;
    h.create_topics().await;
    h.mount_token().await;
    quota_spent_for(&h, "o-1", 1).await;
    let services = h.services().await;

    let first = services
        .processor
        .process(&text("o-1", "1", "one"))
        .await
        .expect("processed");
    let second = services
        .processor
        .process(&text("o-2", "2", "two"))
        .await
        .expect("processed");
    let other = services
        .processor
        .process(&to_other(text("o-x", "3", "three")))
        .await
        .expect("processed");

    assert_eq!(first, Outcome::Parked, "the record that met 45009 is kept");
    assert_eq!(second, Outcome::Parked, "the next one waits without a call");
    assert_eq!(other, replied(1), "another app is not paused");
    assert_eq!(sent_to(&h.wechat, "o-1").await, ["one"], "one call only");
    assert!(sent_to(&h.wechat, "o-2").await.is_empty());
    let held = read_topic(
        &format!("{}{APP}", h.settings.kafka.hold_topic_prefix),
        h.settings.kafka.topics.inbound_partitions,
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(held.len(), 2, "both records are in the app's hold topic");
    assert_eq!(
        h.metric("consumer_quota_held_records_total", &[("app", APP)]),
        2.0
    );
    assert_eq!(h.metric("consumer_quota_paused", &[("app", APP)]), 1.0);
}

/// A 45009 from the token endpoint pauses the app too.
#[tokio::test]
async fn a_daily_quota_answer_of_the_token_endpoint_pauses_the_app() {
    let h = two_apps().await;
    h.create_topics().await;
    h.expect_calls(STABLE_TOKEN, quota_used_up(), 1).await;
    h.expect_calls(SEND, ok(), 0).await;
    let services = h.services().await;

    for (n, user) in ["o-1", "o-2"].into_iter().enumerate() {
        let outcome = services
            .processor
            .process(&text(user, &n.to_string(), "hello"))
            .await
            .expect("processed");
        assert_eq!(outcome, Outcome::Parked, "{user}");
    }
    h.wechat.verify().await;
}

/// The app is paused (the gauge is set once the pause is in Redis).
async fn wait_for_pause(app: &TestApp) -> bool {
    eventually(Duration::from_secs(30), || async {
        app.metric("consumer_quota_pauses_total", &[("app", APP)]) >= 1.0
    })
    .await
}

/// Sends to `user` reach `count` within the deadline.
async fn wait_for_sends(h: &Harness, user: &str, count: usize) -> bool {
    eventually(Duration::from_secs(40), || async {
        sent_to(&h.wechat, user).await.len() >= count
    })
    .await
}

/// The pause holds through a restart of the consumer; `consumer quota resume` ends it; the held
/// records then go out once each, in order per user, before the app's new records.
#[tokio::test]
async fn held_records_survive_a_restart_and_go_out_in_order_once_resumed() {
    let h = two_apps().await;
    h.create_topics().await;
    h.mount_token().await;
    quota_spent_for(&h, "o-a", 1).await;
    let inbound = h.settings.kafka.inbound_topic.clone();
    let app = spawn_app(&h).await;

    produce_envelopes(&inbound, &[text("o-a", "a1", "a1")]).await;
    assert!(wait_for_pause(&app).await, "the first send met 45009");
    produce_envelopes(
        &inbound,
        &[
            text("o-a", "a2", "a2"),
            text("o-b", "b1", "b1"),
            to_other(text("o-x", "x1", "x1")),
            text("o-a", "a3", "a3"),
            text("o-b", "b2", "b2"),
        ],
    )
    .await;
    assert!(
        wait_for_sends(&h, "o-x", 1).await,
        "the other app is answered during the pause"
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.metric("consumer_quota_held_records_total", &[("app", APP)]) == 5.0
        })
        .await,
        "the paused app's five records are parked"
    );
    app.stop().await;

    // A new process: the pause is shared, so it holds the app's records too.
    let app = spawn_app(&h).await;
    produce_envelopes(
        &inbound,
        &[text("o-b", "b3", "b3"), to_other(text("o-x", "x2", "x2"))],
    )
    .await;
    assert!(
        wait_for_sends(&h, "o-x", 2).await,
        "the restarted consumer runs"
    );
    assert!(
        eventually(Duration::from_secs(30), || async {
            app.metric("consumer_quota_held_records_total", &[("app", APP)]) == 1.0
        })
        .await,
        "b3 joins the backlog"
    );
    assert_eq!(
        sent_to(&h.wechat, "o-a").await,
        ["a1"],
        "no call while paused"
    );
    assert!(sent_to(&h.wechat, "o-b").await.is_empty());

    assert!(
        consumer::operator::quota::resume(&h.settings, APP)
            .await
            .expect("resume"),
        "the app was paused"
    );
    assert!(
        wait_for_sends(&h, "o-b", 3).await,
        "b's records are released"
    );
    assert!(
        wait_for_sends(&h, "o-a", 4).await,
        "a's records are released"
    );
    // A new record after the pause goes behind the held ones, and is not held back for long.
    produce_envelopes(&inbound, &[text("o-a", "a4", "a4")]).await;
    assert!(wait_for_sends(&h, "o-a", 5).await, "a4 is answered");
    assert!(
        eventually(Duration::from_secs(20), || async {
            consumer::operator::quota::status(&h.settings)
                .await
                .expect("status")
                .iter()
                .all(|s| s.quota.backlog() == 0 && !s.quota.paused(now() * 1000))
        })
        .await,
        "nothing is left held"
    );
    app.stop().await;

    assert_eq!(
        sent_to(&h.wechat, "o-a").await,
        ["a1", "a1", "a2", "a3", "a4"],
        "a1 met 45009, then every record once, in order"
    );
    assert_eq!(sent_to(&h.wechat, "o-b").await, ["b1", "b2", "b3"]);
    assert_eq!(sent_to(&h.wechat, "o-x").await, ["x1", "x2"]);
}

/// With a short configured pause the app resumes by itself; a held record that meets 45009
/// again pauses the app again and stays first in line.
#[tokio::test]
async fn a_pause_ends_by_itself_and_a_second_45009_pauses_again() {
    let mut h = two_apps().await;
    h.settings.quota.pause_for = Some(Duration::from_secs(2));
    h.settings.validate().expect("valid");
    // The topics of a deployment's `consumer setup`, which has no apps: the consumer makes its
    // apps' hold topics when it starts.
    require_kafka();
    consumer::operator::setup::create_topics(&h.settings.kafka)
        .await
        .expect("topics created");
    h.mount_token().await;
    quota_spent_for(&h, "o-a", 2).await;
    let inbound = h.settings.kafka.inbound_topic.clone();
    let app = spawn_app(&h).await;

    produce_envelopes(&inbound, &[text("o-a", "a1", "a1")]).await;
    assert!(wait_for_pause(&app).await, "the first send met 45009");
    produce_envelopes(
        &inbound,
        &[text("o-a", "a2", "a2"), text("o-a", "a3", "a3")],
    )
    .await;

    assert!(wait_for_sends(&h, "o-a", 5).await, "all three are answered");
    assert!(
        eventually(Duration::from_secs(20), || async {
            app.metric("consumer_quota_released_records_total", &[("app", APP)]) == 3.0
        })
        .await,
        "the three held records were released"
    );
    let pauses = app.metric("consumer_quota_pauses_total", &[("app", APP)]);
    app.stop().await;
    assert_eq!(
        sent_to(&h.wechat, "o-a").await,
        ["a1", "a1", "a1", "a2", "a3"],
        "a1 met 45009 twice, then each record went out once, in order"
    );
    assert_eq!(pauses, 2.0, "the second 45009 paused the app again");
}

/// A second process joins during the pause: the inbound and the hold partitions are shared out
/// again (a rebalance of both groups). Nothing is lost or sent twice, and each user's records go
/// out in order once the app resumes.
#[tokio::test]
async fn a_rebalance_during_the_pause_loses_and_repeats_nothing() {
    let h = two_apps().await;
    h.create_topics().await;
    h.mount_token().await;
    quota_spent_for(&h, "o-a", 1).await;
    let inbound = h.settings.kafka.inbound_topic.clone();
    let first = spawn_app(&h).await;

    produce_envelopes(&inbound, &[text("o-a", "a1", "a1")]).await;
    assert!(wait_for_pause(&first).await, "the first send met 45009");
    let users = ["o-a", "o-b", "o-c", "o-d"];
    let batch = |n: usize| -> Vec<EnvelopeV1> {
        users
            .iter()
            .map(|u| text(u, &format!("{u}-{n}"), &format!("{u}-{n}")))
            .collect()
    };
    produce_envelopes(&inbound, &batch(2)).await;
    let second = spawn_app(&h).await;
    assert!(
        eventually(Duration::from_secs(40), || async {
            first.metric("consumer_rebalances_total", &[("event", "revoke")]) >= 1.0
                && second.metric("consumer_rebalances_total", &[("event", "assign")]) >= 1.0
        })
        .await,
        "the group rebalanced"
    );
    produce_envelopes(&inbound, &batch(3)).await;
    produce_envelopes(&inbound, &[to_other(text("o-x", "x1", "x1"))]).await;
    assert!(
        wait_for_sends(&h, "o-x", 1).await,
        "the other app is answered"
    );
    assert_eq!(
        sent_to(&h.wechat, "o-a").await,
        ["a1"],
        "no call while paused"
    );

    assert!(consumer::operator::quota::resume(&h.settings, APP)
        .await
        .expect("resume"));
    produce_envelopes(&inbound, &batch(4)).await;
    for user in users {
        let expected = if user == "o-a" { 4 } else { 3 };
        assert!(
            wait_for_sends(&h, user, expected).await,
            "{user}'s records are answered"
        );
    }
    assert!(
        eventually(Duration::from_secs(20), || async {
            consumer::operator::quota::status(&h.settings)
                .await
                .expect("status")
                .iter()
                .all(|s| s.quota.backlog() == 0)
        })
        .await,
        "nothing is left held"
    );
    second.stop().await;
    first.stop().await;
    for user in users {
        let mut expected: Vec<String> = (2..=4).map(|n| format!("{user}-{n}")).collect();
        if user == "o-a" {
            expected.insert(0, "a1".into());
            expected.insert(0, "a1".into());
        }
        assert_eq!(
            sent_to(&h.wechat, user).await,
            expected,
            "{user}: once each, in order"
        );
    }
}
