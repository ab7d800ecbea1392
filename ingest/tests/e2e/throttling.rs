//! WeChat throttling while the consumers are restarted one by one.
//!
//! The simulated API answers bursts of 45011 (minute quota) and of -1 (system busy) to every
//! message call — sends included — while three consumer processes are each stopped with SIGTERM
//! and replaced in turn, as a rolling deployment does, with pushes flowing throughout. A send
//! caught by a restart or by the rebalance it causes is often waiting in a 45011 or -1 backoff:
//! its run must end, give the claim back, and let the redelivery send the reply.
//!
//! The -1 of these bursts is WeChat's "system busy": the simulator answers it *without carrying
//! the call out* (`wechat-sim/api/faults.rs`), and the consumer retries it, since an answered
//! errcode says nothing was sent — unlike a timeout or a gateway's 5xx, which the consumer
//! dead-letters as `ambiguous` because the send may have arrived. So every reply of this scenario
//! is one WeChat said it did not handle (or handled once), and the scenario expects each sent
//! exactly once and no dead letter at all, `ambiguous` above all.
//!
//! The attempts of a send are raised to 12 here: at the default 4, the jittered waits after a -1
//! (100 ms to 1 s in these tests) can all fall inside one burst and dead-letter the reply as
//! `retries_exhausted` — a budget the operator sets, not what this scenario looks at.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::audit::Audit;
use super::pipeline::Pipeline;
use super::report::check;
use super::{say, serial, Deadline};

/// The bursts, in turn, until `stop`: 45011 for 2 s, calm, -1 for 500 ms, calm.
async fn throttle(http: reqwest::Client, sim_url: String, stop: Arc<AtomicBool>) {
    let bursts = [
        json!({"burst_45011": "2s"}),
        json!({"burst_system_error": "500ms"}),
    ];
    for burst in bursts.iter().cycle() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let answered = http
            .post(format!("{sim_url}/sim/faults"))
            .json(burst)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        assert!(answered, "POST /sim/faults {burst}");
        tokio::time::sleep(Duration::from_millis(3500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_bursts_during_a_rolling_restart_send_every_reply_once() {
    let _serial = serial().await;
    let mut p = Pipeline::start_tuned(
        "throttle-rolling",
        3,
        &["--latency", "5ms", "--jitter", "10ms", "--seed", "11"],
        &[("CONSUMER__WECHAT__MAX_ATTEMPTS", "12")],
    )
    .await;
    let mut audit = Audit::new(&p);
    let push = p.push(600, 30.0, 60);
    let stop = Arc::new(AtomicBool::new(false));
    let storm = tokio::spawn(throttle(
        p.http.clone(),
        p.sim_url.clone(),
        Arc::clone(&stop),
    ));

    // Each consumer in turn: SIGTERM, a clean exit, a replacement that joins the group; the next
    // one only after some sends have gone through the replacement's rebalance.
    let sends = |stats: serde_json::Value| stats["sends_recorded"].as_u64().unwrap_or(0);
    let mut restarts = 0;
    for round in 0..3 {
        let target = sends(p.sim_stats().await) + 40;
        let wait = Deadline::new(
            Duration::from_secs(60),
            format!("{target} sends recorded before restart {}", round + 1),
        );
        while sends(p.sim_stats().await) < target {
            wait.tick().await;
        }
        // The oldest process: after three rounds every original one was replaced.
        p.terminate_consumer(0).await;
        p.start_consumer().await;
        restarts += 1;
    }

    let push = push.finish(Duration::from_secs(120)).await;
    stop.store(true, Ordering::SeqCst);
    storm.await.expect("the bursts ran");
    let report = audit.settle(&mut p, &push, Duration::from_secs(120)).await;
    let stats = p.sim_stats().await;
    let calls = &stats["calls"];
    let count = |endpoint: &str, errcode: &str| calls[endpoint][errcode].as_u64().unwrap_or(0);
    let ambiguous = report
        .dead_letter_reasons
        .get("ambiguous")
        .copied()
        .unwrap_or(0);
    say(format!(
        "e2e throttle-rolling: restarts={restarts} sends refused 45011={} -1={} | pushes={} \
         acknowledged={} replies expected={} sent={} duplicated={} ambiguous dead letters={ambiguous}",
        count("send", "45011"),
        count("send", "-1"),
        report.pushes_sent,
        report.acknowledged,
        report.expected,
        report.sent,
        report.duplicated,
    ));
    check(&report, &[]);
    assert_eq!(report.sent, report.expected, "every reply sent");
    assert_eq!(restarts, 3);
    for errcode in ["45011", "-1"] {
        assert!(
            count("send", errcode) > 0,
            "no {errcode} burst met a send: {calls}"
        );
    }
}
