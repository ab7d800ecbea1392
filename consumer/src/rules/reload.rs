//! Hot reload of the rules file.
//!
//! [`RulesHandle`] holds the current [`RuleSet`] behind an `Arc`; a record takes a snapshot at
//! its start, so one record always sees one consistent rule set even if a reload lands midway.
//! [`RulesWatcher`] reads the file every `reload_interval` and compares the *contents* with the
//! last ones it saw (mtime alone misses two writes within the filesystem's time resolution). New
//! contents are taken when the next read finds them again ([`Settle`]): a file caught half-written
//! by an in-place save is never in force, nor reported. A changed file that fails to compile is
//! refused: the running rules stay, the reason is logged with its line number, and the refusal is
//! counted; the same bad contents are not re-reported.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::settle::Settle;
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
    pub async fn run(self, seen: String, shutdown: CancellationToken) {
        let mut reads = Reads::new(seen);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            match tokio::fs::read_to_string(&self.path).await {
                Ok(source) => self.take(&mut reads, source),
                Err(e) => {
                    // Mid-rename or deleted: keep the rules, look again next tick.
                    tracing::debug!(path = %self.path.display(), error = %e, "rules file unreadable");
                }
            }
        }
    }

    /// One read of the file: swaps in the rules of a changed file that compiles, refuses one
    /// that does not.
    fn take(&self, reads: &mut Reads, source: String) {
        if source == reads.seen {
            reads.settle.forget();
            return;
        }
        if !reads.settle.held(&source) {
            // Maybe half-written: taken if the next read finds the same.
            return;
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
        reads.seen = source;
    }
}

/// What the watcher remembers between reads: the contents last taken (in force, or refused), and
/// a change read once, taken if the next read agrees.
#[derive(Debug)]
struct Reads {
    seen: String,
    settle: Settle<String>,
}

impl Reads {
    fn new(seen: String) -> Reads {
        Reads {
            seen,
            settle: Settle::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = "[[rule]]\nname = \"first\"\n[[rule.actions]]\ntype = \"drop\"\n";
    const SECOND: &str = "[[rule]]\nname = \"second\"\n[[rule.actions]]\ntype = \"drop\"\n";
    const BROKEN: &str = "[[rule]]\nname = \"third\"\n[[rule.actions]]\ntype = \"txt\"\n";

    fn in_force(watcher: &RulesWatcher) -> Vec<String> {
        let rules = watcher.handle.current();
        rules.rules.iter().map(|rule| rule.name.clone()).collect()
    }

    fn reloads(watcher: &RulesWatcher, result: &str) -> u64 {
        watcher
            .metrics
            .rules_reloads
            .with_label_values(&[result])
            .get()
    }

    /// An editor or a script writing the file in place truncates it, then writes it: a read in
    /// between finds nothing, or half a file. Neither is ever in force, nor reported as refused.
    #[test]
    fn a_file_caught_half_written_is_never_in_force() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("rules.toml");
        std::fs::write(&path, FIRST).expect("write rules");
        let metrics = Metrics::new(&prometheus::Registry::new()).expect("metrics");
        let (watcher, source) = RulesWatcher::initial(
            path,
            Duration::from_secs(1),
            RulesContext::default(),
            metrics,
        )
        .expect("rules load");
        let mut reads = Reads::new(source);

        for half_written in ["", &SECOND[..20]] {
            watcher.take(&mut reads, half_written.to_owned());
            assert_eq!(in_force(&watcher), ["first"], "{half_written:?} taken");
        }
        watcher.take(&mut reads, SECOND.to_owned());
        assert_eq!(in_force(&watcher), ["first"], "read once: not yet");
        watcher.take(&mut reads, SECOND.to_owned());
        assert_eq!(in_force(&watcher), ["second"], "read twice in a row: taken");
        assert_eq!(
            (reloads(&watcher, "ok"), reloads(&watcher, "refused")),
            (1, 0)
        );

        for _ in 0..3 {
            watcher.take(&mut reads, BROKEN.to_owned());
        }
        assert_eq!(in_force(&watcher), ["second"]);
        assert_eq!(
            reloads(&watcher, "refused"),
            1,
            "refused once it held still, once"
        );
    }
}
