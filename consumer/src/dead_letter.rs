//! Dead letters: records the consumer could not finish, kept with the reason, for inspection and
//! redrive (`consumer dlq list|show|redrive`, in `operator/`, reads this format).
//!
//! A dead letter is published to `kafka.dead_letter_topic` with the source record's key (so a
//! redrive keeps per-user order) and:
//! - headers `wxkf-dlq-reason`, `wxkf-dlq-source-topic`, `wxkf-dlq-source-partition`,
//!   `wxkf-dlq-source-offset` (filterable without parsing the body);
//! - a JSON body, [`DeadLetterRecord`] version 1, holding the original record value as base64 so
//!   it can be re-published byte for byte, plus where it came from, the reason kind (a closed
//!   set, also the metric label), a human detail, WeChat's errcode/errmsg when there was one, and
//!   the rule and action that failed;
//! - when `consumer dlq redrive` wrote it (the record failed again), a `redrive` section: how many
//!   times the record was redriven and the dead letter it replaced. The field is optional and
//!   absent otherwise, so version 1 stays readable in both directions.

use base64::Engine;
use common::envelope::EnvelopeError;
use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::outbound::{Outbound, PublishError};
use crate::record::KafkaRecord;

/// Why a record was dead-lettered. `kind()` is a closed set of labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// The record value is not a decodable envelope.
    Undecodable(String),
    /// An envelope version this build does not know.
    UnknownVersion(u64),
    /// The record's app is not configured here.
    UnknownApp(String),
    /// The user's reply window is closed (WeChat would answer 45015); not attempted.
    WindowClosed,
    /// The window's replies are used up (WeChat would answer 45047); not attempted.
    QuotaExhausted,
    /// WeChat refused the call with a final errcode.
    WeChatRejected { errcode: i64, errmsg: String },
    /// Retryable failures until the attempts ran out.
    RetriesExhausted {
        errcode: Option<i64>,
        detail: String,
    },
    /// The token was rejected again right after a refresh.
    TokenRejected { errcode: i64, errmsg: String },
    /// No token could be obtained for a reason retrying will not fix (bad appid or secret, ...).
    TokenUnavailable(String),
    /// The send may or may not have reached the user (timeout, or a crash mid-send found later).
    Ambiguous(String),
    /// A local image could not be read or uploaded.
    MediaUnavailable(String),
    /// A forward or hand-off webhook refused the record (4xx).
    WebhookRejected { status: u16, detail: String },
    /// This run's ledger mark of a reply was taken over (its lease ran out, or an operator cleared
    /// it) before it could send; it sent nothing more. The ledger's owner decides the reply, so a
    /// redrive is safe: it finds `sent`, `ambiguous`, or nothing.
    Superseded(String),
    /// Processing the record panicked (a defect): not retried, since it would panic again.
    Panic(String),
    /// An `ask` backend gave no usable answer and the action has no fallback.
    AskFailed(String),
}

impl Reason {
    /// Every value [`Reason::kind`] can return.
    pub const KINDS: [&'static str; 15] = [
        "undecodable",
        "unknown_version",
        "unknown_app",
        "window_closed",
        "quota_exhausted",
        "wechat_rejected",
        "retries_exhausted",
        "token_rejected",
        "token_unavailable",
        "ambiguous",
        "media_unavailable",
        "webhook_rejected",
        "superseded",
        "panic",
        "ask_failed",
    ];

