//! Every action through `process()`: the exact requests WeChat receives, hand-off and forward to
//! Kafka and webhooks, drop, and the outcome of each record.

use std::time::Duration;

use consumer::http_url::HttpUrl;
use consumer::processor::{Outcome, Skip};
use serde_json::json;
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

#[tokio::test]
async fn every_reply_action_sends_the_documented_body() {
    let h = Harness::new(
        r#"
[[rule]]
name = "all"
[[rule.actions]]
type = "typing"
[[rule.actions]]
type = "text"
content = "Hi {openid}, you said: {content}"
[[rule.actions]]
type = "image"
media_id = "MEDIA-ID"
[[rule.actions]]
type = "link"
title = "Order"
description = "Your order"
url = "https://example.com/o?u={openid}"
thumb_url = "https://example.com/t.png"
[[rule.actions]]
type = "miniprogrampage"
title = "Shop"
pagepath = "pages/index/index?from={app}"
thumb_media_id = "THUMB-ID"
"#,
    )
    .await;
    h.mount_token().await;
    Mock::given(method("POST"))
        .and(path(TYPING))
        .and(query_param("access_token", TOKEN))
        .and(body_json(json!({"touser": "o-user", "command": "Typing"})))
        .respond_with(ok())
        .expect(1)
        .mount(&h.wechat)
        .await;
    Mock::given(method("POST"))
        .and(path(SEND))
        .and(query_param("access_token", TOKEN))
        .respond_with(ok())
        .expect(4)
        .mount(&h.wechat)
        .await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-user", "100", "hello"))
        .await
        .expect("processed");

    assert_eq!(outcome, replied(4));
    let sends = received(&h.wechat, SEND).await;
    assert_eq!(
        sends,
        vec![
            json!({"touser": "o-user", "msgtype": "text", "text": {"content": "Hi o-user, you said: hello"}}),
            json!({"touser": "o-user", "msgtype": "image", "image": {"media_id": "MEDIA-ID"}}),
            json!({"touser": "o-user", "msgtype": "link", "link": {"title": "Order", "description": "Your order", "url": "https://example.com/o?u=o-user", "thumb_url": "https://example.com/t.png"}}),
            json!({"touser": "o-user", "msgtype": "miniprogrampage", "miniprogrampage": {"title": "Shop", "pagepath": "pages/index/index?from=demo", "thumb_media_id": "THUMB-ID"}}),
        ]
    );
    assert_eq!(
        h.metric(
            "consumer_sends_total",
            &[("msgtype", "text"), ("result", "ok")]
        ),
        1.0
    );
    assert_eq!(
        h.metric("consumer_rule_matches_total", &[("rule", "all")]),
        1.0
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_local_image_is_uploaded_once_and_reused() {
    let h = Harness::new(
        "[[rule]]\nname = \"pic\"\n[[rule.actions]]\ntype = \"image\"\nfile = \"pic.jpg\"\n",
    )
    .await;
    std::fs::write(h.dir.join("pic.jpg"), b"\xff\xd8\xff\xe0 not really a jpeg").expect("image");
    h.mount_token().await;
    Mock::given(method("POST"))
        .and(path(UPLOAD))
        .and(query_param("type", "image"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                json!({"type": "image", "media_id": "UPLOADED-1", "created_at": now()}),
            ),
        )
        .expect(1)
        .mount(&h.wechat)
        .await;
    Mock::given(method("POST"))
        .and(path(SEND))
        .and(body_json(
            json!({"touser": "o-pic", "msgtype": "image", "image": {"media_id": "UPLOADED-1"}}),
        ))
        .respond_with(ok())
        .expect(2)
        .mount(&h.wechat)
        .await;
    let services = h.services().await;

    for id in ["1", "2"] {
        let outcome = services
            .processor
            .process(&text("o-pic", id, "hi"))
            .await
            .expect("processed");
        assert_eq!(outcome, replied(1));
    }
    let uploads = h.wechat.received_requests().await.unwrap_or_default();
    let upload = uploads
        .iter()
        .find(|r| r.url.path() == UPLOAD)
        .expect("an upload");
    let body = String::from_utf8_lossy(&upload.body);
    assert!(
        body.contains("name=\"media\"") && body.contains("filename=\"pic.jpg\""),
        "{body}"
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_failing_typing_indicator_never_stops_the_reply() {
    let h = Harness::new(
        "[[rule]]\nname = \"r\"\n[[rule.actions]]\ntype = \"typing\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"answer\"\n",
    )
    .await;
    h.mount_token().await;
    h.expect_calls(TYPING, errcode(45080, "typing too late"), 1)
        .await;
    h.expect_calls(SEND, ok(), 1).await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-t", "1", "q"))
        .await
        .expect("processed");

    assert_eq!(outcome, replied(1));
    assert_eq!(
        h.metric(
            "consumer_sends_total",
            &[("msgtype", "typing"), ("result", "final")]
        ),
        1.0
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn handoff_and_forward_reach_kafka_and_webhooks_once() {
    let h0 = Harness::new("").await;
    let forward_topic = unique("forwarded");
    let rules = format!(
        r#"
[[rule]]
name = "human"
[[rule.actions]]
type = "handoff"
id = "to-a-person"
note = "wants a person"
[[rule.actions]]
type = "forward"
url = "{0}/forward"
[[rule.actions]]
type = "forward"
topic = "{1}"
"#,
        h0.wechat.uri(),
        forward_topic
    );
    let mut h = h0;
    std::fs::write(&h.settings.rules.path, rules).expect("rules");
    h.settings.handoff.webhook =
        Some(HttpUrl::parse(&format!("{}/handoff", h.wechat.uri())).expect("a URL"));
    h.create_topics().await;
    let mut forward_settings = h.settings.kafka.clone();
    forward_settings.inbound_topic = forward_topic.clone();
    consumer::operator::setup::create_topics(&forward_settings)
        .await
        .expect("forward topic");
    Mock::given(method("POST"))
        .and(path("/handoff"))
        .and(header("idempotency-key", "demo:msg:7:id:to-a-person"))
        .respond_with(ResponseTemplate::new(204))
        .expect(1)
        .mount(&h.wechat)
        .await;
    Mock::given(method("POST"))
        .and(path("/forward"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&h.wechat)
        .await;
    h.expect_calls(SEND, ok(), 0).await;
    let services = h.services().await;
    let env = text("o-h", "7", "human please");

    // Twice: a redelivery must not hand off or forward again.
    for _ in 0..2 {
        let outcome = services.processor.process(&env).await.expect("processed");
        assert_eq!(outcome, Outcome::Skipped(Skip::Rule("human".into())));
    }

    let handoffs = read_topic(
        &h.settings.kafka.handoff_topic,
        1,
        2,
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(handoffs.len(), 1, "exactly one hand-off record");
    let record: serde_json::Value =
        serde_json::from_slice(rdkafka::Message::payload(&handoffs[0]).expect("payload"))
            .expect("json");
    assert_eq!(record["openid"], "o-h");
    assert_eq!(record["rule"], "human");
    assert_eq!(record["note"], "wants a person");
    assert_eq!(record["envelope"]["dedup_key"], "demo:msg:7");
    let forwarded = read_topic(&forward_topic, 3, 2, Duration::from_secs(3)).await;
    assert_eq!(forwarded.len(), 1, "exactly one forwarded record");
    assert_eq!(
        rdkafka::Message::payload(&forwarded[0]),
        Some(bytes(&env).as_slice())
    );
    assert_eq!(
        rdkafka::Message::key(&forwarded[0]),
        Some("demo:o-h".as_bytes())
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn drop_sends_nothing_and_unknown_apps_are_dead_lettered() {
    let h = Harness::new("[[rule]]\nname = \"quiet\"\n[[rule.actions]]\ntype = \"drop\"\n").await;
    h.expect_calls(SEND, ok(), 0).await;
    h.expect_calls(STABLE_TOKEN, ok(), 0).await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-d", "1", "x"))
        .await
        .expect("processed");
    assert_eq!(outcome, Outcome::Skipped(Skip::Rule("quiet".into())));

    let mut stranger = text("o-d", "2", "x");
    stranger.app = "elsewhere".into();
    let Outcome::DeadLettered(letter) = services
        .processor
        .process(&stranger)
        .await
        .expect("processed")
    else {
        panic!("an unknown app is dead-lettered");
    };
    assert_eq!(letter.reason.kind(), "unknown_app");
    h.wechat.verify().await;
}

#[tokio::test]
async fn an_expired_upload_is_replaced_once_and_the_image_sent_again() {
    let h = Harness::new(
        "[[rule]]\nname = \"pic\"\n[[rule.actions]]\ntype = \"image\"\nfile = \"pic.png\"\n",
    )
    .await;
    std::fs::write(h.dir.join("pic.png"), b"\x89PNG not really").expect("image");
    h.mount_token().await;
    for id in ["EXPIRED-ID", "FRESH-ID"] {
        Mock::given(path(UPLOAD))
            .respond_with(
                ResponseTemplate::new(200)
                    .set_body_json(json!({"type": "image", "media_id": id, "created_at": now()})),
            )
            .up_to_n_times(1)
            .expect(1)
            .mount(&h.wechat)
            .await;
    }
    Mock::given(path(SEND))
        .and(body_json(
            json!({"touser": "o-m", "msgtype": "image", "image": {"media_id": "EXPIRED-ID"}}),
        ))
        .respond_with(errcode(40007, "invalid media_id"))
        .expect(1)
        .mount(&h.wechat)
        .await;
    Mock::given(path(SEND))
        .and(body_json(
            json!({"touser": "o-m", "msgtype": "image", "image": {"media_id": "FRESH-ID"}}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&h.wechat)
        .await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-m", "1", "hi"))
        .await
        .expect("processed");

    assert_eq!(outcome, replied(1));
    h.wechat.verify().await;
}
