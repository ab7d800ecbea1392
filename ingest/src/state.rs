//! What a request handler works with: the apps being served and each worker's intake.
//!
//! Kept below both `startup` (which builds it) and `routes` (which use it), so neither depends on
//! the other. The apps are behind an [`AppsHandle`], swapped whole by the app-file watcher
//! (`apps/`); a request takes one snapshot of its app at its start.

use std::time::SystemTime;

use common::codec::Format;
use common::crypto::AesKey;
use common::{AppId, Token};
use prometheus::Registry;

use crate::config::{AnswerMode, AppSettings, Settings};
use crate::intake::Intake;
use crate::metrics::Metrics;

/// A credential and, optionally, the instant after which it is no longer accepted.
#[derive(Debug, Clone)]
pub struct Live<T> {
    pub value: T,
    pub valid_until: Option<SystemTime>,
}

impl<T> Live<T> {
    fn is_live(&self, now: SystemTime) -> bool {
        self.valid_until.is_none_or(|until| now <= until)
    }
}

/// One mini program, ready for the request path: every secret parsed and every key decoded once,
/// when it was loaded. Tokens and keys are listed primary first; during a rotation the previous
/// one is still listed (see OPERATIONS.md).
#[derive(Debug, Clone)]
pub struct MiniProgram {
    pub name: String,
    pub appid: AppId,
    pub original_id: String,
    pub tokens: Vec<Live<Token>>,
    pub aes_keys: Vec<Live<AesKey>>,
    pub format: Option<Format>,
    pub allow_plaintext: bool,
    pub answer: AnswerMode,
}

impl MiniProgram {
    /// An app of the main configuration (`[apps.<name>]`): one token, at most one key.
    /// Validation already proved the appid, the token and the key usable.
    pub fn from_settings(name: &str, settings: &AppSettings) -> Option<MiniProgram> {
        use secrecy::ExposeSecret;
        let token = Token::new(settings.token.expose_secret()).ok()?;
        let aes_keys = settings
            .aes_key()
            .map(|key| Live {
                value: key,
                valid_until: None,
            })
            .into_iter()
            .collect();
        Some(MiniProgram {
            name: name.to_owned(),
            appid: AppId::parse(&settings.appid).ok()?,
            original_id: settings.original_id.clone(),
            tokens: vec![Live {
                value: token,
                valid_until: None,
            }],
            aes_keys,
            format: settings.format,
            allow_plaintext: settings.allow_plaintext,
            answer: settings.answer,
        })
    }

    /// The tokens accepted now, with their position in the configured list.
    pub fn live_tokens(&self, now: SystemTime) -> (Vec<&str>, Vec<usize>) {
        self.tokens
            .iter()
            .enumerate()
            .filter(|(_, t)| t.is_live(now))
            .map(|(slot, t)| (t.value.expose(), slot))
            .unzip()
    }

    /// The keys tried now, in order, with their position in the configured list.
    pub fn live_keys(&self, now: SystemTime) -> (Vec<&AesKey>, Vec<usize>) {
        self.aes_keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_live(now))
            .map(|(slot, k)| (&k.value, slot))
            .unzip()
    }

    /// Whether a plaintext push is refused: always once the app has an AES key, unless the
    /// migration opt-out `allow_plaintext` is set.
    pub fn refuses_plaintext(&self) -> bool {
        !self.aes_keys.is_empty() && !self.allow_plaintext
    }
}

/// The apps served, by name.
pub type Apps = common::app_file::Apps<MiniProgram>;

/// Shared access to the apps in force; cloned into every worker.
pub type AppsHandle = common::app_file::AppsHandle<MiniProgram>;

/// Everything a request handler needs. Each worker has its own: the Redis connection is opened on
/// the worker's thread and driven there, so a dedup round trip never wakes another thread; the
/// producer, the spool, the metrics, the apps and the configuration are shared.
#[derive(Debug)]
pub struct AppState {
    pub settings: Settings,
    pub apps: AppsHandle,
    pub intake: Intake,
    pub metrics: Metrics,
    pub registry: Registry,
}
