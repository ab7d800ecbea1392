//! `ingest`: the edge service behind a mini program's message-push URL.
//!
//! Per push, in this order: find the app → read the body (bounded) → verify the signature
//! (`msg_signature` in safe mode) and the timestamp window → decrypt → parse → claim the dedup key
//! in Redis → publish to Kafka and wait for its acknowledgement → mark the claim done → answer.
//! Every step is bounded by the ack budget, so WeChat always hears back inside its 5 s.
//!
//! The promises this crate keeps (see `design.md`): ack only after Kafka stored the record; answer
//! inside the budget; two-phase dedup released on failure; fail open on Redis, closed on Kafka; bad
//! input is a precise 4xx, never a crash; no secret in any log line.

pub mod config;
pub mod dedup;
pub mod error;
pub mod metrics;
pub mod publisher;
pub mod routes;
pub mod startup;
pub mod telemetry;

pub use startup::Application;
