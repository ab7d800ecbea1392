//! What the `ask` action keeps in Redis about a user: the decided answer of an ask until its
//! replies are sent, and the conversation memory (the last turns).
//!
//! Keys (docs/redis-keys.md), both tagged with the user so that they live in one slot of a
//! Redis Cluster, next to each other:
//! - `<prefix>ask:{<app>:<openid>}:answer:<idempotency key>`: the [`Answer`] as JSON, written
//!   once (`SET NX`: the first answer of an ask wins, so two runs of one record can never send
//!   different answers) and kept `ask.answer_ttl` at most; once its replies are sent it is
//!   replaced by a mark that holds only their number ([`Kept::Sent`], kept as long as the send
//!   ledger's entries), so a later redelivery neither asks nor sends again and nothing the user
//!   said or was told stays there;
//! - `<prefix>ask:{<app>:<openid>}:memory`: a list of turns, oldest first, trimmed to
//!   `ask.memory.turns` and expiring `ask.memory.ttl` after the last turn. A turn is appended
//!   once per ask (the script skips an id it already holds), so a redelivery does not repeat it.

use std::time::Duration;

use common::envelope::EnvelopeV1;
use redis::Script;
use serde::{Deserialize, Serialize};

use super::answer::Answer;
use crate::store::{Store, StoreError};

/// One turn of the conversation: what the user said and what was sent back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Turn {
    /// The ask's idempotency key: a turn is kept once.
    pub id: String,
    pub user: String,
    pub replies: Vec<String>,
}

/// What is kept under an ask's answer key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Kept {
    /// Decided, not yet (all) sent.
    Pending { answer: Answer },
    /// Done: this many replies went out.
    Sent { replies: usize },
}

/// KEYS[1] the memory list; ARGV: turn id (quoted as it appears in the JSON), turn JSON, turns
/// kept, lifetime in ms.
const APPEND_SCRIPT: &str = r"
for _, turn in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  if string.find(turn, ARGV[1], 1, true) then return 0 end
end
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
";

#[derive(Debug, Clone)]
pub struct AskStore {
    store: Store,
    answer_ttl: Duration,
    sent_ttl: Duration,
    turns: usize,
    memory_ttl: Duration,
    append: Script,
}

impl AskStore {
    /// `sent_ttl`: how long the mark of a finished ask is kept (the ledger's `entry_ttl`).
    pub fn new(
        store: Store,
        answer_ttl: Duration,
        sent_ttl: Duration,
        turns: usize,
        memory_ttl: Duration,
    ) -> AskStore {
        AskStore {
            store,
            answer_ttl,
            sent_ttl,
            turns,
            memory_ttl,
            append: Script::new(APPEND_SCRIPT),
        }
    }

    fn user(&self, env: &EnvelopeV1) -> String {
        self.store.key(&format!(
            "ask:{{{}:{}}}",
            env.app, env.message.from_user_name
        ))
    }

    fn answer_key(&self, env: &EnvelopeV1, idempotency_key: &str) -> String {
        format!("{}:answer:{idempotency_key}", self.user(env))
    }

    fn memory_key(&self, env: &EnvelopeV1) -> String {
        format!("{}:memory", self.user(env))
    }

    /// What was decided or done earlier for this ask, if anything.
    pub async fn kept(
        &self,
        env: &EnvelopeV1,
        idempotency_key: &str,
    ) -> Result<Option<Kept>, StoreError> {
        let mut conn = self.store.conn();
        let raw: Option<String> = self
            .store
            .bounded(
                redis::cmd("GET")
                    .arg(self.answer_key(env, idempotency_key))
                    .query_async(&mut conn),
            )
            .await?;
        match raw {
            None => Ok(None),
            Some(raw) => serde_json::from_str(&raw)
                .map(Some)
                .map_err(|e| StoreError::Unexpected(format!("a kept answer does not parse: {e}"))),
        }
    }

    /// Keeps `answer` unless something is kept already, and returns what is kept: the first
    /// answer of an ask is the answer.
    pub async fn keep(
        &self,
        env: &EnvelopeV1,
        idempotency_key: &str,
        answer: &Answer,
    ) -> Result<Kept, StoreError> {
        let kept = Kept::Pending {
            answer: answer.clone(),
        };
        let json = serde_json::to_string(&kept)
            .map_err(|e| StoreError::Unexpected(format!("an answer does not serialize: {e}")))?;
        let mut conn = self.store.conn();
        let written: Option<String> = self
            .store
            .bounded(
                redis::cmd("SET")
                    .arg(self.answer_key(env, idempotency_key))
                    .arg(json)
                    .arg("NX")
                    .arg("PX")
                    .arg(self.answer_ttl.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await?;
        if written.is_some() {
            return Ok(kept);
        }
        self.kept(env, idempotency_key)
            .await?
            .ok_or_else(|| StoreError::Unexpected("a kept answer vanished".into()))
    }

    /// The ask is done, `replies` replies went out: the answer gives way to a mark that holds
    /// their number only.
    pub async fn finish(
        &self,
        env: &EnvelopeV1,
        idempotency_key: &str,
        replies: usize,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_string(&Kept::Sent { replies })
            .map_err(|e| StoreError::Unexpected(format!("a mark does not serialize: {e}")))?;
        let mut conn = self.store.conn();
        let _: Option<String> = self
            .store
            .bounded(
                redis::cmd("SET")
                    .arg(self.answer_key(env, idempotency_key))
                    .arg(json)
                    .arg("PX")
                    .arg(self.sent_ttl.as_millis() as u64)
                    .query_async(&mut conn),
            )
            .await?;
        Ok(())
    }

    /// The user's last turns, oldest first.
    pub async fn memory(&self, env: &EnvelopeV1) -> Result<Vec<Turn>, StoreError> {
        if self.turns == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.store.conn();
        let raw: Vec<String> = self
            .store
            .bounded(
                redis::cmd("LRANGE")
                    .arg(self.memory_key(env))
                    .arg(0)
                    .arg(-1)
                    .query_async(&mut conn),
            )
            .await?;
        // A turn that does not parse (written by a newer build, say) is left out, not fatal.
        Ok(raw
            .iter()
            .filter_map(|t| serde_json::from_str(t).ok())
            .collect())
    }

    /// Appends a turn (once per id) and restarts the memory's lifetime.
    pub async fn remember(&self, env: &EnvelopeV1, turn: &Turn) -> Result<(), StoreError> {
        if self.turns == 0 {
            return Ok(());
        }
        let json = serde_json::to_string(turn)
            .map_err(|e| StoreError::Unexpected(format!("a turn does not serialize: {e}")))?;
        let id = serde_json::to_string(&turn.id).unwrap_or_default();
        let mut conn = self.store.conn();
        let _: i64 = self
            .store
            .bounded(
                self.append
                    .key(self.memory_key(env))
                    .arg(format!("\"id\":{id}"))
                    .arg(json)
                    .arg(self.turns)
                    .arg(self.memory_ttl.as_millis() as u64)
                    .invoke_async(&mut conn),
            )
            .await?;
        Ok(())
    }
}
