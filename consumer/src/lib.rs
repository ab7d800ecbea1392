//! `consumer`: the Kafka consumer group that turns inbound WeChat records into replies.
//!
//! Per record, in this order: decode the envelope (poison → dead letter) → open the user's reply
//! window if the record is a user action → evaluate the routing rules → for each matched action:
//! claim its idempotency key in the send ledger → check the reply window → get the shared access
//! token → call WeChat → record the outcome → store the offset once the record's outcome is final.
//!
//! The promises this crate keeps (`docs/architecture.md` lists each with the file that enforces
//! it): per-user order with concurrency across users; offsets stored only after a final outcome,
//! replies at most once through the ledger; every record replied, skipped by a rule, or
//! dead-lettered with a reason, and counted. Scaling out is more processes in the same group; the
//! inbound partition count is the ceiling.
//!
//! Two homes. The runtime is the modules below, in layers that only point down: the group loop
//! ([`pipeline`]) feeds one record at a time to [`processor`], which evaluates [`rules`] and runs
//! [`actions`] (WeChat calls through `wechat_api`, the token broker, the send ledger, the reply
//! windows, and the sinks), all on small shared parts (Redis `store`, Kafka `outbound`, `clock`,
//! `backoff`, `record`). The operator's tools — `setup`, `explain`, `replay`, `dlq` — live in
//! [`operator`], built on the runtime's parts; the runtime never depends on them, but for one
//! call: at start the service creates its apps' hold topics ([`quota`]) with `setup`'s code.
//!
//! `pub` here means "used by the binary, the integration tests or the benches"; everything else
//! is `pub(crate)`.

// The runtime's foundations.
pub(crate) mod backoff;
pub(crate) mod clock;
pub mod config;
pub mod http_url;
pub mod metrics;
pub(crate) mod outbound;
pub(crate) mod record;
pub(crate) mod replica_ack;
pub(crate) mod store;
pub mod telemetry;

// Per-record work, bottom up.
pub mod actions;
pub mod apps;
pub mod ask;
pub mod dead_letter;
pub mod error;
pub(crate) mod ledger;
pub mod processor;
pub mod quota;
pub mod rules;
pub(crate) mod token_broker;
pub(crate) mod wechat_api;
pub(crate) mod window;

// The service around it.
pub(crate) mod http;
pub(crate) mod pipeline;
pub mod startup;

// The command line and the operator's tools.
pub mod cli;
pub mod operator;

// Faults the integration tests inject; only in builds of the tests (feature `test-hooks`).
#[cfg(feature = "test-hooks")]
pub mod test_hooks;

pub use startup::Application;
