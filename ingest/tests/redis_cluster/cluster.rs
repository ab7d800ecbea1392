//! The Redis Cluster the tests run against: its node list from `WXKF_TEST_REDIS_CLUSTER` (as
//! `scripts/services.sh cluster-env` prints it), what it looks like right now, and its nodes
//! killed and restarted through `scripts/services.sh`, which must see the same variables the
//! cluster was started with (`WXKF_REDIS_CLUSTER_PORT`, `WXKF_CLUSTER_STATE_DIR`).
//!
//! Without the variable, or with a cluster that does not answer, every test fails: a test that
//! passes without a cluster would prove nothing.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use ingest::config::Settings;
use secrecy::SecretString;
use tokio::sync::RwLock;

use crate::helpers::test_settings;

/// Tests that only use the cluster share it; the failover test, which kills a primary, runs
/// alone.
pub static TOPOLOGY: RwLock<()> = RwLock::const_new(());

/// The node URLs; fails the test when the variable is unset.
pub fn nodes() -> Vec<String> {
    let list = std::env::var("WXKF_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
        panic!(
            "WXKF_TEST_REDIS_CLUSTER is not set: start a Redis Cluster (scripts/services.sh \
             redis-cluster-up) and set it to its node URLs, comma-separated"
        )
    });
    let nodes: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(!nodes.is_empty(), "WXKF_TEST_REDIS_CLUSTER lists no node");
    nodes
}

/// Ingest's test settings with the cluster instead of the single Redis.
pub fn cluster_settings() -> Settings {
    let mut settings = test_settings();
    settings.redis.url = SecretString::from("");
    settings.redis.cluster_nodes = Some(SecretString::from(nodes().join(",")));
    // The cluster's slot map is fetched on the first connection; that must fit in the bound.
    assert_cluster_ok();
    settings
}

fn port_of(url: &str) -> u16 {
    url.rsplit(':')
        .next()
        .and_then(|p| p.trim_end_matches('/').parse().ok())
        .unwrap_or_else(|| panic!("no port in the node URL {url}"))
}

/// A connection to the first node that answers.
pub fn any_node() -> redis::Connection {
    for url in nodes() {
        let Ok(client) = redis::Client::open(url.as_str()) else {
            continue;
        };
        if let Ok(conn) = client.get_connection_with_timeout(Duration::from_secs(1)) {
            return conn;
        }
    }
    panic!("no node of WXKF_TEST_REDIS_CLUSTER answers: is the Redis Cluster running?")
}

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone)]
pub struct Node {
    pub port: u16,
    pub primary: bool,
    pub failed: bool,
    /// Slot ranges served (primaries only).
    pub slots: Vec<(u16, u16)>,
}

pub fn cluster_nodes() -> Vec<Node> {
    let text: String = redis::cmd("CLUSTER")
        .arg("NODES")
        .query(&mut any_node())
        .expect("CLUSTER NODES");
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
                .map(|r| match r.split_once('-') {
                    Some((a, b)) => (a.parse().unwrap(), b.parse().unwrap()),
                    None => (r.parse().unwrap(), r.parse().unwrap()),
                })
                .collect();
            Node {
                port: port_of(address),
                primary: flags.contains(&"master"),
                failed: flags.contains(&"fail") || flags.contains(&"fail?"),
                slots,
            }
        })
        .collect()
}

/// The slot of `key`, as the cluster computes it.
pub fn slot(key: &str) -> u16 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query(&mut any_node())
        .expect("CLUSTER KEYSLOT")
}

/// Fails unless the cluster is whole: state ok, three primaries and three replicas, none failed.
pub fn assert_cluster_ok() {
    let info: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query(&mut any_node())
        .expect("CLUSTER INFO");
    assert!(
        info.lines().any(|l| l.trim() == "cluster_state:ok"),
        "the Redis Cluster is not ok:\n{info}"
    );
}

/// Waits (bounded) until the cluster is whole again after a failure: state ok on the node asked,
/// every node up, as many replicas as primaries.
pub fn wait_until_whole(within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let nodes = cluster_nodes();
        let primaries = nodes.iter().filter(|n| n.primary && !n.failed).count();
        let replicas = nodes.iter().filter(|n| !n.primary && !n.failed).count();
        let ok = nodes.iter().all(|n| !n.failed) && primaries == replicas && primaries > 0;
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the Redis Cluster is not whole after {within:?}: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The primary that serves `slot`.
pub fn primary_of(slot: u16) -> Node {
    cluster_nodes()
        .into_iter()
        .find(|n| n.primary && !n.failed && n.slots.iter().any(|(a, b)| (*a..=*b).contains(&slot)))
        .unwrap_or_else(|| panic!("no live primary serves slot {slot}"))
}

/// The replica of the primary on `port` is caught up with it: every write the primary
/// acknowledged is on the replica too (`WAIT` covers only the caller's own writes, so compare
/// the replication offsets).
pub fn wait_replicated(port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).expect("url");
    let mut conn = client.get_connection().expect("the primary answers");
    loop {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut conn)
            .expect("INFO replication");
        let field = |name: &str| -> Vec<i64> {
            info.lines()
                .filter_map(|l| {
                    if let Some(v) = l.strip_prefix(&format!("{name}:")) {
                        return v.trim().parse().ok();
                    }
                    // slaveN:ip=...,port=...,state=online,offset=123,lag=0
                    if name == "replica_offset" && l.starts_with("slave") {
                        return l
                            .split(',')
                            .find_map(|kv| kv.strip_prefix("offset="))
                            .and_then(|v| v.parse().ok());
                    }
                    None
                })
                .collect()
        };
        let primary = field("master_repl_offset").first().copied().unwrap_or(-1);
        let replicas = field("replica_offset");
        if !replicas.is_empty() && replicas.iter().all(|o| *o >= primary) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the replica of 127.0.0.1:{port} did not catch up within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `scripts/services.sh` with `args` (e.g. `redis-kill 2`).
pub fn services(args: &[&str]) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/services.sh");
    let status = Command::new(&script)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(status.success(), "scripts/services.sh {args:?} failed");
}

/// The script's node number (1..6) of the node on `port`: node 1 listens on
/// `WXKF_REDIS_CLUSTER_PORT` (default 7000), node N on that + N - 1.
pub fn node_number(port: u16) -> u16 {
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
