//! Ingest against a real Redis Cluster (three primaries, one replica each): the dedup protocol on
//! every primary, concurrent duplicates, the start-up check of the node list, and a primary
//! killed under pushes.
//!
//! Needs `WXKF_TEST_REDIS_CLUSTER` (the node URLs), the real Kafka (`WXKF_TEST_KAFKA`) and the
//! single Redis (`WXKF_TEST_REDIS`, for the mixed-list check); fails, never skips, without them.
//! Run by scripts/test.sh in its Redis Cluster stage:
//! `cargo test -p ingest --features redis-cluster-tests --test redis_cluster`.
#![allow(clippy::unwrap_used)]

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

mod cluster;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::codec::Format;
use common::envelope::{DedupStatus, Envelope};
use common::DedupKey;
use ingest::dedup::{Claim, DedupStore, SignatureUse};
use ingest::Application;
use secrecy::SecretString;

use crate::cluster::*;
use crate::helpers::*;

#[tokio::test]
async fn claims_complete_and_release_on_every_primary() {
    let _shared = TOPOLOGY.read().await;
    let settings = cluster_settings();
    let store = DedupStore::new(settings.redis.clone()).unwrap();
    let mut primaries = HashSet::new();
    for i in 0..30 {
        let key = format!("app:{}:{i}", unique_msg_id());
        primaries.insert(primary_of(slot(&store.redis_key(&key))).port);
        let Claim::Acquired(token) = store.claim(&key).await.unwrap() else {
            panic!("a fresh key is free")
        };
        assert_eq!(store.claim(&key).await.unwrap(), Claim::Pending);
        if i % 2 == 0 {
            store.complete(&token).await.unwrap();
            assert_eq!(store.claim(&key).await.unwrap(), Claim::Done);
        } else {
            store.release(&token).await.unwrap();
            assert!(matches!(
                store.claim(&key).await.unwrap(),
                Claim::Acquired(_)
            ));
        }
    }
    assert_eq!(primaries.len(), 3, "the keys spread over every primary");
    let signature = unique("sig");
    for (body, expected) in [
        (&b"a"[..], SignatureUse::First),
        (b"a", SignatureUse::SameBody),
        (b"b", SignatureUse::OtherBody),
    ] {
        let found = store
            .record_signature(&signature, body, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(found, expected);
    }
    store.ping().await.unwrap();
}

#[tokio::test]
async fn concurrent_duplicates_publish_once_on_a_cluster() {
    let _shared = TOPOLOGY.read().await;
    let app = spawn_app_with(cluster_settings()).await;
    for round in 0..6 {
        let message = text_message(&format!("u-cluster-{round}"), "hello");
        let p = push(&message, Format::Json, PushMode::Safe, now());
        let answers = futures::future::join_all((0..8).map(|_| app.post("json", &p))).await;
        for answer in answers {
            assert_eq!(answer.status(), 200);
        }
    }
    let records = read_records(app.topic());
    assert_eq!(records.len(), 6, "one record per message");
    assert!(records
        .iter()
        .all(|(_, e)| e.v1().dedup == DedupStatus::Checked));
    assert_eq!(app.metric("ingest_unchecked_records_total", &[]), 0.0);
    app.stop().await;
}

#[tokio::test]
async fn a_node_list_that_mixes_in_a_standalone_server_refuses_the_start() {
    let _shared = TOPOLOGY.read().await;
    let mut settings = cluster_settings();
    let mut listed = nodes();
    listed.insert(1, redis_url());
    settings.redis.cluster_nodes = Some(SecretString::from(listed.join(",")));
    let refused = Application::build(settings, prometheus::Registry::new())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("node 2") && refused.contains("not in cluster mode"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_cluster_node_given_as_the_single_url_refuses_the_start() {
    let _shared = TOPOLOGY.read().await;
    let mut settings = test_settings();
    settings.redis.url = SecretString::from(nodes()[0].clone());
    let refused = Application::build(settings, prometheus::Registry::new())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("redis.url") && refused.contains("redis.cluster_nodes"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_listed_node_that_is_down_at_start_is_only_a_warning() {
    let _shared = TOPOLOGY.read().await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = cluster_settings();
    let mut listed = vec![format!("redis://127.0.0.1:{dead}")];
    listed.extend(nodes());
    settings.redis.cluster_nodes = Some(SecretString::from(listed.join(",")));
    let app = spawn_app_with(settings).await;
    let p = push(
        &text_message("u-dead-seed", "hi"),
        Format::Xml,
        PushMode::Safe,
        now(),
    );
    for _ in 0..2 {
        assert_eq!(app.post("xml", &p).await.status(), 200);
    }
    let records = read_records(app.topic());
    assert_eq!(
        records.len(),
        1,
        "deduplicated through the nodes that answer"
    );
    assert_eq!(records[0].1.v1().dedup, DedupStatus::Checked);
    app.stop().await;
}

/// `kill -9` of the primary that holds the test's keys, under pushes: every push is answered
/// `success` and stored; while the slot has no primary, pushes fail open (stored unchecked,
/// counted); once the replica is promoted, dedup works again, and a `done` mark that had reached
/// the replica before the kill still stops a retry. The node is restarted and rejoins.
#[tokio::test]
async fn a_primary_killed_under_pushes_fails_open_then_dedups_on_the_promoted_replica() {
    let _alone = TOPOLOGY.write().await;
    let settings = cluster_settings();
    wait_until_whole(Duration::from_secs(60));
    let app = spawn_app_with(settings).await;
    let prefix = app.settings.redis.key_prefix.clone();
    let victim = primary_of(slot(&format!("{prefix}probe"))).port;
    // The victim's slot ranges, asked before the kill: they stay the same when its replica takes
    // over, so messages whose dedup keys fall in them test the failed-over slots.
    let victim_slots = cluster_nodes()
        .into_iter()
        .find(|n| n.port == victim)
        .map(|n| n.slots)
        .unwrap();
    let on_victim = || message_in(&prefix, &victim_slots);
    let before = on_victim();
    let before_push = push(&before, Format::Json, PushMode::Safe, now());
    assert_eq!(app.post("json", &before_push).await.status(), 200);
    wait_replicated(victim, Duration::from_secs(10));

    services(&["redis-kill", &node_number(victim).to_string()]);
    let killed_at = Instant::now();
    let mut pushed = 1;
    let mut failed_open = 0;
    let recovered_after = loop {
        let unchecked = app.metric("ingest_unchecked_records_total", &[]);
        let p = push(&on_victim(), Format::Json, PushMode::Safe, now());
        let status = app.post("json", &p).await.status();
        assert_eq!(
            status, 200,
            "every push is answered success during the failover"
        );
        pushed += 1;
        if app.metric("ingest_unchecked_records_total", &[]) > unchecked {
            failed_open += 1;
        } else {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "no replica promoted within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        failed_open >= 1,
        "the pushes right after the kill fail open"
    );
    // The retry of a push acknowledged before the kill: its `done` mark was replicated.
    assert_eq!(app.post("json", &before_push).await.status(), 200);

    let records = read_records(app.topic());
    assert_eq!(
        records.len(),
        pushed,
        "every acknowledged push is stored, once"
    );
    let unchecked = records
        .iter()
        .filter(|(_, e)| e.v1().dedup == DedupStatus::Unchecked)
        .count();
    assert_eq!(unchecked, failed_open);
    assert_eq!(
        app.metric("ingest_unchecked_records_total", &[]),
        failed_open as f64
    );
    let before_copies = records
        .iter()
        .filter(|(_, Envelope::V1(r))| r.message == before)
        .count();
    assert_eq!(before_copies, 1, "the retry found the replicated done mark");
    println!(
        "failover: {pushed} pushes, {failed_open} failed open, dedup back after {recovered_after:?}"
    );
    app.stop().await;

    services(&["redis-start", &node_number(victim).to_string()]);
    wait_until_whole(Duration::from_secs(60));
}

/// A fresh message whose dedup key falls in one of `ranges` of slots.
fn message_in(prefix: &str, ranges: &[(u16, u16)]) -> common::Message {
    loop {
        let message = text_message("u-failover", "hello");
        let key = DedupKey::for_message("json", &message);
        let s = slot(&format!("{prefix}{}", key.as_str()));
        if ranges.iter().any(|(a, b)| (*a..=*b).contains(&s)) {
            return message;
        }
    }
}
