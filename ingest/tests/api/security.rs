//! The edge as an attacker tries it: a plaintext body posted with a captured signature, a
//! signature reused for another body, a push addressed to another account, a captured
//! URL-verification link replayed later. And the answers' format follows the push's.

use std::time::Duration;

use common::codec::Format;
use secrecy::SecretString;

use crate::helpers::*;

#[tokio::test]
async fn an_app_with_an_aes_key_refuses_plaintext_by_default() {
    let settings = test_settings();
    // `strict` is configured as an operator would: a key, no opt-out.
    assert!(settings.apps["strict"].refuses_plaintext());
    let app = spawn_app_with(settings).await;
    let message = text_message("u-downgrade", "forged in clear");
    let plaintext = app
        .post(
            "strict",
            &push(&message, Format::Json, PushMode::Plaintext, now()),
        )
        .await;
    assert_eq!(plaintext.status(), 401);
    assert_eq!(
        app.metric("ingest_pushes_total", &[("outcome", "encryption_required")]),
        1.0
    );
    let safe = app
        .post(
            "strict",
            &push(&message, Format::Json, PushMode::Safe, now()),
        )
        .await;
    assert_eq!(safe.status(), 200);
    assert_eq!(
        record_count(app.topic()),
        1,
        "only the encrypted push is stored"
    );
}

#[tokio::test]
async fn a_plaintext_signature_reused_for_another_body_is_refused_but_a_retry_is_not() {
    let app = spawn_app().await;
    let original = text_message("u-replay", "the real message");
    let first = push(&original, Format::Json, PushMode::Plaintext, now());
    assert_eq!(app.post("json", &first).await.status(), 200);

    // Someone who saw the URL posts another body with the same query: the signature covers only
    // token, timestamp and nonce, so it checks out — and is refused as reused.
    let forged_message = text_message("u-replay", "transfer all my points");
    let forged = push(&forged_message, Format::Json, PushMode::Plaintext, now());
    let reused = Push {
        query: first.query.clone(),
        ..forged
    };
    let answer = app.post("json", &reused).await;
    assert_eq!(answer.status(), 401);
    assert_eq!(
        app.metric("ingest_pushes_total", &[("outcome", "replayed")]),
        1.0
    );

    // WeChat's retry of the first push (same query, same body, whether or not WeChat keeps the
    // nonce) is answered success and recognised as a duplicate.
    assert_eq!(app.post("json", &first).await.status(), 200);
    assert_eq!(
        app.metric("ingest_duplicates_total", &[("kind", "done")]),
        1.0
    );
    // A retry with a fresh nonce is a new signature: accepted too.
    let renewed = push(&original, Format::Json, PushMode::Plaintext, now() + 1);
    assert_eq!(app.post("json", &renewed).await.status(), 200);
    let records = read_records(app.topic());
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].1.v1().message, original);
}

#[tokio::test]
async fn the_signature_reuse_check_fails_open_when_redis_is_down() {
    let mut settings = test_settings();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    settings.redis.url = SecretString::from(format!("redis://{}/", dead.local_addr().unwrap()));
    drop(dead);
    let app = spawn_app_with(settings).await;
    let first = push(
        &text_message("u-replay-open", "one"),
        Format::Json,
        PushMode::Plaintext,
        now(),
    );
    assert_eq!(app.post("json", &first).await.status(), 200);
    assert_eq!(
        app.metric("ingest_dedup_errors_total", &[("op", "signature")]),
        1.0,
        "counted, and the push still stored"
    );
    assert_eq!(record_count(app.topic()), 1);
}

#[tokio::test]
async fn a_push_addressed_to_another_account_is_refused() {
    let app = spawn_app().await;
    let mut message = text_message("u-elsewhere", "for someone else");
    message.to_user_name = "gh_0000000000ff".into();
    for mode in [PushMode::Plaintext, PushMode::Safe] {
        let answer = app
            .post("json", &push(&message, Format::Json, mode, now()))
            .await;
        assert_eq!(answer.status(), 403, "{mode:?}");
        assert!(answer.text().await.unwrap().contains("another account"));
    }
    assert_eq!(
        app.metric("ingest_pushes_total", &[("outcome", "wrong_recipient")]),
        2.0
    );
    assert_eq!(record_count(app.topic()), 0);
}

#[tokio::test]
async fn a_captured_url_verification_cannot_be_replayed_later() {
    let mut settings = test_settings();
    settings.deadline.timestamp_tolerance = Duration::from_secs(15 * 60);
    let app = spawn_app_with(settings).await;
    let get = |timestamp: i64| {
        let nonce = "1514711492";
        let signature = common::signature::sign(&[TOKEN, &timestamp.to_string(), nonce]);
        format!(
            "/wechat/json?signature={signature}&echostr=4375120948345356249&timestamp={timestamp}&nonce={nonce}"
        )
    };
    let fresh = app.get(&get(now())).await;
    assert_eq!(fresh.status(), 200);
    assert_eq!(fresh.text().await.unwrap(), "4375120948345356249");
    let captured_an_hour_ago = app.get(&get(now() - 3600)).await;
    assert_eq!(captured_an_hour_ago.status(), 401);
}

#[tokio::test]
async fn transfer_and_empty_answers_follow_the_push_format() {
    let app = spawn_app().await;
    for format in [Format::Json, Format::Xml] {
        let message = text_message("o9AgO5Kd5ggOC-bXrbNODIiE3bGY", "a human, please");
        let answer = app
            .post(
                "transfer-sniff",
                &push(&message, format, PushMode::Plaintext, now()),
            )
            .await;
        assert_eq!(answer.status(), 200);
        let content_type = answer.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let body = answer.text().await.unwrap();
        match format {
            Format::Json => {
                assert!(
                    content_type.starts_with("application/json"),
                    "{content_type}"
                );
                let packet: serde_json::Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("a JSON answer to a JSON push ({e}): {body}"));
                assert_eq!(packet["MsgType"], "transfer_customer_service");
                assert_eq!(packet["ToUserName"], "o9AgO5Kd5ggOC-bXrbNODIiE3bGY");
            }
            Format::Xml => {
                assert!(
                    content_type.starts_with("application/xml"),
                    "{content_type}"
                );
                assert!(
                    body.contains("<MsgType><![CDATA[transfer_customer_service]]></MsgType>"),
                    "{body}"
                );
            }
        }

        let message = text_message("u-empty", "hello");
        let empty = app
            .post("empty", &push(&message, format, PushMode::Plaintext, now()))
            .await;
        assert_eq!(empty.status(), 200);
        assert_eq!(empty.text().await.unwrap(), "", "{format:?}");
    }
    assert_eq!(record_count(app.topic()), 4);
}
