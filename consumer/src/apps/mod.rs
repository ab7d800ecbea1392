//! The apps this service answers for — each one's appid and AppSecret — and their hot reload.
//!
//! Two sources, combined: `[apps.<name>]` of the main configuration (fixed for the life of the
//! process, as before) and, when `app_files.dir` is set, one file per app in that directory
//! (read by `common::app_file`, the same files as ingest's; this service's section by `file.rs`),
//! re-read every `app_files.reload_interval` together with the secret files they name. A change is loaded and checked completely, then swapped in at
//! once ([`AppsHandle`]): a new app is served from its next record, a removed one's records get
//! the `unknown_app` outcome, and an app whose credentials changed has its cached access token
//! replaced at once ([`TokenBroker::replace_token`], under the one-refresher lock), since after an
//! AppSecret reset WeChat refuses the old secret immediately. A change with any problem is
//! refused whole — the running apps stay, the problems are logged (file, line and column; never a
//! secret) and `consumer_app_reloads_total{result="refused"}` counts it, once per broken state.

mod file;

use std::sync::Arc;

use common::app_file::{self, Sources};
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
pub type Apps = app_file::Apps<AppCredentials>;

/// Shared access to the apps in force.
pub type AppsHandle = app_file::AppsHandle<AppCredentials>;

/// The apps of `settings` and of its app directory, checked together; every problem at once.
pub fn load(settings: &Settings) -> Result<(Apps, Sources), String> {
    let (result, sources) = read_and_check(settings);
    result.map(|apps| (apps, sources))
}

fn read_and_check(settings: &Settings) -> (Result<Apps, String>, Sources) {
    let mut apps = Apps::new();
    for (name, app) in &settings.apps {
        use secrecy::ExposeSecret;
        // Validated with the settings: both are usable.
        if let (Ok(appid), Ok(secret)) = (
            AppId::parse(&app.appid),
            AppSecret::new(app.secret.expose_secret()),
        ) {
            apps.insert(name.clone(), Arc::new(AppCredentials { appid, secret }));
        }
    }
    app_file::load(
        &settings.app_files,
        apps,
        |name| settings.apps.contains_key(name),
        file::build,
    )
}

/// The names of the apps configured now, without reading any secret: for the operator's tools
/// (`explain`, dry runs), which may run where the secrets are not mounted.
pub fn names(settings: &Settings) -> std::collections::BTreeSet<String> {
    let mut names: std::collections::BTreeSet<String> = settings.apps.keys().cloned().collect();
    if let Some(dir) = settings.app_files.dir() {
        names.extend(
            app_file::list(dir, &mut Vec::new())
                .into_iter()
                .map(|(n, _)| n),
        );
    }
    names
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
        let settings = self.settings.app_files.clone();
        let seen = std::mem::take(&mut self.seen);
        app_file::watch(self, &settings, seen, shutdown.cancelled()).await;
    }
}

impl app_file::Reload for AppsWatcher {
    type App = AppCredentials;

    fn loader(&self) -> impl FnOnce() -> (Result<Apps, String>, Sources) + Send + 'static {
        let settings = self.settings.clone();
        move || read_and_check(&settings)
    }

    fn count(&mut self, result: &'static str) {
        self.metrics.app_reloads.with_label_values(&[result]).inc();
    }

    async fn apply(&mut self, apps: Apps) {
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
    use std::path::PathBuf;

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
