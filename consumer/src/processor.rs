//! One record, start to finish: [`Processor::process`].
//!
//! The Kafka loop only feeds this function and stores offsets by its answer; tests call it
//! directly. Every call ends in exactly one [`Outcome`] — replied, skipped, dead-lettered with a
//! reason, or parked while its app's daily API quota is spent ([`crate::quota`]) — or a [`ProcessError`] (defined below both this module and the actions), which is always transient (Redis, Kafka or a webhook briefly
//! unavailable): the caller retries the same record later and its offset is not stored
//! meanwhile. Repeating `process` for a record is safe: the send ledger makes replies at most
//! once and the reply window is not reopened by the same record twice.

use common::envelope::EnvelopeV1;

use crate::actions::{plan, Actions, Done};
use crate::apps::AppsHandle;
use crate::dead_letter::{DeadLetter, Reason};
use crate::error::ProcessError;
// Public with `process_as`, whose callers make one per run of a record.
pub use crate::ledger::ClaimOwner;
use crate::metrics::Metrics;
use crate::quota::{Gate, Quota};
use crate::rules::RulesHandle;
use crate::window::RecordWindow;

/// How a record ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// At least one reply was delivered (now, or before a redelivery: `already_sent`).
    Replied { sent: usize, already_sent: usize },
    /// Handled without a reply.
    Skipped(Skip),
    /// Cannot be completed; goes to the dead-letter topic with the reason.
    DeadLettered(DeadLetter),
    /// The app's daily API quota is spent, or its held records are not all released yet: the
    /// record was published to the app's hold topic and is processed from there later
    /// ([`crate::quota`]).
    Parked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// No rule matched and there is no default rule.
    NoMatch,
    /// Rules matched, and their actions sent no reply (drop, forward, hand-off, typing only).
    Rule(String),
}

impl Outcome {
    /// Bounded label for `consumer_records_total{outcome}`.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Replied { .. } => "replied",
            Outcome::Skipped(_) => "skipped",
            Outcome::DeadLettered(_) => "dead_lettered",
            Outcome::Parked => "parked",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Processor {
    pub rules: RulesHandle,
    pub actions: Actions,
    /// The apps served now; a record of any other gets the `unknown_app` outcome.
    pub apps: AppsHandle,
    pub metrics: Metrics,
    pub quota: Quota,
}

/// How running a record's actions ended.
enum Ran {
    Finished(Outcome),
    /// WeChat answered 45009: nothing of the failing step was sent, the steps before it are in
    /// the ledger.
    DailyQuotaSpent,
}

impl Processor {
    /// Routes `env` through the current rules and runs the matched actions in order, as a run of
    /// its own (a fresh [`ClaimOwner`]).
    pub async fn process(&self, env: &EnvelopeV1) -> Result<Outcome, ProcessError> {
        self.process_as(env, &ClaimOwner::new()).await
    }

    /// Like [`Processor::process`], as `owner`: every retry of one run of a record passes the
    /// same owner, so a retry recognises the ledger marks its earlier tries wrote even when their
    /// answers were lost (see [`crate::ledger`]).
    pub async fn process_as(
        &self,
        env: &EnvelopeV1,
        owner: &ClaimOwner,
    ) -> Result<Outcome, ProcessError> {
        #[cfg(feature = "test-hooks")]
        crate::test_hooks::before_record(env);
        // Records of an app this deployment does not serve cannot be answered (no secret).
        if !self.apps.contains(&env.app) {
            return Ok(unknown_app(env));
        }
        // A paused app, or one whose held records are not all sent yet: behind them, in order.
        let gate = self.quota.gate(&env.app).await?;
        if gate != Gate::Open {
            self.quota.park(env, gate).await?;
            return Ok(Outcome::Parked);
        }
        match self.run(env, owner).await? {
            Ran::Finished(outcome) => Ok(outcome),
            Ran::DailyQuotaSpent => {
                self.quota.pause(&env.app).await?;
                self.quota.park(env, Gate::Paused).await?;
                Ok(Outcome::Parked)
            }
        }
    }

    /// A record from its app's hold topic ([`crate::quota::release`]): processed like an
    /// inbound one, without the gate (it is the backlog). `None` when WeChat answered 45009
    /// again: the app is paused again and the record must stay where it is, first in line.
    pub(crate) async fn process_held(
        &self,
        env: &EnvelopeV1,
        owner: &ClaimOwner,
    ) -> Result<Option<Outcome>, ProcessError> {
        if !self.apps.contains(&env.app) {
            return Ok(Some(unknown_app(env)));
        }
        match self.run(env, owner).await? {
            Ran::Finished(outcome) => Ok(Some(outcome)),
            Ran::DailyQuotaSpent => {
                self.quota.pause(&env.app).await?;
                Ok(None)
            }
        }
    }

    /// The record's window, rules and actions.
    async fn run(&self, env: &EnvelopeV1, owner: &ClaimOwner) -> Result<Ran, ProcessError> {
        // A user message opens its reply window even when no rule replies, so a later rule (or
        // an operator) can still answer inside it. The opening is written with the record's first
        // reply (one round trip for both) or, failing that, once the run has finished.
        let window = self.actions.windows.for_record(env);
        let ran = self.run_rules(env, owner, &window).await?;
        window.settle().await?;
        Ok(ran)
    }

    async fn run_rules(
        &self,
        env: &EnvelopeV1,
        owner: &ClaimOwner,
        window: &RecordWindow<'_>,
    ) -> Result<Ran, ProcessError> {
        let rules = self.rules.current();
        let matches = rules.evaluate(env);
        let Some(first) = matches.first() else {
            return Ok(Ran::Finished(Outcome::Skipped(Skip::NoMatch)));
        };
        let first_rule = first.rule.name.clone();
        for m in &matches {
            self.metrics
                .rule_matches
                .with_label_values(&[m.rule.name.as_str()])
                .inc();
        }
        let (mut sent, mut already_sent) = (0, 0);
        for action in plan(env, &matches) {
            match self.actions.run(env, &action, owner, window).await? {
                Done::Sent => sent += 1,
                Done::AlreadySent => already_sent += 1,
                Done::Replies {
                    sent: now,
                    already_sent: before,
                } => {
                    sent += now;
                    already_sent += before;
                }
                Done::Handed | Done::Nothing => {}
                // The steps before it are in the ledger: the record's later run skips them.
                Done::DailyQuotaSpent => return Ok(Ran::DailyQuotaSpent),
                // The first failing step ends the record; steps after it are not run, and steps
                // before it are in the ledger, so a redrive resumes without repeating them.
                Done::DeadLetter(reason) => {
                    tracing::warn!(
                        dedup_key = %env.dedup_key,
                        rule = %action.rule,
                        action = action.index,
                        reason = reason.kind(),
                        detail = %reason.detail(),
                        "record dead-lettered"
                    );
                    return Ok(Ran::Finished(Outcome::DeadLettered(DeadLetter {
                        reason,
                        rule: Some(action.rule),
                        action_index: Some(action.index),
                    })));
                }
            }
        }
        Ok(Ran::Finished(if sent + already_sent > 0 {
            Outcome::Replied { sent, already_sent }
        } else {
            Outcome::Skipped(Skip::Rule(first_rule))
        }))
    }
}

fn unknown_app(env: &EnvelopeV1) -> Outcome {
    Outcome::DeadLettered(DeadLetter::record(Reason::UnknownApp(env.app.clone())))
}