    pub fn kind(&self) -> &'static str {
        match self {
            Reason::Undecodable(_) => "undecodable",
            Reason::UnknownVersion(_) => "unknown_version",
            Reason::UnknownApp(_) => "unknown_app",
            Reason::WindowClosed => "window_closed",
            Reason::QuotaExhausted => "quota_exhausted",
            Reason::WeChatRejected { .. } => "wechat_rejected",
            Reason::RetriesExhausted { .. } => "retries_exhausted",
            Reason::TokenRejected { .. } => "token_rejected",
            Reason::TokenUnavailable(_) => "token_unavailable",
            Reason::Ambiguous(_) => "ambiguous",
            Reason::MediaUnavailable(_) => "media_unavailable",
            Reason::WebhookRejected { .. } => "webhook_rejected",
            Reason::Superseded(_) => "superseded",
            Reason::Panic(_) => "panic",
            Reason::AskFailed(_) => "ask_failed",
        }
    }

    /// WeChat's errcode, when WeChat gave one (an HTTP-level refusal has none: 0 is not kept).
    pub fn errcode(&self) -> Option<i64> {
        match self {
            Reason::WeChatRejected { errcode, .. } | Reason::TokenRejected { errcode, .. } => {
                Some(*errcode).filter(|code| *code != 0)
            }
            Reason::RetriesExhausted { errcode, .. } => *errcode,
            _ => None,
        }
    }

    pub fn detail(&self) -> String {
        match self {
            Reason::Undecodable(d)
            | Reason::TokenUnavailable(d)
            | Reason::Ambiguous(d)
            | Reason::MediaUnavailable(d)
            | Reason::Superseded(d)
            | Reason::Panic(d)
            | Reason::AskFailed(d) => d.clone(),
            Reason::UnknownVersion(v) => format!("unknown envelope version {v}"),
            Reason::UnknownApp(app) => format!("app `{app}` is not configured"),
            Reason::WindowClosed => {
                "the user's reply window is closed (45015 expected); not attempted".into()
            }
            Reason::QuotaExhausted => {
                "the user's reply quota is used up (45047 expected); not attempted".into()
            }
            Reason::WeChatRejected { errcode, errmsg }
            | Reason::TokenRejected { errcode, errmsg } => {
                format!("errcode {errcode}: {errmsg}")
            }
            Reason::RetriesExhausted { detail, .. } => detail.clone(),
            Reason::WebhookRejected { status, detail } => format!("HTTP {status}: {detail}"),
        }
    }
}

/// A dead letter with the place it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: Reason,
    /// The rule and 0-based action index that failed, when an action failed.
    pub rule: Option<String>,
    pub action_index: Option<usize>,
}

impl DeadLetter {
    pub fn record(reason: Reason) -> DeadLetter {
        DeadLetter {
            reason,
            rule: None,
            action_index: None,
        }
    }

    /// The dead letter of a record value that is not a readable envelope (poison): no rules
    /// change or retry can alter that, so it is final at once.
    pub fn poison(error: EnvelopeError) -> DeadLetter {
        DeadLetter::record(match error {
            EnvelopeError::UnknownVersion(v) => Reason::UnknownVersion(v),
            EnvelopeError::Malformed(cause) => Reason::Undecodable(cause.to_string()),
        })
    }
}

/// Where the dead record was read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub timestamp_ms: Option<i64>,
}

impl From<&KafkaRecord> for SourceRecord {
    fn from(record: &KafkaRecord) -> SourceRecord {
        SourceRecord {
            topic: record.topic.clone(),
            partition: record.partition,
            offset: record.offset,
            key: record
                .key
                .as_deref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            timestamp_ms: record.timestamp_ms,
        }
    }
}

/// A record's place in a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The lineage of a dead letter written by a redrive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redrive {
    /// How many times the record has been redriven (1 after the first redrive).
    pub count: u32,
    /// The dead letter that was redriven and failed again.
    pub previous: Position,
    /// That dead letter's reason.
    pub previous_reason: String,
}

/// The JSON body of a dead-letter record, version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    pub v: u32,
    pub reason: String,
    pub detail: String,
    pub errcode: Option<i64>,
    pub rule: Option<String>,
    pub action_index: Option<usize>,
    pub source: SourceRecord,
    pub consumer_group: String,
    pub dead_lettered_at_ms: i64,
    /// The original record value, base64 (standard alphabet).
    pub record_b64: String,
    /// Set when a redrive wrote this dead letter; absent in the live consumer's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redrive: Option<Redrive>,
}

impl DeadLetterRecord {
    pub fn new(letter: &DeadLetter, source: SourceRecord, group: &str, value: &[u8]) -> Self {
        DeadLetterRecord {
            v: 1,
            reason: letter.reason.kind().to_owned(),
            detail: letter.reason.detail(),
            errcode: letter.reason.errcode(),
            rule: letter.rule.clone(),
            action_index: letter.action_index,
            source,
            consumer_group: group.to_owned(),
            dead_lettered_at_ms: now_ms(),
            record_b64: base64::engine::general_purpose::STANDARD.encode(value),
            redrive: None,
        }
    }

    /// The original record value.
    pub fn original(&self) -> Result<Vec<u8>, base64::DecodeError> {
        base64::engine::general_purpose::STANDARD.decode(&self.record_b64)
    }
}

/// Writes dead letters.
#[derive(Debug, Clone)]
pub struct DeadLetterWriter {
    pub outbound: Outbound,
    pub topic: String,
    pub group: String,
}

