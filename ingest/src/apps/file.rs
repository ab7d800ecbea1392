//! This service's part of an app file (`common::app_file`, see `config/app-example.toml`): its
//! `[ingest]` section; the shared `appid` and the `[consumer]` section are read by the common
//! code. Everything is parsed and checked here, once: every token, every EncodingAESKey decoded
//! to its 32-byte key. Problems are collected, not stopped at, so one refusal names everything
//! to fix.

use common::app_file::{ExpiringSecretRef, FileCheck, Parsed, Spanned, Unread};
use common::codec::Format;
use common::crypto::AesKey;
use common::Token;
use serde::Deserialize;

use crate::config::AnswerMode;
use crate::state::{Live, MiniProgram};

/// An app file as this service reads it.
pub(crate) type AppFile = Parsed<IngestSection, Unread>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct IngestSection {
    original_id: String,
    tokens: Vec<Spanned<ExpiringSecretRef>>,
    #[serde(default)]
    encoding_aes_keys: Vec<Spanned<ExpiringSecretRef>>,
    #[serde(default)]
    format: Option<Format>,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default)]
    answer: AnswerMode,
}

/// The app of one parsed file, or `None` with its problems recorded in `check`.
pub(crate) fn build(file: AppFile, check: &mut FileCheck<'_>) -> Option<MiniProgram> {
    let Some(section) = file.ingest else {
        check.invalid("no [ingest] section: this service needs original_id and tokens");
        return None;
    };
    if section.original_id.is_empty() {
        check.invalid("ingest.original_id is empty; it is the ToUserName every push carries");
    }
    if section.tokens.is_empty() {
        check.invalid("ingest.tokens is empty: at least the console's current token");
    }
    let mut tokens = Vec::new();
    for (i, entry) in section.tokens.iter().enumerate() {
        let token = check.secret(&format!("ingest.tokens[{i}]"), entry, |text| {
            Token::new(text).map_err(|e| e.to_string())
        });
        tokens.extend(token.map(|value| Live {
            value,
            valid_until: entry.get_ref().valid_until(),
        }));
    }
    let mut keys = Vec::new();
    for (i, entry) in section.encoding_aes_keys.iter().enumerate() {
        let key = check.secret(&format!("ingest.encoding_aes_keys[{i}]"), entry, |text| {
            AesKey::from_encoding_aes_key(&text).map_err(|e| format!("not usable: {e}"))
        });
        keys.extend(key.map(|value| Live {
            value,
            valid_until: entry.get_ref().valid_until(),
        }));
    }
    if section.allow_plaintext && section.encoding_aes_keys.is_empty() {
        check.invalid(
            "allow_plaintext is set but there is no encoding_aes_key: without a key every push \
             is plaintext anyway; remove allow_plaintext",
        );
    }
    let complete = tokens.len() == section.tokens.len()
        && keys.len() == section.encoding_aes_keys.len()
        && !section.original_id.is_empty()
        && !tokens.is_empty();
    match (file.name, file.appid, complete) {
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
