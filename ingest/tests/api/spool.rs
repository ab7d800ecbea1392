//! The spool against the real Kafka and Redis: a Kafka that cannot acknowledge costs no push and
//! shows WeChat no error; a restart drains what was spooled, once and in order per user.
//!
//! "Kafka unreachable" is an ingest pointed at a port where nothing listens; "Kafka back" is the
//! same spool directory, topic and Redis prefix opened by an ingest pointed at the real broker.
//! Stopping the shared broker itself is the end-to-end suite's part (`ingest/tests/e2e/outages.rs`).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::codec::Format;
use common::envelope::DedupStatus;
use common::message::Message;
use ingest::config::Settings;

use crate::helpers::*;

fn dead_broker() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

/// Settings whose Kafka never answers, sharing spool, topic and Redis prefix with `healthy`.
fn unreachable_kafka(healthy: &Settings) -> Settings {
    let mut down = healthy.clone();
    down.kafka.brokers = dead_broker();
    down.kafka.delivery_timeout = Duration::from_millis(400);
    // Nothing can drain into a missing Kafka; stop without waiting for it.
    down.spool.shutdown_drain = Duration::from_millis(100);
    down
}

fn segments(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count()
}

/// Scrapes `/metrics` (which samples the spool's gauges) and reads one value.
async fn scraped(app: &TestApp, name: &str) -> f64 {
    app.get("/metrics").await.text().await.unwrap();
    app.metric(name, &[])
}

async fn wait_for_records(topic: &str, count: i64) {
    let wait = async {
        while record_count(topic) < count {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("{count} records in {topic} within 30 s"));
}

/// Each user's message ids in the order the topic holds them.
fn ids_per_user(messages: impl IntoIterator<Item = Message>) -> BTreeMap<String, Vec<String>> {
    let mut per_user: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in messages {
        per_user
            .entry(m.from_user_name.as_str().to_owned())
            .or_default()
            .push(m.msg_id().unwrap().as_str().to_owned());
    }
    per_user
}

#[tokio::test]
async fn kafka_unreachable_pushes_are_spooled_answered_success_and_drained_once_in_order() {
    let healthy = test_settings();
    let dir = healthy.spool.dir.clone();
    let down = spawn_app_with(unreachable_kafka(&healthy)).await;
    let users = ["u-spool-a", "u-spool-b", "u-spool-c"];
    let spooled: Vec<Message> = (0..12)
        .map(|i| text_message(users[i % 3], &format!("message {i}")))
        .collect();
    for m in &spooled {
        let answer = down
            .post("json", &push(m, Format::Json, PushMode::Safe, now()))
            .await;
        assert_eq!(answer.status(), 200, "spooled, so answered success");
        assert_eq!(answer.text().await.unwrap(), "success");
    }
    assert_eq!(
        down.metric("ingest_pushes_total", &[("outcome", "spooled")]),
        12.0
    );
    assert_eq!(scraped(&down, "ingest_spool_records").await, 12.0);
    assert!(scraped(&down, "ingest_spool_bytes").await > 0.0);

    // WeChat's retry of a spooled push: success, and no second record.
    let retry = down
        .post(
            "json",
            &push(&spooled[4], Format::Json, PushMode::Safe, now()),
        )
        .await;
    assert_eq!(retry.status(), 200);
    assert_eq!(
        down.metric("ingest_duplicates_total", &[("kind", "done")]),
        1.0
    );
    assert_eq!(
        down.metric("ingest_spool_appended_records_total", &[]),
        12.0
    );

    // Kafka is away but the spool has room: still ready to take pushes.
    let ready = down.get("/readyz").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["spool"]["records"], 12);
    assert_ne!(body["kafka"], "ok");
    assert_eq!(record_count(down.topic()), 0, "nothing reached Kafka");
    down.stop().await;

    // Kafka is back: a restart over the same spool drains it. Pushes right after the start go
    // behind the spooled records (into the spool while it holds any, to Kafka after).
    let up = spawn_app_with(healthy).await;
    let later: Vec<Message> = (12..18)
        .map(|i| text_message(users[i % 3], &format!("message {i}")))
        .collect();
    for m in &later {
        let answer = up
            .post("json", &push(m, Format::Json, PushMode::Safe, now()))
            .await;
        assert_eq!(answer.status(), 200);
    }
    wait_for_records(up.topic(), 18).await;
    let records = read_records(up.topic());
    assert_eq!(records.len(), 18, "every push exactly once");
    for (key, envelope) in &records {
        let record = envelope.v1();
        assert_eq!(key, &format!("json:{}", record.message.from_user_name));
        assert_eq!(record.dedup, DedupStatus::Checked);
    }
    let sent = ids_per_user(spooled.iter().chain(&later).cloned());
    let stored = ids_per_user(records.into_iter().map(|(_, e)| e.v1().message.clone()));
    assert_eq!(
        stored, sent,
        "each user's messages in the order they were pushed"
    );

    // Drained and deleted: the spool is empty and its last segment retired.
    let drained = async {
        while up.metric("ingest_spool_drained_records_total", &[]) < 12.0 || segments(&dir) > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("the spool drains and its segments are deleted");
    assert_eq!(scraped(&up, "ingest_spool_records").await, 0.0);
    assert_eq!(scraped(&up, "ingest_spool_oldest_age_seconds").await, 0.0);
    up.stop().await;
}

#[tokio::test]
async fn a_full_spool_answers_503_and_releases_the_claim_for_the_retry() {
    let mut healthy = test_settings();
    healthy.spool.max_bytes = healthy.spool.segment_bytes.min(64 * 1024);
    healthy.spool.segment_bytes = healthy.spool.max_bytes;
    let down = spawn_app_with(unreachable_kafka(&healthy)).await;
    let long = "长".repeat(2000);
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..100 {
        let m = text_message(&format!("u-full-{i}"), &long);
        let answer = down
            .post("json", &push(&m, Format::Json, PushMode::Safe, now()))
            .await;
        match answer.status().as_u16() {
            200 => accepted += 1,
            503 => {
                refused = Some(m);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let refused = refused.expect("a 64 KiB spool fills within 100 pushes of 6 KB");
    assert!(accepted > 0);
    assert_eq!(
        down.metric("ingest_pushes_total", &[("outcome", "spool_full")]),
        1.0
    );
    assert_eq!(
        down.metric("ingest_spool_refused_total", &[("reason", "full")]),
        1.0
    );
    assert_eq!(
        down.get("/readyz").await.status(),
        503,
        "neither Kafka nor the spool can take a push"
    );
    down.stop().await;

    // The refused push was never stored, so its claim was released: WeChat's retry lands. (Until
    // the spool has drained below its bound, a new push still queues behind it and finds it full.)
    let up = spawn_app_with(healthy).await;
    let drained = async {
        while up.metric("ingest_spool_drained_records_total", &[]) < accepted as f64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), drained)
        .await
        .expect("the spool drains once Kafka is back");
    let retry = up
        .post("json", &push(&refused, Format::Json, PushMode::Safe, now()))
        .await;
    assert_eq!(retry.status(), 200);
    wait_for_records(up.topic(), accepted + 1).await;
    let records = read_records(up.topic());
    assert_eq!(records.len() as i64, accepted + 1);
    assert!(records.iter().any(|(_, e)| e.v1().message == refused));
    up.stop().await;
}
