//! Hot reload of the rules file.
//!
//! [`RulesHandle`] holds the current [`RuleSet`] behind an `Arc`; a record takes a snapshot at
//! its start, so one record always sees one consistent rule set even if a reload lands midway.
//! [`RulesWatcher`] reads the file every `reload_interval` and compares the *contents* with the
//! last ones it saw (mtime alone misses two writes within the filesystem's time resolution). A
//! changed file that fails to compile is refused: the running rules stay, the reason is logged
//! with its line number, and the refusal is counted; the same bad contents are not re-reported.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::compile::parse_rules;
use super::file::{RulesContext, RulesError};
use super::RuleSet;
use crate::metrics::Metrics;

/// Shared access to the current rules.
#[derive(Debug, Clone)]
pub struct RulesHandle {
    current: Arc<RwLock<Arc<RuleSet>>>,
}

impl RulesHandle {
    pub fn new(rules: RuleSet) -> RulesHandle {
        RulesHandle {
            current: Arc::new(RwLock::new(Arc::new(rules))),
        }
    }

    /// A snapshot of the rules in force now.
    pub fn current(&self) -> Arc<RuleSet> {
        // A poisoned lock still holds a complete Arc (the writer only assigns), so use it.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn replace(&self, rules: RuleSet) {
        let rules = Arc::new(rules);
        match self.current.write() {
            Ok(mut guard) => *guard = rules,
            Err(poisoned) => *poisoned.into_inner() = rules,
        }
    }
}

/// Watches the rules file and swaps in new rules that compile.
#[derive(Debug)]
pub struct RulesWatcher {
    pub path: PathBuf,
    pub interval: Duration,
    pub context: RulesContext,
    pub handle: RulesHandle,
    pub metrics: Metrics,
}

impl RulesWatcher {
    /// Loads the file once; the error is the start-up failure (with line and column).
    pub fn initial(
        path: PathBuf,
        interval: Duration,
        context: RulesContext,
        metrics: Metrics,
    ) -> Result<(RulesWatcher, String), RulesError> {
        let source = std::fs::read_to_string(&path).map_err(|e| RulesError {
            path: path.display().to_string(),
            position: None,
            message: format!("cannot read the rules file: {e}"),
        })?;
        let rules = parse_rules(&source, &path, &context)?;
        let watcher = RulesWatcher {
            path,
            interval,
            context,
            handle: RulesHandle::new(rules),
            metrics,
        };
        Ok((watcher, source))
    }

    /// Polls until `shutdown`; `seen` is the contents the current rules came from.
    pub async fn run(self, mut seen: String, shutdown: CancellationToken) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let source = match tokio::fs::read_to_string(&self.path).await {
                Ok(source) => source,
                Err(e) => {
                    // Mid-rename or deleted: keep the rules, look again next tick.
                    tracing::debug!(path = %self.path.display(), error = %e, "rules file unreadable");
                    continue;
                }
            };
            if source == seen {
                continue;
            }
            match parse_rules(&source, &self.path, &self.context) {
                Ok(rules) => {
                    tracing::info!(
                        path = %self.path.display(),
                        rules = rules.rules.len(),
                        "rules reloaded"
                    );
                    self.handle.replace(rules);
                    self.metrics.rules_reloads.with_label_values(&["ok"]).inc();
                }
                Err(e) => {
                    tracing::error!(error = %e, "new rules file refused; the running rules stay");
                    self.metrics
                        .rules_reloads
                        .with_label_values(&["refused"])
                        .inc();
                }
            }
            seen = source;
        }
    }
}
