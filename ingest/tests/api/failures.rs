//! Fail closed on Kafka, open on Redis, and always inside the deadline.

use std::time::{Duration, Instant};

use common::codec::Format;
use common::envelope::{DedupStatus, Envelope};
use secrecy::SecretString;

use crate::helpers::*;

/// A TCP port on 127.0.0.1 with nothing listening.
fn dead_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test]
async fn without_a_spool_kafka_down_answers_503_in_budget_releases_the_claim_and_the_retry_lands_once(
) {
    let mut settings = test_settings();
    settings.spool.enabled = false;
    settings.kafka.brokers = format!("127.0.0.1:{}", dead_port());
    settings.deadline.ack_budget = Duration::from_millis(1500);
    settings.kafka.delivery_timeout = Duration::from_millis(800);
    let dead = spawn_app_with(settings.clone()).await;

    let message = text_message("u-kafka-down", "are you there?");
    let p = push(&message, Format::Json, PushMode::Safe, now());
    let started = Instant::now();
    let response = dead.post("json", &p).await;
    let elapsed = started.elapsed();
    assert_eq!(response.status(), 503, "not stored, so WeChat must retry");
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}, past WeChat's 5 s"
    );
    assert_eq!(record_count(dead.topic()), 0);
    assert_eq!(
        dead.metric("ingest_pushes_total", &[("outcome", "publish_failed")])
            + dead.metric("ingest_pushes_total", &[("outcome", "publish_timeout")]),
        1.0
    );
    dead.stop().await;

    // Kafka is back (same Redis prefix, same topic): WeChat's retry must not be mistaken for a
    // duplicate of the push that was never stored.
    let defaults = test_settings();
    let mut healthy = settings;
    healthy.kafka.brokers = kafka_brokers();
    healthy.deadline = defaults.deadline;
    healthy.kafka.delivery_timeout = defaults.kafka.delivery_timeout;
    let app = spawn_app_with(healthy).await;
    let retry = push(&message, Format::Json, PushMode::Safe, now());
    assert_eq!(app.post("json", &retry).await.status(), 200);
    assert_eq!(app.post("json", &retry).await.status(), 200);
    let records = read_records(app.topic());
    assert_eq!(records.len(), 1, "the retry lands exactly once");
    assert_eq!(records[0].1.v1().message, message);
}

