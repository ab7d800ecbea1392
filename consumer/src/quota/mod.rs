//! The daily API quota (errcode 45009): pausing an app, parking its records, releasing them.
//!
//! When WeChat answers 45009 ("reach max api daily quota limit") to any call of an app — a send,
//! an upload, or the token endpoint — that app's calls are pointless until the quota resets
//! ([`reset`]) or an operator clears it with WeChat's `clear_quota` and runs
//! `consumer quota resume <app>`. Meanwhile:
//!
//! - **Pause, shared.** The pause is a time in Redis ([`state`]), so every process of the group
//!   sees it within half a second ([`gates`]: what a process remembers of a gate, and why that
//!   keeps each user's records in order).
//! - **Park, in order.** A record of a paused app — and of an app whose held backlog is not
//!   empty yet — is not processed: it is published to the app's hold topic
//!   (`<kafka.hold_topic_prefix><app>`), keyed like the inbound topic so one user's records stay
//!   in one partition in their order, and only then does its inbound offset move on
//!   ([`crate::processor::Outcome::Parked`]). Other apps' records flow as before; nothing waits
//!   in memory.
//! - **Release.** Each process also runs [`release::Releaser`], a member of its own group over
//!   the hold topics: it holds a paused app's partitions back and, once the pause is over,
//!   processes the held records in partition order, exactly like inbound ones (ledger, windows,
//!   rules). While any is left, new records of the app keep joining the backlog behind them, so a
//!   user's records never overtake each other. A release that meets 45009 again pauses the app
//!   again and stops at that record.
//!
//! docs/quota.md has the design and its reasons; `consumer/OPERATIONS.md` the runbook.

pub(crate) mod gates;
pub(crate) mod release;
pub(crate) mod reset;
pub mod state;

use std::sync::Arc;

use common::envelope::{record_key, Envelope, EnvelopeV1};

use crate::clock::now_ms;
use crate::config::Settings;
use crate::error::ProcessError;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::store::{Store, StoreError};
use gates::Gates;
use reset::ResetPolicy;
use state::{AppQuota, Mark, QuotaState};

/// What an inbound record of an app must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    /// Processed now.
    Open,
    /// Parked: the app is paused.
    Paused,
    /// Parked: the app's held records are not all released yet.
    Backlog,
}

/// The header naming why a record was parked (`paused` or `backlog`).
pub const HOLD_REASON_HEADER: &str = "wxkf-hold-reason";

/// The hold topic of `app`.
pub fn hold_topic(prefix: &str, app: &str) -> String {
    format!("{prefix}{app}")
}

/// The pause, the parking and the release marks of every app.
#[derive(Debug, Clone)]
pub struct Quota {
    state: QuotaState,
    /// Gates read recently, so that most records cost no Redis read.
    gates: Arc<Gates>,
    outbound: Outbound,
    hold_prefix: String,
    reset: ResetPolicy,
    metrics: Metrics,
}

impl Quota {
    pub(crate) fn new(
        settings: &Settings,
        store: Store,
        outbound: Outbound,
        metrics: Metrics,
    ) -> Quota {
        Quota {
            state: QuotaState::new(store),
            gates: Arc::default(),
            outbound,
            hold_prefix: settings.kafka.hold_topic_prefix.clone(),
            reset: ResetPolicy::from_settings(&settings.quota),
            metrics,
        }
    }

    pub(crate) fn hold_topic(&self, app: &str) -> String {
        hold_topic(&self.hold_prefix, app)
    }

    /// The app's pause and backlog as Redis holds them.
    pub(crate) async fn read(&self, app: &str) -> Result<AppQuota, StoreError> {
        self.state.read(app).await
    }

    /// This process's memory of the gates; its partition changes must reach
    /// [`Gates::forget_all`].
    pub(crate) fn gates(&self) -> Arc<Gates> {
        Arc::clone(&self.gates)
    }

