//! `ingest`: the edge service behind a mini program's message-push URL.
//!
//! Per push, in this order: find the app → read the body (bounded) → verify the signature
//! (`msg_signature` in safe mode) and the timestamp window → decrypt → parse (`routes/push.rs`) →
//! claim the dedup key in Redis → write the record durably: Kafka's acknowledgement, or the local
//! spool when Kafka cannot in time (`intake.rs`, `durable.rs`, `spool/`) → answer → mark the
//! claim done, gathered with other marks (`done_marks.rs`). Every step is bounded by the ack
//! budget, so WeChat always hears back inside its 5 s.
//!
//! The promises this crate keeps (`docs/architecture.md`): ack only after a durable write; answer
//! inside the budget; two-phase dedup released on failure; fail open on Redis, durable on Kafka
//! (the spool); bad input is a precise 4xx, never a crash; no secret in any log line.

pub mod apps;
pub mod config;
pub mod dedup;
pub(crate) mod done_marks;
pub mod durable;
pub mod error;
pub mod intake;
pub mod metrics;
pub mod publisher;
pub mod routes;
pub mod spool;
pub mod startup;
pub mod state;
pub mod telemetry;

pub use startup::Application;
