//! The pipeline on the production topology — a three-broker Kafka cluster, topics with
//! replication factor 3 and `min.insync.replicas` 2 — under broker failures.
//!
//! These scenarios need the local cluster (`scripts/services.sh kafka-cluster-up`) and
//! `WXKF_TEST_KAFKA` naming its three brokers: `scripts/test.sh` runs them in its cluster stage with
//! `--ignored`. Run against anything else they fail at once, saying so; they never pass without
//! the cluster.
//!
//! Each prints its figures and asserts the audit's promises (every acknowledged push in Kafka, no
//! reply lost or sent twice, every user's replies in order) plus what its failure must not cause.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use super::audit::Audit;
use super::pipeline::{kafka_brokers, Pipeline};
use super::procs::repo_root;
use super::report::check;
use super::{say, serial, Deadline};

const BROKERS: u8 = 3;

/// The cluster's brokers, failing the test at once when `WXKF_TEST_KAFKA` is not a cluster.
fn assert_cluster() {
    let brokers = kafka_brokers();
    let count = brokers.split(',').filter(|b| !b.trim().is_empty()).count();
    assert_eq!(
        count,
        usize::from(BROKERS),
        "the cluster scenarios need WXKF_TEST_KAFKA to list the three brokers of \
         `scripts/services.sh kafka-cluster-up` (got {brokers:?}); scripts/test.sh sets it"
    );
}

/// `scripts/services.sh kafka-{action} N`, blocking.
fn broker(action: &str, node: u8) {
    let output = std::process::Command::new(repo_root().join("scripts/services.sh"))
        .arg(format!("kafka-{action}"))
        .arg(node.to_string())
        .output()
        .expect("running scripts/services.sh");
    assert!(
        output.status.success(),
        "scripts/services.sh kafka-{action} {node}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Brokers taken down by a scenario; started again when it ends, whatever happens to the test.
#[derive(Debug, Default)]
struct Down(Vec<u8>);

impl Down {
    async fn kill(&mut self, node: u8) {
        tokio::task::spawn_blocking(move || broker("kill", node))
            .await
            .expect("kill");
        self.0.push(node);
    }

    async fn stop(&mut self, node: u8) {
        tokio::task::spawn_blocking(move || broker("stop", node))
            .await
            .expect("stop");
        self.0.push(node);
    }

    async fn start(&mut self, node: u8) {
        tokio::task::spawn_blocking(move || broker("start", node))
            .await
            .expect("start");
        self.0.retain(|n| *n != node);
    }
}

impl Drop for Down {
    fn drop(&mut self) {
        for node in std::mem::take(&mut self.0) {
            eprintln!("starting broker {node} again after a failed test");
            let _ = std::process::Command::new(repo_root().join("scripts/services.sh"))
                .arg("kafka-start")
                .arg(node.to_string())
                .status();
        }
    }
}

fn metadata_client() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .expect("Kafka client")
}

/// Partitions led by each broker (node id = its number in `scripts/services.sh`).
fn leaders(topic: &str) -> BTreeMap<i32, usize> {
    let metadata = metadata_client()
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .expect("topic metadata");
    let mut counts = BTreeMap::new();
    for p in metadata.topics().iter().flat_map(|t| t.partitions()) {
        *counts.entry(p.leader()).or_insert(0) += 1;
    }
    counts
}

/// Whether every partition of `topic` has all three replicas in sync.
fn fully_replicated(topic: &str) -> bool {
    let Ok(metadata) = metadata_client().fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return false;
    };
    let partitions: Vec<_> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions())
        .collect();
    !partitions.is_empty()
        && partitions
            .iter()
            .all(|p| p.isr().len() == usize::from(BROKERS) && p.replicas().len() == 3)
}

async fn wait_fully_replicated(topic: &str, within: Duration) -> Duration {
    let started = Instant::now();
    let wait = Deadline::new(
        within,
        format!("every partition of {topic} in sync on 3 brokers"),
    );
    while !tokio::task::block_in_place(|| fully_replicated(topic)) {
        wait.tick().await;
    }
    started.elapsed()
}

/// Waits until `more` records beyond `from` are in the inbound topic.
async fn wait_records(audit: &Audit, from: i64, more: i64, what: &str) {
    let wait = Deadline::new(Duration::from_secs(90), what.to_owned());
    while audit.inbound_end() < from + more {
        wait.tick().await;
    }
}

