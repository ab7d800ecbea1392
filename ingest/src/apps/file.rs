//! One app file: `<dir>/<name>.toml`, the same file for both services (see
//! `config/app-example.toml`). This service reads the shared `appid` and its own
//! `[ingest]` section; the `[consumer]` section is the consumer's and is not looked into.
//!
//! Secrets are given as `{ file = "..." }` (a mounted Secret, re-read at every reload, so a
//! rotation is a change of that file) or `{ value = "..." }` (local runs). Everything is parsed
//! and checked here, once: the appid, every token, every EncodingAESKey decoded to its 32-byte
//! key. Problems are collected, not stopped at, so one refusal names everything to fix, each
//! with the file and, for the file's own syntax and shape, the line and column.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use common::codec::Format;
use common::crypto::AesKey;
use common::{AppId, AppName, Token};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::config::AnswerMode;
use crate::state::{Live, MiniProgram};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppFile {
    appid: String,
    ingest: Option<IngestSection>,
    /// The consumer's part; only its presence is allowed here.
    #[serde(default, rename = "consumer")]
    _consumer: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IngestSection {
    original_id: String,
    tokens: Vec<toml::Spanned<SecretRef>>,
    #[serde(default)]
    encoding_aes_keys: Vec<toml::Spanned<SecretRef>>,
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default)]
    answer: AnswerMode,
}

/// Where one secret comes from, and until when it is live.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SecretRef {
    #[serde(default)]
    value: Option<SecretString>,
    #[serde(default)]
    file: Option<PathBuf>,
    /// After this instant (RFC 3339, e.g. `2026-12-02T00:00:00Z`) the secret is no longer used.
    #[serde(default, deserialize_with = "rfc3339")]
    valid_until: Option<SystemTime>,
}

fn rfc3339<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("valid_until `{text}`: {e}")))
}

impl SecretRef {
    /// The secret's text: the inline value, or the file's contents without the line break a
    /// file usually ends with (nothing else is trimmed: a secret is taken byte for byte).
    fn resolve(&self, sources: &mut Sources) -> Result<String, String> {
        match (&self.value, &self.file) {
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
}

/// Every file read for one load, in order: what tells the watcher whether anything changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Sources {
    read: Vec<(PathBuf, Option<u64>)>,
}

impl Sources {
    pub(crate) fn read(&mut self, path: &Path) -> std::io::Result<String> {
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
pub(crate) fn position(source: &str, offset: usize) -> String {
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("{line}:{column}")
}

/// Parses and checks the app file `path` (already read as `source`) for the app `name`.
pub(crate) fn parse(
    name: &str,
    path: &Path,
    source: &str,
    sources: &mut Sources,
    problems: &mut Vec<String>,
) -> Option<MiniProgram> {
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
    let name = match AppName::parse(name) {
        Ok(name) => Some(name),
        Err(e) => {
            invalid(format!("the file name is the app's name: {e}"));
            None
        }
    };
    let appid = AppId::parse(&file.appid)
        .map_err(|e| invalid(e.to_string()))
        .ok();
    let Some(section) = file.ingest else {
        invalid("no [ingest] section: this service needs original_id and tokens".into());
        return None;
    };
    if section.original_id.is_empty() {
        invalid("ingest.original_id is empty; it is the ToUserName every push carries".into());
    }
    if section.tokens.is_empty() {
        invalid("ingest.tokens is empty: at least the console's current token".into());
    }
    let mut tokens = Vec::new();
    for (i, entry) in section.tokens.iter().enumerate() {
        let at = position(source, entry.span().start);
        let secret = entry.get_ref();
        match secret
            .resolve(sources)
            .and_then(|text| Token::new(text).map_err(|e| e.to_string()))
        {
            Ok(token) => tokens.push(Live {
                value: token,
                valid_until: secret.valid_until,
            }),
            Err(e) => invalid(format!("{at}: ingest.tokens[{i}]: {e}")),
        }
    }
    let mut keys = Vec::new();
    for (i, entry) in section.encoding_aes_keys.iter().enumerate() {
        let at = position(source, entry.span().start);
        let secret = entry.get_ref();
        match secret.resolve(sources).and_then(|text| {
            AesKey::from_encoding_aes_key(&text).map_err(|e| format!("not usable: {e}"))
        }) {
            Ok(key) => keys.push(Live {
                value: key,
                valid_until: secret.valid_until,
            }),
            Err(e) => invalid(format!("{at}: ingest.encoding_aes_keys[{i}]: {e}")),
        }
    }
    if section.allow_plaintext && section.encoding_aes_keys.is_empty() {
        invalid(
            "allow_plaintext is set but there is no encoding_aes_key: without a key every push \
             is plaintext anyway; remove allow_plaintext"
                .into(),
        );
    }
    let complete = tokens.len() == section.tokens.len()
        && keys.len() == section.encoding_aes_keys.len()
        && !section.original_id.is_empty()
        && !tokens.is_empty();
    match (name, appid, complete) {
        (Some(name), Some(appid), true) => Some(MiniProgram {
            name: name.to_string(),
            appid,
            original_id: section.original_id,
            tokens,
            aes_keys: keys,
            format: section.format,
            allow_plaintext: section.allow_plaintext,
            answer: section.answer,
        }),
        _ => None,
    }
}
