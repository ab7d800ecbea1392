//! The apps this service answers for — each one's appid and AppSecret — and their hot reload.
//!
//! Two sources, combined: `[apps.<name>]` of the main configuration (fixed for the life of the
//! process, as before) and, when `app_files.dir` is set, one file per app in that directory
//! (`file.rs`, the same files as ingest's), re-read every `app_files.reload_interval` together
//! with the secret files they name. A change is loaded and checked completely, then swapped in at
//! once ([`AppsHandle`]): a new app is served from its next record, a removed one's records get
//! the `unknown_app` outcome, and an app whose credentials changed has its cached access token
//! replaced at once ([`TokenBroker::replace_token`], under the one-refresher lock), since after an
//! AppSecret reset WeChat refuses the old secret immediately. A change with any problem is
//! refused whole — the running apps stay, the problems are logged (file, line and column; never a
//! secret) and `consumer_app_reloads_total{result="refused"}` counts it, once per broken state.

mod file;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use common::{AppId, AppSecret};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::metrics::Metrics;
use crate::token_broker::TokenBroker;

/// What the token endpoints need for one app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCredentials {
    pub appid: AppId,
    pub secret: AppSecret,
}

/// The apps served, by name.
pub type Apps = HashMap<String, Arc<AppCredentials>>;

/// Shared access to the apps in force.
#[derive(Debug, Clone)]
pub struct AppsHandle {
    current: Arc<RwLock<Arc<Apps>>>,
}

impl AppsHandle {
    pub fn new(apps: Apps) -> AppsHandle {
        AppsHandle {
            current: Arc::new(RwLock::new(Arc::new(apps))),
        }
    }

    /// A snapshot of every app in force now.
    pub fn all(&self) -> Arc<Apps> {
        // A poisoned lock still holds a complete Arc (the writer only assigns), so use it.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<AppCredentials>> {
        self.all().get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.all().contains_key(name)
    }

    fn replace(&self, apps: Apps) {
        let apps = Arc::new(apps);
        match self.current.write() {
            Ok(mut guard) => *guard = apps,
            Err(poisoned) => *poisoned.into_inner() = apps,
        }
    }
}

/// Every file read for one load, as digests: what tells the watcher whether anything changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sources(Vec<(PathBuf, Option<u64>)>);

impl Sources {
    fn read(&mut self, path: &Path) -> std::io::Result<String> {
        let text = std::fs::read_to_string(path);
        // A digest, not the text: secrets are not kept around for comparison.
        let digest = text.as_ref().ok().map(|t| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            t.hash(&mut h);
            h.finish()
        });
        self.0.push((path.to_path_buf(), digest));
        text
    }
}

/// The apps of `settings` and of its app directory, checked together; every problem at once.
pub fn load(settings: &Settings) -> Result<(Apps, Sources), String> {
    let (result, sources) = read_and_check(settings);
    result.map(|apps| (apps, sources))
}

fn read_and_check(settings: &Settings) -> (Result<Apps, String>, Sources) {
    let mut problems = Vec::new();
    let mut apps = Apps::new();
    for (name, app) in &settings.apps {
        use secrecy::ExposeSecret;
        // Validated with the settings: neither is empty.
        if let Ok(secret) = AppSecret::new(app.secret.expose_secret()) {
            let appid = AppId::new(app.appid.clone());
            apps.insert(name.clone(), Arc::new(AppCredentials { appid, secret }));
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
    (result, sources)
}

/// The names of the apps configured now, without reading any secret: for the operator's tools
/// (`explain`, dry runs), which may run where the secrets are not mounted.
pub fn names(settings: &Settings) -> std::collections::BTreeSet<String> {
    let mut names: std::collections::BTreeSet<String> = settings.apps.keys().cloned().collect();
    if let Some(dir) = settings.app_files.dir() {
        names.extend(app_files(dir, &mut Vec::new()).into_iter().map(|(n, _)| n));
    }
    names
}

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

/// Watches the app files; swaps in each complete, valid change and replaces the access token of
/// every app whose credentials changed.
#[derive(Debug)]
pub struct AppsWatcher {
    pub settings: Settings,
    pub handle: AppsHandle,
    pub tokens: Arc<TokenBroker>,
    pub metrics: Metrics,
    pub seen: Sources,
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
        let mut refused: Option<Sources> = None;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let settings = self.settings.clone();
            let Ok((result, sources)) =
                tokio::task::spawn_blocking(move || read_and_check(&settings)).await
            else {
                continue;
            };
            if sources == self.seen || refused.as_ref() == Some(&sources) {
                continue;
            }
            match result {
                Ok(apps) => {
                    self.apply(apps).await;
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

    async fn apply(&self, apps: Apps) {
        let before = self.handle.all();
        let changed: Vec<String> = apps
            .iter()
            .filter(|(name, new)| before.get(*name).is_some_and(|old| old != *new))
            .map(|(name, _)| name.clone())
            .collect();
        let added_names: Vec<&str> = apps
            .keys()
            .filter(|n| !before.contains_key(*n))
            .map(String::as_str)
            .collect();
        let added = added_names.len();
        if !added_names.is_empty() {
            // Its hold topic (`crate::quota`) must exist before the app's quota can pause it.
            // Not fatal: a paused app's records are retried until the topic exists.
            if let Err(e) =
                crate::operator::setup::create_hold_topics(&self.settings.kafka, &added_names).await
            {
                tracing::warn!(
                    error = %format!("{e:#}"),
                    "cannot create the hold topics of the added apps; run `consumer setup`"
                );
            }
        }
        let removed = before.keys().filter(|n| !apps.contains_key(*n)).count();
        tracing::info!(
            apps = apps.len(),
            added,
            removed,
            changed = changed.len(),
            "app files reloaded"
        );
        self.metrics.apps.set(apps.len() as i64);
        self.handle.replace(apps);
        self.metrics
            .app_reloads
            .with_label_values(&["applied"])
            .inc();
        for app in changed {
            // The old token was fetched with credentials that may be dead already (an AppSecret
            // reset); a failure here is logged, and the next send refreshes the usual way.
            match self.tokens.replace_token(&app).await {
                Ok(_) => tracing::info!(app, "access token replaced after a credentials change"),
                Err(e) => tracing::warn!(
                    app,
                    error = %e,
                    "replacing the access token after a credentials change failed"
                ),
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_example_app_file_is_valid_but_for_its_secret_file() {
        // config/app-example.toml names a secret file of a pod; everything else must load.
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut settings = Settings::load_from(&config, "none").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(
            config.join("app-example.toml"),
            dir.path().join("shop.toml"),
        )
        .unwrap();
        settings.app_files.dir = dir.path().to_path_buf();
        let refused = load(&settings).unwrap_err();
        assert!(
            refused.contains("consumer.secret: cannot read the secret file"),
            "{refused}"
        );
        assert_eq!(
            refused.matches("; ").count(),
            0,
            "one problem only: {refused}"
        );
        assert_eq!(names(&settings).into_iter().collect::<Vec<_>>(), ["shop"]);
    }

    #[test]
    fn a_secret_in_the_wrong_place_is_refused_without_being_shown() {
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut settings = Settings::load_from(&config, "none").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("shop.toml"),
            "appid = \"wx1\"\n[consumer]\nsecret = \"hunter2-misplaced\"\n",
        )
        .unwrap();
        settings.app_files.dir = dir.path().to_path_buf();
        let refused = load(&settings).unwrap_err();
        assert!(
            refused.contains("shop.toml: 3:10: invalid type"),
            "{refused}"
        );
        assert!(!refused.contains("hunter2"), "{refused}");
    }
}
