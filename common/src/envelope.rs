//! The Kafka record contract between `ingest` (producer) and `consumer`.
//!
//! # Wire form, version 1
//!
//! A record value is one UTF-8 JSON object: the version number `v` beside the fields of
//! [`EnvelopeV1`], all snake_case:
//!
//! ```json
//! {"v":1,
//!  "app":"shop",                              // configured app name (from the push URL)
//!  "appid":"wxba5fad812f8e6fb9",              // the Mini Program's appid
//!  "dedup_key":"shop:msg:22876340532172986",  // see crate::dedup
//!  "dedup":"checked",                         // or "unchecked": Redis was down, may be a duplicate
//!  "received_at_ms":1714112445123,            // ingest's clock, unix milliseconds
//!  "format":"json",                           // "xml" | "json": the payload's format
//!  "mode":"safe",                             // "plaintext" | "compatible" | "safe"
//!  "message":{"to_user_name":"gh_97417a04a28d","from_user_name":"o9Ag…","create_time":1714112445,
//!             "body":{"kind":"text","msg_id":"22876340532172986","content":"你好"}},
//!  "payload":"{\"ToUserName\":…}"}            // the exact decrypted push text
//! ```
//!
//! `message` is [`Message`] in its own serde form (ids are strings, so 64-bit `MsgId`s survive
//! any JSON reader). `payload` is the verified, decrypted message exactly as WeChat sent it, so a
//! record can always be re-parsed — by a newer parser, for replay, or for fields the typed view
//! does not keep. It is a string because a payload that reached publishing has parsed, and so is
//! UTF-8.
//!
//! The record key is [`record_key`], `"{app}:{openid}"`: one user's records share a partition,
//! which is what gives the consumer per-user order.
//!
//! # Versioning rule
//!
//! Version 1 is frozen. Any change to the fields, their meaning, or the serde form of the types
//! inside (including [`Message`]) is a new version — a new `EnvelopeVn` struct and a new
//! [`Envelope`] variant — never an edit of this one. Consumers read `v` first and refuse versions
//! they do not know ([`EnvelopeError::UnknownVersion`]) instead of guessing. Unknown extra fields
//! in a version-1 record are ignored.

use serde::{Deserialize, Serialize};

use crate::codec::Format;
use crate::dedup::DedupKey;
use crate::ids::{AppId, OpenId};
use crate::message::Message;
use crate::push::Mode;

/// The envelope version [`Envelope::to_bytes`] writes.
pub const ENVELOPE_VERSION: u32 = 1;

/// Whether the producer could run the deduplication check for this record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DedupStatus {
    /// Claimed in Redis before publishing: not a duplicate of an acknowledged push.
    Checked,
    /// Redis was unavailable; the push was published anyway (a duplicate is recoverable, a loss is
    /// not) and the record may be a duplicate.
    Unchecked,
}

/// Version 1 of the record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EnvelopeV1 {
    /// The configured app name, from the push URL `/wechat/{app}`.
    pub app: String,
    /// The Mini Program's appid.
    pub appid: AppId,
    /// The push's deduplication key.
    pub dedup_key: DedupKey,
    /// Whether deduplication ran.
    pub dedup: DedupStatus,
    /// When ingest received the push, unix milliseconds.
    pub received_at_ms: i64,
    /// The payload's format.
    pub format: Format,
    /// How the push was protected.
    pub mode: Mode,
    /// The parsed message.
    pub message: Message,
    /// The exact decrypted payload text.
    pub payload: String,
}

/// A record of any known version.
#[derive(Clone, Debug, PartialEq)]
pub enum Envelope {
    V1(EnvelopeV1),
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    /// The record declares a version this build does not know.
    #[error("unknown envelope version {0}")]
    UnknownVersion(u64),
    /// The record is not a decodable envelope; the JSON error says where (line and column).
    #[error("malformed envelope")]
    Malformed(#[source] serde_json::Error),
}

impl EnvelopeError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            EnvelopeError::UnknownVersion(_) => "unknown_version",
            EnvelopeError::Malformed(_) => "malformed",
        }
    }
}

/// What is written: the version beside the fields.
#[derive(Serialize)]
struct VersionedRef<'a, T> {
    v: u32,
    #[serde(flatten)]
    fields: &'a T,
}

/// What is read first: only the version.
#[derive(Deserialize)]
struct VersionProbe {
    v: u64,
}

impl Envelope {
    /// The record value.
    pub fn to_bytes(&self) -> Vec<u8> {
        let Envelope::V1(fields) = self;
        let versioned = VersionedRef {
            v: ENVELOPE_VERSION,
            fields,
        };
        // Cannot fail: every map key is a string and every `Serialize` impl inside is derived.
        serde_json::to_vec(&versioned).expect("envelope serialization is infallible")
    }

    /// Reads a record value: the version first, then that version's fields.
    pub fn from_bytes(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let VersionProbe { v } = serde_json::from_slice(bytes).map_err(EnvelopeError::Malformed)?;
        match v {
            1 => Ok(Envelope::V1(
                serde_json::from_slice(bytes).map_err(EnvelopeError::Malformed)?,
            )),
            other => Err(EnvelopeError::UnknownVersion(other)),
        }
    }

    /// The record's version.
    pub fn version(&self) -> u32 {
        match self {
            Envelope::V1(_) => 1,
        }
    }

    /// The version-1 view of the record (today the only one).
    pub fn v1(&self) -> &EnvelopeV1 {
        let Envelope::V1(v1) = self;
        v1
    }
}

impl From<EnvelopeV1> for Envelope {
    fn from(v1: EnvelopeV1) -> Self {
        Envelope::V1(v1)
    }
}

/// The Kafka record key of a push: `"{app}:{openid}"`, so one user's records share a partition.
pub fn record_key(app: &str, openid: &OpenId) -> String {
    format!("{app}:{openid}")
}
