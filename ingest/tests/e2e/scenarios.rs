//! The pipeline undisturbed, scaled out with a consumer killed, and with ingest killed.

use std::collections::BTreeSet;
use std::time::Duration;

use super::audit::Audit;
use super::pipeline::Pipeline;
use super::pushes::PushOutcome;
use super::report::check;
use super::{say, serial, Deadline};

/// Mixed modes (plaintext, compatible, safe), formats (XML, JSON), kinds (text, image, card,
/// enter, platform events) and users → exactly the replies the rules call for, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_pushes_become_exactly_the_replies_the_rules_call_for() {
    let _serial = serial().await;
    let mut p = Pipeline::start("mixed", 2, &["--latency", "5ms", "--jitter", "10ms"]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(400, 80.0, 40).finish(Duration::from_secs(90)).await;
    assert_eq!(
        push.0.acknowledged, push.0.sent,
        "a calm pipeline acknowledges every push"
    );
    let seen = |f: fn(&PushOutcome) -> String| push.1.iter().map(f).collect::<BTreeSet<_>>();
    let combos = seen(|o| format!("{} {}", o.mode, o.format));
    let kinds = seen(|o| o.kind.clone());
    assert_eq!(combos.len(), 6, "every mode in every format: {combos:?}");
    assert_eq!(kinds.len(), 5, "every kind of push: {kinds:?}");
    let report = audit.settle(&mut p, &push, Duration::from_secs(90)).await;
    check(&report, &[]);
    assert_eq!(report.sent, report.expected);
}

/// Three consumers in one group; one is killed with SIGKILL while it owns partitions and has
/// records in progress. The other two take its partitions over: every reply still arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumers_partitions_are_taken_over_without_loss_or_duplicates() {
    let _serial = serial().await;
    let mut p = Pipeline::start("scale-out", 3, &["--latency", "20ms", "--jitter", "20ms"]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(600, 50.0, 60);
    let victim = 1;
    let wait = Deadline::new(
        Duration::from_secs(60),
        "consumer-2 to finish 40 records (it must own partitions before it is killed)",
    );
    while p.consumer_records(victim).await < 40.0 {
        wait.tick().await;
    }
    p.kill_consumer(victim).await;
    let push = push.finish(Duration::from_secs(120)).await;
    let report = audit.settle(&mut p, &push, Duration::from_secs(120)).await;
    let mut skipped = 0.0;
    for survivor in 0..p.consumers.len() {
        skipped += p
            .consumer_metric(survivor, "consumer_sends_total", r#"result="duplicate""#)
            .await;
    }
    say(format!(
        "e2e scale-out: redelivered records found {skipped} replies already sent in the ledger"
    ));
    // A reply the victim was sending when it died cannot be known delivered or not: the ledger
    // dead-letters it as ambiguous rather than risk a second send.
    check(&report, &["ambiguous"]);
}

/// ingest killed with SIGKILL mid-stream and started again on the same port: the pushes it
/// dropped are retried by WeChat (the simulator) and all acknowledged in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_mid_stream_is_covered_by_wechats_retries() {
    let _serial = serial().await;
    let mut p = Pipeline::start("ingest-kill", 1, &[]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(400, 40.0, 40);
    let wait = Deadline::new(Duration::from_secs(60), "100 records in Kafka");
    while audit.inbound_end() < 100 {
        wait.tick().await;
    }
    p.kill_ingest().await;
    // Down for longer than WeChat's pause before a retry, so pushes meet the dead port, and
    // shorter than its retries last, so they all get through in the end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    p.start_ingest().await;
    let push = push.finish(Duration::from_secs(120)).await;
    assert_eq!(
        push.0.acknowledged, push.0.sent,
        "WeChat's retries cover a restart of a few seconds: {:?}",
        push.0
    );
    assert!(
        push.0.retries > 0,
        "the kill interrupted no push: {:?}",
        push.0
    );
    let report = audit.settle(&mut p, &push, Duration::from_secs(120)).await;
    check(&report, WINDOW_REFUSALS);
}

/// Dead-letter reasons of replies WeChat would refuse (45047, 45015), which the consumer does
/// not attempt. They appear when retried pushes reach Kafka after the same user's later ones: a
/// user who entered the session after writing has 2 replies left, not 5, whatever arrives first.
pub const WINDOW_REFUSALS: &[&str] = &["quota_exhausted", "window_closed"];
