//! Where hand-offs and forwards go: Kafka topics and HTTP webhooks.
//!
//! Both are at-least-once (see [`super`]): a transient failure (unreachable, timeout, 5xx, 408,
//! 429) makes the record retry later; a 4xx is a refusal that retrying cannot fix. Every
//! delivery carries the step's idempotency key (`Idempotency-Key` header on webhooks,
//! `wxkf-idempotency-key` on Kafka) so receivers can drop the repeats at-least-once implies.
//!
//! A forward carries the original envelope (the inbound record value, byte for byte as
//! re-encoded by `common`); a hand-off carries a small JSON object naming the user, the rule and
//! the note, with the envelope inside. Kafka records keep the inbound key (`{app}:{openid}`).

use std::time::Duration;

use common::envelope::{record_key, Envelope, EnvelopeV1};
use serde::Serialize;

use crate::clock::now_ms;
use crate::outbound::{Outbound, PublishError};
use crate::rules::ForwardTarget;

/// Why a forward or hand-off did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Kafka did not acknowledge the record (transient).
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The webhook could not be reached or did not answer in time (transient).
    #[error("webhook: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// The webhook answered 5xx, 408 or 429 (transient).
    #[error("webhook answered HTTP {0}")]
    Unavailable(u16),
    /// The webhook refused the record with another 4xx; retrying will not change that.
    #[error("refused with HTTP {status}: {detail}")]
    Rejected { status: u16, detail: String },
}

/// The hand-off record (topic value and webhook body), version 1.
#[derive(Debug, Serialize)]
pub struct HandoffRecord<'a> {
    pub v: u32,
    pub app: &'a str,
    pub appid: &'a str,
    pub openid: &'a str,
    pub dedup_key: &'a str,
    pub rule: &'a str,
    pub note: Option<&'a str>,
    pub idempotency_key: &'a str,
    pub handed_off_at_ms: i64,
    pub envelope: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Sinks {
    pub outbound: Outbound,
    pub http: reqwest::Client,
    pub handoff_topic: Option<String>,
    pub handoff_webhook: Option<String>,
}

impl Sinks {
    pub fn new(
        outbound: Outbound,
        timeout: Duration,
        handoff_topic: Option<String>,
        handoff_webhook: Option<String>,
    ) -> anyhow::Result<Sinks> {
        Ok(Sinks {
            outbound,
            http: reqwest::Client::builder().timeout(timeout).build()?,
            handoff_topic,
            handoff_webhook,
        })
    }

    /// Hands the conversation to a human: the hand-off topic and/or webhook.
    pub async fn handoff(
        &self,
        env: &EnvelopeV1,
        rule: &str,
        note: Option<&str>,
        idempotency_key: &str,
    ) -> Result<(), SinkError> {
        let envelope = serde_json::from_slice(&Envelope::V1(env.clone()).to_bytes())
            .unwrap_or(serde_json::Value::Null);
        let record = HandoffRecord {
            v: 1,
            app: &env.app,
            appid: env.appid.as_str(),
            openid: env.message.from_user_name.as_str(),
            dedup_key: env.dedup_key.as_str(),
            rule,
            note,
            idempotency_key,
            handed_off_at_ms: now_ms(),
            envelope,
        };
        let body = serde_json::to_vec(&record).unwrap_or_default();
        if let Some(topic) = &self.handoff_topic {
            self.publish(env, topic, &body, idempotency_key).await?;
        }
        if let Some(url) = &self.handoff_webhook {
            self.post(url, body, idempotency_key).await?;
        }
        Ok(())
    }

    /// Forwards the record to another topic or a webhook.
    pub async fn forward(
        &self,
        env: &EnvelopeV1,
        target: &ForwardTarget,
        idempotency_key: &str,
    ) -> Result<(), SinkError> {
        let body = Envelope::V1(env.clone()).to_bytes();
        match target {
            ForwardTarget::Topic(topic) => self.publish(env, topic, &body, idempotency_key).await,
            ForwardTarget::Webhook(url) => self.post(url, body, idempotency_key).await,
        }
    }

    async fn publish(
        &self,
        env: &EnvelopeV1,
        topic: &str,
        body: &[u8],
        idempotency_key: &str,
    ) -> Result<(), SinkError> {
        let key = record_key(&env.app, &env.message.from_user_name);
        self.outbound
            .publish(
                topic,
                Some(key.as_bytes()),
                body,
                &[("wxkf-idempotency-key", idempotency_key)],
            )
            .await
            .map_err(SinkError::Publish)
    }

    async fn post(&self, url: &str, body: Vec<u8>, idempotency_key: &str) -> Result<(), SinkError> {
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", idempotency_key)
            .body(body)
            .send()
            .await
            .map_err(|e| SinkError::Unreachable(e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let code = status.as_u16();
        if status.is_client_error() && code != 408 && code != 429 {
            Err(SinkError::Rejected {
                status: code,
                detail: "webhook refused the record".into(),
            })
        } else {
            Err(SinkError::Unavailable(code))
        }
    }
}
