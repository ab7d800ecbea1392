//! The Kafka broker and Redis stopped and restarted mid-stream.

use std::time::Duration;

use super::audit::Audit;
use super::pipeline::Pipeline;
use super::report::check;
use super::services::{Outage, Service};
use super::{say, serial, Deadline};

/// How long the Kafka outage lasts: longer than WeChat's whole retry horizon (about 20 s), so
/// without the spool every push of the outage would end as an error shown to its user.
/// `WXKF_E2E_KAFKA_OUTAGE_SECS` stretches it (a soak of several minutes) or shortens it.
fn kafka_outage() -> Duration {
    let secs = std::env::var("WXKF_E2E_KAFKA_OUTAGE_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// Kafka down for longer than WeChat retries a push: ingest spools every push and answers
/// `success` (no user sees an error, WeChat gives up on nothing), and halfway through the outage
/// ingest itself is killed with SIGKILL and started again over its spool. Once Kafka is back the
/// spool drains, and every push is replied to once, in order per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_outage_longer_than_wechat_retries_and_an_ingest_kill_lose_nothing() {
    let _serial = serial().await;
    let mut p = Pipeline::start("kafka-outage", 2, &[]).await;
    let mut audit = Audit::new(&p);
    let outage_for = kafka_outage();
    // Pushes keep arriving through the whole outage and after it.
    let count = (outage_for.as_secs_f64() * 10.0) as u64 + 400;
    let push = p.push(count, 10.0, 25);
    let wait = Deadline::new(Duration::from_secs(60), "100 records in Kafka");
    while audit.inbound_end() < 100 {
        wait.tick().await;
    }
    let outage = Outage::begin(Service::Kafka).await;
    // The outage's length is the scenario itself, not a wait for something to happen.
    tokio::time::sleep(outage_for / 2).await;
    p.kill_ingest().await;
    p.start_ingest().await;
    tokio::time::sleep(outage_for / 2).await;
    let down = outage.end().await;
    let push = push.finish(Duration::from_secs(240)).await;
    say(format!(
        "e2e kafka-outage: Kafka down for {:.1}s, ingest killed and restarted halfway; {} of {} \
         pushes answered with an error",
        down.as_secs_f64(),
        push.0.failed,
        push.0.sent
    ));
    assert_eq!(
        push.0.failed, 0,
        "the spool answers success through a Kafka outage: no push may fail"
    );
    let report = audit.settle(&mut p, &push, Duration::from_secs(240)).await;
    // An enter event's reply window is one minute from its CreateTime, which a long outage plus
    // the drain can outlast; nothing else may be dead-lettered.
    check(&report, &["window_closed"]);
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
