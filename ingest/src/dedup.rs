//! Two-phase deduplication of WeChat's retries, in Redis.
//!
//! WeChat re-sends a push it got no timely answer for, so the same message can arrive several
//! times, even concurrently. Before publishing, a push takes a *claim* on its dedup key
//! (`SET key pending:<owner> NX PX <lease>`). After Kafka acknowledged the record, the claim
//! becomes `done` with a TTL longer than WeChat's retry horizon. If publishing fails the claim is
//! released — compare-and-delete, so only its owner can — and WeChat's next retry goes through.
//! A claim whose owner died expires with its lease.
//!
//! Redis is an optimisation of correctness here, not a precondition of it: when it cannot answer
//! within the command timeout the caller publishes anyway and marks the record unchecked
//! (a duplicate is recoverable downstream; a lost message is not).
//!
//! One server or a Redis Cluster ([`common::redis`]): every operation here touches a single
//! key, so the cluster routes each to the primary of its slot and nothing needs a hash tag. A
//! failover loses the marks the dead primary had not yet replicated; the effect is described in
//! docs/redis-keys.md.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::Script;
use tokio::sync::OnceCell;

use crate::config::RedisSettings;
use common::redis::{Reconnect, RedisClient, RedisConnection, TargetError};

/// After a failed connection attempt, further attempts wait this long; meanwhile pushes fail open
/// at once instead of each paying the connect timeout.
const RECONNECT_BACKOFF: Duration = Duration::from_secs(1);
const DONE: &str = "done";

/// What a claim attempt found.
#[derive(Debug, PartialEq, Eq)]
pub enum Claim {
    /// The key was free and is now ours; publish, then [`DedupStore::complete`] or
    /// [`DedupStore::release`].
    Acquired(ClaimToken),
    /// An earlier delivery of this push is stored in Kafka.
    Done,
    /// An earlier delivery is being published right now.
    Pending,
}

/// What a plaintext push's signature was used for before, inside the timestamp window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureUse {
    /// Never seen.
    First,
    /// Seen with the same body: a retry of the same push (dedup handles it).
    SameBody,
    /// Seen with another body: a captured signature reused to post something else.
    OtherBody,
}

/// Proof of owning a claim; needed to release it.
#[derive(Debug, PartialEq, Eq)]
pub struct ClaimToken {
    key: String,
    value: String,
}

#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("redis is unavailable (retrying connection shortly)")]
    Backoff,
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis configuration: {0}")]
    Target(#[from] TargetError),
}

/// Owner values for this process's claims: a random process prefix, then a counter. Unique across
/// processes and restarts like a random value per claim, without asking the kernel for randomness
/// on every push (one `getrandom` system call each, on the hot path).
#[derive(Debug)]
struct ClaimOwners {
    process: String,
    next: AtomicU64,
}

impl ClaimOwners {
    fn new() -> ClaimOwners {
        ClaimOwners {
            process: uuid::Uuid::new_v4().simple().to_string(),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("pending:{}:{n:x}", self.process)
    }
}

/// A lost connection to one server is retried once, quickly: a push waiting on it fails open
/// instead (docs/architecture.md).
const RECONNECT: Reconnect = Reconnect {
    retries: 1,
    max_delay_ms: 500,
};

pub struct DedupStore {
    owners: Arc<ClaimOwners>,
    client: RedisClient,
    connection: OnceCell<RedisConnection>,
    last_connect_failure: Mutex<Option<Instant>>,
    settings: RedisSettings,
    claim_script: Script,
    release_script: Script,
    signature_script: Script,
}

impl std::fmt::Debug for DedupStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: print only the prefix.
        f.debug_struct("DedupStore")
            .field("key_prefix", &self.settings.key_prefix)
            .field("connected", &self.connection.initialized())
            .finish_non_exhaustive()
    }
}

