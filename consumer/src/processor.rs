//! One record, start to finish: [`Processor::process`].
//!
//! The Kafka loop only feeds this function and stores offsets by its answer; tests call it
//! directly. Every call ends in exactly one [`Outcome`] — replied, skipped, or dead-lettered with a
//! reason — or a [`ProcessError`] (defined below both this module and the actions), which is always transient (Redis, Kafka or a webhook briefly
//! unavailable): the caller retries the same record later and its offset is not stored
//! meanwhile. Repeating `process` for a record is safe: the send ledger makes replies at most
//! once and the reply window is not reopened by the same record twice.

use std::collections::BTreeSet;

use common::envelope::EnvelopeV1;

use crate::actions::{plan, Actions, Done};
use crate::dead_letter::{DeadLetter, Reason};
use crate::error::ProcessError;
use crate::ledger::ClaimOwner;
use crate::metrics::Metrics;
use crate::rules::RulesHandle;

/// How a record ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// At least one reply was delivered (now, or before a redelivery: `already_sent`).
    Replied { sent: usize, already_sent: usize },
    /// Handled without a reply.
    Skipped(Skip),
    /// Cannot be completed; goes to the dead-letter topic with the reason.
    DeadLettered(DeadLetter),
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
        }
    }
}

#[derive(Debug, Clone)]
pub struct Processor {
    pub rules: RulesHandle,
    pub actions: Actions,
    pub apps: BTreeSet<String>,
    pub metrics: Metrics,
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
        // Records of an app this deployment does not serve cannot be answered (no secret).
        if !self.apps.contains(&env.app) {
            return Ok(Outcome::DeadLettered(DeadLetter::record(
                Reason::UnknownApp(env.app.clone()),
            )));
        }
        // Before the rules: a user message opens its reply window even when no rule replies,
        // so a later rule (or an operator) can still answer inside it.
        self.actions.windows.observe(env).await?;
        let rules = self.rules.current();
        let matches = rules.evaluate(env);
        let Some(first) = matches.first() else {
            return Ok(Outcome::Skipped(Skip::NoMatch));
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
            match self.actions.run(env, &action, owner).await? {
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
                    return Ok(Outcome::DeadLettered(DeadLetter {
                        reason,
                        rule: Some(action.rule),
                        action_index: Some(action.index),
                    }));
                }
            }
        }
        if sent + already_sent > 0 {
            Ok(Outcome::Replied { sent, already_sent })
        } else {
            Ok(Outcome::Skipped(Skip::Rule(first_rule)))
        }
    }
}
