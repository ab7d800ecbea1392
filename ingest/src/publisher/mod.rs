//! Publishing accepted pushes to Kafka, and nothing is acknowledged before Kafka acknowledged it.
//!
//! The producer is idempotent with `acks=all`: a record counts as stored only once every in-sync
//! replica has it, and librdkafka's own retries never duplicate it. Every publish is bounded twice:
//! by `message.timeout.ms` (the configured delivery timeout, below the ack budget) and by the
//! push's deadline. The producer queue is bounded too; a full queue is an immediate error (the edge
//! then spools the record, or answers 503 when it cannot) — backpressure instead of memory growth.
//!
//! Acknowledgements reach the waiting task without a polling thread in between (`acks.rs`).

mod acks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientConfig;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use acks::{Inner, Pump};

use crate::config::KafkaSettings;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the producer queue is full")]
    QueueFull,
    #[error("kafka did not acknowledge in time")]
    Timeout,
    #[error("kafka refused the record: {0}")]
    Kafka(#[from] KafkaError),
}

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub partition: i32,
    pub offset: i64,
}

/// Kafka's answer for one record: where it landed, or why it was not stored.
type Report = Result<Stored, KafkaError>;

/// A record handed to the producer, awaiting Kafka's acknowledgement.
#[derive(Debug)]
pub struct PendingAck(oneshot::Receiver<Report>);

impl PendingAck {
    /// Waits for the acknowledgement, at most until `deadline`.
    pub async fn wait(self, deadline: Instant) -> Result<Stored, PublishError> {
        match tokio::time::timeout_at(deadline.into(), self.settled()).await {
            Ok(settled) => settled,
            Err(_elapsed) => Err(PublishError::Timeout),
        }
    }

    /// Waits for the producer's report, however long it takes (a producer made with
    /// [`Publisher::unbounded`] reports only success or a permanent failure).
    pub async fn settled(self) -> Result<Stored, PublishError> {
        match self.0.await {
            Ok(Ok(stored)) => Ok(stored),
            Ok(Err(e)) => Err(PublishError::Kafka(e)),
            // The producer dropped the delivery report: it is shutting down.
            Err(_closed) => Err(PublishError::Kafka(KafkaError::Canceled)),
        }
    }
}

/// The producer's context: librdkafka's global errors arrive here. A *fatal* error (the
/// idempotent producer lost track of its sequence, for example) leaves the producer unable to
/// produce ever again; it is recorded and announced, so readiness turns red and the process exits
/// for the orchestrator to restart it, instead of answering 503 (or spooling) forever.
#[derive(Debug, Default)]
pub struct ProducerHealth {
    fatal: std::sync::OnceLock<String>,
    announce: CancellationToken,
}

impl ProducerHealth {
    /// The fatal error, once there was one.
    pub fn fatal(&self) -> Option<&str> {
        self.fatal.get().map(String::as_str)
    }

    /// Resolves when a fatal error happened.
    pub async fn fatal_error(&self) {
        self.announce.cancelled().await;
    }
}

impl ProducerHealth {
    fn record(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::Fatal) {
            tracing::error!(error = %error, reason, "the Kafka producer hit a fatal error");
            let _ = self.fatal.set(format!("{error}: {reason}"));
            self.announce.cancel();
        } else {
            tracing::warn!(error = %error, reason, "librdkafka");
        }
    }
}

/// What librdkafka calls back into: global errors to the shared [`ProducerHealth`], each
/// record's delivery report to the task waiting for it.
pub(crate) struct AckContext(Arc<ProducerHealth>);

impl ClientContext for AckContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.record(error, reason);
    }
}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Box<oneshot::Sender<Report>>;

    fn delivery(&self, result: &DeliveryResult<'_>, waiting: Self::DeliveryOpaque) {
        let report = match result {
            Ok(message) => Ok(Stored {
                partition: message.partition(),
                offset: message.offset(),
            }),
            Err((e, _)) => Err(e.clone()),
        };
        // The waiting task may have given up (its deadline): nobody to tell.
        let _ = waiting.send(report);
    }
}

pub struct Publisher {
    inner: Arc<Inner>,
    health: Arc<ProducerHealth>,
    topic: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// The edge's producer: a record is given up on after `kafka.delivery_timeout`.
    pub fn new(settings: &KafkaSettings) -> Result<Publisher, KafkaError> {
        Publisher::create(settings, Some(settings.delivery_timeout), "wxkf-ingest")
    }

