//! The Redis that `redis.url` or `redis.cluster_nodes` names: one client and one connection type
//! for either, and the start-up check that the nodes really are what the configuration says.
//!
//! The same as ingest's `redis_target` (the crates share no Redis code: `common` has no Redis
//! dependency). Scripts that touch several keys need those keys in one hash slot; the key
//! layout, with each key's hash tag, is in docs/redis-keys.md.
//!
//! The check at start refuses what is certainly wrong: a node that answers and is of the other
//! kind (a standalone server in the cluster list, a cluster node given as `redis.url`), since
//! every command to a slot it does not serve would fail with MOVED for as long as the process
//! runs. A listed node that does not answer is a warning; connecting needs one that does.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use secrecy::{ExposeSecret, SecretString};

use crate::config::RedisTarget;

/// A client for one server or for a Redis Cluster; opens [`RedisConnection`]s.
#[derive(Clone)]
pub enum RedisClient {
    Single(redis::Client),
    Cluster(ClusterClient),
}

impl std::fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The clients hold the URLs' passwords: print the kind only.
        f.write_str(match self {
            RedisClient::Single(_) => "RedisClient::Single",
            RedisClient::Cluster(_) => "RedisClient::Cluster",
        })
    }
}

impl RedisClient {
    /// Parses the URLs; connects nothing. With `ca_file` (for `rediss://` URLs), that CA is
    /// trusted instead of the platform's roots.
    pub fn new(
        target: &RedisTarget,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> RedisResult<RedisClient> {
        let certs = match ca_file {
            Some(path) => Some(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(std::fs::read(path).map_err(|e| {
                    redis::RedisError::from((
                        redis::ErrorKind::InvalidClientConfig,
                        "reading redis.ca_file",
                        format!("{}: {e}", path.display()),
                    ))
                })?),
            }),
            None => None,
        };
        Ok(match target {
            RedisTarget::Single(url) => RedisClient::Single(match certs {
                Some(certs) => redis::Client::build_with_tls(url.expose_secret(), certs)?,
                None => redis::Client::open(url.expose_secret())?,
            }),
            RedisTarget::Cluster(nodes) => RedisClient::Cluster({
                let mut builder =
                    ClusterClient::builder(nodes.iter().map(|n| n.expose_secret().to_owned()));
                if let Some(certs) = certs {
                    builder = builder.certs(certs);
                }
                builder
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    // A command to a primary that just died is retried on the promoted replica
                    // once the slot map is refreshed; the caller's bound (`command_timeout`) cuts
                    // the retries short, and the record is retried later meanwhile.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()?
            }),
        })
    }

    /// Opens a connection that reconnects by itself once established: the connection manager
    /// for one server; for a cluster, a connection to every primary that follows slot moves and
    /// failovers. Fails when no node can be reached.
    pub async fn connect(&self, timeout: Duration) -> RedisResult<RedisConnection> {
        Ok(match self {
            RedisClient::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(2)
                    .set_max_delay(1000);
                RedisConnection::Single(
                    ConnectionManager::new_with_config(client.clone(), config).await?,
                )
            }
            RedisClient::Cluster(client) => {
                RedisConnection::Cluster(client.get_async_connection().await?)
            }
        })
    }
}

/// A connection to one server or to a Redis Cluster; cheap to clone (multiplexed).
#[derive(Clone)]
pub enum RedisConnection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RedisConnection::Single(_) => "RedisConnection::Single",
            RedisConnection::Cluster(_) => "RedisConnection::Cluster",
        })
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConnection::Single(c) => c.req_packed_command(cmd),
            RedisConnection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConnection::Single(c) => c.req_packed_commands(cmd, offset, count),
            RedisConnection::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConnection::Single(c) => c.get_db(),
            RedisConnection::Cluster(c) => c.get_db(),
        }
    }
}

/// What a node said about itself at start.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NodeKind {
    Cluster,
    Standalone,
    /// The node refused our password (a configuration error, not an outage).
    AuthenticationFailed,
    /// No answer within the bound, or an error; the reason, without the URL.
    Unreachable(String),
}

/// Asks every configured node, in parallel and each within `bound`, whether it runs in cluster
/// mode. Returns the warnings to log (nodes that did not answer), or the error that refuses the
/// start (a node of the wrong kind; a wrong password).
pub fn check_nodes(target: &RedisTarget, bound: Duration) -> Result<Vec<String>, String> {
    let (urls, want_cluster): (Vec<&SecretString>, bool) = match target {
        RedisTarget::Single(url) => (vec![url], false),
        RedisTarget::Cluster(nodes) => (nodes.iter().collect(), true),
    };
    let kinds: Vec<(String, NodeKind)> = std::thread::scope(|scope| {
        let probes: Vec<_> = urls
            .iter()
            .map(|url| scope.spawn(move || probe(url.expose_secret(), bound)))
            .collect();
        probes
            .into_iter()
            .map(|p| {
                p.join().unwrap_or_else(|_| {
                    ("?".into(), NodeKind::Unreachable("probe panicked".into()))
                })
            })
            .collect()
    });
    let mut warnings = Vec::new();
    for (i, (address, kind)) in kinds.into_iter().enumerate() {
        let name = if want_cluster {
            format!("redis.cluster_nodes node {} ({address})", i + 1)
        } else {
            format!("redis.url ({address})")
        };
        match kind {
            NodeKind::Cluster if !want_cluster => {
                return Err(format!(
                "{name} is a Redis Cluster node (cluster_enabled:1): list the cluster's nodes in \
                     redis.cluster_nodes and leave redis.url empty"
            ))
            }
            NodeKind::Standalone if want_cluster => {
                return Err(format!(
                    "{name} is not in cluster mode (cluster_enabled:0): redis.cluster_nodes must \
                     list nodes of one Redis Cluster only; a single server goes in redis.url"
                ))
            }
            NodeKind::AuthenticationFailed => {
                return Err(format!(
                    "{name} refused the credentials: check the user and password in the URL"
                ))
            }
            NodeKind::Unreachable(reason) => {
                warnings.push(format!("{name} did not answer at start ({reason})"))
            }
            NodeKind::Cluster | NodeKind::Standalone => {}
        }
    }
    Ok(warnings)
}

/// `INFO cluster` on one node, connecting and reading within `bound`.
fn probe(url: &str, bound: Duration) -> (String, NodeKind) {
    let client = match redis::Client::open(url) {
        Ok(client) => client,
        Err(_) => return ("?".into(), NodeKind::Unreachable("not a Redis URL".into())),
    };
    let address = client.get_connection_info().addr.to_string();
    let answer = (|| -> RedisResult<String> {
        let mut conn = client.get_connection_with_timeout(bound)?;
        conn.set_read_timeout(Some(bound))?;
        conn.set_write_timeout(Some(bound))?;
        redis::cmd("INFO").arg("cluster").query(&mut conn)
    })();
    let kind = match answer {
        Ok(info) if info.lines().any(|l| l.trim() == "cluster_enabled:1") => NodeKind::Cluster,
        Ok(_) => NodeKind::Standalone,
        Err(e) if e.kind() == redis::ErrorKind::AuthenticationFailed => {
            NodeKind::AuthenticationFailed
        }
        Err(e) if e.is_timeout() => NodeKind::Unreachable(format!("no answer within {bound:?}")),
        Err(e) => NodeKind::Unreachable(format!("{:?}", e.kind())),
    };
    (address, kind)
}
