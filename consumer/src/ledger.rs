//! The send ledger: at-most-once replies across retries, redeliveries, rebalances and restarts.
//!
//! Every side effect of a rule has an idempotency key, `{dedup_key}:{action id}` (the action id
//! is stable across rule edits: see [`crate::actions`] and docs/architecture.md), stored at
//! `{prefix}ledger:{idempotency key}` with the entry TTL (≥ the 48 h reply window; a
//! reply after that would fail anyway). Entry values:
//! - `sending:{owner}:{deadline_ms}` — a send is in progress; written *before* the API call;
//! - `sent:{at_ms}` — WeChat accepted it; never sent again;
//! - `ambiguous:{at_ms}` — the call got no answer (timeout): it may or may not have arrived;
//! - `done:{at_ms}` — an at-least-once action (forward, hand-off) completed.
//!
//! **The crash window.** Between WeChat's answer and the `sent` write there is one Redis round
//! trip; a process dying exactly there leaves `sending`. Nothing can close that window without an
//! idempotent send API, so it is made safe instead of small-and-hoped-for: a record that finds a
//! live `sending` mark (deadline ahead) waits for it to resolve; one that finds an expired mark
//! cannot know whether the reply arrived and dead-letters it as `ambiguous` rather than sending
//! it twice. Same for a crash between the mark and the call (the reply was then never sent, but
//! the ledger cannot tell; an operator can redrive it). A definite failure (errcode) releases the
//! mark, since nothing reached the user.
//!
//! **Owners.** A mark names its owner, a [`ClaimOwner`] the caller keeps for every retry of the
//! same record run. So a retry whose claim answer timed out (the mark was written, the answer
//! lost) recognises its own mark and carries on, instead of waiting out the lease and giving an
//! unsent reply up as ambiguous. A different run of the same record (a redelivery, another
//! process) has another owner and waits for, or defers to, the mark.
//!
//! **Keeping the mark.** The sender renews its lease before every attempt and while it waits
//! (backoff, uploads, a slow call), so a live sender never looks dead however long WeChat makes it
//! wait. The first attempt skips the renewal while the claim is fresh ([`Lease::fresh`]): the
//! claim was the same check a moment earlier. When a renewal finds the mark is no longer its own, the sender stops and sends nothing
//! more ([`Ledger::renew`]).
//!
//! **Failover.** Redis replicates asynchronously, so a `sent` mark can vanish when its primary
//! dies and a replica that never received it takes over. Where replicas can be promoted, the mark
//! is confirmed by a replica before the record moves on ([`replicated`], docs/redis-keys.md).

mod replicated;

use std::time::{Duration, Instant};

use redis::Script;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::LedgerSettings;
use crate::store::{Store, StoreError};

/// Writes a `sending` mark unless an entry exists; returns the existing entry otherwise. A
/// `sending` mark of the same owner (ARGV[3] is its prefix) is ours from an earlier try whose
/// answer was lost: it is taken again with the new deadline.
const CLAIM_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, string.len(ARGV[3])) ~= ARGV[3] then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Records a delivery. Returns 1 when the mark was ours (or gone), 0 when it had been taken over
/// or resolved by someone else meanwhile; `sent` is written either way except over `sent`.
const SENT_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current and string.sub(current, 1, 5) == 'sent:' then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
if not current or string.sub(current, 1, string.len(ARGV[1])) == ARGV[1] then return 1 end
return 0
";

/// Replaces our own `sending` mark (release: delete; or a new deadline); never touches others'.
const OWNED_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if not current or string.sub(current, 1, string.len(ARGV[1])) ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
return 1
";

/// Deletes an entry only if it is `ambiguous` or a `sending` mark whose deadline (ARGV[1] = now)
/// has passed; `sent`, `done` and live `sending` entries are never touched.
const CLEAR_AMBIGUOUS_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if not current then return 0 end
if string.sub(current, 1, 10) == 'ambiguous:' then redis.call('DEL', KEYS[1]) return 1 end
if string.sub(current, 1, 8) == 'sending:' then
  local deadline = tonumber(string.match(current, ':(%-?%d+)$'))
  if deadline and deadline <= tonumber(ARGV[1]) then redis.call('DEL', KEYS[1]) return 1 end
end
return 0
";

/// What the ledger says about an idempotency key when a send wants to start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Nothing was recorded: the caller now holds a `sending` mark and must resolve it.
    Acquired(Lease),
    /// Already delivered: do not send.
    AlreadySent,
    /// An at-least-once action already completed.
    AlreadyDone,
    /// Another attempt is sending right now; its lease ends at `deadline_ms`.
    InProgress { deadline_ms: i64 },
    /// A previous attempt may or may not have reached the user.
    Ambiguous,
}

/// Proof of a `sending` mark, needed to resolve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    key: String,
    owner: String,
    /// When the claim wrote the mark (and its deadline).
    taken: Instant,
}

impl Lease {
    /// Whether the claim is recent enough to stand for a renewal: written less than a third of
    /// the lease ago, the mark still has two thirds of its lease ahead, and it cannot have been
    /// taken over meanwhile (a claim takes a `sending` mark only after its deadline).
    pub fn fresh(&self, sending_lease: Duration) -> bool {
        self.taken.elapsed() < sending_lease / 3
    }
}