    /// Whether an inbound record of `app` is processed or parked: from Redis, or as read there
    /// less than [`gates::TRUSTED_FOR`] ago (`gates.rs` says why that keeps every promise).
    pub(crate) async fn gate(&self, app: &str) -> Result<Gate, StoreError> {
        if let Some(gate) = self.gates.get(app) {
            return Ok(gate);
        }
        let reading = self.gates.reading();
        let quota = self.state.read(app).await?;
        let gate = if quota.paused(now_ms()) {
            Gate::Paused
        } else if quota.backlog() > 0 {
            Gate::Backlog
        } else {
            Gate::Open
        };
        self.gates.learned(app, gate, reading);
        Ok(gate)
    }

    /// WeChat answered 45009 for `app`: pause it until the quota resets.
    pub(crate) async fn pause(&self, app: &str) -> Result<(), StoreError> {
        let until = self.state.pause(app, self.reset.until_ms(now_ms())).await?;
        self.gates.forget_all();
        self.metrics.quota_pauses.with_label_values(&[app]).inc();
        self.metrics
            .quota_paused_until
            .with_label_values(&[app])
            .set(until / 1000);
        self.metrics.quota_paused.with_label_values(&[app]).set(1);
        tracing::warn!(
            app,
            until_ms = until,
            "WeChat's daily API quota of the app is used up (45009): its records are held until \
             the quota resets or `consumer quota resume` (consumer/OPERATIONS.md)"
        );
        Ok(())
    }

    /// Publishes `env` to its app's hold topic, keyed like the inbound topic, and records where.
    /// Complete only when Kafka acknowledged it: the caller then lets the inbound offset move on.
    pub(crate) async fn park(&self, env: &EnvelopeV1, gate: Gate) -> Result<(), ProcessError> {
        let topic = self.hold_topic(&env.app);
        let key = record_key(&env.app, &env.message.from_user_name);
        let value = Envelope::V1(env.clone()).to_bytes();
        let reason = match gate {
            Gate::Backlog => "backlog",
            Gate::Paused | Gate::Open => "paused",
        };
        let (partition, offset) = self
            .outbound
            .publish_at(
                &topic,
                Some(key.as_bytes()),
                &value,
                &[(HOLD_REASON_HEADER, reason)],
            )
            .await
            .map_err(ProcessError::Park)?;
        // A crash before this write parks the record again when it is redelivered: a duplicate
        // further on in the hold topic, whose replies the send ledger answers as already sent.
        let advanced = self
            .state
            .advance(&env.app, Mark::Parked, partition, offset + 1)
            .await;
        // Before the user's next record, whatever the mark's fate: it must read the park from
        // Redis (`gates.rs`).
        self.gates.forget_all();
        advanced?;
        self.metrics
            .quota_held
            .with_label_values(&[env.app.as_str()])
            .inc();
        Ok(())
    }

    /// The held record at `offset` of `partition` of the app's hold topic is finished.
    pub(crate) async fn released(
        &self,
        app: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), StoreError> {
        self.state
            .advance(app, Mark::Released, partition, offset + 1)
            .await?;
        self.gates.forget_all();
        self.metrics.quota_released.with_label_values(&[app]).inc();
        Ok(())
    }

    /// Sets the gauges of `app` from what Redis holds, and makes its counters exist (at zero
    /// until the first event), so dashboards and alerts see `0` rather than no data.
    pub(crate) fn show(&self, app: &str, quota: &AppQuota) {
        for counter in [
            &self.metrics.quota_pauses,
            &self.metrics.quota_held,
            &self.metrics.quota_released,
        ] {
            counter.with_label_values(&[app]);
        }
        let paused = quota.paused(now_ms());
        self.metrics
            .quota_paused
            .with_label_values(&[app])
            .set(i64::from(paused));
        self.metrics
            .quota_paused_until
            .with_label_values(&[app])
            .set(if paused {
                quota.until_ms.unwrap_or(0) / 1000
            } else {
                0
            });
        self.metrics
            .quota_backlog
            .with_label_values(&[app])
            .set(quota.backlog());
    }
}
