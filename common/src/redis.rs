//! The Redis deployment a service talks to — one server or a Redis Cluster — with one client and
//! one connection type for either, and the start-up check that the nodes really are what the
//! configuration says. Compiled with the `redis` feature only, so the wire contract itself stays
//! free of I/O; both services enable it.
//!
//! The check at start refuses what is certainly wrong: a node that answers and is of the other
//! kind (a standalone server in the cluster list, a cluster node given as the single URL), since
//! every command to a slot it does not serve would fail with MOVED for as long as the process
//! runs, and a node that refuses the credentials. A node that does not answer is only a
//! [`NodeWarning`]: what that means is the caller's to say (ingest fails open, the consumer
//! retries its records). The key layout of both services, with each key's hash tag, is in
//! docs/redis-keys.md.
//!
//! Every message names a node by its position or its address, never by its URL: a URL may
//! carry a password.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, RedisResult, Value};
use secrecy::{ExposeSecret, SecretString};

/// The Redis deployment a service's `redis.url` or `redis.cluster_nodes` names.
#[derive(Debug, Clone)]
pub enum RedisTarget {
    /// One server (or an endpoint that always leads to the current primary).
    Single(SecretString),
    /// The seed nodes of a Redis Cluster.
    Cluster(Vec<SecretString>),
}

/// Why `redis.url` and `redis.cluster_nodes` name no usable deployment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "redis.url and redis.cluster_nodes are both set; use one. For a Redis Cluster set \
         redis.cluster_nodes and set redis.url to an empty string ({url_variable}=)"
    )]
    BothSet { url_variable: &'static str },
    #[error("set redis.url (one Redis server) or redis.cluster_nodes (a Redis Cluster)")]
    NeitherSet,
    #[error("redis.cluster_nodes: node {position} is not a redis:// or rediss:// URL")]
    NotRedisScheme { position: usize },
    #[error("redis.cluster_nodes: node {position} is not a valid Redis URL")]
    InvalidUrl { position: usize },
    #[error(
        "redis.cluster_nodes: node {position} selects database {database}; a Redis Cluster has \
         database 0 only"
    )]
    NotDatabaseZero { position: usize, database: i64 },
}

impl RedisTarget {
    /// Which of `url` and `cluster_nodes` is used; exactly one must be set. An empty string is
    /// unset, so an environment variable can clear a defaults file's `url`: `url_variable` is
    /// that variable's name, for the message. `cluster_nodes` is one comma-separated string (an
    /// environment variable is never split into a list by the configuration loader).
    pub fn from_settings(
        url: &SecretString,
        cluster_nodes: Option<&SecretString>,
        url_variable: &'static str,
    ) -> Result<RedisTarget, TargetError> {
        let url = url.expose_secret().trim();
        let nodes: Vec<&str> = cluster_nodes
            .map(|n| {
                n.expose_secret()
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        match (url.is_empty(), nodes.is_empty()) {
            (false, false) => Err(TargetError::BothSet { url_variable }),
            (true, true) => Err(TargetError::NeitherSet),
            (false, true) => Ok(RedisTarget::Single(SecretString::from(url))),
            (true, false) => {
                for (i, node) in nodes.iter().enumerate() {
                    let position = i + 1;
                    if !(node.starts_with("redis://") || node.starts_with("rediss://")) {
                        return Err(TargetError::NotRedisScheme { position });
                    }
                    match redis::IntoConnectionInfo::into_connection_info(*node) {
                        Ok(info) if info.redis.db != 0 => {
                            return Err(TargetError::NotDatabaseZero {
                                position,
                                database: info.redis.db,
                            })
                        }
                        Ok(_) => {}
                        Err(_) => return Err(TargetError::InvalidUrl { position }),
                    }
                }
                Ok(RedisTarget::Cluster(
                    nodes.into_iter().map(SecretString::from).collect(),
                ))
            }
        }
    }

    /// Every URL: whether one is `rediss://` matters for `redis.ca_file`.
    pub fn urls(&self) -> impl Iterator<Item = &SecretString> {
        match self {
            RedisTarget::Single(url) => std::slice::from_ref(url).iter(),
            RedisTarget::Cluster(nodes) => nodes.iter(),
        }
    }
}

/// How hard a single-server connection tries to reconnect before a command fails: a service
/// that fails open wants to know soon, one that retries its records can wait a little longer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reconnect {
    pub retries: usize,
    pub max_delay_ms: u64,
}

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
                    // once the slot map is refreshed; the caller's own bound on the command cuts
                    // the retries short.
                    .retries(3)
                    .min_retry_wait(10)
                    .max_retry_wait(100)
                    .build()?
            }),
        })
    }

    /// Opens a connection that reconnects by itself once established: the connection manager
    /// for one server (trying as `reconnect` says); for a cluster, a connection to every primary
    /// that follows slot moves and failovers. Fails when no node can be reached.
    pub async fn connect(
        &self,
        timeout: Duration,
        reconnect: Reconnect,
    ) -> RedisResult<RedisConnection> {
        Ok(match self {
            RedisClient::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(timeout)
                    .set_response_timeout(timeout)
                    .set_number_of_retries(reconnect.retries)
                    .set_max_delay(reconnect.max_delay_ms);
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

/// A configured node, as the messages name it: its place in the configuration and its address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// 1-based position in `redis.cluster_nodes`; `None` for `redis.url`.
    pub position: Option<usize>,
    /// `host:port`, or `?` when the URL could not be read.
    pub address: String,
}

impl std::fmt::Display for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.position {
            Some(position) => write!(f, "redis.cluster_nodes node {position} ({})", self.address),
            None => write!(f, "redis.url ({})", self.address),
        }
    }
}

