//! The apps this service serves, and their hot reload.
//!
//! Two sources, combined: `[apps.<name>]` of the main configuration (fixed for the life of the
//! process, as before) and, when `app_files.dir` is set, one file per app in that directory
//! (read by `common::app_file`, this service's section by `file.rs`), re-read every
//! `app_files.reload_interval` together with the secret files they name. A change is loaded and checked completely, then swapped in at once ([`AppsHandle`]); a
//! change with any problem is refused whole — the running apps stay, the problems are logged
//! (file, line and column; never a secret) and `ingest_app_reloads_total{result="refused"}`
//! counts it. The same broken state is reported once, not at every tick.

mod file;

use std::sync::Arc;

use common::app_file::{self, Sources};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::state::{Apps, AppsHandle, MiniProgram};

/// The apps of `settings` and of its app directory, checked together; every problem at once.
pub fn load(settings: &Settings) -> Result<(Apps, Sources), String> {
    let (result, sources) = read_and_check(settings);
    result.map(|apps| (apps, sources))
}

/// One load, and what it read even when it failed (to recognise the same failure next time).
fn read_and_check(settings: &Settings) -> (Result<Apps, String>, Sources) {
    let mut apps = Apps::new();
    for (name, app) in &settings.apps {
        if let Some(app) = MiniProgram::from_settings(name, app) {
            apps.insert(name.clone(), Arc::new(app));
        }
    }
    app_file::load(
        &settings.app_files,
        apps,
        |name| settings.apps.contains_key(name),
        file::build,
    )
}

/// Warns about every app that accepts unsigned plaintext bodies.
pub fn warn_plaintext(apps: &Apps) {
    for app in apps.values().filter(|a| a.allow_plaintext) {
        tracing::warn!(
            app = %app.name,
            "allow_plaintext is set: unsigned plaintext bodies are accepted although the app has \
             an AES key; remove it once the console is in safe mode"
        );
    }
}

/// Watches the app files and swaps in each complete, valid change.
#[derive(Debug)]
pub struct AppsWatcher {
    pub settings: Settings,
    pub handle: AppsHandle,
    pub metrics: Metrics,
    pub seen: Sources,
}

impl AppsWatcher {
    /// Polls until `shutdown`. Without `app_files.dir` there is nothing to watch.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let settings = self.settings.app_files.clone();
        let seen = std::mem::take(&mut self.seen);
        app_file::watch(self, &settings, seen, shutdown.cancelled()).await;
    }
}

impl app_file::Reload for AppsWatcher {
    type App = MiniProgram;

    fn loader(&self) -> impl FnOnce() -> (Result<Apps, String>, Sources) + Send + 'static {
        let settings = self.settings.clone();
        move || read_and_check(&settings)
    }

    async fn apply(&mut self, apps: Apps) {
        tracing::info!(apps = apps.len(), "app files reloaded");
        warn_plaintext(&apps);
        self.metrics.apps.set(apps.len() as i64);
        self.handle.replace(apps);
    }

    fn count(&mut self, result: &'static str) {
        self.metrics.app_reloads.with_label_values(&[result]).inc();
    }
}

#[cfg(test)]
mod tests;
