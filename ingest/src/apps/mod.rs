//! The apps this service serves, and their hot reload.
//!
//! Two sources, combined: `[apps.<name>]` of the main configuration (fixed for the life of the
//! process, as before) and, when `app_files.dir` is set, one file per app in that directory
//! (`file.rs`), re-read every `app_files.reload_interval` together with the secret files they
//! name. A change is loaded and checked completely, then swapped in at once ([`AppsHandle`]); a
//! change with any problem is refused whole — the running apps stay, the problems are logged
//! (file, line and column; never a secret) and `ingest_app_reloads_total{result="refused"}`
//! counts it. The same broken state is reported once, not at every tick.

mod file;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::state::{Apps, AppsHandle, MiniProgram};
use file::Sources;

/// The apps of `settings` and of its app directory, checked together; every problem at once.
pub fn load(settings: &Settings) -> Result<(Apps, Loaded), String> {
    let (result, loaded) = read_and_check(settings);
    result.map(|apps| (apps, loaded))
}

/// One load, and what it read even when it failed (to recognise the same failure next time).
fn read_and_check(settings: &Settings) -> (Result<Apps, String>, Loaded) {
    let mut problems = Vec::new();
    let mut apps = Apps::new();
    for (name, app) in &settings.apps {
        if let Some(app) = MiniProgram::from_settings(name, app) {
            apps.insert(name.clone(), Arc::new(app));
        }
    }
    let mut sources = Sources::default();
    if let Some(dir) = settings.app_files.dir() {
        for (name, path) in app_files(dir, &mut problems) {
            let source = match sources.read(&path) {
                Ok(source) => source,
                Err(e) => {
                    problems.push(format!("{}: cannot read: {e}", path.display()));
                    continue;
                }
            };
            let Some(app) = file::parse(&name, &path, &source, &mut sources, &mut problems) else {
                continue;
            };
            if apps.contains_key(&name) {
                problems.push(format!(
                    "{}: the app `{name}` is also configured as [apps.{name}]; keep one",
                    path.display()
                ));
                continue;
            }
            apps.insert(name, Arc::new(app));
        }
    }
    let result = if problems.is_empty() {
        Ok(apps)
    } else {
        Err(problems.join("; "))
    };
    (result, Loaded(sources))
}

/// What a load read; two equal ones mean nothing changed.
#[derive(Debug, PartialEq, Eq)]
pub struct Loaded(Sources);

/// The `*.toml` files of `dir`, by app name (the file name without `.toml`), sorted. Hidden
/// files are skipped: Kubernetes keeps a mounted volume's real files under `..data/`.
fn app_files(dir: &Path, problems: &mut Vec<String>) -> Vec<(String, PathBuf)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            problems.push(format!("app_files.dir {}: {e}", dir.display()));
            return Vec::new();
        }
    };
    let mut files: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let name = path.file_name()?.to_str()?;
            let app = name.strip_suffix(".toml")?;
            (!name.starts_with('.')).then(|| (app.to_owned(), path.clone()))
        })
        .collect();
    files.sort();
    files
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
    pub seen: Loaded,
}

impl AppsWatcher {
    /// Polls until `shutdown`. Without `app_files.dir` there is nothing to watch.
    pub async fn run(mut self, shutdown: CancellationToken) {
        if self.settings.app_files.dir().is_none() {
            return;
        }
        let interval = self.settings.app_files.reload_interval;
        let mut ticker = tokio::time::interval(interval.max(Duration::from_millis(10)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut refused: Option<Loaded> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let settings = self.settings.clone();
            let loaded = tokio::task::spawn_blocking(move || read_and_check(&settings)).await;
            let Ok((result, sources)) = loaded else {
                continue;
            };
            if sources == self.seen || refused.as_ref() == Some(&sources) {
                continue;
            }
            match result {
                Ok(apps) => {
                    tracing::info!(apps = apps.len(), "app files reloaded");
                    warn_plaintext(&apps);
                    self.metrics.apps.set(apps.len() as i64);
                    self.handle.replace(apps);
                    self.metrics
                        .app_reloads
                        .with_label_values(&["applied"])
                        .inc();
                    self.seen = sources;
                    refused = None;
                }
                Err(problems) => {
                    tracing::error!(
                        problems = %problems,
                        "changed app files refused; the running apps stay"
                    );
                    self.metrics
                        .app_reloads
                        .with_label_values(&["refused"])
                        .inc();
                    refused = Some(sources);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
