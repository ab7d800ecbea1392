//! The app file, `<app_files.dir>/<name>.toml`: one mini program, read by both services (see
//! `config/app-example.toml`), and everything about reading it that they share.
//!
//! The file is a contract like the Kafka record: the shared `appid`, one section per service
//! (`[ingest]`, `[consumer]`), each service reading its own and only allowing the other's. This
//! module owns the shared shape ([`AppFile`]), the secret references (`{ value = ... }` or
//! `{ file = ... }`: [`SecretRef`], [`ExpiringSecretRef`]), the `[app_files]` settings
//! ([`AppFilesSettings`]), the listing of the directory and the loading of every file with its
//! problems collected — each with the file and, where the file's text says where, `line:column`,
//! never a secret ([`load`], [`FileCheck`]) —, the digests that tell a reload whether anything
//! changed ([`Sources`], [`Changes`]) and the handle through which a checked change is swapped in
//! at once ([`AppsHandle`]), in the reload loop ([`watch`]). Each service keeps its section's type
//! and what a change does ([`Reload`]).

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::settle::Settle;
use crate::{AppId, AppName};

/// `[app_files]` of either service: apps defined one file per app in a directory, reloaded while
/// running.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppFilesSettings {
    /// The directory of `<name>.toml` app files; empty: none (only `[apps.<name>]`).
    #[serde(default)]
    pub dir: PathBuf,
    /// How often the files, and the secret files they name, are read again.
    #[serde(with = "humantime_serde", default = "default_reload_interval")]
    pub reload_interval: Duration,
}

fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}

impl Default for AppFilesSettings {
    fn default() -> Self {
        AppFilesSettings {
            dir: PathBuf::new(),
            reload_interval: default_reload_interval(),
        }
    }
}

impl AppFilesSettings {
    /// The app directory, when one is configured.
    pub fn dir(&self) -> Option<&Path> {
        (!self.dir.as_os_str().is_empty()).then_some(self.dir.as_path())
    }

    /// What is wrong with these settings, named by their keys.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.reload_interval.is_zero() {
            problems.push("app_files.reload_interval must be above zero".into());
        }
        problems
    }
}

/// One app file as both services see it: the shared `appid` and the two sections, each typed by
/// the service that reads it (the other one's as [`Unread`], whose presence alone is allowed).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppFile<I, C> {
    pub appid: String,
    pub ingest: Option<I>,
    pub consumer: Option<C>,
}

/// The section of the other service: any table, not looked into.
pub type Unread = toml::Table;

/// A place in the app file, for problems: the byte range `toml` reports for a value.
pub type Spanned<T> = toml::Spanned<T>;

/// Where one secret comes from: `{ value = "..." }` (local runs) or `{ file = "..." }` (a mounted
/// Secret, read again at every reload, so a rotation is a change of that file).
// Debug shows no secret: `SecretString` prints as redacted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    #[serde(default)]
    value: Option<SecretString>,
    #[serde(default)]
    file: Option<PathBuf>,
}

/// A reference to a secret in an app file: [`SecretRef`] or [`ExpiringSecretRef`].
pub trait Secret {
    /// The secret's text: the inline value, or the file's contents (read through `sources`)
    /// without the line break a file usually ends with — nothing else is trimmed, a secret is
    /// taken byte for byte. Exactly one of the two must be given.
    fn resolve(&self, sources: &mut Sources) -> Result<String, String>;
}

impl Secret for SecretRef {
    fn resolve(&self, sources: &mut Sources) -> Result<String, String> {
        resolve(self.value.as_ref(), self.file.as_deref(), sources)
    }
}

/// A [`SecretRef`] that may retire itself: after `valid_until` (RFC 3339, e.g.
/// `2026-12-02T00:00:00Z`) the secret is no longer used. For the lists that rotate (the push
/// tokens and keys), where the previous secret stays listed for a while.
// Debug shows no secret: `SecretString` prints as redacted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiringSecretRef {
    #[serde(default)]
    value: Option<SecretString>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default, deserialize_with = "rfc3339")]
    valid_until: Option<SystemTime>,
}

fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("valid_until `{text}`: {e}")))
}

impl Secret for ExpiringSecretRef {
    fn resolve(&self, sources: &mut Sources) -> Result<String, String> {
        resolve(self.value.as_ref(), self.file.as_deref(), sources)
    }
}

impl ExpiringSecretRef {
    /// After this instant the secret is no longer used.
    pub fn valid_until(&self) -> Option<SystemTime> {
        self.valid_until
    }
}

/// [`Secret::resolve`] of both kinds.
fn resolve(
    value: Option<&SecretString>,
    file: Option<&Path>,
    sources: &mut Sources,
) -> Result<String, String> {
    match (value, file) {
        (Some(value), None) => Ok(value.expose_secret().to_owned()),
        (None, Some(path)) => {
            let text = sources
                .read(path)
                .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
            Ok(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        _ => Err("give exactly one of `value` and `file`".into()),
    }
}

/// Every file read for one load, in order, as digests: two equal ones mean nothing changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Sources {
    read: Vec<(PathBuf, Option<u64>)>,
}

impl Sources {
    /// Reads `path` and remembers its digest (or that it could not be read).
    pub fn read(&mut self, path: &Path) -> std::io::Result<String> {
        let text = std::fs::read_to_string(path);
        // A digest, not the text: secrets are not kept around for comparison.
        let digest = text.as_ref().ok().map(|t| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            t.hash(&mut h);
            h.finish()
        });
        self.read.push((path.to_path_buf(), digest));
        text
    }
}

/// The `*.toml` files of `dir`, by app name (the file name without `.toml`), sorted. Hidden
/// files are skipped: Kubernetes keeps a mounted volume's real files under `..data/`.
pub fn list(dir: &Path, problems: &mut Vec<String>) -> Vec<(String, PathBuf)> {
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

/// One app file being checked: its problems are collected, each prefixed with the file, and
/// its secret files are read through the load's [`Sources`].
#[derive(Debug)]
pub struct FileCheck<'a> {
    path: &'a Path,
    source: &'a str,
    sources: &'a mut Sources,
    problems: &'a mut Vec<String>,
}

impl FileCheck<'_> {
    /// A problem of the file as a whole.
    pub fn invalid(&mut self, message: impl Display) {
        self.problems
            .push(format!("{}: {message}", self.path.display()));
    }

    /// A problem of the value at `span` (from a [`Spanned`]), shown with its `line:column`.
    pub fn invalid_at(&mut self, span: std::ops::Range<usize>, message: impl Display) {
        let at = position(self.source, span.start);
        self.invalid(format!("{at}: {message}"));
    }

    /// The secret of `entry` made into `T` by `make`; a problem naming `key` and the entry's
    /// place otherwise (never the secret).
    pub fn secret<S: Secret, T>(
        &mut self,
        key: &str,
        entry: &Spanned<S>,
        make: impl FnOnce(String) -> Result<T, String>,
    ) -> Option<T> {
        let made = entry.get_ref().resolve(self.sources).and_then(make);
        made.map_err(|e| self.invalid_at(entry.span(), format!("{key}: {e}")))
            .ok()
    }
}

/// An app file parsed: its name and appid checked (each `None` when refused, the problem
/// already recorded), and its sections.
#[derive(Debug)]
pub struct Parsed<I, C> {
    pub name: Option<AppName>,
    pub appid: Option<AppId>,
    pub ingest: Option<I>,
    pub consumer: Option<C>,
}

/// The apps by name, as a service serves them.
pub type Apps<A> = HashMap<String, Arc<A>>;

