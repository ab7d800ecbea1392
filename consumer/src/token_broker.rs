//! The token broker: one access token per app, shared through Redis by every consumer process
//! (docs/wechat-protocol.md §7).
//!
//! Redis holds, per app, a hash `<prefix>token:{<app>}` = `{token, expires_ms, gen}`; the secret is
//! never in a key or a value, and neither the secret nor a token is ever logged. Invariants:
//! - **One refresher at a time.** Fetching needs the lock `<prefix>token:{<app>}:lock`, taken with
//!   `SET NX PX <lease>` and a unique owner value, released by compare-and-delete, so a process
//!   whose lease ran out cannot release someone else's lock.
//! - **Fencing.** `gen` counts stored tokens. A refresher reads `gen` before fetching and stores
//!   only if `gen` is unchanged and it still holds the lock (one Lua script over both keys, which
//!   share the hash tag `{<app>}` so a Redis Cluster keeps them in one slot), so a slow, older
//!   fetch never overwrites a newer token. The hash has no TTL, so `gen` only grows.
//! - **Refresh ahead.** A token within `token_refresh_ahead` of expiry is refreshed by whichever
//!   caller gets the lock first; everyone else keeps using it meanwhile. Only an absent or expired
//!   token makes callers wait (bounded by `token_wait`). A refresh ahead that fails keeps the lock
//!   until its lease ends, so the endpoint is retried once per lease, not by every call.
//! - **Compare-and-expire.** On 40001/40014/42001 the caller expires the token only if its `gen`
//!   is still the current one, so a failure seen with an old token never wipes a fresh one; then
//!   it asks again and gets the refreshed token. `stable_token` is never force-refreshed.
//! - **Read once a second.** A process reuses the token it last read for up to a second
//!   (`REMEMBER_FOR`) instead of reading the hash before every send; a token WeChat rejects is
//!   forgotten at once, so the compare-and-expire above still decides what comes next.
//! - **Replacement.** When an app's credentials change (an AppSecret reset, `crate::apps`),
//!   [`TokenBroker::replace_token`] fetches with the new ones at once and stores over the cached
//!   token, through the same lock and fencing, without waiting for the old token to fail.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use redis::Script;
use secrecy::SecretString;

use crate::apps::{AppCredentials, AppsHandle};
use crate::clock::now_ms;
use crate::config::{Settings, TokenEndpoint};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};
use crate::wechat_api::{AccessToken, ApiError, WechatApi};

/// Stores a fetched token if nothing newer was stored and the lock is still ours.
const STORE_SCRIPT: &str = r"
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
if gen ~= tonumber(ARGV[1]) then return -1 end
if redis.call('GET', KEYS[2]) ~= ARGV[4] then return -2 end
gen = gen + 1
redis.call('HSET', KEYS[1], 'token', ARGV[2], 'expires_ms', ARGV[3], 'gen', gen)
return gen
";

/// Marks the token expired only if it is still the generation that failed.
const EXPIRE_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'gen') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'expires_ms', '0')
  return 1
end
return 0
";

/// Deletes the lock only if we still own it.
const UNLOCK_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// How often a waiting caller looks again for the refreshed token.
const WAIT_POLL: Duration = Duration::from_millis(25);

/// How long a process keeps using the token it last read before reading Redis again. Short, so
/// a token another process stored is picked up within a second, and long against a send (every
/// send would otherwise read it). A token WeChat rejects is forgotten at once
/// ([`TokenBroker::expire_if_current`]), so a stale one costs at most the calls of that second.
const REMEMBER_FOR: Duration = Duration::from_secs(1);

/// The token this process last read for an app, and when.
#[derive(Debug)]
struct Remembered {
    token: Token,
    expires_ms: i64,
    read_at: Instant,
}

/// A token and the generation it was stored as.
#[derive(Debug, Clone)]
pub struct Token {
    pub value: AccessToken,
    pub generation: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("app `{0}` is not configured")]
    UnknownApp(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("fetching a token: {0}")]
    Fetch(ApiError),
    #[error("no token after waiting {0:?} for another process's refresh")]
    WaitTimeout(Duration),
}

#[derive(Debug)]
pub struct TokenBroker {
    store: Store,
    api: WechatApi,
    metrics: Metrics,
    apps: AppsHandle,
    endpoint: TokenEndpoint,
    refresh_ahead_ms: i64,
    lock_lease: Duration,
    wait: Duration,
    owner_prefix: String,
    owner_seq: AtomicU64,
    remembered: Mutex<HashMap<String, Remembered>>,
    store_script: Script,
    expire_script: Script,
    unlock_script: Script,
}