/// The broker leading most inbound partitions is killed with SIGKILL under load. Its partitions
/// move to the others (the services keep running, nothing restarts), it is started again later
/// and catches up: every push is acknowledged and replied to once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the three-broker cluster; scripts/test.sh runs it in the cluster stage"]
async fn cluster_the_busiest_leader_killed_under_load() {
    assert_cluster();
    let _serial = serial().await;
    let mut p = Pipeline::start("cluster-leader-kill", 2, &[]).await;
    assert!(fully_replicated(&p.inbound_topic), "RF 3 topics");
    let mut audit = Audit::new(&p);
    let push = p.push(900, 20.0, 30);
    wait_records(&audit, 0, 100, "100 records before the kill").await;
    let by_leader = leaders(&p.inbound_topic);
    let (&victim, &led) = by_leader
        .iter()
        .max_by_key(|(_, count)| **count)
        .expect("leaders");
    let mut down = Down::default();
    down.kill(u8::try_from(victim).expect("node id")).await;
    let killed_at = Instant::now();
    // Survival without a restart: the same ingest and consumers go on storing records.
    let before = audit.inbound_end();
    wait_records(&audit, before, 100, "100 more records with the leader dead").await;
    let recovered_in = killed_at.elapsed();
    down.start(u8::try_from(victim).expect("node id")).await;
    let rejoined_in = wait_fully_replicated(&p.inbound_topic, Duration::from_secs(120)).await;
    let push = push.finish(Duration::from_secs(180)).await;
    let spooled = p
        .ingest_metric("ingest_spool_appended_records_total", "")
        .await;
    say(format!(
        "e2e cluster-leader-kill: broker {victim} (leader of {led} of 6 partitions) killed; 100 \
         more records stored {:.1}s after the kill; back in sync {:.1}s after its restart; {spooled} \
         pushes spooled meanwhile; {} of {} pushes failed",
        recovered_in.as_secs_f64(),
        rejoined_in.as_secs_f64(),
        push.0.failed,
        push.0.sent
    ));
    assert_eq!(push.0.failed, 0, "a broker failure must not fail a push");
    let report = audit.settle(&mut p, &push, Duration::from_secs(180)).await;
    check(&report, &[]);
}

/// All three brokers restarted one after the other (clean stop, start, back in sync) under
/// load, as an upgrade does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the three-broker cluster; scripts/test.sh runs it in the cluster stage"]
async fn cluster_rolling_restart_under_load() {
    assert_cluster();
    let _serial = serial().await;
    let mut p = Pipeline::start("cluster-rolling", 2, &[]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(1200, 20.0, 30);
    wait_records(&audit, 0, 100, "100 records before the first restart").await;
    let mut down = Down::default();
    let started = Instant::now();
    for node in 1..=BROKERS {
        down.stop(node).await;
        let before = audit.inbound_end();
        wait_records(&audit, before, 40, "40 records while a broker is down").await;
        down.start(node).await;
        wait_fully_replicated(&p.inbound_topic, Duration::from_secs(120)).await;
    }
    let rolled_in = started.elapsed();
    let push = push.finish(Duration::from_secs(180)).await;
    say(format!(
        "e2e cluster-rolling: three brokers restarted in turn in {:.1}s; {} of {} pushes failed",
        rolled_in.as_secs_f64(),
        push.0.failed,
        push.0.sent
    ));
    assert_eq!(push.0.failed, 0, "a rolling restart must not fail a push");
    let report = audit.settle(&mut p, &push, Duration::from_secs(180)).await;
    check(&report, &[]);
}

/// Two of three brokers down: `min.insync.replicas` 2 cannot be met, so Kafka acknowledges
/// nothing. ingest must not answer `success` on the strength of one replica: the pushes go to
/// its spool (fsynced) instead, and once the brokers are back every push lands, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the three-broker cluster; scripts/test.sh runs it in the cluster stage"]
async fn cluster_two_brokers_down_nothing_acknowledged_on_one_replica() {
    assert_cluster();
    let _serial = serial().await;
    let mut p = Pipeline::start("cluster-min-isr", 2, &[]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(700, 20.0, 30);
    wait_records(&audit, 0, 100, "100 records before the outage").await;
    let spooled_before = p
        .ingest_metric("ingest_spool_appended_records_total", "")
        .await;
    let mut down = Down::default();
    down.kill(2).await;
    down.kill(3).await;
    // The outage's length is the scenario, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let spooled = p
        .ingest_metric("ingest_spool_appended_records_total", "")
        .await
        - spooled_before;
    down.start(2).await;
    down.start(3).await;
    let rejoined_in = wait_fully_replicated(&p.inbound_topic, Duration::from_secs(180)).await;
    let push = push.finish(Duration::from_secs(240)).await;
    say(format!(
        "e2e cluster-min-isr: two brokers down for 20s; {spooled} pushes spooled while Kafka could \
         not meet min.insync.replicas; in sync {:.1}s after the restart; {} of {} pushes failed",
        rejoined_in.as_secs_f64(),
        push.0.failed,
        push.0.sent
    ));
    assert!(
        spooled > 0.0,
        "with min.insync.replicas unmet, pushes must go to the spool, not be acknowledged"
    );
    assert_eq!(push.0.failed, 0);
    let report = audit.settle(&mut p, &push, Duration::from_secs(240)).await;
    check(&report, &["window_closed"]);
}

/// A consumer process joins the group while traffic flows on the cluster: the partitions are
/// shared anew and nothing is lost or replied twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the three-broker cluster; scripts/test.sh runs it in the cluster stage"]
async fn cluster_a_consumer_added_while_traffic_flows() {
    assert_cluster();
    let _serial = serial().await;
    let mut p = Pipeline::start("cluster-scale-out", 1, &["--latency", "20ms"]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(600, 30.0, 40);
    wait_records(&audit, 0, 150, "150 records before the new consumer").await;
    p.start_consumer().await;
    p.wait_group_stable().await;
    let push = push.finish(Duration::from_secs(120)).await;
    assert_eq!(push.0.failed, 0);
    let report = audit.settle(&mut p, &push, Duration::from_secs(120)).await;
    say(format!(
        "e2e cluster-scale-out: a second consumer joined mid-stream; {} records, {} replies",
        report.kafka_records, report.sent
    ));
    check(&report, &[]);
}