/// A node that did not answer the check at start; the start goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{node} did not answer at start ({reason})")]
pub struct NodeWarning {
    pub node: Node,
    /// Why, without the URL: a timeout or the error's kind.
    pub reason: String,
}

/// A node that answered and is certainly wrong for the configuration; the start stops.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeCheckError {
    #[error(
        "{0} is a Redis Cluster node (cluster_enabled:1): list the cluster's nodes in \
         redis.cluster_nodes and leave redis.url empty"
    )]
    ClusterNodeAsUrl(Node),
    #[error(
        "{0} is not in cluster mode (cluster_enabled:0): redis.cluster_nodes must list nodes of \
         one Redis Cluster only; a single server goes in redis.url"
    )]
    StandaloneInCluster(Node),
    #[error("{0} refused the credentials: check the user and password in the URL")]
    CredentialsRefused(Node),
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
/// mode (blocking: call it before the runtime's work starts, or from a blocking task). Returns
/// the nodes that did not answer, or the first node that refuses the start.
pub fn check_nodes(
    target: &RedisTarget,
    bound: Duration,
) -> Result<Vec<NodeWarning>, NodeCheckError> {
    let want_cluster = matches!(target, RedisTarget::Cluster(_));
    let kinds: Vec<(String, NodeKind)> = std::thread::scope(|scope| {
        let probes: Vec<_> = target
            .urls()
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
        let node = Node {
            position: want_cluster.then_some(i + 1),
            address,
        };
        match kind {
            NodeKind::Cluster if !want_cluster => {
                return Err(NodeCheckError::ClusterNodeAsUrl(node))
            }
            NodeKind::Standalone if want_cluster => {
                return Err(NodeCheckError::StandaloneInCluster(node))
            }
            NodeKind::AuthenticationFailed => return Err(NodeCheckError::CredentialsRefused(node)),
            NodeKind::Unreachable(reason) => warnings.push(NodeWarning { node, reason }),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> SecretString {
        SecretString::from(s)
    }

    #[test]
    fn exactly_one_of_url_and_cluster_nodes() {
        let both = RedisTarget::from_settings(
            &secret("redis://a:6379/"),
            Some(&secret("redis://b:7000")),
            "X__REDIS__URL",
        );
        assert_eq!(
            both.expect_err("refused"),
            TargetError::BothSet {
                url_variable: "X__REDIS__URL"
            }
        );
        let neither = RedisTarget::from_settings(&secret(" "), Some(&secret(" , ")), "X");
        assert_eq!(neither.expect_err("refused"), TargetError::NeitherSet);
        assert!(matches!(
            RedisTarget::from_settings(&secret("redis://a:6379/"), None, "X"),
            Ok(RedisTarget::Single(_))
        ));
    }

    #[test]
    fn cluster_nodes_are_split_trimmed_and_checked_by_position() {
        let ok = RedisTarget::from_settings(
            &secret(""),
            Some(&secret(" redis://a:7000 ,, rediss://:pw@b:7001 ")),
            "X",
        );
        match ok {
            Ok(RedisTarget::Cluster(nodes)) => assert_eq!(nodes.len(), 2),
            other => panic!("expected a cluster, got {other:?}"),
        }
        let scheme = RedisTarget::from_settings(
            &secret(""),
            Some(&secret("redis://a:7000,http://b:7001")),
            "X",
        );
        assert_eq!(
            scheme.expect_err("refused"),
            TargetError::NotRedisScheme { position: 2 }
        );
        let db =
            RedisTarget::from_settings(&secret(""), Some(&secret("redis://:pw@a:7000/3")), "X");
        let err = db.expect_err("refused");
        assert_eq!(
            err,
            TargetError::NotDatabaseZero {
                position: 1,
                database: 3
            }
        );
        assert!(!err.to_string().contains("pw"), "{err}");
    }

    #[test]
    fn node_messages_name_the_place_and_address_never_the_url() {
        let warning = NodeWarning {
            node: Node {
                position: Some(2),
                address: "127.0.0.1:7001".into(),
            },
            reason: "no answer within 1s".into(),
        };
        assert_eq!(
            warning.to_string(),
            "redis.cluster_nodes node 2 (127.0.0.1:7001) did not answer at start (no answer within 1s)"
        );
        let error = NodeCheckError::ClusterNodeAsUrl(Node {
            position: None,
            address: "127.0.0.1:7000".into(),
        });
        assert!(error
            .to_string()
            .starts_with("redis.url (127.0.0.1:7000) is a Redis Cluster node"));
    }
}
