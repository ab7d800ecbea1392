//! A record read from Kafka, owned: [`KafkaRecord`].
//!
//! One type for every reader of the crate — the group loop ([`crate::pipeline`]) and the
//! operator tools' range reader ([`crate::operator::range`]) — so a dead letter names its source
//! the same way whoever read it, and the per-user key is taken from one place.

use rdkafka::message::{BorrowedMessage, Message as _};

/// One record as read, detached from the consumer's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record key: app + openid for inbound records, so one user's records share it.
    pub key: Option<Vec<u8>>,
    /// The value; a record without one reads as empty (and so as poison, if it is processed).
    pub value: Vec<u8>,
    pub timestamp_ms: Option<i64>,
}

impl KafkaRecord {
    /// Copies what the crate needs out of a borrowed message.
    pub(crate) fn from_message(message: &BorrowedMessage<'_>) -> KafkaRecord {
        KafkaRecord {
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            timestamp_ms: message.timestamp().to_millis(),
        }
    }

    /// The key records are ordered by: one key's records are processed one at a time.
    pub fn ordering_key(&self) -> Vec<u8> {
        self.key.clone().unwrap_or_default()
    }

    /// `topic/partition@offset`, as `consumer explain` labels records.
    pub fn label(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }
}