/// Who holds a `sending` mark, and until when: one value for every retry of one run of a record
/// (see the module docs). A fresh one is a fresh run.
///
/// A run ends before its record does when the record is no longer this process's to finish:
/// its partition was revoked (the new owner redelivers it) or the process is stopping. The
/// pipeline ties `end` to the record's partition assignment; a send then ends its waits and gives
/// back a claim with no call in flight, so the redelivery sends the reply instead of waiting out
/// this run's lease or finding its mark stale.
#[derive(Debug, Clone)]
pub struct ClaimOwner {
    id: String,
    end: CancellationToken,
}

impl ClaimOwner {
    /// A run that ends only with the process (the send path also watches the shutdown token).
    pub fn new() -> ClaimOwner {
        ClaimOwner::until(CancellationToken::new())
    }

    /// A run that ends when `end` fires.
    pub fn until(end: CancellationToken) -> ClaimOwner {
        ClaimOwner {
            id: uuid::Uuid::new_v4().simple().to_string(),
            end,
        }
    }

    /// Completes when the run has ended.
    pub(crate) async fn ended(&self) {
        self.end.cancelled().await
    }
}

/// Two values are the same owner when they name the same run; the end signal is not identity.
impl PartialEq for ClaimOwner {
    fn eq(&self, other: &ClaimOwner) -> bool {
        self.id == other.id
    }
}

impl Eq for ClaimOwner {}

impl Default for ClaimOwner {
    fn default() -> ClaimOwner {
        ClaimOwner::new()
    }
}

#[derive(Debug, Clone)]
pub struct Ledger {
    store: Store,
    sending_lease: Duration,
    entry_ttl: Duration,
    /// Replicas that must acknowledge a `sent` mark (0: no wait) and how long to wait for them.
    sent_replicas: u32,
    sent_replica_timeout: Duration,
    /// Whether entries under a reply's key from before stable reply keys still count
    /// (`ledger.read_legacy_keys`).
    read_legacy_keys: bool,
    claim_script: Script,
    owned_script: Script,
    sent_script: Script,
    clear_script: Script,
}

impl Ledger {
    pub fn new(store: Store, settings: &LedgerSettings) -> Ledger {
        Ledger {
            sent_replicas: replicated::replicas_to_wait_for(&store, settings),
            sent_replica_timeout: settings.sent_replica_timeout,
            store,
            sending_lease: settings.sending_lease,
            entry_ttl: settings.entry_ttl,
            read_legacy_keys: settings.read_legacy_keys,
            claim_script: Script::new(CLAIM_SCRIPT),
            owned_script: Script::new(OWNED_SCRIPT),
            sent_script: Script::new(SENT_SCRIPT),
            clear_script: Script::new(CLEAR_AMBIGUOUS_SCRIPT),
        }
    }

    fn key(&self, idempotency_key: &str) -> String {
        self.store.key(&format!("ledger:{idempotency_key}"))
    }

    fn ttl_ms(&self) -> u64 {
        self.entry_ttl.as_millis() as u64
    }

    /// How long a `sending` mark stays authoritative without a renewal.
    pub fn sending_lease(&self) -> Duration {
        self.sending_lease
    }

    /// Takes a `sending` mark for an at-most-once send, or says why not. `legacy_key`, when
    /// given, is the key the same reply had before action ids were stable (`{dedup
    /// key}:{rule}:{index}`); an entry there counts as this reply's, so records processed before
    /// the upgrade are not replied twice when they are redelivered after it.
    pub async fn claim(
        &self,
        idempotency_key: &str,
        legacy_key: Option<&str>,
        owner: &ClaimOwner,
    ) -> Result<Claim, StoreError> {
        if let Some(legacy) = legacy_key.filter(|_| self.read_legacy_keys) {
            if let Some(value) = self.get(&self.key(legacy)).await? {
                return parse_entry(&value);
            }
        }
        let key = self.key(idempotency_key);
        let owner = owner.id.clone();
        // Taken before the deadline is computed, so `Lease::fresh` never overstates what is left.
        let taken = Instant::now();
        let deadline = now_ms() + self.sending_lease.as_millis() as i64;
        let mut conn = self.store.conn();
        let existing: Option<String> = self
            .store
            .bounded(
                self.claim_script
                    .key(&key)
                    .arg(format!("sending:{owner}:{deadline}"))
                    .arg(self.ttl_ms())
                    .arg(format!("sending:{owner}:"))
                    .invoke_async(&mut conn),
            )
            .await?;
        match existing {
            None => Ok(Claim::Acquired(Lease { key, owner, taken })),
            Some(value) => parse_entry(&value),
        }
    }

    /// Pushes the lease's deadline forward (before every attempt, and while waiting). False when
    /// the mark is no longer ours — another run took it after our lease ran out, or an operator
    /// cleared it: then the caller must not send.
    pub async fn renew(&self, lease: &Lease) -> Result<bool, StoreError> {
        let deadline = now_ms() + self.sending_lease.as_millis() as i64;
        self.owned(lease, &format!("sending:{}:{deadline}", lease.owner))
            .await
    }