/// One complete load: the apps of the main configuration (`static_apps`, whose names
/// `is_static` tells) and, when `settings` name a directory, those of its app files. Each file
/// is parsed as an [`AppFile`], its name and appid checked, then handed to `build`, the
/// service's part, which returns the app or `None` after recording why not in the
/// [`FileCheck`]. An app in both places is refused. Every problem of every file is reported,
/// joined by `; `; the sources read come back even from a refused load, so the same broken
/// state can be recognised the next time ([`Changes`]).
pub fn load<I, C, A>(
    settings: &AppFilesSettings,
    static_apps: Apps<A>,
    is_static: impl Fn(&str) -> bool,
    build: impl FnMut(Parsed<I, C>, &mut FileCheck<'_>) -> Option<A>,
) -> (Result<Apps<A>, String>, Sources)
where
    I: DeserializeOwned,
    C: DeserializeOwned,
{
    let mut apps = static_apps;
    let mut problems = Vec::new();
    let mut sources = Sources::default();
    if let Some(dir) = settings.dir() {
        let from_files = read_dir(dir, is_static, &mut sources, &mut problems, build);
        apps.extend(
            from_files
                .into_iter()
                .map(|(name, app)| (name, Arc::new(app))),
        );
    }
    let result = if problems.is_empty() {
        Ok(apps)
    } else {
        Err(problems.join("; "))
    };
    (result, sources)
}

/// The apps of the files of `dir`, every problem recorded in `problems` (see [`load`]).
fn read_dir<I, C, A>(
    dir: &Path,
    is_static: impl Fn(&str) -> bool,
    sources: &mut Sources,
    problems: &mut Vec<String>,
    mut build: impl FnMut(Parsed<I, C>, &mut FileCheck<'_>) -> Option<A>,
) -> Vec<(String, A)>
where
    I: DeserializeOwned,
    C: DeserializeOwned,
{
    let mut apps = Vec::new();
    for (name, path) in list(dir, problems) {
        let source = match sources.read(&path) {
            Ok(source) => source,
            Err(e) => {
                problems.push(format!("{}: cannot read: {e}", path.display()));
                continue;
            }
        };
        let mut check = FileCheck {
            path: &path,
            source: &source,
            sources,
            problems,
        };
        let Some(parsed) = parse(&name, &mut check) else {
            continue;
        };
        let Some(app) = build(parsed, &mut check) else {
            continue;
        };
        if is_static(&name) {
            check.invalid(format!(
                "the app `{name}` is also configured as [apps.{name}]; keep one"
            ));
            continue;
        }
        apps.push((name, app));
    }
    apps
}

/// The file's syntax and shape, its name and its appid.
fn parse<I: DeserializeOwned, C: DeserializeOwned>(
    name: &str,
    check: &mut FileCheck<'_>,
) -> Option<Parsed<I, C>> {
    let file: AppFile<I, C> = match toml::from_str(check.source) {
        Ok(file) => file,
        Err(e) => {
            let message = without_quoted(e.message());
            match e.span() {
                Some(span) => check.invalid_at(span, message),
                None => check.invalid(message),
            }
            return None;
        }
    };
    let name = AppName::parse(name)
        .map_err(|e| check.invalid(format!("the file name is the app's name: {e}")))
        .ok();
    let appid = AppId::parse(&file.appid).map_err(|e| check.invalid(e)).ok();
    Some(Parsed {
        name,
        appid,
        ingest: file.ingest,
        consumer: file.consumer,
    })
}

/// A parser message with every double-quoted part blanked: a value in the wrong place (a token
/// written as `tokens = "..."`) is quoted in serde's "invalid type" messages, and it may be a
/// secret. Field names are quoted with backticks and stay.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut quoted = false;
    for c in message.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…\"");
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// `line:column` (1-based) of byte `offset` in `source`.
fn position(source: &str, offset: usize) -> String {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{column}")
}

/// What a reload found, compared with what is in force.
#[derive(Debug)]
pub enum Change<A> {
    /// The same files with the same contents as the apps in force, or as the last refusal.
    None,
    /// A complete, valid change: swap it in.
    Valid(A),
    /// A new broken state: the running apps stay; these are its problems.
    Refused(String),
}

/// The reload's memory: the sources of the apps in force and of the last refused state, so a
/// change is applied once and the same broken state is reported once, not at every tick; and a
/// change read once, taken only if the next load reads the same ([`Settle`]), so files caught
/// half-written (a secret cut short is a wrong secret) are never in force.
#[derive(Debug)]
pub struct Changes {
    seen: Sources,
    refused: Option<Sources>,
    settle: Settle<Sources>,
}

impl Changes {
    /// Starting from the load whose sources are `seen`.
    pub fn new(seen: Sources) -> Changes {
        Changes {
            seen,
            refused: None,
            settle: Settle::new(),
        }
    }

    /// Classifies one load (its result and the sources it read).
    pub fn observe<A>(&mut self, result: Result<A, String>, sources: Sources) -> Change<A> {
        if sources == self.seen || self.refused.as_ref() == Some(&sources) {
            self.settle.forget();
            return Change::None;
        }
        if !self.settle.held(&sources) {
            return Change::None;
        }
        match result {
            Ok(apps) => {
                self.seen = sources;
                self.refused = None;
                Change::Valid(apps)
            }
            Err(problems) => {
                self.refused = Some(sources);
                Change::Refused(problems)
            }
        }
    }
}

/// A service's side of the reload loop ([`watch`]): how it loads and what a change does.
pub trait Reload: Send {
    /// The app as the service serves it.
    type App: Send + Sync + 'static;

    /// One complete load ([`load`]), to run on a blocking thread.
    fn loader(
        &self,
    ) -> impl FnOnce() -> (Result<Apps<Self::App>, String>, Sources) + Send + 'static;

    /// Swaps in a complete, valid change.
    fn apply(&mut self, apps: Apps<Self::App>) -> impl std::future::Future<Output = ()> + Send;

    /// Counts a reload by its result: `applied` (once [`Reload::apply`] is done) or `refused`
    /// (already logged, with its problems).
    fn count(&mut self, result: &'static str);
}

/// Loads the app files every `settings.reload_interval` until `shutdown` completes; each new
/// valid state is applied, each new broken state logged (its problems: files and places, never a
/// secret) and counted, once. `seen` are the sources of the apps in force. Without
/// `app_files.dir` there is nothing to watch and it returns at once.
pub async fn watch<R: Reload>(
    mut reload: R,
    settings: &AppFilesSettings,
    seen: Sources,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if settings.dir().is_none() {
        return;
    }
    let interval = settings.reload_interval.max(Duration::from_millis(10));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut changes = Changes::new(seen);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        let Ok((result, sources)) = tokio::task::spawn_blocking(reload.loader()).await else {
            continue;
        };
        match changes.observe(result, sources) {
            Change::None => {}
            Change::Valid(apps) => {
                reload.apply(apps).await;
                reload.count("applied");
            }
            Change::Refused(problems) => {
                tracing::error!(
                    problems = %problems,
                    "changed app files refused; the running apps stay"
                );
                reload.count("refused");
            }
        }
    }
}

/// Shared access to the apps in force, by name; cloned into every worker and swapped whole.
#[derive(Debug)]
pub struct AppsHandle<A> {
    current: Arc<RwLock<Arc<Apps<A>>>>,
}

impl<A> Clone for AppsHandle<A> {
    fn clone(&self) -> Self {
        AppsHandle {
            current: Arc::clone(&self.current),
        }
    }
}

impl<A> AppsHandle<A> {
    pub fn new(apps: Apps<A>) -> AppsHandle<A> {
        AppsHandle {
            current: Arc::new(RwLock::new(Arc::new(apps))),
        }
    }

    /// A snapshot of every app in force now.
    pub fn all(&self) -> Arc<Apps<A>> {
        // A poisoned lock still holds a complete Arc (the writer only assigns), so use it.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The app `name` as configured now.
    pub fn get(&self, name: &str) -> Option<Arc<A>> {
        let guard = match self.current.read() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.get(name).cloned()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Swaps in `apps`, whole: a reader sees the old set or the new one, never a mix.
    pub fn replace(&self, apps: Apps<A>) {
        let apps = Arc::new(apps);
        match self.current.write() {
            Ok(mut guard) => *guard = apps,
            Err(poisoned) => *poisoned.into_inner() = apps,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
