//! The wire contract shared by `ingest` and `consumer`, and the WeChat protocol they speak.
//!
//! This crate owns everything both services must agree on, and nothing else: no I/O, no Kafka,
//! Redis or HTTP dependency — apart from `redis`, the one Redis client both services share, and
//! `app_file`, the app files both services read, each compiled only with its feature. One concept per module:
//!
//! - [`ids`] — `AppId`, `OpenId`, `MsgId` newtypes (`MsgId` is an opaque string: ids exceed 2^53)
//!   and the deployment's `AppName`;
//! - [`secrets`] — an app's push `Token` and `AppSecret`, never printed (its EncodingAESKey is
//!   [`crypto::AesKey`]);
//! - [`message`] — the decoded push, [`Message`], with typed customer-service kinds and a
//!   catch-all that keeps every unknown push whole;
//! - [`codec`] — WeChat's XML and JSON forms of a message, read tolerantly, written as WeChat does;
//! - [`signature`] — `signature` / `msg_signature` (sorted SHA-1), checked in constant time;
//! - [`crypto`] — the AES-256-CBC message encryption with its strict decryption;
//! - [`push`] — authenticating a push: [`push::verify`] is the only way to a [`VerifiedPush`],
//!   and only a verified push can be opened (decrypted) and parsed;
//! - [`reply`] — the `transfer_customer_service` answer and the encrypted reply envelope;
//! - [`seal`] — the inverse of [`push`]: sealing a push as WeChat does, for the simulator and tests;
//! - [`dedup`] — the deduplication key of a push;
//! - [`envelope`] — the Kafka record;
//! - [`kafka_properties`] — the extra librdkafka properties both services take from a
//!   deployment (a mounted file, `_` for `.` in environment variables), with their secrets
//!   redacted when printed;
//! - `app_file` (feature `app-files`) — the app file both services read, one per mini program:
//!   its shared shape, secret references, the directory listing and the change detection;
//! - [`settle`] — a polled file's new contents taken only once two reads in a row agree (the
//!   app files and the consumer's rules file), so a file caught half-written is never in force;
//! - `redis` (feature `redis`) — one Redis server or a Redis Cluster behind one connection type,
//!   and the check at start that the nodes are what the configuration says.
//!
//! # The Kafka contract
//!
//! `ingest` publishes one [`Envelope`] per accepted push, serialised by [`Envelope::to_bytes`]
//! as a JSON object carrying `"v"` (the version) beside the fields of that version, keyed by
//! [`envelope::record_key`] (`"{app}:{openid}"`, for per-user order). `consumer` decodes it with
//! [`Envelope::from_bytes`], which reads `v` first and refuses unknown versions. The record keeps
//! the exact decrypted payload beside the parsed message, so records can be re-parsed and replayed.
//! The layout is documented field by field in [`envelope`].
//!
//! **Rule:** a published version is frozen. Changing any field, its meaning, or the serde form of
//! a type inside it (including [`Message`]) requires a new envelope version, never an edit.

#[cfg(feature = "app-files")]
pub mod app_file;
pub mod codec;
pub mod crypto;
pub mod dedup;
pub mod envelope;
pub mod ids;
pub mod kafka_properties;
pub mod message;
pub mod push;
#[cfg(feature = "redis")]
pub mod redis;
pub mod reply;
pub mod seal;
pub mod secrets;
pub mod settle;
pub mod signature;

pub use codec::{CodecError, Format};
pub use crypto::{AesKey, CryptoError};
pub use dedup::DedupKey;
pub use envelope::{DedupStatus, Envelope, EnvelopeError, EnvelopeV1, ENVELOPE_VERSION};
pub use ids::{AppId, AppIdError, AppName, AppNameError, MsgId, OpenId};
pub use message::{Message, MessageBody};
pub use push::{AppCredentials, Mode, OpenedPush, PushError, PushQuery, VerifiedPush};
pub use secrets::{AppSecret, EmptySecret, Token};
