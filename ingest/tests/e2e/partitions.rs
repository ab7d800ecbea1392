//! Raising the inbound partition count under traffic, the way consumer/OPERATIONS.md prescribes:
//! not in place (a user moved to another partition could have newer records processed while older
//! ones still wait in the old partition), but by moving to a larger topic, each side switching
//! once the one before it has finished: ingest first, then the consumers, once the group has
//! committed every record of the old topic.

use std::time::{Duration, Instant};

use super::audit::Audit;
use super::pipeline::Pipeline;
use super::report::check;
use super::scenarios::WINDOW_REFUSALS;
use super::{say, serial, Deadline};

/// The documented procedure under load: the topic grows from 6 to 12 partitions while pushes
/// flow; every push is acknowledged and stored, every reply sent once, each user's in the order of
/// the user's records across both topics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_partitions_through_a_larger_topic_keep_every_users_order() {
    let _serial = serial().await;
    let mut p = Pipeline::start("grow-partitions", 2, &["--latency", "5ms"]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(900, 30.0, 40);
    let wait = Deadline::new(Duration::from_secs(90), "150 records in the first topic");
    while audit.inbound_end() < 150 {
        wait.tick().await;
    }
    // 1. The larger topic, through `consumer setup`.
    let larger = format!("{}.inbound-12", p.id);
    p.create_inbound_topic(&larger, 12).await;
    audit.follow(&larger);
    // 2. ingest publishes to it (a rolling restart; one instance here). Pushes in flight at the
    //    restart are retried by WeChat.
    p.stop_ingest().await;
    p.ingest_topic = larger.clone();
    p.start_ingest().await;
    let switched = Instant::now();
    // 3. The consumers finish the old topic: nothing writes it anymore, and once the group has
    //    committed all of it, no older record of any user is left to process.
    let wait = Deadline::new(
        Duration::from_secs(120),
        "the group to commit every record of the first topic",
    );
    while !audit.committed_all_of(0) {
        wait.tick().await;
    }
    let drained_in = switched.elapsed();
    let waiting = audit.records_in(1);
    // 4. Only then do the consumers move to the larger topic.
    p.stop_consumers().await;
    p.consumer_topic = (larger.clone(), 12);
    p.start_consumer().await;
    p.start_consumer().await;
    p.wait_group_stable().await;
    let push = push.finish(Duration::from_secs(180)).await;
    let report = audit.settle(&mut p, &push, Duration::from_secs(180)).await;
    let moved = audit.users_on_another_partition();
    say(format!(
        "e2e grow-partitions: 6 → 12 partitions through a second topic; the old topic drained \
         {:.1}s after ingest switched; {waiting} records waited in the new topic for the \
         consumers; {moved} of {} users on another partition in the new topic; {} of {} pushes \
         failed",
        drained_in.as_secs_f64(),
        report.users,
        push.0.failed,
        push.0.sent
    ));
    check(&report, WINDOW_REFUSALS);
    assert!(
        moved > 0,
        "no user changed partition: the scenario did not exercise the reordering it guards against"
    );
}
