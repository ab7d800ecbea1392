//! The consumer's connection to Redis, shared by the token broker, the send ledger, the reply
//! windows and the media cache.
//!
//! One multiplexed, self-reconnecting connection per process, to one server or to a Redis Cluster
//! ([`common::redis`], chosen by `redis.url` or `redis.cluster_nodes`). Every command is
//! bounded by the configured timeout; a slow or absent Redis is a [`StoreError`], which
//! processing treats as transient (the record is retried later, its offset not stored). Keys are
//! `<key_prefix><kind>:...`; no key ever holds a secret. In a cluster, the keys one script touches
//! share a hash tag; every key, its tag, writer and lifetime, and what an asynchronous failover
//! can lose (the send ledger's `sent` marks among them), are in docs/redis-keys.md.

use std::future::Future;
use std::time::Duration;

use crate::config::RedisSettings;
use common::redis::{
    check_nodes, NodeCheckError, Reconnect, RedisClient, RedisConnection, TargetError,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis answered something unexpected: {0}")]
    Unexpected(String),
    #[error("redis configuration: {0}")]
    Target(#[from] TargetError),
    #[error("redis configuration: {0}")]
    Nodes(#[from] NodeCheckError),
    #[error("the check of the Redis nodes at start stopped")]
    CheckStopped(#[source] tokio::task::JoinError),
}

/// A lost connection to one server is retried a little before a command fails: a record whose
/// processing fails is retried anyway, so a short wait costs less than a failed attempt.
const RECONNECT: Reconnect = Reconnect {
    retries: 2,
    max_delay_ms: 1000,
};

/// Bound on asking each configured node at start whether it runs in cluster mode.
const CHECK_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Store {
    conn: RedisConnection,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Store {
    /// Connects to what `settings` name, one server or a cluster (over TLS with `redis.ca_file`
    /// when the URLs are `rediss://`), after checking each configured node is of that kind (a
    /// node of the other kind is an error; one that does not answer, a warning). Fails when no
    /// node can be reached.
    pub async fn connect(settings: &RedisSettings) -> Result<Store, StoreError> {
        let target = settings.target()?;
        let checked = target.clone();
        let warnings = tokio::task::spawn_blocking(move || check_nodes(&checked, CHECK_TIMEOUT))
            .await
            .map_err(StoreError::CheckStopped)??;
        for warning in warnings {
            // Records whose processing needs Redis are retried until it answers.
            tracing::warn!("{warning}");
        }
        let (prefix, timeout) = (&settings.key_prefix, settings.command_timeout);
        let client = RedisClient::new(&target, timeout, settings.ca_file.as_deref())?;
        let conn = tokio::time::timeout(timeout * 3, client.connect(timeout, RECONNECT))
            .await
            .map_err(|_| StoreError::Timeout(timeout * 3))??;
        Ok(Store {
            conn,
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    /// `{prefix}{rest}`.
    pub fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.prefix)
    }

    /// A connection handle for one command or pipeline (cheap: the connection is shared).
    pub fn conn(&self) -> RedisConnection {
        self.conn.clone()
    }

    /// Runs one Redis operation with the configured bound.
    pub async fn bounded<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        F: Future<Output = redis::RedisResult<T>>,
    {
        match tokio::time::timeout(self.timeout, op).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// Whether Redis answers a PING in time (readiness).
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn();
        self.bounded(redis::cmd("PING").query_async::<String>(&mut conn))
            .await
            .is_ok()
    }
}
