//! What only a cluster can show: the keys a script uses together share a slot, and a node list
//! of the wrong kind refuses the start.

use consumer::startup::Services;
use secrecy::SecretString;

use crate::helpers::*;

async fn keyslot(conn: &mut common::redis::RedisConnection, key: &str) -> i64 {
    redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(key)
        .query_async(conn)
        .await
        .expect("CLUSTER KEYSLOT")
}

/// Why the services refuse to start with `settings`.
async fn refusal(settings: &consumer::config::Settings, h: &Harness) -> String {
    match Services::build(settings, &h.metrics).await {
        Ok(_) => panic!("the services started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test]
async fn a_token_and_its_refresh_lock_share_a_slot() {
    let h = Harness::new("").await;
    let mut conn = redis_connection(&h.settings).await;
    let prefix = &h.settings.redis.key_prefix;
    for app in ["demo", "shop-2", "a"] {
        let token = keyslot(&mut conn, &format!("{prefix}token:{{{app}}}")).await;
        let lock = keyslot(&mut conn, &format!("{prefix}token:{{{app}}}:lock")).await;
        assert_eq!(token, lock, "the store script uses both in one call");
    }
}

#[tokio::test]
async fn a_node_list_that_mixes_in_a_standalone_server_refuses_the_start() {
    let h = Harness::new("").await;
    let mut settings = h.settings.clone();
    let mut nodes: Vec<String> = redis_cluster_nodes()
        .split(',')
        .map(str::to_owned)
        .collect();
    nodes.insert(2, redis_url());
    settings.redis.cluster_nodes = Some(SecretString::from(nodes.join(",")));
    let refused = refusal(&settings, &h).await;
    assert!(
        refused.contains("node 3") && refused.contains("not in cluster mode"),
        "{refused}"
    );
}

#[tokio::test]
async fn a_cluster_node_given_as_the_single_url_refuses_the_start() {
    let h = Harness::new("").await;
    let mut settings = h.settings.clone();
    let first = redis_cluster_nodes()
        .split(',')
        .next()
        .expect("a node")
        .to_owned();
    settings.redis.url = SecretString::from(first);
    settings.redis.cluster_nodes = None;
    let refused = refusal(&settings, &h).await;
    assert!(refused.contains("redis.cluster_nodes"), "{refused}");
}
