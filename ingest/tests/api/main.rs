//! Integration tests of the edge against the real Kafka and Redis (`scripts/services.sh up`).
//! They fail, never skip, when either is unreachable.
#![allow(clippy::unwrap_used)]

mod bad_input;
mod dedup;
mod failures;
mod health;
mod helpers;
mod pushes;
mod security;
mod spool;
mod tls;
