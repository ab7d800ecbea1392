//! The send ledger's `sent` mark on a Redis Cluster, whose replicas receive writes after the
//! primary answered: a record's outcome is final only once a replica holds the mark, and when no
//! replica answers in time the mark is kept on the primary and replies go on.
//!
//! The replicas are frozen (SIGSTOP) rather than stopped, so they keep their place in the cluster
//! and resume where they were; a guard thaws them whatever happens to the test.

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::helpers::*;

/// The tests that freeze the replicas run one at a time.
static FROZEN_REPLICAS: Mutex<()> = Mutex::const_new(());

const REPLY: &str =
    "[[rule]]\nname = \"r\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"answer\"\n";

/// Every replica of the cluster, frozen with SIGSTOP until [`Frozen::thaw`] or drop.
struct Frozen(Vec<String>);

impl Frozen {
    fn replicas() -> Frozen {
        let mut pids = Vec::new();
        for url in redis_cluster_nodes().split(',') {
            let mut conn = redis::Client::open(url)
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(2)))
                .expect("every node of the cluster answers");
            let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn).expect("ROLE");
            if role.first() != Some(&redis::Value::BulkString(b"slave".to_vec())) {
                continue;
            }
            let info: String = redis::cmd("INFO")
                .arg("server")
                .query(&mut conn)
                .expect("INFO server");
            let pid = info
                .lines()
                .find_map(|l| l.strip_prefix("process_id:"))
                .expect("INFO server names the process")
                .trim()
                .to_owned();
            pids.push(pid);
        }
        assert_eq!(pids.len(), 3, "three replicas, one per primary");
        let frozen = Frozen(pids);
        for pid in &frozen.0 {
            signal("-STOP", pid);
        }
        frozen
    }

    fn thaw(&mut self) {
        for pid in std::mem::take(&mut self.0) {
            signal("-CONT", &pid);
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.thaw();
    }
}

/// Processes a record of another user first, so the ledger's and the windows' scripts are loaded:
/// the cluster client loads a script on every node, replicas included, which would wait for a
/// frozen one.
async fn warm_up(services: &consumer::startup::Services) {
    let outcome = services
        .processor
        .process(&text("o-warm-up", "0", "q"))
        .await
        .expect("processed");
    assert_eq!(outcome, replied(1));
}

fn signal(which: &str, pid: &str) {
    let status = Command::new("kill").args([which, pid]).status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "kill {which} {pid} (a replica of the test cluster)"
    );
}

#[tokio::test]
async fn a_reply_is_final_only_once_a_replica_holds_its_sent_mark() {
    let _alone = FROZEN_REPLICAS.lock().await;
    let mut h = Harness::new(REPLY).await;
    // Long enough that the wait outlasts the freeze; the bounds that must stay above it with it.
    h.settings.ledger.sent_replica_timeout = Duration::from_secs(20);
    h.settings.redis.command_timeout = Duration::from_secs(25);
    h.settings.ledger.sending_lease = Duration::from_secs(60);
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 2).await;
    let services = h.services().await;
    warm_up(&services).await;
    let mut frozen = Frozen::replicas();
    let processing = tokio::spawn(async move {
        let outcome = services
            .processor
            .process(&text("o-replicated", "1", "q"))
            .await;
        (outcome, Instant::now())
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            received(&h.wechat, SEND).await.len() == 2
        })
        .await,
        "the reply went out"
    );
    // Ample time to write the mark on the primary; no replica can acknowledge it meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !processing.is_finished(),
        "the record's outcome was final while no replica could hold its sent mark"
    );
    let thawed_at = Instant::now();
    frozen.thaw();
    let (outcome, finished_at) = tokio::time::timeout(Duration::from_secs(30), processing)
        .await
        .expect("the record finishes once the replicas answer")
        .expect("the task ran");
    assert_eq!(outcome.expect("processed"), replied(1));
    assert!(finished_at >= thawed_at);
}

#[tokio::test]
async fn with_no_replica_answering_the_mark_stays_on_the_primary_and_replies_go_on() {
    let _alone = FROZEN_REPLICAS.lock().await;
    let h = Harness::new(REPLY).await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 2).await;
    let services = h.services().await;
    warm_up(&services).await;
    let env = text("o-unreplicated", "1", "q");
    let mut frozen = Frozen::replicas();
    let first = services.processor.process(&env).await.expect("processed");
    frozen.thaw();
    assert_eq!(
        first,
        replied(1),
        "the wait ends after ledger.sent_replica_timeout"
    );
    // The redelivery finds the mark the primary kept: nothing is sent twice (the fake API
    // expects exactly one send besides the warm-up's).
    let again = services.processor.process(&env).await.expect("processed");
    assert_eq!(
        again,
        consumer::processor::Outcome::Replied {
            sent: 0,
            already_sent: 1
        }
    );
}
