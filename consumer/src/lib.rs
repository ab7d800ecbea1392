//! `consumer`: the Kafka consumer group that turns inbound WeChat records into replies.
//!
//! Per record, in this order: decode the envelope (poison → dead letter) → open the user's reply
//! window if the record is a user action → evaluate the routing rules → for each matched action:
//! claim its idempotency key in the send ledger → check the reply window → get the shared access
//! token → call WeChat → record the outcome → store the offset once the record's outcome is final.
//!
//! The promises this crate keeps (see `design.md`): per-user order with concurrency across users
//! (invariant 5); offsets stored only after a final outcome, replies at most once through the
//! ledger (6); every record replied, skipped by a rule, or dead-lettered with a reason, and
//! counted (7). Scaling out is more processes in the same group; the inbound partition count is
//! the ceiling.

pub mod actions;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod explain;
pub mod http;
pub mod ledger;
pub mod metrics;
pub mod operator;
pub mod outbound;
pub mod pipeline;
pub mod processor;
pub mod rules;
pub mod setup;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod token_broker;
pub mod wechat_api;
pub mod window;

pub use startup::Application;
