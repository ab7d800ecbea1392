//! Calling the WeChat API with the shared token: one attempt (with the token-error protocol), and
//! the retry policy for retryable failures.
//!
//! Token protocol (docs/wechat-protocol.md §7): an attempt uses the current token; if WeChat answers
//! 40001/40014/42001, the token is expired only if it is still the current generation (so a
//! stale failure never wipes a fresh token), a token is fetched again, and the call is repeated
//! exactly once. A second token error is returned to the caller, who gives up (no loop).
//!
//! Retry policy: exponential backoff with full jitter between `retry_initial_backoff` and
//! `retry_max_backoff`, `minute_quota_backoff` after 45011, at most `max_attempts` attempts.
//! Only the caller decides whether an error may be retried at all (see [`ErrorClass`]); a send
//! that timed out never is.

use std::future::Future;
use std::time::Duration;

use crate::backoff::exponential_jitter;
use crate::config::WechatSettings;
use crate::token_broker::{TokenBroker, TokenError};
use crate::wechat_api::error::ERRCODE_MINUTE_QUOTA;
use crate::wechat_api::{AccessToken, ApiError, ErrorClass};

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Api(ApiError),
    #[error(transparent)]
    Token(TokenError),
}

/// A retrying call that gave up.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    /// Final, ambiguous, a second token rejection, or retryable with attempts used up.
    #[error("{error} ({class})")]
    Api { error: ApiError, class: ErrorClass },
    #[error(transparent)]
    Token(TokenError),
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub minute_quota_backoff: Duration,
}

impl RetryPolicy {
    pub fn from_settings(w: &WechatSettings) -> RetryPolicy {
        RetryPolicy {
            max_attempts: w.max_attempts,
            initial_backoff: w.retry_initial_backoff,
            max_backoff: w.retry_max_backoff,
            minute_quota_backoff: w.minute_quota_backoff,
        }
    }

    /// The wait before attempt `attempt + 1` after `error` (`attempt` counts from 1).
    pub fn backoff(&self, attempt: u32, error: &ApiError) -> Duration {
        if error.errcode() == Some(ERRCODE_MINUTE_QUOTA) {
            return self.minute_quota_backoff;
        }
        exponential_jitter(attempt, self.initial_backoff, self.max_backoff)
    }
}

#[derive(Debug)]
pub struct Caller<'a> {
    pub tokens: &'a TokenBroker,
    pub policy: &'a RetryPolicy,
}

impl Caller<'_> {
    /// One attempt of `call` for `app`, with the token-error protocol.
    pub async fn attempt<T, F, Fut>(&self, app: &str, call: F) -> Result<T, AttemptError>
    where
        F: Fn(AccessToken) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let token = self.tokens.token(app).await.map_err(AttemptError::Token)?;
        match call(token.value.clone()).await {
            Err(e) if e.class(true) == ErrorClass::Token => {
                // WeChat rejected the token, so nothing was done: safe to repeat once.
                tracing::info!(app, errcode = ?e.errcode(), "access token rejected; refreshing");
                self.tokens
                    .expire_if_current(app, &token)
                    .await
                    .map_err(AttemptError::Token)?;
                let fresh = self.tokens.token(app).await.map_err(AttemptError::Token)?;
                call(fresh.value).await.map_err(AttemptError::Api)
            }
            other => other.map_err(AttemptError::Api),
        }
    }

    /// Attempts an idempotent call (typing, upload) until it succeeds, fails for good, or the
    /// attempts are used up.
    pub async fn call_idempotent<T, F, Fut>(&self, app: &str, call: F) -> Result<T, CallFailure>
    where
        F: Fn(AccessToken) -> Fut,
        Fut: Future<Output = Result<T, ApiError>>,
    {
        let mut attempt = 1;
        loop {
            match self.attempt(app, &call).await {
                Ok(value) => return Ok(value),
                Err(AttemptError::Token(e)) => return Err(CallFailure::Token(e)),
                Err(AttemptError::Api(error)) => {
                    let class = error.class(true);
                    if class != ErrorClass::Retryable || attempt >= self.policy.max_attempts {
                        return Err(CallFailure::Api { error, class });
                    }
                    tokio::time::sleep(self.policy.backoff(attempt, &error)).await;
                    attempt += 1;
                }
            }
        }
    }
}