impl DedupStore {
    /// Creates the store; connecting happens on first use so the service starts without Redis.
    /// `settings` must have passed validation (one of `url` and `cluster_nodes`).
    pub fn new(settings: RedisSettings) -> Result<DedupStore, DedupError> {
        let target = settings.target()?;
        let client = RedisClient::new(
            &target,
            settings.command_timeout,
            settings.ca_file.as_deref(),
        )?;
        Ok(DedupStore {
            owners: Arc::new(ClaimOwners::new()),
            client,
            connection: OnceCell::new(),
            last_connect_failure: Mutex::new(None),
            settings,
            // Claim, and on failure say what holds the key, in one atomic round trip.
            claim_script: Script::new(
                r"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
                    return 'acquired'
                  end
                  return redis.call('GET', KEYS[1]) or 'pending'",
            ),
            // Only the owner of a pending claim may drop it; a `done` mark or another owner's
            // claim (after our lease expired) stays.
            release_script: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return redis.call('DEL', KEYS[1])
                  end
                  return 0",
            ),
            // Remember the body digest a signature first came with; say whether a later use
            // carries the same body.
            signature_script: Script::new(
                r"if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
                    return 'first'
                  end
                  if redis.call('GET', KEYS[1]) == ARGV[1] then
                    return 'same'
                  end
                  return 'other'",
            ),
        })
    }

    /// Another store with the same settings and a connection of its own (opened on first use, on
    /// the runtime that uses it): one per worker, so no worker drives another's connection.
    pub fn with_own_connection(&self) -> DedupStore {
        DedupStore {
            owners: self.owners.clone(),
            client: self.client.clone(),
            connection: OnceCell::new(),
            last_connect_failure: Mutex::new(None),
            settings: self.settings.clone(),
            claim_script: self.claim_script.clone(),
            release_script: self.release_script.clone(),
            signature_script: self.signature_script.clone(),
        }
    }

    /// The Redis key of a dedup key.
    pub fn redis_key(&self, dedup_key: &str) -> String {
        format!("{}{dedup_key}", self.settings.key_prefix)
    }

    /// Takes the claim on `dedup_key`, or says who holds it.
    pub async fn claim(&self, dedup_key: &str) -> Result<Claim, DedupError> {
        let key = self.redis_key(dedup_key);
        let value = self.owners.next();
        let lease_ms = self.settings.claim_lease.as_millis() as u64;
        let mut conn = self.connection().await?;
        let mut invocation = self.claim_script.key(&key);
        invocation.arg(&value).arg(lease_ms);
        let found: String = self.bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(match found.as_str() {
            "acquired" => Claim::Acquired(ClaimToken { key, value }),
            DONE => Claim::Done,
            _ => Claim::Pending,
        })
    }

    /// Marks the claimed push stored: later deliveries answer `success` without publishing.
    pub async fn complete(&self, token: &ClaimToken) -> Result<(), DedupError> {
        let ttl_ms = self.settings.done_ttl.as_millis() as u64;
        let mut conn = self.connection().await?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(&token.key).arg(DONE).arg("PX").arg(ttl_ms);
        let () = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(())
    }

    /// Drops our claim after a failed publish so WeChat's retry can publish.
    pub async fn release(&self, token: &ClaimToken) -> Result<(), DedupError> {
        let mut conn = self.connection().await?;
        let mut invocation = self.release_script.key(&token.key);
        invocation.arg(&token.value);
        let _deleted: i64 = self.bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Records that `signature` (app, timestamp, nonce and signature of a plaintext push) came
    /// with `body`, for `ttl`, and says whether it came before and with which body.
    pub async fn record_signature(
        &self,
        signature: &str,
        body: &[u8],
        ttl: Duration,
    ) -> Result<SignatureUse, DedupError> {
        use sha1::Digest;
        let key = format!("{}sig:{signature}", self.settings.key_prefix);
        let digest = hex::encode(sha1::Sha1::digest(body));
        let mut conn = self.connection().await?;
        let mut invocation = self.signature_script.key(&key);
        invocation.arg(&digest).arg(ttl.as_millis() as u64);
        let found: String = self.bounded(invocation.invoke_async(&mut conn)).await?;
        Ok(match found.as_str() {
            "first" => SignatureUse::First,
            "same" => SignatureUse::SameBody,
            _ => SignatureUse::OtherBody,
        })
    }

    /// Redis answers PING; for readiness.
    pub async fn ping(&self) -> Result<(), DedupError> {
        let mut conn = self.connection().await?;
        let _: String = self
            .bounded(redis::cmd("PING").query_async(&mut conn))
            .await?;
        Ok(())
    }

    async fn bounded<T>(
        &self,
        fut: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, DedupError> {
        let limit = self.settings.command_timeout;
        match tokio::time::timeout(limit, fut).await {
            Ok(result) => Ok(result?),
            Err(_) => Err(DedupError::Timeout(limit)),
        }
    }

    /// The shared connection, connecting on first use. Once established, the connection
    /// reconnects by itself (and a cluster connection follows failovers); until then failed attempts are spaced by [`RECONNECT_BACKOFF`].
    async fn connection(&self) -> Result<RedisConnection, DedupError> {
        if let Some(conn) = self.connection.get() {
            return Ok(conn.clone());
        }
        if self.recently_failed() {
            return Err(DedupError::Backoff);
        }
        let limit = self.settings.command_timeout;
        // Pushes that arrive while a first connection is being tried queue on the cell, each to
        // try in turn once the one before failed. Checking the backoff again inside makes them
        // fail open at once instead of paying the timeout one after another — which, against a
        // Redis that accepts and never answers, would push the last of them past the budget.
        let attempt =
            self.connection
                .get_or_try_init(|| async {
                    if self.recently_failed() {
                        return Err(DedupError::Backoff);
                    }
                    let connected =
                        match tokio::time::timeout(limit, self.client.connect(limit, RECONNECT))
                            .await
                        {
                            Ok(result) => result.map_err(DedupError::from),
                            Err(_) => Err(DedupError::Timeout(limit)),
                        };
                    if connected.is_err() {
                        *self
                            .last_connect_failure
                            .lock()
                            .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                    }
                    connected
                })
                .await;
        attempt.cloned()
    }

    fn recently_failed(&self) -> bool {
        self.last_connect_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() < RECONNECT_BACKOFF)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_owners_are_unique_within_and_across_processes() {
        let first = ClaimOwners::new();
        let second = ClaimOwners::new();
        let values: std::collections::HashSet<String> = (0..1000)
            .map(|_| first.next())
            .chain((0..1000).map(|_| second.next()))
            .collect();
        assert_eq!(values.len(), 2000);
        assert!(values.iter().all(|v| v.starts_with("pending:")));
    }
}
