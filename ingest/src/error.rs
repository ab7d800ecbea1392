//! Every way a push can fail, and the one place each becomes an HTTP answer.
//!
//! Client errors (4xx) mean WeChat — or whoever is calling — sent something we will never accept;
//! nothing was published. Server errors (503) mean the push was not stored and WeChat should retry,
//! which it does. No variant is ever a 500, and no message carries a secret or the payload.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::durable::WriteError;
use crate::intake::IntakeError;
use crate::publisher::PublishError;
use crate::spool::SpoolError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("unknown app")]
    UnknownApp,
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("could not read the request body")]
    BodyRead,
    #[error("signature check failed: {0}")]
    Unauthenticated(common::push::PushError),
    #[error("timestamp outside the accepted window")]
    StaleTimestamp,
    #[error("this app requires encrypted pushes")]
    EncryptionRequired,
    #[error("this signature already came with a different body")]
    Replayed,
    #[error("the push is addressed to another account (ToUserName is not this app's original id)")]
    WrongRecipient,
    #[error("malformed push")]
    Malformed(#[source] Malformed),
    #[error("undecryptable push: {0}")]
    Undecryptable(common::push::PushError),
    #[error("push not stored")]
    NotStored(#[source] WriteError),
    #[error("an earlier delivery of this push is still being stored")]
    DuplicateInFlight,
    #[error("no answer within the ack budget")]
    DeadlineExceeded,
}

/// What was malformed about a push; each keeps its cause, for the log line and the answer.
#[derive(Debug, thiserror::Error)]
pub enum Malformed {
    #[error("the query string does not parse")]
    Query(#[source] actix_web::error::QueryPayloadError),
    #[error("the body is neither XML nor JSON")]
    NotXmlOrJson,
    #[error("the encrypted envelope does not parse")]
    Envelope(#[source] common::push::PushError),
    #[error("the message does not parse")]
    Message(#[source] common::codec::CodecError),
}

impl IngestError {
    /// The bounded metrics label of this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            IngestError::UnknownApp => "unknown_app",
            IngestError::TooLarge { .. } => "too_large",
            IngestError::BodyRead => "body_read",
            IngestError::Unauthenticated(_) => "bad_signature",
            IngestError::StaleTimestamp => "stale_timestamp",
            IngestError::EncryptionRequired => "encryption_required",
            IngestError::Replayed => "replayed",
            IngestError::WrongRecipient => "wrong_recipient",
            IngestError::Malformed(_) => "malformed",
            IngestError::Undecryptable(_) => "undecryptable",
            IngestError::NotStored(WriteError::Kafka(PublishError::QueueFull)) => "backpressure",
            IngestError::NotStored(WriteError::Kafka(PublishError::Timeout)) => "publish_timeout",
            IngestError::NotStored(WriteError::Kafka(PublishError::Kafka(_))) => "publish_failed",
            IngestError::NotStored(WriteError::Spool {
                spool: SpoolError::Full { .. } | SpoolError::TooOld(_),
                ..
            }) => "spool_full",
            IngestError::NotStored(WriteError::Spool { .. }) => "spool_failed",
            IngestError::NotStored(WriteError::Busy) => "user_busy",
            IngestError::DuplicateInFlight => "duplicate_in_flight",
            IngestError::DeadlineExceeded => "deadline_exceeded",
        }
    }
}

impl ResponseError for IngestError {
    fn status_code(&self) -> StatusCode {
        match self {
            IngestError::UnknownApp => StatusCode::NOT_FOUND,
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::BodyRead | IngestError::Malformed(_) | IngestError::Undecryptable(_) => {
                StatusCode::BAD_REQUEST
            }
            IngestError::Unauthenticated(_)
            | IngestError::StaleTimestamp
            | IngestError::EncryptionRequired
            | IngestError::Replayed => StatusCode::UNAUTHORIZED,
            // Authentic, but not for this app.
            IngestError::WrongRecipient => StatusCode::FORBIDDEN,
            // Not stored: WeChat must retry, and will.
            IngestError::NotStored(_)
            | IngestError::DuplicateInFlight
            | IngestError::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    fn error_response(&self) -> HttpResponse {
        HttpResponse::build(self.status_code())
            .content_type("text/plain; charset=utf-8")
            .body(Chain(self).to_string())
    }
}

/// Shows an error followed by each of its sources, `outer: inner: innermost`: for log lines and
/// answers, where the cause matters as much as the summary.
#[derive(Debug)]
pub struct Chain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

impl From<IntakeError> for IngestError {
    fn from(e: IntakeError) -> IngestError {
        match e {
            IntakeError::NotStored(e) => IngestError::NotStored(e),
            IntakeError::DuplicateInFlight => IngestError::DuplicateInFlight,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::PUSH_OUTCOMES;

    #[test]
    fn every_outcome_is_a_pre_registered_metric_label() {
        let errors = [
            IngestError::UnknownApp,
            IngestError::TooLarge { limit: 1 },
            IngestError::BodyRead,
            IngestError::Unauthenticated(common::push::PushError::BadSignature),
            IngestError::StaleTimestamp,
            IngestError::EncryptionRequired,
            IngestError::Replayed,
            IngestError::WrongRecipient,
            IngestError::Malformed(Malformed::NotXmlOrJson),
            IngestError::Undecryptable(common::push::PushError::NoKey),
            IngestError::NotStored(WriteError::Kafka(PublishError::QueueFull)),
            IngestError::NotStored(WriteError::Kafka(PublishError::Timeout)),
            IngestError::NotStored(WriteError::Kafka(PublishError::Kafka(
                rdkafka::error::KafkaError::Canceled,
            ))),
            IngestError::NotStored(WriteError::Spool {
                spool: SpoolError::Full { max_bytes: 1 },
                kafka: Some(PublishError::Timeout),
            }),
            IngestError::NotStored(WriteError::Spool {
                spool: SpoolError::TooOld(std::time::Duration::from_secs(1)),
                kafka: None,
            }),
            IngestError::NotStored(WriteError::Spool {
                spool: SpoolError::Timeout(std::time::Duration::from_secs(1)),
                kafka: None,
            }),
            IngestError::NotStored(WriteError::Busy),
            IngestError::DuplicateInFlight,
            IngestError::DeadlineExceeded,
        ];
        for e in errors {
            assert!(PUSH_OUTCOMES.contains(&e.outcome()), "{}", e.outcome());
            assert_ne!(e.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        }
    }
}
