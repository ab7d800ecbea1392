//! Integration tests of the edge against the real Kafka and Redis (`scripts/services.sh up`), and
//! against Redis servers of their own where a test needs a password or TLS (`redis_server.rs`).
//! They fail, never skip, when either is unreachable.
#![allow(clippy::unwrap_used)]

mod acks;
mod bad_input;
mod dedup;
mod failures;
mod health;
mod helpers;
mod pushes;
mod redis_server;
mod secure_redis;
mod security;
mod spool;
mod tls;
