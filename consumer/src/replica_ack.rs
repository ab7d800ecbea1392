//! Waiting for Redis replicas to hold a write (`WAIT`), for the one write whose loss in a
//! failover would send a reply twice: the send ledger's `sent` mark ([`crate::ledger`]).
//!
//! Redis replicates asynchronously: a primary answers a write before any replica has it, and a
//! replica promoted after the primary died lacks what it had not received yet. `WAIT n timeout`
//! blocks the caller's connection until `n` replicas acknowledged every write made on it so far,
//! or the timeout passes, and answers how many did.
//!
//! In a Redis Cluster the `WAIT` must reach the primary that holds the key: the cluster client
//! sends a command without a key to every primary and answers the smallest count, so it is routed
//! here to the key's hash slot. The client keeps one connection per primary, shared by the whole
//! process, so the `WAIT` also covers other writes made on it meanwhile, which only makes it
//! stricter. Where the policy is chosen and why: docs/redis-keys.md.

use std::time::Duration;

use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::{FromRedisValue, RedisResult};

use common::redis::RedisConnection;

/// The number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The hash slot of `key` as Redis Cluster computes it: CRC16 (XMODEM) of the key's hash tag —
/// the part between the first `{` and the next `}`, when not empty — or of the whole key.
pub(crate) fn slot(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let hashed = bytes
        .iter()
        .position(|b| *b == b'{')
        .and_then(|open| {
            let rest = &bytes[open + 1..];
            let close = rest.iter().position(|b| *b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(bytes);
    crc16::State::<crc16::XMODEM>::calculate(hashed) % SLOTS
}

/// `WAIT replicas timeout` on the server that holds `key` (its slot's primary in a cluster).
/// Returns how many replicas acknowledged in time. The caller bounds the whole call: the server
/// answers after at most `timeout`.
pub(crate) async fn wait_for_replicas(
    conn: &mut RedisConnection,
    key: &str,
    replicas: u32,
    timeout: Duration,
) -> RedisResult<u32> {
    let mut wait = redis::cmd("WAIT");
    // WAIT 0 blocks forever; a timeout that rounds to 0 ms must not.
    wait.arg(replicas).arg(timeout.as_millis().max(1) as u64);
    match conn {
        RedisConnection::Single(c) => wait.query_async(c).await,
        RedisConnection::Cluster(c) => {
            let route = Route::new(slot(key), SlotAddr::Master);
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            let answer = c.route_command(&wait, routing).await?;
            u32::from_redis_value(&answer)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::slot;

    /// The examples of the Redis Cluster specification and keys whose slots a cluster reported
    /// (`CLUSTER KEYSLOT`).
    #[test]
    fn slots_follow_the_cluster_specification() {
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("foo"), 12182);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        assert_eq!(slot("foo{}{bar}"), slot("foo{}{bar}"));
        assert_ne!(
            slot("foo{}{bar}"),
            slot("bar"),
            "an empty tag hashes the whole key"
        );
        assert_eq!(slot("foo{{bar}}zap"), slot("{bar"));
        assert_eq!(slot("foo{bar}{zap}"), slot("bar"));
    }
}