impl DeadLetterWriter {
    /// Publishes the dead letter for the record read at `source` with value `value`.
    pub async fn write(
        &self,
        letter: &DeadLetter,
        source: SourceRecord,
        value: &[u8],
    ) -> Result<(), PublishError> {
        self.write_at(letter, source, value, None).await.map(|_| ())
    }

    /// [`DeadLetterWriter::write`] with the redrive lineage, if any; answers where the dead
    /// letter was stored, `(partition, offset)`.
    pub async fn write_at(
        &self,
        letter: &DeadLetter,
        source: SourceRecord,
        value: &[u8],
        redrive: Option<Redrive>,
    ) -> Result<(i32, i64), PublishError> {
        let partition = source.partition.to_string();
        let offset = source.offset.to_string();
        let source_topic = source.topic.clone();
        let key = source.key.clone();
        let count = redrive.as_ref().map(|r| r.count.to_string());
        let mut record = DeadLetterRecord::new(letter, source, &self.group, value);
        record.redrive = redrive;
        let body = serde_json::to_vec(&record).unwrap_or_default();
        let mut headers = vec![
            ("wxkf-dlq-reason", letter.reason.kind()),
            ("wxkf-dlq-source-topic", source_topic.as_str()),
            ("wxkf-dlq-source-partition", partition.as_str()),
            ("wxkf-dlq-source-offset", offset.as_str()),
        ];
        if let Some(count) = &count {
            headers.push(("wxkf-dlq-redrive-count", count.as_str()));
        }
        self.outbound
            .publish_at(
                &self.topic,
                key.as_deref().map(str::as_bytes),
                &body,
                &headers,
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_kind_is_listed_for_the_metrics() {
        let reasons = [
            Reason::Undecodable(String::new()),
            Reason::UnknownVersion(2),
            Reason::UnknownApp(String::new()),
            Reason::WindowClosed,
            Reason::QuotaExhausted,
            Reason::WeChatRejected {
                errcode: 1,
                errmsg: String::new(),
            },
            Reason::RetriesExhausted {
                errcode: None,
                detail: String::new(),
            },
            Reason::TokenRejected {
                errcode: 1,
                errmsg: String::new(),
            },
            Reason::TokenUnavailable(String::new()),
            Reason::Ambiguous(String::new()),
            Reason::MediaUnavailable(String::new()),
            Reason::WebhookRejected {
                status: 400,
                detail: String::new(),
            },
            Reason::Superseded(String::new()),
            Reason::Panic(String::new()),
            Reason::AskFailed(String::new()),
        ];
        let kinds: Vec<&str> = reasons.iter().map(Reason::kind).collect();
        assert_eq!(kinds, Reason::KINDS);
    }

    #[test]
    fn a_dead_letter_keeps_the_original_bytes() {
        let letter = DeadLetter::record(Reason::UnknownVersion(9));
        let source = SourceRecord {
            topic: "in".into(),
            partition: 2,
            offset: 41,
            key: Some("demo:o1".into()),
            timestamp_ms: None,
        };
        let record = DeadLetterRecord::new(&letter, source, "group", b"\x00\xffraw");
        let json = serde_json::to_string(&record).expect("json");
        let back: DeadLetterRecord = serde_json::from_str(&json).expect("parse");
        assert_eq!(back.original().expect("base64"), b"\x00\xffraw");
        assert_eq!(back.reason, "unknown_version");
        assert_eq!(back.source.offset, 41);
        assert!(
            !json.contains("redrive"),
            "the live consumer's dead letters stay as they were"
        );
    }

    #[test]
    fn a_redrive_lineage_round_trips_and_older_readers_ignore_it() {
        let source = SourceRecord {
            topic: "in".into(),
            partition: 0,
            offset: 7,
            key: None,
            timestamp_ms: None,
        };
        let mut record =
            DeadLetterRecord::new(&DeadLetter::record(Reason::WindowClosed), source, "g", b"x");
        record.redrive = Some(Redrive {
            count: 2,
            previous: Position {
                topic: "dlq".into(),
                partition: 1,
                offset: 9,
            },
            previous_reason: "retries_exhausted".into(),
        });
        let json = serde_json::to_value(&record).expect("json");
        let back: DeadLetterRecord = serde_json::from_value(json.clone()).expect("parse");
        assert_eq!(back, record);
        let mut old = json;
        old.as_object_mut().expect("object").remove("redrive");
        let back: DeadLetterRecord = serde_json::from_value(old).expect("parse without it");
        assert_eq!(back.redrive, None);
    }
}
