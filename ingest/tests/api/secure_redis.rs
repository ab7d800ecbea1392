//! Dedup against a Redis that wants a password, and one that speaks TLS only: real
//! `redis-server`s started by each test (see `redis_server.rs`).

use common::codec::Format;
use common::envelope::{DedupStatus, Envelope};
use ingest::dedup::DedupStore;

use crate::helpers::*;
use crate::redis_server::RedisServer;

const PASSWORD: &str = "dedup-test-p4ss";
const WRONG: &str = "not-the-p4ss";

/// Posts one message twice; returns the records the topic then holds.
async fn push_twice(app: &TestApp, openid: &str) -> Vec<(String, Envelope)> {
    let message = text_message(openid, "hello");
    for _ in 0..2 {
        let p = push(&message, Format::Json, PushMode::Safe, now());
        let response = app.post("json", &p).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "success");
    }
    read_records(app.topic())
}

#[tokio::test]
async fn dedup_works_with_the_password_in_the_url() {
    let redis = RedisServer::with_password(PASSWORD).await;
    let mut settings = test_settings();
    settings.redis.url = redis.url(PASSWORD).into();
    let app = spawn_app_with(settings).await;
    let records = push_twice(&app, "u-auth").await;
    assert_eq!(records.len(), 1, "the retry was recognised");
    assert_eq!(records[0].1.v1().dedup, DedupStatus::Checked);
    assert_eq!(app.metric("ingest_unchecked_records_total", &[]), 0.0);
}

#[tokio::test]
async fn a_wrong_password_fails_claims_is_refused_at_start_and_never_printed() {
    let redis = RedisServer::with_password(PASSWORD).await;
    let mut settings = test_settings();
    settings.redis.url = redis.url(WRONG).into();

    // What a log line could carry: the settings, the store, and Redis' refusal.
    let store = DedupStore::new(settings.redis.clone()).unwrap();
    let Err(refusal) = store.claim("json:wrong-password").await else {
        panic!("Redis accepted a wrong password");
    };
    for printed in [
        format!("{settings:?}"),
        format!("{store:?}"),
        format!("{refusal} {refusal:?}"),
    ] {
        assert!(!printed.contains(WRONG), "{printed}");
    }

    // At start the node check meets the refusal: the service does not start, and says why
    // without the password (a Redis that cannot be reached would only be a warning).
    let refused = match ingest::Application::build(settings, prometheus::Registry::new()) {
        Ok(_) => panic!("ingest started with a password Redis refuses"),
        Err(e) => format!("{e:#}"),
    };
    assert!(refused.contains("refused the credentials"), "{refused}");
    assert!(!refused.contains(WRONG), "{refused}");
}

#[tokio::test]
async fn dedup_works_over_tls_with_the_configured_ca_and_not_without_it() {
    let redis = RedisServer::with_tls(PASSWORD).await;
    let mut settings = test_settings();
    settings.redis.url = redis.url(PASSWORD).into();
    settings.redis.ca_file = redis.ca_file.clone();
    let app = spawn_app_with(settings.clone()).await;
    let records = push_twice(&app, "u-tls").await;
    assert_eq!(records.len(), 1, "the retry was recognised over TLS");
    assert_eq!(records[0].1.v1().dedup, DedupStatus::Checked);
    app.stop().await;

    // The platform's roots do not know the test's CA: the handshake fails, pushes fail open.
    settings.redis.ca_file = None;
    settings.kafka.topic = unique("ingest-test");
    let app = spawn_app_with(settings).await;
    let records = push_twice(&app, "u-tls-untrusted").await;
    assert_eq!(records.len(), 2);
    assert_eq!(app.metric("ingest_unchecked_records_total", &[]), 2.0);
}

#[test]
fn a_ca_file_without_a_tls_url_is_refused() {
    let mut settings = test_settings();
    settings.redis.ca_file = Some("/etc/wxkf/redis/ca.crt".into());
    let refused = settings.validate().unwrap_err().to_string();
    assert!(refused.contains("rediss://"), "{refused}");
}