    /// The spool drainer's producer: it never gives a record up, but retries it — the same
    /// record, with the same idempotence sequence number — until Kafka acknowledges it. A drain
    /// attempt that a shrinking ISR left written but unacknowledged is then committed once, not
    /// once per attempt as a resend would be.
    pub fn unbounded(settings: &KafkaSettings) -> Result<Publisher, KafkaError> {
        Publisher::create(settings, None, "wxkf-ingest-drain")
    }

    fn create(
        settings: &KafkaSettings,
        delivery_timeout: Option<Duration>,
        client_id: &str,
    ) -> Result<Publisher, KafkaError> {
        let mut config = ClientConfig::new();
        let properties = settings
            .librdkafka_properties()
            .map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        for (key, value) in &properties {
            config.set(key, value);
        }
        config
            .set("bootstrap.servers", &settings.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", settings.linger.as_millis().to_string())
            .set("compression.type", &settings.compression)
            .set(
                "queue.buffering.max.messages",
                settings.queue_max_messages.to_string(),
            )
            .set("client.id", client_id);
        match delivery_timeout {
            Some(timeout) => {
                let ms = timeout.as_millis().to_string();
                // A request in flight to a broker that died is given up on with its records, not
                // 30 s later: the producer's report of a record arrives within the delivery
                // timeout, and a record the edge then spools does not also reach Kafka from here.
                config
                    .set("message.timeout.ms", &ms)
                    .set("request.timeout.ms", &ms);
            }
            None => {
                config.set("message.timeout.ms", "0");
            }
        }
        let health = Arc::new(ProducerHealth::default());
        let producer: BaseProducer<AckContext> =
            config.create_with_context(AckContext(health.clone()))?;
        let inner = Inner::new(producer).map_err(|e| KafkaError::ClientCreation(e.to_string()))?;
        Ok(Publisher {
            inner,
            health,
            topic: settings.topic.clone(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes one record and waits for Kafka's acknowledgement, at most until `deadline`.
    ///
    /// On `Timeout` the record may still be delivered later; the caller answers 503 or spools the
    /// record, which can at worst duplicate it — never lose it.
    pub async fn publish(
        &self,
        key: &[u8],
        payload: &[u8],
        deadline: Instant,
    ) -> Result<Stored, PublishError> {
        self.send(key, payload)?.wait(deadline).await
    }

    /// Hands one record to the producer without waiting. Records sent one after another keep
    /// their order within a partition (the producer is idempotent).
    pub fn send(&self, key: &[u8], payload: &[u8]) -> Result<PendingAck, PublishError> {
        Pump::ensure(&self.inner);
        let (tx, rx) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(&self.topic, Box::new(tx))
            .key(key)
            .payload(payload);
        match self.inner.producer.send(record) {
            Ok(()) => Ok(PendingAck(rx)),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(PublishError::QueueFull)
            }
            Err((e, _)) => Err(PublishError::Kafka(e)),
        }
    }

    /// The producer's health: whether it hit a fatal error.
    pub fn health(&self) -> &ProducerHealth {
        &self.health
    }

    /// Records handed to the producer and not yet acknowledged or failed.
    pub fn queued(&self) -> i32 {
        self.inner.producer.in_flight_count()
    }

    /// Kafka answers a metadata request for our topic within `timeout`, and the producer has not
    /// hit a fatal error; for readiness.
    pub async fn ready(&self, timeout: Duration) -> Result<(), KafkaError> {
        if self.health().fatal().is_some() {
            return Err(KafkaError::Global(RDKafkaErrorCode::Fatal));
        }
        let inner = Arc::clone(&self.inner);
        let topic = self.topic.clone();
        tokio::task::spawn_blocking(move || {
            let metadata = inner
                .producer
                .client()
                .fetch_metadata(Some(&topic), timeout)?;
            match metadata.topics().first().and_then(|t| t.error()) {
                Some(e) => Err(KafkaError::MetadataFetch(e.into())),
                None => Ok(()),
            }
        })
        .await
        .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Waits until every queued record is acknowledged or failed, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.producer.flush(timeout)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_fatal_error_is_recorded_and_announced_and_others_are_not() {
        let context = AckContext(Arc::new(ProducerHealth::default()));
        let health = &context.0;
        context.error(
            KafkaError::Global(RDKafkaErrorCode::BrokerTransportFailure),
            "disconnected",
        );
        assert_eq!(health.fatal(), None);
        context.error(
            KafkaError::Global(RDKafkaErrorCode::Fatal),
            "OUT_OF_ORDER_SEQUENCE_NUMBER",
        );
        assert!(health
            .fatal()
            .unwrap()
            .contains("OUT_OF_ORDER_SEQUENCE_NUMBER"));
        tokio::time::timeout(Duration::from_secs(1), health.fatal_error())
            .await
            .expect("announced");
    }
}
