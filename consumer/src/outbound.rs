//! Records the consumer writes to Kafka: dead letters, hand-offs and forwards.
//!
//! One idempotent producer (`acks=all`, `enable.idempotence=true`) per process. A publish is
//! complete only when Kafka acknowledged it, bounded by `kafka.produce_timeout`; the caller stores
//! the source record's offset only after that, so a crash never loses a dead letter or hand-off
//! (it may duplicate one, which is why each carries the idempotency or dedup key).

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

use crate::config::KafkaSettings;

/// A record Kafka did not acknowledge within `kafka.produce_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("publishing to {topic}: {source}")]
pub struct PublishError {
    pub topic: String,
    #[source]
    pub source: rdkafka::error::KafkaError,
}

#[derive(Clone)]
pub struct Outbound {
    producer: FutureProducer,
    timeout: Duration,
}

impl std::fmt::Debug for Outbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbound")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Outbound {
    pub fn new(kafka: &KafkaSettings) -> anyhow::Result<Outbound> {
        let mut config = ClientConfig::new();
        for (key, value) in &kafka.properties {
            config.set(key, value);
        }
        let producer: FutureProducer = config
            .set("bootstrap.servers", &kafka.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set(
                "message.timeout.ms",
                kafka.produce_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "5")
            .create()?;
        Ok(Outbound {
            producer,
            timeout: kafka.produce_timeout,
        })
    }

    /// Publishes one record and waits for Kafka's acknowledgement.
    pub async fn publish(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(), PublishError> {
        self.publish_at(topic, key, payload, headers)
            .await
            .map(|_| ())
    }

    /// [`Outbound::publish`], answering where the record was stored: `(partition, offset)`.
    pub async fn publish_at(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: &[(&str, &str)],
    ) -> Result<(i32, i64), PublishError> {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        let mut record = FutureRecord::to(topic).payload(payload).headers(owned);
        if let Some(key) = key {
            record = record.key(key);
        }
        self.producer
            .send(record, Timeout::After(self.timeout))
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(e, _)| PublishError {
                topic: topic.to_owned(),
                source: e,
            })
    }

    /// Waits (bounded) for every queued record to be acknowledged; used at shutdown.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        if let Err(e) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(error = %e, "producer flush incomplete at shutdown");
        }
    }
}
