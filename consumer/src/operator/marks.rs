//! What `dlq redrive` already redrove: one Redis mark per dead letter.
//!
//! Key `{prefix}redrive:{dlq topic}:{partition}:{offset}`; values:
//! - `running:{owner}` — a redrive run is processing it (expires after [`CLAIM_LEASE`], so a
//!   crashed run does not hold it forever);
//! - `replied`, `already_sent`, `skipped` — redriven, final;
//! - `dead_lettered:{reason}:{partition}:{offset}` — failed again; the newer dead letter is there.
//!
//! Why marks and not a consumer group on the dead-letter topic: a group has one position per
//! partition, but redrives are selections (a reason, an app, a time range). A group that committed
//! past the dead letters a `--reason token_unavailable` run left alone would hide them from the
//! `--reason retries_exhausted` run after it. A mark per dead letter is exact for any selection,
//! and `dlq list` can show each dead letter's fate.
//!
//! The mark is written only after the outcome is final (reply sent and recorded, or the new dead
//! letter acknowledged). A crash between the two redrives the record again next time: the send
//! ledger keeps its replies from going out twice, and at worst its new dead letter is written
//! twice (both carry the same `redrive.previous`).

use std::time::Duration;

use redis::Script;

use crate::store::{Store, StoreError};

/// How long a final mark is kept: longer than any sensible dead-letter retention decision, and
/// far beyond the 48 h after which a redrive could not send anything anyway.
pub const MARK_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// How long a running redrive holds a dead letter.
pub const CLAIM_LEASE: Duration = Duration::from_secs(600);

/// Sets `running:{owner}` unless a mark exists; returns the existing mark otherwise.
const CLAIM_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
";

/// Deletes the mark only if it is our `running` one.
const RELEASE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

#[derive(Debug, Clone)]
pub struct Marks {
    store: Store,
    topic: String,
    running: String,
    claim_script: Script,
    release_script: Script,
}

impl Marks {
    pub fn new(store: Store, dead_letter_topic: &str) -> Marks {
        Marks {
            store,
            topic: dead_letter_topic.to_owned(),
            running: format!("running:{}", uuid::Uuid::new_v4().simple()),
            claim_script: Script::new(CLAIM_SCRIPT),
            release_script: Script::new(RELEASE_SCRIPT),
        }
    }

    fn key(&self, partition: i32, offset: i64) -> String {
        self.store
            .key(&format!("redrive:{}:{partition}:{offset}", self.topic))
    }

    /// Takes the dead letter for this run: `None` when taken, the existing mark otherwise.
    pub async fn claim(&self, partition: i32, offset: i64) -> Result<Option<String>, StoreError> {
        let mut conn = self.store.conn();
        self.store
            .bounded(
                self.claim_script
                    .key(self.key(partition, offset))
                    .arg(&self.running)
                    .arg(CLAIM_LEASE.as_millis() as u64)
                    .invoke_async(&mut conn),
            )
            .await
    }

    /// Records the final outcome.
    pub async fn finish(&self, partition: i32, offset: i64, mark: &str) -> Result<(), StoreError> {
        let mut conn = self.store.conn();
        self.store
            .bounded(
                redis::cmd("SET")
                    .arg(self.key(partition, offset))
                    .arg(mark)
                    .arg("PX")
                    .arg(MARK_TTL.as_millis() as u64)
                    .query_async::<()>(&mut conn),
            )
            .await
    }

    /// Gives the dead letter back (the run did not finish it).
    pub async fn release(&self, partition: i32, offset: i64) -> Result<(), StoreError> {
        let mut conn = self.store.conn();
        let _: i64 = self
            .store
            .bounded(
                self.release_script
                    .key(self.key(partition, offset))
                    .arg(&self.running)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// The marks of many dead letters at once (`dlq list`).
    pub async fn status(
        &self,
        positions: &[(i32, i64)],
    ) -> Result<Vec<Option<String>>, StoreError> {
        if positions.is_empty() {
            return Ok(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for (p, o) in positions {
            cmd.arg(self.key(*p, *o));
        }
        let mut conn = self.store.conn();
        self.store.bounded(cmd.query_async(&mut conn)).await
    }
}

/// A mark in words, for `dlq list` and `dlq show`.
pub fn describe(mark: Option<&str>) -> String {
    match mark {
        None => "open".into(),
        Some(m) if m.starts_with("running:") => "being redriven".into(),
        Some(m) => match m.strip_prefix("dead_lettered:") {
            Some(rest) => {
                let mut parts = rest.splitn(2, ':');
                let reason = parts.next().unwrap_or("?");
                let at = parts.next().unwrap_or("?");
                format!("redriven: failed again ({reason}), now at {at}")
            }
            None => format!("redriven: {m}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_read_as_their_fate() {
        assert_eq!(describe(None), "open");
        assert_eq!(describe(Some("running:abc")), "being redriven");
        assert_eq!(describe(Some("replied")), "redriven: replied");
        assert_eq!(
            describe(Some("dead_lettered:wechat_rejected:0:12")),
            "redriven: failed again (wechat_rejected), now at 0:12"
        );
    }
}
