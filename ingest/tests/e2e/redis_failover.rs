//! The pipeline on a Redis Cluster (three primaries with a replica each) when the primary holding
//! most of the scenario's keys is killed with SIGKILL under load, as a lost machine would be: its
//! replica is promoted after `cluster-node-timeout`, and meanwhile the slots it served answer
//! errors.
//!
//! Needs the local Redis Cluster (`scripts/services.sh redis-cluster-up`) and
//! `WXKF_TEST_REDIS_CLUSTER` naming its nodes, with the Kafka of `WXKF_TEST_KAFKA`:
//! `scripts/test.sh` runs it in its Redis Cluster stage with `--ignored`. Without the variable it
//! fails at once; it never passes without the cluster.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::audit::Audit;
use super::pipeline::{Pipeline, Redis};
use super::procs::repo_root;
use super::report::check;
use super::scenarios::WINDOW_REFUSALS;
use super::{say, serial, Deadline};

/// The node URLs of the Redis Cluster; fails the test when unset.
fn node_urls() -> Vec<String> {
    let list = std::env::var("WXKF_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
        panic!(
            "WXKF_TEST_REDIS_CLUSTER is not set: start a Redis Cluster (scripts/services.sh \
             redis-cluster-up) and set it to its node URLs, comma-separated; scripts/test.sh does"
        )
    });
    list.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

fn connect(url: &str) -> Option<redis::Connection> {
    redis::Client::open(url)
        .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
        .ok()
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
struct Node {
    port: u16,
    primary: bool,
    failed: bool,
    slots: Vec<(u16, u16)>,
}

/// The cluster as the first node that answers sees it.
fn cluster_nodes() -> Vec<Node> {
    let text: String = node_urls()
        .iter()
        .filter_map(|url| connect(url))
        .find_map(|mut conn| redis::cmd("CLUSTER").arg("NODES").query(&mut conn).ok())
        .expect("a node of the Redis Cluster answers");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let address = fields[1].split('@').next().unwrap_or_default();
            let flags: Vec<&str> = fields[2].split(',').collect();
            let slots = fields
                .iter()
                .skip(8)
                .filter(|r| !r.starts_with('['))
                .filter_map(|r| match r.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => Some((r.parse().ok()?, r.parse().ok()?)),
                })
                .collect();
            Node {
                port: address
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or_default(),
                primary: flags.contains(&"master"),
                failed: flags.contains(&"fail") || flags.contains(&"fail?"),
                slots,
            }
        })
        .collect()
}

/// Every node up, as many replicas as primaries.
fn whole() -> bool {
    let nodes = cluster_nodes();
    let primaries = nodes.iter().filter(|n| n.primary && !n.failed).count();
    let replicas = nodes.iter().filter(|n| !n.primary && !n.failed).count();
    nodes.iter().all(|n| !n.failed) && primaries > 0 && primaries == replicas
}

async fn wait_whole(within: Duration) -> Duration {
    let started = Instant::now();
    let wait = Deadline::new(
        within,
        "the Redis Cluster whole: every node up, a replica each",
    );
    while !tokio::task::block_in_place(whole) {
        wait.tick().await;
    }
    started.elapsed()
}

/// How many of the scenario's keys each primary holds (by port).
fn keys_per_primary(prefix: &str) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for node in cluster_nodes()
        .into_iter()
        .filter(|n| n.primary && !n.failed)
    {
        let Some(mut conn) = connect(&format!("redis://127.0.0.1:{}/", node.port)) else {
            continue;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut conn)
            .unwrap_or_default();
        counts.insert(node.port, keys.len());
    }
    counts
}

