//! The shared pause state of each app in Redis: [`QuotaState`].
//!
//! One hash per app, `<prefix>quota:{<app>}` (docs/redis-keys.md), read whole with one `HGETALL`
//! when an inbound record of the app finds no recent gate in the process's memory
//! ([`super::gates`]):
//! - `until_ms`: the app is paused until then (Unix milliseconds). Written by the process that
//!   met 45009, only ever later than a pause already in force; deleted by
//!   `consumer quota resume`. A pause that has run out needs no write: it is simply past.
//! - `parked:<partition>` and `released:<partition>`: for each partition of the app's hold topic,
//!   the offset after the last record parked there, and after the last one released from it. The
//!   app has a held backlog while some partition has `parked > released`. Both only grow (a
//!   script keeps the larger value), so a park or a release that is repeated after a crash, or a
//!   duplicate parked twice, never makes the backlog look empty while records wait, nor
//!   non-empty forever: every offset of the hold topic is eventually released.
//!
//! The hash has no expiry: the offsets must only grow, like the token's generation.

use std::collections::{BTreeMap, HashMap};

use redis::Script;

use crate::store::{Store, StoreError};

/// Sets `until_ms` to ARGV[1] unless a later pause is already in force; answers the one in force.
const PAUSE_SCRIPT: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'until_ms') or '0')
local wanted = tonumber(ARGV[1])
if wanted > current then
  redis.call('HSET', KEYS[1], 'until_ms', ARGV[1])
  return ARGV[1]
end
return tostring(current)
";

/// Raises field ARGV[1] to ARGV[2] when that is larger.
const ADVANCE_SCRIPT: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > current then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
return 1
";

/// One app's pause and backlog, as Redis holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppQuota {
    /// Paused until then (Unix milliseconds), if a pause was ever written and not resumed.
    pub until_ms: Option<i64>,
    /// Per hold-topic partition, the offset after the last record parked.
    pub parked: BTreeMap<i32, i64>,
    /// Per hold-topic partition, the offset after the last record released.
    pub released: BTreeMap<i32, i64>,
}

impl AppQuota {
    /// Whether the app is paused at `now_ms`.
    pub fn paused(&self, now_ms: i64) -> bool {
        self.until_ms.is_some_and(|until| until > now_ms)
    }

    /// Held records not released yet, over every partition of the hold topic (a record parked
    /// twice after a crash counts twice).
    pub fn backlog(&self) -> i64 {
        self.parked
            .iter()
            .map(|(p, parked)| (parked - self.released.get(p).copied().unwrap_or(0)).max(0))
            .sum()
    }

    fn from_fields(fields: HashMap<String, String>) -> AppQuota {
        let mut quota = AppQuota::default();
        for (field, value) in fields {
            let Ok(value) = value.parse::<i64>() else {
                continue;
            };
            if field == "until_ms" {
                quota.until_ms = Some(value);
            } else if let Some(p) = field.strip_prefix("parked:") {
                if let Ok(p) = p.parse() {
                    quota.parked.insert(p, value);
                }
            } else if let Some(p) = field.strip_prefix("released:") {
                if let Ok(p) = p.parse() {
                    quota.released.insert(p, value);
                }
            }
        }
        quota
    }
}

/// Which offset of a hold-topic partition is advanced.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mark {
    Parked,
    Released,
}

#[derive(Debug, Clone)]
pub(crate) struct QuotaState {
    store: Store,
    pause_script: Script,
    advance_script: Script,
}

impl QuotaState {
    pub(crate) fn new(store: Store) -> QuotaState {
        QuotaState {
            store,
            pause_script: Script::new(PAUSE_SCRIPT),
            advance_script: Script::new(ADVANCE_SCRIPT),
        }
    }

    /// `<prefix>quota:{<app>}`: tagged by the app, like the token's keys.
    fn key(&self, app: &str) -> String {
        self.store.key(&format!("quota:{{{app}}}"))
    }

    pub(crate) async fn read(&self, app: &str) -> Result<AppQuota, StoreError> {
        let mut conn = self.store.conn();
        let fields: HashMap<String, String> = self
            .store
            .bounded(
                redis::cmd("HGETALL")
                    .arg(self.key(app))
                    .query_async(&mut conn),
            )
            .await?;
        Ok(AppQuota::from_fields(fields))
    }

    /// Pauses `app` until `until_ms` at least; answers the end of the pause in force.
    pub(crate) async fn pause(&self, app: &str, until_ms: i64) -> Result<i64, StoreError> {
        let mut conn = self.store.conn();
        let in_force: String = self
            .store
            .bounded(
                self.pause_script
                    .key(self.key(app))
                    .arg(until_ms)
                    .invoke_async(&mut conn),
            )
            .await?;
        in_force
            .parse()
            .map_err(|_| StoreError::Unexpected(format!("pause script answered {in_force:?}")))
    }

    /// Ends `app`'s pause now; answers whether one was in force.
    pub(crate) async fn resume(&self, app: &str, now_ms: i64) -> Result<bool, StoreError> {
        let was_paused = self.read(app).await?.paused(now_ms);
        let mut conn = self.store.conn();
        let _: i64 = self
            .store
            .bounded(
                redis::cmd("HDEL")
                    .arg(self.key(app))
                    .arg("until_ms")
                    .query_async(&mut conn),
            )
            .await?;
        Ok(was_paused)
    }

    /// Raises the parked or released offset of `partition` to `next`.
    pub(crate) async fn advance(
        &self,
        app: &str,
        mark: Mark,
        partition: i32,
        next: i64,
    ) -> Result<(), StoreError> {
        let field = match mark {
            Mark::Parked => format!("parked:{partition}"),
            Mark::Released => format!("released:{partition}"),
        };
        let mut conn = self.store.conn();
        let _: i64 = self
            .store
            .bounded(
                self.advance_script
                    .key(self.key(app))
                    .arg(field)
                    .arg(next)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backlog_is_what_was_parked_and_not_released() {
        let fields = [
            ("until_ms", "1000"),
            ("parked:0", "7"),
            ("released:0", "5"),
            ("parked:2", "3"),
            ("released:1", "9"),
            ("noise", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let q = AppQuota::from_fields(fields);
        assert_eq!(q.backlog(), 2 + 3);
        assert!(q.paused(999));
        assert!(!q.paused(1000), "a pause ends at its time");
        assert_eq!(AppQuota::default().backlog(), 0);
        assert!(!AppQuota::default().paused(0));
    }
}
