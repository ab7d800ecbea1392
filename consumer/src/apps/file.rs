//! One app file: `<dir>/<name>.toml`, the same file for both services (see
//! `config/app-example.toml`). This service reads the shared `appid` and its own
//! `[consumer]` section (the AppSecret); the `[ingest]` section is not looked into.
//!
//! The AppSecret is `{ file = "..." }` (a mounted Secret, re-read at every reload, so a reset is a
//! change of that file) or `{ value = "..." }` (local runs). Problems are collected, each with the
//! file and, for the file's own syntax and shape, the line and column; never a secret's value.

use std::path::{Path, PathBuf};

use common::{AppId, AppName, AppSecret};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::{AppCredentials, Sources};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    appid: String,
    /// The ingest service's part; only its presence is allowed here.
    #[serde(default, rename = "ingest")]
    _ingest: Option<toml::Table>,
    consumer: Option<ConsumerSection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerSection {
    secret: toml::Spanned<SecretRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRef {
    #[serde(default)]
    value: Option<SecretString>,
    #[serde(default)]
    file: Option<PathBuf>,
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

/// Parses and checks the app file `path` (already read as `source`) for the app `name`.
pub(super) fn parse(
    name: &str,
    path: &Path,
    source: &str,
    sources: &mut Sources,
    problems: &mut Vec<String>,
) -> Option<AppCredentials> {
    let shown = path.display();
    let mut invalid = |msg: String| problems.push(format!("{shown}: {msg}"));
    let file: AppFile = match toml::from_str(source) {
        Ok(file) => file,
        Err(e) => {
            let at = e.span().map(|s| position(source, s.start));
            invalid(format!(
                "{}{}",
                at.map(|at| format!("{at}: ")).unwrap_or_default(),
                without_quoted(e.message())
            ));
            return None;
        }
    };
    let name_ok = AppName::parse(name)
        .map_err(|e| invalid(format!("the file name is the app's name: {e}")))
        .is_ok();
    let appid = AppId::parse(&file.appid)
        .map_err(|e| invalid(e.to_string()))
        .ok();
    let Some(section) = file.consumer else {
        invalid("no [consumer] section: this service needs the AppSecret".into());
        return None;
    };
    let at = position(source, section.secret.span().start);
    let secret = match section.secret.get_ref() {
        SecretRef {
            value: Some(value),
            file: None,
        } => Ok(value.expose_secret().to_owned()),
        SecretRef {
            value: None,
            file: Some(path),
        } => sources
            .read(path)
            // The line break a file usually ends with is not part of the secret.
            .map(|text| text.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("cannot read the secret file {}: {e}", path.display())),
        _ => Err("give exactly one of `value` and `file`".into()),
    }
    .and_then(|text| AppSecret::new(text).map_err(|e| e.to_string()));
    let secret = secret
        .map_err(|e| invalid(format!("{at}: consumer.secret: {e}")))
        .ok()?;
    match (name_ok, appid) {
        (true, Some(appid)) => Some(AppCredentials { appid, secret }),
        _ => None,
    }
}
