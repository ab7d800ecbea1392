//! The consumer on a real Redis Cluster (three primaries, one replica each): the token broker
//! (whose script uses two keys, tagged into one slot), the reply windows, the send ledger and
//! the redrive marks (`dlq list` reads many at once, across slots) — the same tests as on the
//! single Redis, with the harness pointed at the cluster — the start-up check of the node list,
//! and the ledger's `sent` mark confirmed by a replica (`replication`).
//!
//! Needs `WXKF_TEST_REDIS_CLUSTER` (the node URLs), the real Kafka (`WXKF_TEST_KAFKA`) and the
//! single Redis (`WXKF_TEST_REDIS`, for the mixed-list check); fails, never skips, without them.
//! Run by scripts/test.sh in its Redis Cluster stage:
//! `cargo test -p consumer --features redis-cluster-tests --test redis_cluster`.

/// The shared harness puts these tests on the cluster.
const ON_REDIS_CLUSTER: bool = true;

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

#[path = "../api/actions.rs"]
mod actions;
#[path = "../api/redrive.rs"]
mod redrive;
#[path = "../api/replay.rs"]
mod replay;
#[path = "../api/tokens.rs"]
mod tokens;
#[path = "../api/windows.rs"]
mod windows;

mod replication;
mod topology;
