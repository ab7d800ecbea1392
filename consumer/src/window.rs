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
//! - a record's opening is written before anything of its own reads the window: with its first
//!   take, in the same script ([`RecordWindow`]), or before a peek, or at the end of its run. The
//!   user's other records wait for that end (one user's records run in order), so none of them
//!   sees the window before the record that opened it is done;
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

use std::sync::{Mutex, PoisonError};
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

/// Opens (resets) the window of KEYS[1] for an action at `anchor_time` whose dedup key is
/// `anchor_key`; 1 if it did. Not when this very record opened it already (a redelivery), and not
/// when a newer action did.
const OPEN_FN: &str = r"
local function open(anchor_time, anchor_key, replies, expires_ms, ttl_ms)
  local current = tonumber(redis.call('HGET', KEYS[1], 'anchor_time') or '-1')
  if redis.call('HGET', KEYS[1], 'anchor_key') == anchor_key then return 0 end
  if tonumber(anchor_time) < current then return 0 end
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(field, 1, 6) == 'taken:' then redis.call('HDEL', KEYS[1], field) end
  end
  redis.call('HSET', KEYS[1], 'remaining', replies, 'expires_ms', expires_ms,
    'anchor_time', anchor_time, 'anchor_key', anchor_key)
  redis.call('PEXPIRE', KEYS[1], ttl_ms)
  return 1
end
";

/// Takes one reply from the window of KEYS[1] at `now` (ms). `field` is the reply's `taken:`
/// field: a reply already taken from this window is not taken twice.
const TAKE_FN: &str = r"
local function take(now, field)
  local anchor = redis.call('HGET', KEYS[1], 'anchor_key')
  if anchor and redis.call('HGET', KEYS[1], field) == anchor then return {'ok', anchor} end
  local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_ms') or '0')
  if expires <= tonumber(now) then return {'window_closed', ''} end
  local remaining = tonumber(redis.call('HGET', KEYS[1], 'remaining') or '0')
  if remaining <= 0 then return {'quota_exhausted', ''} end
  redis.call('HINCRBY', KEYS[1], 'remaining', -1)
  redis.call('HSET', KEYS[1], field, anchor)
  return {'ok', anchor}
end
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
    open_and_take_script: Script,
    adjust_script: Script,
}

/// The opening of a user's window that one qualifying record makes, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Opening {
    key: String,
    anchor_key: String,
    replies: i64,
    opened: Opened,
}

/// One record's view of its user's window. A qualifying record opens the window whether or not a
/// rule replies, but the opening is written lazily: together with the record's first reply, in
/// the same script and round trip as its take, or by [`RecordWindow::settle`] when the record's
/// run ends without one. The user's records run one at a time, so nothing reads the window
/// between the record's start and that write but the record itself, and [`RecordWindow::peek`]
/// writes the opening first.
#[derive(Debug)]
pub(crate) struct RecordWindow<'a> {
    windows: &'a ReplyWindows,
    env: &'a EnvelopeV1,
    /// The opening not yet written; `None` once written or when the record opens nothing.
    /// Held only between awaits.
    opening: Mutex<Option<Opening>>,
}

impl ReplyWindows {
    pub fn new(store: Store, enabled: bool) -> ReplyWindows {
        ReplyWindows {
            store,
            enabled,
            open_script: Script::new(&format!(
                "{OPEN_FN}\nreturn open(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5])"
            )),
            take_script: Script::new(&format!("{TAKE_FN}\nreturn take(ARGV[1], ARGV[2])")),
            open_and_take_script: Script::new(&format!(
                "{OPEN_FN}\n{TAKE_FN}\nopen(ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])\n\
                 return take(ARGV[1], ARGV[2])"
            )),
            adjust_script: Script::new(ADJUST_SCRIPT),
        }
    }

    fn key(&self, env: &EnvelopeV1) -> String {
        self.store.key(&format!(
            "window:{}:{}",
            env.app, env.message.from_user_name
        ))
    }