/// The script's node number (1..6) of the node on `port` (node 1 on `WXKF_REDIS_CLUSTER_PORT`,
/// default 7000).
fn node_number(port: u16) -> u16 {
    let base: u16 = std::env::var("WXKF_REDIS_CLUSTER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(7000);
    assert!(
        (base..base + 6).contains(&port),
        "node 127.0.0.1:{port} is not one of scripts/services.sh's (node 1 on {base}); set \
         WXKF_REDIS_CLUSTER_PORT as when the cluster was started"
    );
    port - base + 1
}

/// `scripts/services.sh redis-{action} N`, blocking.
fn node(action: &str, number: u16) {
    let output = std::process::Command::new(repo_root().join("scripts/services.sh"))
        .arg(format!("redis-{action}"))
        .arg(number.to_string())
        .output()
        .expect("running scripts/services.sh");
    assert!(
        output.status.success(),
        "scripts/services.sh redis-{action} {number}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A node killed by the scenario, started again when it ends, whatever happens to the test.
#[derive(Debug)]
struct Killed(Option<u16>);

impl Killed {
    async fn kill(number: u16) -> Killed {
        tokio::task::spawn_blocking(move || node("kill", number))
            .await
            .expect("kill");
        Killed(Some(number))
    }

    async fn start(mut self) {
        if let Some(number) = self.0.take() {
            tokio::task::spawn_blocking(move || node("start", number))
                .await
                .expect("start");
        }
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        if let Some(number) = self.0.take() {
            eprintln!("starting redis node {number} again after a failed test");
            let _ = std::process::Command::new(repo_root().join("scripts/services.sh"))
                .arg("redis-start")
                .arg(number.to_string())
                .status();
        }
    }
}

/// `kill -9` of a Redis Cluster primary mid-stream, with ingest and two consumers on the cluster
/// and WeChat's pushes flowing. ingest answers every push (failing open, counted, while the slots
/// have no primary), the consumers retry what Redis refused, the replica is promoted, and the
/// audit holds: every acknowledged push in Kafka, every reply sent once, each user's in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster; scripts/test.sh runs it in its Redis Cluster stage"]
async fn redis_primary_killed_under_load_loses_and_repeats_nothing() {
    let nodes = node_urls().join(",");
    let _serial = serial().await;
    wait_whole(Duration::from_secs(60)).await;
    let mut p = Pipeline::start_on(Redis::Cluster(nodes), "redis-failover", 2, &[]).await;
    let mut audit = Audit::new(&p);
    let push = p.push(900, 30.0, 40);
    let wait = Deadline::new(Duration::from_secs(90), "150 records before the kill");
    while audit.inbound_end() < 150 {
        wait.tick().await;
    }
    // The primary with most of this scenario's keys (dedup marks, ledger entries, windows).
    let held = tokio::task::block_in_place(|| keys_per_primary(&format!("{}:", p.id)));
    let (&victim, &keys) = held
        .iter()
        .max_by_key(|(_, n)| **n)
        .expect("the cluster has primaries");
    let victim_slots = tokio::task::block_in_place(cluster_nodes)
        .into_iter()
        .find(|n| n.port == victim)
        .map(|n| n.slots)
        .expect("the victim's slots");
    let unchecked_before = p.ingest_metric("ingest_unchecked_records_total", "").await;
    let killed = Killed::kill(node_number(victim)).await;
    let killed_at = Instant::now();

    // Recovered: another node, the promoted replica, serves the victim's slots.
    let wait = Deadline::new(Duration::from_secs(60), "the victim's replica promoted");
    while !tokio::task::block_in_place(|| {
        cluster_nodes().iter().any(|n| {
            n.primary && !n.failed && n.port != victim && n.slots.contains(&victim_slots[0])
        })
    }) {
        wait.tick().await;
    }
    let promoted_in = killed_at.elapsed();
    // And both services go on: records keep arriving without a restart of anything.
    let before = audit.inbound_end();
    let wait = Deadline::new(
        Duration::from_secs(60),
        "100 more records after the promotion",
    );
    while audit.inbound_end() < before + 100 {
        wait.tick().await;
    }
    let failed_open =
        p.ingest_metric("ingest_unchecked_records_total", "").await - unchecked_before;
    let dedup_errors = p.ingest_metric("ingest_dedup_errors_total", "").await;
    let mut consumer_retries = 0.0;
    for i in 0..p.consumers.len() {
        consumer_retries += p
            .consumer_metric(i, "consumer_process_retries_total", "")
            .await;
    }
    killed.start().await;
    let rejoined_in = wait_whole(Duration::from_secs(60)).await;
    let push = push.finish(Duration::from_secs(180)).await;
    say(format!(
        "e2e redis-failover: primary 127.0.0.1:{victim} (holding {keys} of the scenario's keys) \
         killed; replica promoted {:.1}s after the kill; {failed_open} pushes failed open \
         (stored unchecked), {dedup_errors} dedup errors, {consumer_retries} consumer retries; \
         the old primary back as a replica {:.1}s after its restart; {} of {} pushes failed",
        promoted_in.as_secs_f64(),
        rejoined_in.as_secs_f64(),
        push.0.failed,
        push.0.sent
    ));
    assert_eq!(
        push.0.failed, 0,
        "ingest answers every push while a Redis primary fails over"
    );
    assert!(
        failed_open > 0.0,
        "pushes to the dead primary's slots fail open (stored unchecked, counted)"
    );
    let report = audit.settle(&mut p, &push, Duration::from_secs(180)).await;
    // Retried pushes that reach Kafka after the same user's later ones can meet a closed window.
    check(&report, WINDOW_REFUSALS);
}
