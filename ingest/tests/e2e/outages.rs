//! The Kafka broker and Redis stopped and restarted mid-stream.

use std::time::Duration;

use super::audit::Audit;
use super::pipeline::Pipeline;
use super::report::check;
use super::scenarios::WINDOW_REFUSALS;
use super::services::{Outage, Service};
use super::{say, serial, Deadline};

/// Kafka down: ingest answers 503 (WeChat retries, and gives up on pushes whose retries all
/// fall into the outage), consumers stall; after the restart everything acknowledged is
/// replied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_stopped_and_restarted_mid_stream() {
    let _serial = serial().await;
    let mut p = Pipeline::start("kafka-restart", 2, &[]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(500, 20.0, 25);
    let wait = Deadline::new(Duration::from_secs(60), "100 records in Kafka");
    while audit.inbound_end() < 100 {
        wait.tick().await;
    }
    let outage = Outage::begin(Service::Kafka).await;
    let down = outage.end().await;
    let push = push.finish(Duration::from_secs(180)).await;
    say(format!(
        "e2e kafka-restart: Kafka down for {:.1}s; {} of {} pushes given up by WeChat after all \
         its retries (never acknowledged, so not lost)",
        down.as_secs_f64(),
        push.0.failed,
        push.0.sent
    ));
    let report = audit.settle(&mut p, &push, Duration::from_secs(180)).await;
    // Retried pushes reorder a user's records, and an enter event's window is one minute
    // from its CreateTime, which a long outage can outlast.
    check(&report, WINDOW_REFUSALS);
}

/// Redis down: ingest publishes anyway (marked not deduplicated), consumers wait; after the
/// restart (with its data, as a production Redis keeps it) every reply is sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_mid_stream() {
    let _serial = serial().await;
    let mut p = Pipeline::start("redis-restart", 2, &[]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(500, 25.0, 25);
    let wait = Deadline::new(Duration::from_secs(60), "100 records in Kafka");
    while audit.inbound_end() < 100 {
        wait.tick().await;
    }
    let outage = Outage::begin(Service::Redis).await;
    let before = audit.inbound_end();
    let wait = Deadline::new(
        Duration::from_secs(30),
        "50 more records published while Redis is down (ingest fails open)",
    );
    while audit.inbound_end() < before + 50 {
        wait.tick().await;
    }
    let down = outage.end().await;
    say(format!(
        "e2e redis-restart: Redis down for {:.1}s",
        down.as_secs_f64()
    ));
    let push = push.finish(Duration::from_secs(120)).await;
    assert_eq!(
        push.0.acknowledged, push.0.sent,
        "Redis down must not fail pushes"
    );
    let report = audit.settle(&mut p, &push, Duration::from_secs(120)).await;
    // A reply sent just before Redis went away could not be marked `sent`; its retry finds the
    // `sending` mark and dead-letters it as ambiguous instead of sending it again.
    check(&report, &["ambiguous"]);
    assert!(
        report.unchecked_records > 0,
        "ingest published nothing unchecked while Redis was down\n{report}"
    );
}
