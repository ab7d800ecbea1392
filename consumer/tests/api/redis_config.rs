//! `redis.url` or `redis.cluster_nodes`, never both; clear refusals that never print a password.

use common::redis::RedisTarget;
use secrecy::{ExposeSecret, SecretString};

use crate::helpers::*;

#[tokio::test]
async fn redis_is_one_server_or_a_cluster_never_both() {
    let h = Harness::new("").await;
    let mut cluster = h.settings.clone();
    cluster.redis.url = SecretString::from("");
    // As the environment passes it: one string, spaces and a trailing comma included.
    cluster.redis.cluster_nodes = Some(SecretString::from(
        " redis://:hunter2@127.0.0.1:7000 , redis://127.0.0.1:7001,",
    ));
    cluster.validate().expect("a cluster alone is valid");
    match cluster.redis.target().expect("a cluster") {
        RedisTarget::Cluster(nodes) => {
            let nodes: Vec<&str> = nodes.iter().map(|n| n.expose_secret()).collect();
            assert_eq!(
                nodes,
                ["redis://:hunter2@127.0.0.1:7000", "redis://127.0.0.1:7001"]
            );
        }
        other => panic!("expected a cluster, got {other:?}"),
    }
    assert!(!format!("{cluster:?}").contains("hunter2"));

    type Breakage = fn(&mut consumer::config::Settings);
    let refusals: &[(&str, Breakage)] = &[
        ("both set", |s| {
            s.redis.cluster_nodes = Some(SecretString::from("redis://127.0.0.1:7000"))
        }),
        ("set redis.url", |s| s.redis.url = SecretString::from(" ")),
        ("node 2 is not a redis://", |s| {
            s.redis.url = SecretString::from("");
            s.redis.cluster_nodes = Some(SecretString::from("redis://a:7000,b:7001"));
        }),
        ("database 3", |s| {
            s.redis.url = SecretString::from("");
            s.redis.cluster_nodes = Some(SecretString::from("redis://:hunter2@a:7000/3"));
        }),
        ("must not contain braces", |s| {
            s.redis.key_prefix = "wxkf:{tenant}:".into()
        }),
        // The client would give up on the WAIT's answer before Redis gives it.
        ("ledger.sent_replica_timeout", |s| {
            s.ledger.sent_replica_timeout = s.redis.command_timeout
        }),
        ("ledger.sent_replica_timeout", |s| {
            s.ledger.sent_replica_timeout = std::time::Duration::ZERO
        }),
    ];
    for (reason, break_it) in refusals {
        let mut settings = h.settings.clone();
        break_it(&mut settings);
        let refused = settings.validate().expect_err("refused").to_string();
        assert!(
            refused.contains(reason),
            "expected '{reason}' in: {refused}"
        );
        assert!(!refused.contains("hunter2"), "{refused}");
    }
}