    /// WeChat accepted the send. Delivery is the truth, so `sent` replaces whatever is there
    /// (another run's `sending` mark then stops that run at its next renewal), except an existing
    /// `sent`. Returns false when the mark was no longer ours: a lease lost during the call.
    /// Where replicas can be promoted, returns once one holds the mark ([`replicated`]).
    pub async fn mark_sent(&self, lease: &Lease) -> Result<bool, StoreError> {
        if self.sent_replicas > 0 {
            return self.mark_sent_replicated(lease).await;
        }
        self.write_sent(lease).await
    }

    /// The `sent` write itself (see [`Ledger::mark_sent`]).
    async fn write_sent(&self, lease: &Lease) -> Result<bool, StoreError> {
        let mut conn = self.store.conn();
        let ours: i64 = self
            .store
            .bounded(
                self.sent_script
                    .key(&lease.key)
                    .arg(format!("sending:{}:", lease.owner))
                    .arg(format!("sent:{}", now_ms()))
                    .arg(self.ttl_ms())
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(ours == 1)
    }

    /// The send got no answer; it may have been delivered.
    pub async fn mark_ambiguous(&self, lease: &Lease) -> Result<(), StoreError> {
        self.set(&lease.key, &format!("ambiguous:{}", now_ms()))
            .await
    }

    /// Nothing reached the user (a definite error, or the send was refused before calling):
    /// removes our mark so a later attempt may send.
    pub async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.owned(lease, "").await.map(|_| ())
    }

    /// Whether an at-least-once action already completed (under its key or its legacy key).
    pub async fn is_done(
        &self,
        idempotency_key: &str,
        legacy_key: Option<&str>,
    ) -> Result<bool, StoreError> {
        let legacy_key = legacy_key.filter(|_| self.read_legacy_keys);
        for key in std::iter::once(idempotency_key).chain(legacy_key) {
            if self
                .get(&self.key(key))
                .await?
                .is_some_and(|v| v.starts_with("done:"))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn get(&self, key: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.store.conn();
        self.store
            .bounded(redis::cmd("GET").arg(key).query_async(&mut conn))
            .await
    }

    /// Records that an at-least-once action completed.
    pub async fn mark_done(&self, idempotency_key: &str) -> Result<(), StoreError> {
        self.set(&self.key(idempotency_key), &format!("done:{}", now_ms()))
            .await
    }

    /// The state of an entry (`sent`, `ambiguous`, `sending`, `done`) without changing it; for
    /// dry runs, which must say which replies would really go out.
    pub async fn peek(&self, idempotency_key: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.store.conn();
        let value: Option<String> = self
            .store
            .bounded(
                redis::cmd("GET")
                    .arg(self.key(idempotency_key))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(value.and_then(|v| v.split(':').next().map(str::to_owned)))
    }

    /// Operator decision (`consumer dlq redrive --include-ambiguous`): forgets an `ambiguous`
    /// entry, or a `sending` mark whose sender died, so the reply may be sent again — possibly a
    /// second time, which is why nothing but an explicit operator command calls this. Returns
    /// whether an entry was removed; a `sent` reply is never forgotten.
    pub async fn clear_ambiguous(&self, idempotency_key: &str) -> Result<bool, StoreError> {
        let mut conn = self.store.conn();
        let removed: i64 = self
            .store
            .bounded(
                self.clear_script
                    .key(self.key(idempotency_key))
                    .arg(now_ms())
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(removed == 1)
    }

    async fn set(&self, key: &str, value: &str) -> Result<(), StoreError> {
        let mut conn = self.store.conn();
        self.store
            .bounded(
                redis::cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(self.ttl_ms())
                    .query_async::<()>(&mut conn),
            )
            .await
    }

    async fn owned(&self, lease: &Lease, replacement: &str) -> Result<bool, StoreError> {
        let mut conn = self.store.conn();
        let changed: i64 = self
            .store
            .bounded(
                self.owned_script
                    .key(&lease.key)
                    .arg(format!("sending:{}:", lease.owner))
                    .arg(replacement)
                    .arg(self.ttl_ms())
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(changed == 1)
    }
}

fn parse_entry(value: &str) -> Result<Claim, StoreError> {
    let mut parts = value.split(':');
    match parts.next() {
        Some("sent") => Ok(Claim::AlreadySent),
        Some("done") => Ok(Claim::AlreadyDone),
        Some("ambiguous") => Ok(Claim::Ambiguous),
        Some("sending") => {
            let deadline_ms = parts.nth(1).and_then(|d| d.parse::<i64>().ok());
            match deadline_ms {
                Some(deadline_ms) if deadline_ms > now_ms() => {
                    Ok(Claim::InProgress { deadline_ms })
                }
                // The sender's lease ran out without an outcome: it died mid-send.
                Some(_) => Ok(Claim::Ambiguous),
                None => Err(StoreError::Unexpected(format!("ledger entry `{value}`"))),
            }
        }
        _ => Err(StoreError::Unexpected(format!("ledger entry `{value}`"))),
    }
}
