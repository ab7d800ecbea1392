//! Reply windows: how many replies WeChat will still accept for a user, and until when
//! (docs/wechat-protocol.md §6.3).
//!
//! A user message opens a window of 48 h and 5 replies; entering the session opens 1 min and 2
//! replies. Allowances do not accumulate: each such action resets both the count and the window,
//! measured from its `CreateTime`. Per user, Redis holds `{prefix}window:{app}:{openid}` =
//! `{remaining, expires_ms, anchor_time, anchor_key}` where the anchor is the record that opened
//! the current window. Invariants:
//! - a redelivered record does not reset its own window again (its dedup key is the anchor), and
//!   an older action never replaces a newer one, so quota already spent stays spent;
//! - a reply is taken from the allowance *before* the API call, atomically (Lua), and given back
//!   only when WeChat definitely did not deliver it;
//! - a take is idempotent per reply: the hash remembers `taken:{idempotency key}` = the anchor it
//!   was taken from, so a take repeated after its answer was lost (a Redis timeout) spends the
//!   reply once. A new window forgets them.
//! - a send that WeChat would refuse (window closed: 45015; quota used: 45047) is not attempted:
//!   the caller dead-letters it with that reason. No window on record counts as closed.
//!
//! `CreateTime` is taken as given, and any value has a clear outcome: the arithmetic saturates,
//! and a time in the future (clock skew, or a value no genuine push carries) counts as now, so a
//! window never lasts longer than its length from now and a later genuine action still replaces
//! it. A time long past opens a window that is already closed.

use std::time::Duration;

use common::envelope::EnvelopeV1;
use common::message::MessageBody;
use redis::Script;

use crate::clock::now_ms;
use crate::store::{Store, StoreError};

/// Replies allowed after a user message, and for how long.
pub const MESSAGE_ALLOWANCE: (i64, Duration) = (5, Duration::from_secs(48 * 3600));
/// Replies allowed after the user enters the session, and for how long.
pub const ENTER_ALLOWANCE: (i64, Duration) = (2, Duration::from_secs(60));

const OPEN_SCRIPT: &str = r"
local anchor_time = tonumber(redis.call('HGET', KEYS[1], 'anchor_time') or '-1')
if redis.call('HGET', KEYS[1], 'anchor_key') == ARGV[2] then return 0 end
if tonumber(ARGV[1]) < anchor_time then return 0 end
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(field, 1, 6) == 'taken:' then redis.call('HDEL', KEYS[1], field) end
end
redis.call('HSET', KEYS[1], 'remaining', ARGV[3], 'expires_ms', ARGV[4], 'anchor_time', ARGV[1], 'anchor_key', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// ARGV[2] is the reply's `taken:` field: a reply already taken from this window is not taken
/// twice.
const TAKE_SCRIPT: &str = r"
local anchor = redis.call('HGET', KEYS[1], 'anchor_key')
if anchor and redis.call('HGET', KEYS[1], ARGV[2]) == anchor then return {'ok', anchor} end
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_ms') or '0')
if expires <= tonumber(ARGV[1]) then return {'window_closed', ''} end
local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining') or '0')
if remaining <= 0 then return {'quota_exhausted', ''} end
redis.call('HINCRBY', KEYS[1], 'remaining', -1)
redis.call('HSET', KEYS[1], ARGV[2], anchor)
return {'ok', anchor}
";

/// Gives a reply back (once: only while its `taken:` field ARGV[3] is there), or (ARGV[2] = '0')
/// sets the allowance to zero, only within the same window.
const ADJUST_SCRIPT: &str = r"
if redis.call('HGET', KEYS[1], 'anchor_key') ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then redis.call('HSET', KEYS[1], 'remaining', 0) return 1 end
if redis.call('HDEL', KEYS[1], ARGV[3]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], 'remaining', 1)
return 1
";

/// The times a window opened by an action at `CreateTime` is written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Opened {
    /// The action's time in seconds, no later than now: orders actions (the newer one wins).
    anchor_time: i64,
    /// When the window closes.
    expires_ms: i64,
    /// How long Redis keeps the window: until it closes, at least 1 ms.
    ttl_ms: i64,
}

impl Opened {
    fn at(create_time: i64, length: Duration, now_ms: i64) -> Opened {
        let anchor_time = create_time.min(now_ms.div_euclid(1000));
        let length_ms = i64::try_from(length.as_millis()).unwrap_or(i64::MAX);
        let expires_ms = anchor_time.saturating_mul(1000).saturating_add(length_ms);
        Opened {
            anchor_time,
            expires_ms,
            ttl_ms: expires_ms.saturating_sub(now_ms).max(1),
        }
    }
}

/// Why a reply must not be attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Outside the window (WeChat would answer 45015).
    WindowClosed,
    /// The window's replies are used up (WeChat would answer 45047).
    QuotaExhausted,
}

/// One reply taken from a window; hand it back with [`ReplyWindows::refund`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowance {
    key: String,
    anchor: String,
    field: String,
}

#[derive(Debug, Clone)]
pub struct ReplyWindows {
    store: Store,
    enabled: bool,
    open_script: Script,
    take_script: Script,
    adjust_script: Script,
}

impl ReplyWindows {
    pub fn new(store: Store, enabled: bool) -> ReplyWindows {
        ReplyWindows {
            store,
            enabled,
            open_script: Script::new(OPEN_SCRIPT),
            take_script: Script::new(TAKE_SCRIPT),
            adjust_script: Script::new(ADJUST_SCRIPT),
        }
    }

    fn key(&self, env: &EnvelopeV1) -> String {
        self.store.key(&format!(
            "window:{}:{}",
            env.app, env.message.from_user_name
        ))
    }

