//! The transient failure of processing one record: [`ProcessError`].
//!
//! It sits below both [`crate::processor`] and [`crate::actions`], which return it, so neither
//! has to import the other's module to name it. Everything here is transient by definition — a
//! permanent failure is not an error but an outcome, a dead letter with a
//! [`crate::dead_letter::Reason`] — so the caller's policy is one line: retry the same record
//! later and do not store its offset meanwhile. Each variant keeps its cause as a typed source,
//! so a log line (`{:#}`) and a test can tell a Kafka timeout from a refused webhook.

use crate::actions::sinks::SinkError;
use crate::outbound::PublishError;
use crate::store::StoreError;
use crate::token_broker::TokenError;

/// A transient failure; the record is retried.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("access token: {0}")]
    Token(#[source] TokenError),
    /// A forward or hand-off did not complete.
    #[error("{0}")]
    Sink(#[source] SinkError),
    /// A dead letter was not acknowledged by Kafka, so the record's outcome is not final yet.
    #[error("{0}")]
    DeadLetter(#[source] PublishError),
    /// A record of a paused app was not acknowledged by its hold topic (`crate::quota`).
    #[error("{0}")]
    Park(#[source] PublishError),
    /// The record's run ended (the process is stopping, or the record's partition was revoked):
    /// a wait ended early and its claim was given back; the record is redelivered after the
    /// restart or to the partition's new owner.
    #[error("stopping")]
    Stopping,
}

impl ProcessError {
    /// Bounded label for `consumer_process_retries_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProcessError::Store(_) => "redis",
            ProcessError::Token(_) => "token",
            // Both are records this process writes out (webhook or Kafka): one label, as the
            // dashboards and alerts have always counted them.
            ProcessError::Sink(_) | ProcessError::DeadLetter(_) | ProcessError::Park(_) => "sink",
            ProcessError::Stopping => "stopping",
        }
    }
}