impl TokenBroker {
    /// The broker of the apps in `apps` (swapped by the app-file watcher while running).
    pub fn new(
        settings: &Settings,
        apps: AppsHandle,
        store: Store,
        api: WechatApi,
        metrics: Metrics,
    ) -> Self {
        let w = &settings.wechat;
        TokenBroker {
            store,
            api,
            metrics,
            apps,
            endpoint: w.token_endpoint,
            refresh_ahead_ms: w.token_refresh_ahead.as_millis() as i64,
            lock_lease: w.token_lock_lease,
            wait: w.token_wait,
            owner_prefix: uuid::Uuid::new_v4().to_string(),
            owner_seq: AtomicU64::new(0),
            remembered: Mutex::default(),
            store_script: Script::new(STORE_SCRIPT),
            expire_script: Script::new(EXPIRE_SCRIPT),
            unlock_script: Script::new(UNLOCK_SCRIPT),
        }
    }

    fn token_key(&self, app: &str) -> String {
        self.store.key(&format!("token:{{{app}}}"))
    }

    fn lock_key(&self, app: &str) -> String {
        self.store.key(&format!("token:{{{app}}}:lock"))
    }

    /// The current token of `app`, refreshing it (once across all processes) when needed.
    pub async fn token(&self, app: &str) -> Result<Token, TokenError> {
        let credentials = self.credentials(app)?;
        if let Some(token) = self.recall(app) {
            return Ok(token);
        }
        let started = Instant::now();
        loop {
            let (cached, generation) = self.read(app).await?;
            let now = now_ms();
            if let Some((token, expires_ms)) = &cached {
                if now < expires_ms - self.refresh_ahead_ms {
                    let token = Token {
                        value: token.clone(),
                        generation,
                    };
                    self.remember(app, &token, *expires_ms);
                    return Ok(token);
                }
            }
            let usable = cached.as_ref().filter(|(_, expires_ms)| now < *expires_ms);
            if let Some(owner) = self.try_lock(app).await? {
                let result = self.refresh_locked(app, &credentials, &owner, false).await;
                match (result, usable) {
                    (Ok(token), _) => {
                        self.unlock(app, &owner).await;
                        return Ok(token);
                    }
                    // Refreshing ahead failed, but the token still works: use it. The lock is
                    // kept until its lease runs out, as a cool-down: no process asks the token
                    // endpoint again before then, so a failing endpoint is not hit by every call
                    // (each fetch spends its daily quota). Callers keep the valid token meanwhile.
                    (Err(e), Some((token, _))) => {
                        tracing::warn!(app, error = %e, retry_in = ?self.lock_lease, "refreshing the access token ahead of expiry failed");
                        return Ok(Token {
                            value: token.clone(),
                            generation,
                        });
                    }
                    (Err(e), None) => {
                        self.unlock(app, &owner).await;
                        return Err(e);
                    }
                }
            }
            // Someone else is refreshing. A still-valid token need not wait for them.
            if let Some((token, _)) = usable {
                return Ok(Token {
                    value: token.clone(),
                    generation,
                });
            }
            if started.elapsed() >= self.wait {
                return Err(TokenError::WaitTimeout(self.wait));
            }
            let jitter = rand::rng().random_range(0..10);
            tokio::time::sleep(WAIT_POLL + Duration::from_millis(jitter)).await;
        }
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<String, Remembered>> {
        // Every update is a single insert or remove: a panic elsewhere cannot leave it half-done.
        self.remembered.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The token last read for `app`, if read less than [`REMEMBER_FOR`] ago and not yet due
    /// for its refresh ahead of expiry.
    fn recall(&self, app: &str) -> Option<Token> {
        let remembered = self.remembered();
        let r = remembered.get(app)?;
        (r.read_at.elapsed() < REMEMBER_FOR && now_ms() < r.expires_ms - self.refresh_ahead_ms)
            .then(|| r.token.clone())
    }

    fn remember(&self, app: &str, token: &Token, expires_ms: i64) {
        self.remembered().insert(
            app.to_owned(),
            Remembered {
                token: token.clone(),
                expires_ms,
                read_at: Instant::now(),
            },
        );
    }

    fn forget(&self, app: &str) {
        self.remembered().remove(app);
    }

    fn credentials(&self, app: &str) -> Result<Arc<AppCredentials>, TokenError> {
        self.apps
            .get(app)
            .ok_or_else(|| TokenError::UnknownApp(app.to_owned()))
    }

    /// After `app`'s credentials changed: fetches a token with the new ones now and stores it over
    /// the cached one, whatever that one's age — taking the one-refresher lock (waiting for
    /// another refresher at most `token_wait`) and storing with the usual fencing.
    pub async fn replace_token(&self, app: &str) -> Result<Token, TokenError> {
        let credentials = self.credentials(app)?;
        self.forget(app);
        let started = Instant::now();
        loop {
            if let Some(owner) = self.try_lock(app).await? {
                let result = self.refresh_locked(app, &credentials, &owner, true).await;
                self.unlock(app, &owner).await;
                return result;
            }
            if started.elapsed() >= self.wait {
                return Err(TokenError::WaitTimeout(self.wait));
            }
            tokio::time::sleep(WAIT_POLL).await;
        }
    }

    /// After WeChat rejected `failed` as stale: expires it if it is still the current token.
    /// Returns whether it did (false: someone already replaced it).
    pub async fn expire_if_current(&self, app: &str, failed: &Token) -> Result<bool, TokenError> {
        // Whatever Redis says, the next call reads it again instead of reusing `failed`.
        self.forget(app);
        let mut conn = self.store.conn();
        let expired: i64 = self
            .store
            .bounded(
                self.expire_script
                    .key(self.token_key(app))
                    .arg(failed.generation)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(expired == 1)
    }

    /// Reads `(token, expires_ms)` and `gen` (0 when nothing was ever stored).
    async fn read(&self, app: &str) -> Result<(Option<(AccessToken, i64)>, i64), TokenError> {
        let mut conn = self.store.conn();
        let (token, expires_ms, generation): (Option<String>, Option<i64>, Option<i64>) = self
            .store
            .bounded(
                redis::cmd("HMGET")
                    .arg(self.token_key(app))
                    .arg("token")
                    .arg("expires_ms")
                    .arg("gen")
                    .query_async(&mut conn),
            )
            .await?;
        let cached = match (token, expires_ms) {
            (Some(token), Some(expires_ms)) => Some((AccessToken::new(token), expires_ms)),
            _ => None,
        };
        Ok((cached, generation.unwrap_or(0)))
    }

    /// Under the lock: re-reads (another process may have refreshed just before), then fetches
    /// and stores with fencing. `replace`: fetch even when the cached token is fresh.
    async fn refresh_locked(
        &self,
        app: &str,
        credentials: &AppCredentials,
        owner: &str,
        replace: bool,
    ) -> Result<Token, TokenError> {
        let (cached, generation) = self.read(app).await?;
        if let Some((token, expires_ms)) = cached.filter(|_| !replace) {
            if now_ms() < expires_ms - self.refresh_ahead_ms {
                return Ok(Token {
                    value: token,
                    generation,
                });
            }
        }
        let fetched = match self
            .api
            .fetch_token(
                self.endpoint,
                credentials.appid.as_str(),
                &SecretString::from(credentials.secret.expose()),
            )
            .await
        {
            Ok(fetched) => fetched,
            Err(e) => {
                self.metrics
                    .token_refreshes
                    .with_label_values(&["error"])
                    .inc();
                return Err(TokenError::Fetch(e));
            }
        };
        let expires_ms = now_ms() + fetched.expires_in.as_millis() as i64;
        let mut conn = self.store.conn();
        let stored: i64 = self
            .store
            .bounded(
                self.store_script
                    .key(self.token_key(app))
                    .key(self.lock_key(app))
                    .arg(generation)
                    .arg(fetched.token.expose())
                    .arg(expires_ms)
                    .arg(owner)
                    .invoke_async(&mut conn),
            )
            .await?;
        if stored < 0 {
            // Fenced: a newer token was stored meanwhile (or our lease ran out). Use that one.
            self.metrics
                .token_refreshes
                .with_label_values(&["fenced"])
                .inc();
            tracing::warn!(
                app,
                "a token fetch was fenced off; using the newer stored token"
            );
            let (cached, generation) = self.read(app).await?;
            return match cached {
                Some((value, expires_ms)) if now_ms() < expires_ms => {
                    Ok(Token { value, generation })
                }
                _ => Err(TokenError::WaitTimeout(Duration::ZERO)),
            };
        }
        self.metrics
            .token_refreshes
            .with_label_values(&["ok"])
            .inc();
        tracing::info!(app, generation = stored, expires_in = ?fetched.expires_in, "access token refreshed");
        Ok(Token {
            value: fetched.token,
            generation: stored,
        })
    }

    async fn try_lock(&self, app: &str) -> Result<Option<String>, TokenError> {
        let owner = format!(
            "{}:{}",
            self.owner_prefix,
            self.owner_seq.fetch_add(1, Ordering::Relaxed)
        );
        let mut conn = self.store.conn();
        let acquired: Option<String> = self
            .store
            .bounded(
                redis::cmd("SET")
                    .arg(self.lock_key(app))
                    .arg(&owner)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.lock_lease.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(acquired.map(|_| owner))
    }

    async fn unlock(&self, app: &str, owner: &str) {
        let mut conn = self.store.conn();
        let result: Result<i64, _> = self
            .store
            .bounded(
                self.unlock_script
                    .key(self.lock_key(app))
                    .arg(owner)
                    .invoke_async(&mut conn),
            )
            .await;
        // The lease expires on its own; a failed release only delays the next refresher.
        if let Err(e) = result {
            tracing::warn!(app, error = %e, "releasing the token lock failed");
        }
    }
}