    /// Opens (resets) the user's window when `env` is a qualifying action. Called for every
    /// record before its rules run, whether or not a rule replies.
    pub async fn observe(&self, env: &EnvelopeV1) -> Result<(), StoreError> {
        let msg = &env.message;
        let (replies, length) = match &msg.body {
            MessageBody::EnterSession { .. } => ENTER_ALLOWANCE,
            _ if msg.is_user_message() => MESSAGE_ALLOWANCE,
            _ => return Ok(()),
        };
        if !self.enabled {
            return Ok(());
        }
        let now = now_ms();
        let opened = Opened::at(msg.create_time, length, now);
        let mut conn = self.store.conn();
        let _changed: i64 = self
            .store
            .bounded(
                self.open_script
                    .key(self.key(env))
                    .arg(opened.anchor_time)
                    .arg(env.dedup_key.as_str())
                    .arg(replies)
                    .arg(opened.expires_ms)
                    .arg(opened.ttl_ms)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// Takes one reply (`idempotency_key`) from the user's allowance, or says why WeChat would
    /// refuse it. Taking the same reply again within the same window takes nothing more.
    pub async fn take(
        &self,
        env: &EnvelopeV1,
        idempotency_key: &str,
    ) -> Result<Result<Allowance, Refusal>, StoreError> {
        let key = self.key(env);
        let field = format!("taken:{idempotency_key}");
        if !self.enabled {
            return Ok(Ok(Allowance {
                key,
                anchor: String::new(),
                field,
            }));
        }
        let mut conn = self.store.conn();
        let (verdict, anchor): (String, String) = self
            .store
            .bounded(
                self.take_script
                    .key(&key)
                    .arg(now_ms())
                    .arg(&field)
                    .invoke_async(&mut conn),
            )
            .await?;
        match verdict.as_str() {
            "ok" => Ok(Ok(Allowance { key, anchor, field })),
            "window_closed" => Ok(Err(Refusal::WindowClosed)),
            "quota_exhausted" => Ok(Err(Refusal::QuotaExhausted)),
            other => Err(StoreError::Unexpected(format!("window verdict `{other}`"))),
        }
    }

    /// Whether a reply could be taken now, without taking it: the end of the user's window (ms
    /// since the epoch; `i64::MAX` when windows are not tracked), or why WeChat would refuse.
    /// For work that must not start when no reply can follow it (asking a backend).
    pub async fn peek(&self, env: &EnvelopeV1) -> Result<Result<i64, Refusal>, StoreError> {
        if !self.enabled {
            return Ok(Ok(i64::MAX));
        }
        let mut conn = self.store.conn();
        let (remaining, expires): (Option<i64>, Option<i64>) = self
            .store
            .bounded(
                redis::cmd("HMGET")
                    .arg(self.key(env))
                    .arg("remaining")
                    .arg("expires_ms")
                    .query_async(&mut conn),
            )
            .await?;
        let expires = expires.unwrap_or(0);
        Ok(if expires <= now_ms() {
            Err(Refusal::WindowClosed)
        } else if remaining.unwrap_or(0) <= 0 {
            Err(Refusal::QuotaExhausted)
        } else {
            Ok(expires)
        })
    }

    /// The reply was definitely not delivered: give it back.
    pub async fn refund(&self, allowance: &Allowance) -> Result<(), StoreError> {
        self.adjust(allowance, "1").await
    }

    /// WeChat said the window is closed or used up although we counted otherwise: believe it.
    pub async fn exhaust(&self, allowance: &Allowance) -> Result<(), StoreError> {
        self.adjust(allowance, "0").await
    }

    async fn adjust(&self, allowance: &Allowance, how: &str) -> Result<(), StoreError> {
        if !self.enabled {
            return Ok(());
        }
        let mut conn = self.store.conn();
        let _: i64 = self
            .store
            .bounded(
                self.adjust_script
                    .key(&allowance.key)
                    .arg(&allowance.anchor)
                    .arg(how)
                    .arg(&allowance.field)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW_MS: i64 = 1_764_000_000_123;
    const LENGTH: Duration = MESSAGE_ALLOWANCE.1;
    const LENGTH_MS: i64 = 48 * 3600 * 1000;

    #[test]
    fn a_window_opened_now_lasts_its_length() {
        let opened = Opened::at(NOW_MS / 1000, LENGTH, NOW_MS);
        assert_eq!(opened.anchor_time, NOW_MS / 1000);
        assert_eq!(opened.expires_ms, NOW_MS / 1000 * 1000 + LENGTH_MS);
        assert_eq!(opened.ttl_ms, opened.expires_ms - NOW_MS);
    }

    #[test]
    fn a_create_time_in_the_future_counts_as_now() {
        let now = Opened::at(NOW_MS / 1000, LENGTH, NOW_MS);
        for create_time in [NOW_MS / 1000 + 30, i64::MAX / 1000, i64::MAX - 1, i64::MAX] {
            assert_eq!(
                Opened::at(create_time, LENGTH, NOW_MS),
                now,
                "{create_time}"
            );
        }
    }

    #[test]
    fn a_create_time_long_past_opens_a_closed_window() {
        for create_time in [0, -1, i64::MIN / 1000, i64::MIN + 1, i64::MIN] {
            let opened = Opened::at(create_time, LENGTH, NOW_MS);
            assert_eq!(opened.anchor_time, create_time);
            assert!(opened.expires_ms < NOW_MS, "{create_time}: {opened:?}");
            assert_eq!(opened.ttl_ms, 1, "{create_time}");
        }
    }
}
