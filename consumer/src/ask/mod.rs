//! The `ask` action's machinery: the configured backends ([`backend`]), what they answer
//! ([`answer`]), what is kept in Redis meanwhile ([`store`]), and the limits on calling them
//! ([`limits`]). [`Asker::decide`] gets one answer with the retry policy; running the action
//! around it — the ledger, the reply window, typing, the sends — is `crate::actions::ask`.
//! docs/ask.md describes the action for operators and bot authors.

pub mod answer;
pub mod backend;
pub mod config;
pub(crate) mod limits;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::envelope::EnvelopeV1;
use tokio_util::sync::CancellationToken;

use crate::backoff::exponential_jitter;
use crate::clock::now_ms;
use crate::metrics::Metrics;
use answer::Answer;
use answer::Unusable;
use backend::{AskRequest, Backend, BackendError, BackendSetupError};
use config::AskSettings;
use limits::Limits;
use store::AskStore;

/// Every value of `consumer_ask_total{outcome}`.
pub const OUTCOMES: [&str; 8] = [
    "answered",
    "reused",
    "done",
    "fallback",
    "failed",
    "silent",
    "window_closed",
    "quota_exhausted",
];
/// Every value of `consumer_ask_calls_total{result}`.
pub const CALL_RESULTS: [&str; 7] = [
    "ok",
    "timeout",
    "unreachable",
    "rate_limited",
    "server_error",
    "refused",
    "malformed",
];
/// Every value of `consumer_ask_fallbacks_total{reason}`: a failed call's label, or `empty`.
pub const FALLBACK_REASONS: [&str; 7] = [
    "timeout",
    "unreachable",
    "rate_limited",
    "server_error",
    "refused",
    "malformed",
    "empty",
];

/// Why no usable answer came back.
#[derive(Debug, thiserror::Error)]
pub enum AskFailure {
    #[error("backend `{backend}` {error} (after {attempts} attempt(s))")]
    Backend {
        backend: String,
        attempts: u32,
        #[source]
        error: BackendError,
    },
    #[error("backend `{0}` answered nothing (no reply, no hand-off)")]
    Empty(String),
}

impl AskFailure {
    /// The `consumer_ask_fallbacks_total{reason}` label.
    pub fn label(&self) -> &'static str {
        match self {
            AskFailure::Backend { error, .. } => error.label(),
            AskFailure::Empty(_) => "empty",
        }
    }
}

/// The backends and their limits, shared by every record of the process.
#[derive(Debug, Clone)]
pub struct Asker {
    backends: Arc<BTreeMap<String, Backend>>,
    limits: Arc<Limits>,
    pub store: AskStore,
    pub settings: AskSettings,
    metrics: Metrics,
}

impl Asker {
    /// Builds every configured backend (reading its API key); fails on a missing key.
    pub fn new(
        settings: &AskSettings,
        store: AskStore,
        metrics: Metrics,
    ) -> Result<Asker, BackendSetupError> {
        let backends = settings
            .backends
            .iter()
            .map(|(name, b)| Ok((name.clone(), Backend::new(name, b)?)))
            .collect::<Result<BTreeMap<_, _>, BackendSetupError>>()?;
        Ok(Asker {
            backends: Arc::new(backends),
            limits: Arc::new(Limits::new(
                settings.max_concurrency,
                settings.rate_per_second,
                settings.burst,
            )),
            store,
            settings: settings.clone(),
            metrics,
        })
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.get(name)
    }

    pub(crate) fn count(&self, outcome: &str) {
        self.metrics.asks.with_label_values(&[outcome]).inc();
    }

    /// Asks `backend` until it answers usably, fails for good, the attempts are used up, or
    /// the next attempt could not end before `deadline_ms` (the reply window's end or
    /// `ask.max_wait`, whichever is first). `Ok(Err(..))` is a failure the fallback handles;
    /// `Err(())` means the process is stopping (nothing is held, the record comes again).
    pub async fn decide(
        &self,
        backend_name: &str,
        env: &EnvelopeV1,
        request: &AskRequest,
        deadline_ms: i64,
        shutdown: &CancellationToken,
    ) -> Result<Result<Answer, AskFailure>, ()> {
        let Some(backend) = self.backends.get(backend_name) else {
            // The rules are checked against the configured backends, so this is a defect.
            return Ok(Err(AskFailure::Backend {
                backend: backend_name.into(),
                attempts: 0,
                error: BackendError::Malformed(Unusable::NotConfigured),
            }));
        };
        let s = &self.settings;
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let call = async {
                let _permit = self.limits.acquire(&env.app).await;
                backend.ask(env, request).await
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return Err(()),
                result = call => result,
            };
            self.metrics
                .ask_duration
                .observe(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(answer) => {
                    self.metrics.ask_calls.with_label_values(&["ok"]).inc();
                    let answer = answer.fit_text(s.text_limit_bytes, s.max_text_parts);
                    return Ok(if answer.is_empty() {
                        Err(AskFailure::Empty(backend_name.into()))
                    } else {
                        Ok(answer)
                    });
                }
                Err(error) => error,
            };
            self.metrics
                .ask_calls
                .with_label_values(&[error.label()])
                .inc();
            let wait = error
                .retry_after()
                .unwrap_or_else(|| {
                    exponential_jitter(attempt, s.retry_initial_backoff, s.retry_max_backoff)
                })
                .min(s.retry_max_backoff.max(Duration::from_millis(1)));
            let next_ends = now_ms() + (wait + backend.timeout()).as_millis() as i64;
            if !error.retryable() || attempt >= s.max_attempts || next_ends > deadline_ms {
                tracing::info!(
                    app = %env.app,
                    backend = backend_name,
                    attempts = attempt,
                    error = %error,
                    "the ask backend gave no answer"
                );
                return Ok(Err(AskFailure::Backend {
                    backend: backend_name.into(),
                    attempts: attempt,
                    error,
                }));
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Err(()),
                _ = tokio::time::sleep(wait) => {}
            }
            attempt += 1;
        }
    }
}
