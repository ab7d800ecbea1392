//! The consumer's connection to Redis, shared by the token broker, the send ledger, the reply
//! windows and the media cache.
//!
//! One multiplexed, self-reconnecting connection per process. Every command is bounded by the
//! configured timeout; a slow or absent Redis is a [`StoreError`], which processing treats as
//! transient (the record is retried later, its offset not stored). Keys are
//! `{key_prefix}{kind}:{...}`; no key ever holds a secret.

use std::future::Future;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use secrecy::ExposeSecret;

use crate::config::RedisSettings;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis answered something unexpected: {0}")]
    Unexpected(String),
}

#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
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
    /// Connects (bounded by `timeout`); fails when Redis is unreachable at start.
    pub async fn connect(settings: &RedisSettings) -> Result<Store, StoreError> {
        let (prefix, timeout) = (&settings.key_prefix, settings.command_timeout);
        let client = client(settings)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout)
            .set_number_of_retries(2)
            .set_max_delay(1000);
        let conn = tokio::time::timeout(
            timeout * 3,
            ConnectionManager::new_with_config(client, config),
        )
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
    pub fn conn(&self) -> ConnectionManager {
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

/// The Redis client of `settings.url`; over TLS (`rediss://`) with `settings.ca_file`'s CAs as
/// the only trusted roots when it is set, the platform's roots otherwise.
fn client(settings: &RedisSettings) -> redis::RedisResult<redis::Client> {
    let url = settings.url.expose_secret();
    let Some(path) = &settings.ca_file else {
        return redis::Client::open(url);
    };
    let root_cert = std::fs::read(path).map_err(|e| {
        redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "reading redis.ca_file",
            format!("{}: {e}", path.display()),
        ))
    })?;
    redis::Client::build_with_tls(
        url,
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(root_cert),
        },
    )
}