    /// `env`'s window, for the length of its run.
    pub(crate) fn for_record<'a>(&'a self, env: &'a EnvelopeV1) -> RecordWindow<'a> {
        RecordWindow {
            windows: self,
            env,
            opening: Mutex::new(self.opening(env)),
        }
    }

    /// The window `env` opens, if it is a qualifying action and windows are tracked.
    fn opening(&self, env: &EnvelopeV1) -> Option<Opening> {
        let msg = &env.message;
        let (replies, length) = match &msg.body {
            MessageBody::EnterSession { .. } => ENTER_ALLOWANCE,
            _ if msg.is_user_message() => MESSAGE_ALLOWANCE,
            _ => return None,
        };
        if !self.enabled {
            return None;
        }
        Some(Opening {
            key: self.key(env),
            anchor_key: env.dedup_key.as_str().to_owned(),
            replies,
            opened: Opened::at(msg.create_time, length, now_ms()),
        })
    }

    async fn open(&self, opening: &Opening) -> Result<(), StoreError> {
        let mut conn = self.store.conn();
        let mut invocation = self.open_script.key(&opening.key);
        opening.args(&mut invocation);
        let _changed: i64 = self
            .store
            .bounded(invocation.invoke_async(&mut conn))
            .await?;
        Ok(())
    }

    /// Takes one reply (`idempotency_key`) from the user's allowance, or says why WeChat would
    /// refuse it; with `opening`, writes that first, in the same script. Taking the same reply
    /// again within the same window takes nothing more.
    async fn take(
        &self,
        env: &EnvelopeV1,
        idempotency_key: &str,
        opening: Option<&Opening>,
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
        let script = match opening {
            Some(_) => &self.open_and_take_script,
            None => &self.take_script,
        };
        let mut invocation = script.key(&key);
        invocation.arg(now_ms()).arg(&field);
        if let Some(opening) = opening {
            opening.args(&mut invocation);
        }
        let mut conn = self.store.conn();
        let (verdict, anchor): (String, String) = self
            .store
            .bounded(invocation.invoke_async(&mut conn))
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

impl Opening {
    /// The opening's arguments, after those already on `invocation`.
    fn args(&self, invocation: &mut redis::ScriptInvocation<'_>) {
        invocation
            .arg(self.opened.anchor_time)
            .arg(&self.anchor_key)
            .arg(self.replies)
            .arg(self.opened.expires_ms)
            .arg(self.opened.ttl_ms);
    }
}

impl RecordWindow<'_> {
    /// Takes one reply from the window (see [`ReplyWindows::take`]), writing the record's
    /// opening in the same round trip if it is not written yet.
    pub(crate) async fn take(
        &self,
        idempotency_key: &str,
    ) -> Result<Result<Allowance, Refusal>, StoreError> {
        let opening = self.pending();
        let taken = self
            .windows
            .take(self.env, idempotency_key, opening.as_ref())
            .await?;
        if opening.is_some() {
            self.written();
        }
        Ok(taken)
    }

    /// Whether a reply could be taken now (see [`ReplyWindows::peek`]), the opening written first.
    pub(crate) async fn peek(&self) -> Result<Result<i64, Refusal>, StoreError> {
        self.settle().await?;
        self.windows.peek(self.env).await
    }

    /// Writes the record's opening if nothing wrote it yet; the end of every run that finished.
    /// Writing it again is harmless: the window remembers the record that opened it.
    pub(crate) async fn settle(&self) -> Result<(), StoreError> {
        if let Some(opening) = self.pending() {
            self.windows.open(&opening).await?;
            self.written();
        }
        Ok(())
    }

    fn pending(&self) -> Option<Opening> {
        self.opening
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn written(&self) {
        *self.opening.lock().unwrap_or_else(PoisonError::into_inner) = None;
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