#[tokio::test]
async fn redis_down_still_publishes_marked_unchecked() {
    let mut settings = test_settings();
    settings.redis.url = SecretString::from(format!("redis://127.0.0.1:{}/", dead_port()));
    let app = spawn_app_with(settings).await;
    let message = text_message("u-redis-down", "hello");
    let p = push(&message, Format::Xml, PushMode::Safe, now());
    assert_eq!(app.post("xml", &p).await.status(), 200);
    // Without Redis a retry cannot be recognised: it is stored again, and says so.
    assert_eq!(app.post("xml", &p).await.status(), 200);
    let records = read_records(app.topic());
    assert_eq!(records.len(), 2);
    for (_, Envelope::V1(record)) in &records {
        assert_eq!(record.dedup, DedupStatus::Unchecked);
        assert_eq!(record.message, message);
    }
    assert_eq!(app.metric("ingest_unchecked_records_total", &[]), 2.0);
    assert_eq!(
        app.metric("ingest_dedup_errors_total", &[("op", "claim")]),
        2.0
    );
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_pushes() {
    let app = spawn_app().await;
    let topic = app.topic().to_owned();
    let pushes: Vec<_> = (0..20)
        .map(|i| {
            push(
                &text_message(&format!("u-drain-{i}"), "bye"),
                Format::Json,
                PushMode::Safe,
                now(),
            )
        })
        .collect();
    let client = app.client.clone();
    let address = app.address.clone();
    let in_flight = tokio::spawn(async move {
        let sends = pushes.iter().map(|p| {
            client
                .post(format!("{address}/wechat/json?{}", p.query))
                .body(p.body.clone())
                .send()
        });
        futures::future::join_all(sends).await
    });
    // Let the requests reach the server, then stop it while they are being handled.
    tokio::task::yield_now().await;
    app.stop().await;
    let answers = in_flight.await.unwrap();
    let accepted = answers
        .iter()
        .filter(|a| a.as_ref().is_ok_and(|r| r.status() == 200))
        .count() as i64;
    // Every push answered success is in Kafka; pushes refused at the door were never answered
    // success, so WeChat retries them.
    assert_eq!(record_count(&topic), accepted);
}

#[tokio::test]
async fn a_full_producer_queue_is_backpressure_not_memory() {
    let mut settings = test_settings();
    // A broker that never answers keeps the first record queued; the queue holds only one. (With
    // the spool on, the second push would be spooled instead: `spool.rs`.)
    settings.spool.enabled = false;
    settings.kafka.brokers = format!("127.0.0.1:{}", dead_port());
    settings.kafka.queue_max_messages = 1;
    let app = spawn_app_with(settings).await;
    let first = push(
        &text_message("u-queue-1", "first"),
        Format::Json,
        PushMode::Safe,
        now(),
    );
    let second = push(
        &text_message("u-queue-2", "second"),
        Format::Json,
        PushMode::Safe,
        now(),
    );
    let (a, b) = tokio::join!(app.post("json", &first), async {
        // The second push goes once the first one sits in the producer's queue.
        let queued = async {
            while !app
                .get("/metrics")
                .await
                .text()
                .await
                .unwrap()
                .contains("ingest_producer_queue_records 1")
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), queued)
            .await
            .expect("the first push reaches the producer queue");
        app.post("json", &second).await
    });
    assert_eq!(b.status(), 503, "the second push finds the queue full");
    assert_eq!(
        a.status(),
        503,
        "the first is never acknowledged by a dead broker"
    );
    assert_eq!(
        app.metric("ingest_pushes_total", &[("outcome", "backpressure")]),
        1.0
    );
}

/// A Redis that accepts connections and never answers (a hung server, a black-holed port on
/// 127.0.0.1): pushes must not wait on it past the budget. They fail open, stored unchecked.
#[tokio::test]
async fn a_redis_that_hangs_on_connect_fails_open_within_the_budget() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hung = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut settings = test_settings();
    settings.redis.url = SecretString::from(format!("redis://127.0.0.1:{port}/"));
    let app = spawn_app_with(settings).await;
    let pushes: Vec<_> = (0..200)
        .map(|i| {
            push(
                &text_message(&format!("u-hung-{i}"), "hello"),
                Format::Json,
                PushMode::Safe,
                now(),
            )
        })
        .collect();
    let answers = futures::future::join_all(pushes.iter().map(|p| app.post("json", p))).await;
    for answer in answers {
        assert_eq!(answer.status(), 200, "fail open, not 503");
    }
    let records = read_records(app.topic());
    assert_eq!(records.len(), 200);
    assert!(records
        .iter()
        .all(|(_, e)| e.v1().dedup == DedupStatus::Unchecked));
    hung.abort();
}

/// `kafka.brokers` is a bootstrap list: a broker of it that is down costs nothing while another
/// answers.
#[tokio::test]
async fn a_bootstrap_list_with_a_dead_broker_still_publishes() {
    let mut settings = test_settings();
    settings.kafka.brokers = format!("127.0.0.1:{},{}", dead_port(), kafka_brokers());
    let app = spawn_app_with(settings).await;
    let p = push(
        &text_message("u-bootstrap", "hi"),
        Format::Json,
        PushMode::Safe,
        now(),
    );
    assert_eq!(app.post("json", &p).await.status(), 200);
    assert_eq!(record_count(app.topic()), 1);
    assert_eq!(app.metric("ingest_spool_appended_records_total", &[]), 0.0);
    app.stop().await;
}
