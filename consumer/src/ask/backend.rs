//! Calling one backend once: the HTTP bot (our own JSON request and answer, docs/ask.md) or an
//! OpenAI-compatible chat-completions endpoint, each turned into an [`Answer`].
//!
//! The API key is a [`SecretString`] read once at start from the environment variable or file
//! the configuration names; it goes into the `Authorization` header and nowhere else, and no
//! error here carries a request header or body (a backend's refusal is reported by its status
//! and at most a short, cleaned piece of its answer).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use common::envelope::EnvelopeV1;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::answer::{Answer, BotAnswer, Reply, Source, Unusable};
use super::config::BackendSettings;
use super::store::Turn;
use crate::rules::template::{Template, MESSAGE_FIELDS};

/// Longest piece of a refusing backend's answer kept in an error (and so in a dead letter).
const DETAIL_LIMIT: usize = 200;

/// Why one call did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    #[error("answered HTTP {status}{}", detail_suffix(.detail))]
    Status {
        status: u16,
        retry_after: Option<Duration>,
        detail: String,
    },
    #[error("answered something unusable: {0}")]
    Malformed(#[source] Unusable),
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

impl BackendError {
    /// Whether another attempt may succeed: a timeout, no connection, 408, 429 and 5xx.
    pub fn retryable(&self) -> bool {
        match self {
            BackendError::Timeout(_) | BackendError::Unreachable(_) => true,
            BackendError::Status { status, .. } => {
                matches!(status, 408 | 429) || (500..600).contains(status)
            }
            BackendError::Malformed(_) => false,
        }
    }

    /// Bounded label (`consumer_ask_calls_total{result}`, `consumer_ask_fallbacks_total{reason}`).
    pub fn label(&self) -> &'static str {
        match self {
            BackendError::Timeout(_) => "timeout",
            BackendError::Unreachable(_) => "unreachable",
            BackendError::Status { status: 429, .. } => "rate_limited",
            BackendError::Status { status, .. } if *status >= 500 => "server_error",
            BackendError::Status { .. } => "refused",
            BackendError::Malformed(_) => "malformed",
        }
    }

    /// How long the backend asked us to wait (`Retry-After` in seconds), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            BackendError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// What a backend is asked (the HTTP bot receives exactly this as JSON; docs/ask.md).
#[derive(Debug, Clone, Serialize)]
pub struct AskRequest {
    pub v: u32,
    pub app: String,
    pub openid: String,
    pub rule: String,
    pub idempotency_key: String,
    /// The message's fields by their template names (`msg_type`, `content`, ...), those it has.
    pub message: BTreeMap<String, String>,
    /// The previous turns, oldest first: `{"role": "user" | "assistant", "content": ...}`.
    pub history: Vec<HistoryEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub role: String,
    pub content: String,
}

impl AskRequest {
    pub fn new(env: &EnvelopeV1, rule: &str, idempotency_key: &str, memory: &[Turn]) -> AskRequest {
        let captures = Vec::new();
        let message = MESSAGE_FIELDS
            .iter()
            .filter_map(|name| {
                crate::rules::field(env, &captures, name)
                    .map(|v| ((*name).to_owned(), v.into_owned()))
            })
            .collect();
        let mut history = Vec::with_capacity(memory.len() * 2);
        for turn in memory {
            history.push(HistoryEntry {
                role: "user".into(),
                content: turn.user.clone(),
            });
            if !turn.replies.is_empty() {
                history.push(HistoryEntry {
                    role: "assistant".into(),
                    content: turn.replies.join("\n"),
                });
            }
        }
        AskRequest {
            v: 1,
            app: env.app.clone(),
            openid: env.message.from_user_name.as_str().to_owned(),
            rule: rule.to_owned(),
            idempotency_key: idempotency_key.to_owned(),
            message,
            history,
        }
    }

    /// What the user said, as the memory and a chat model see it: the text, or the kind of
    /// message in brackets (`[image]`, `[event]`).
    pub fn user_text(&self) -> String {
        match self.message.get("content") {
            Some(text) => text.clone(),
            None => format!(
                "[{}]",
                self.message
                    .get("msg_type")
                    .map_or("message", String::as_str)
            ),
        }
    }
}

#[derive(Debug)]
enum Kind {
    Http {
        url: String,
    },
    Chat {
        url: String,
        model: String,
        system_prompt: Template,
        temperature: Option<f32>,
        max_tokens: Option<u32>,
        handoff_marker: String,
    },
}

/// One configured backend, ready to call.
#[derive(Debug)]
pub struct Backend {
    kind: Kind,
    http: reqwest::Client,
    timeout: Duration,
    key: Option<SecretString>,
}

/// Why a backend cannot be built at start.
#[derive(Debug, thiserror::Error)]
pub enum BackendSetupError {
    #[error("ask.backends.{name}: the API key variable `{var}` is not set")]
    KeyVariable { name: String, var: String },
    #[error("ask.backends.{name}: cannot read the API key file `{path}`: {source}")]
    KeyFile {
        name: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("ask.backends.{name}: set api_key_env or api_key_file, not both")]
    TwoKeys { name: String },
    #[error("ask.backends.{name}.system_prompt: {message}")]
    Prompt { name: String, message: String },
    #[error("ask.backends.{name}: {source}")]
    Client {
        name: String,
        #[source]
        source: reqwest::Error,
    },
}

impl Backend {
    pub fn new(name: &str, settings: &BackendSettings) -> Result<Backend, BackendSetupError> {
        let key = match settings.key_source() {
            (Some(_), Some(_)) => return Err(BackendSetupError::TwoKeys { name: name.into() }),
            (Some(var), None) => Some(SecretString::from(std::env::var(var).map_err(|_| {
                BackendSetupError::KeyVariable {
                    name: name.into(),
                    var: var.into(),
                }
            })?)),
            (None, Some(path)) => Some(SecretString::from(
                std::fs::read_to_string(path)
                    .map_err(|source| BackendSetupError::KeyFile {
                        name: name.into(),
                        path: path.display().to_string(),
                        source,
                    })?
                    .trim()
                    .to_owned(),
            )),
            (None, None) => None,
        };
        let kind = match settings {
            BackendSettings::Http { url, .. } => Kind::Http {
                url: url.as_str().to_owned(),
            },
            BackendSettings::Chat {
                base_url,
                model,
                system_prompt,
                temperature,
                max_tokens,
                handoff_marker,
                ..
            } => Kind::Chat {
                url: format!("{}/chat/completions", base_url.base()),
                model: model.clone(),
                system_prompt: Template::parse(system_prompt, &|f| MESSAGE_FIELDS.contains(&f))
                    .map_err(|message| BackendSetupError::Prompt {
                        name: name.into(),
                        message,
                    })?,
                temperature: *temperature,
                max_tokens: *max_tokens,
                handoff_marker: handoff_marker.clone(),
            },
        };
        let http = reqwest::Client::builder()
            .timeout(settings.timeout())
            .build()
            .map_err(|source| BackendSetupError::Client {
                name: name.into(),
                source,
            })?;
        Ok(Backend {
            kind,
            http,
            timeout: settings.timeout(),
            key,
        })
    }

    /// The bound on one call.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Where the backend is (for `consumer explain`): its kind and address.
    pub fn describe(&self) -> String {
        match &self.kind {
            Kind::Http { url } => format!("http bot {url}"),
            Kind::Chat { url, model, .. } => format!("chat model `{model}` at {url}"),
        }
    }

    /// One call: the answer, or why there is none.
    pub async fn ask(
        &self,
        env: &EnvelopeV1,
        request: &AskRequest,
    ) -> Result<Answer, BackendError> {
        match &self.kind {
            Kind::Http { url } => {
                let body = self.post(url, &request.idempotency_key, request).await?;
                let bot: BotAnswer = serde_json::from_slice(&body)
                    .map_err(|e| BackendError::Malformed(Unusable::NotBotJson(e)))?;
                Answer::from_bot(bot).map_err(BackendError::Malformed)
            }
            Kind::Chat {
                url,
                model,
                system_prompt,
                temperature,
                max_tokens,
                handoff_marker,
            } => {
                let captures = Vec::new();
                let system =
                    system_prompt.render(&|name| crate::rules::field(env, &captures, name));
                let mut messages = Vec::with_capacity(request.history.len() + 2);
                if !system.trim().is_empty() {
                    messages.push(HistoryEntry {
                        role: "system".into(),
                        content: system,
                    });
                }
                messages.extend(request.history.iter().cloned());
                messages.push(HistoryEntry {
                    role: "user".into(),
                    content: request.user_text(),
                });
                let body = ChatRequest {
                    model,
                    messages,
                    temperature: *temperature,
                    max_tokens: *max_tokens,
                };
                let raw = self.post(url, &request.idempotency_key, &body).await?;
                let answer: ChatAnswer = serde_json::from_slice(&raw)
                    .map_err(|e| BackendError::Malformed(Unusable::NotChatJson(e)))?;
                let content = answer
                    .choices
                    .into_iter()
                    .next()
                    .and_then(|c| c.message.content)
                    .ok_or(BackendError::Malformed(Unusable::NoContent))?;
                let (content, handoff) =
                    if !handoff_marker.is_empty() && content.contains(handoff_marker.as_str()) {
                        (content.replace(handoff_marker.as_str(), ""), true)
                    } else {
                        (content, false)
                    };
                let content = content.trim().to_owned();
                Ok(Answer {
                    source: Source::Backend,
                    replies: if content.is_empty() {
                        Vec::new()
                    } else {
                        vec![Reply::Text { content }]
                    },
                    handoff,
                    handoff_note: None,
                })
            }
        }
    }

    async fn post(
        &self,
        url: &str,
        idempotency_key: &str,
        body: &impl Serialize,
    ) -> Result<Vec<u8>, BackendError> {
        let mut call = self
            .http
            .post(url)
            .header("Idempotency-Key", idempotency_key)
            .json(body);
        if let Some(key) = &self.key {
            call = call.bearer_auth(key.expose_secret());
        }
        let timeout = self.timeout;
        let failed = |e: reqwest::Error| {
            if e.is_timeout() {
                BackendError::Timeout(timeout)
            } else {
                BackendError::Unreachable(e.without_url())
            }
        };
        let response = call.send().await.map_err(failed)?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(failed)?;
        if !status.is_success() {
            return Err(BackendError::Status {
                status: status.as_u16(),
                retry_after,
                detail: clean_detail(&body, self.key.as_ref()),
            });
        }
        Ok(body.to_vec())
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds))
}

/// A short, single-line piece of a refusing answer, without the key: some endpoints quote the
/// key they refuse, and it must reach no log line or dead letter (removed before the cut, so no
/// piece of it stays either).
fn clean_detail(body: &[u8], key: Option<&SecretString>) -> String {
    let mut text: Cow<'_, str> = String::from_utf8_lossy(body);
    if let Some(key) = key.map(ExposeSecret::expose_secret) {
        if !key.is_empty() && text.contains(key) {
            text = Cow::Owned(text.replace(key, "[redacted]"));
        }
    }
    let mut detail: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(DETAIL_LIMIT)
        .collect();
    if text.chars().count() > DETAIL_LIMIT {
        detail.push('…');
    }
    detail.trim().to_owned()
}

#[derive(Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<HistoryEntry>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct ChatAnswer {
    choices: Vec<ChatChoice>,
}

#[derive(Deserialize)]
struct ChatChoice {
    message: ChatMessage,
}

#[derive(Deserialize)]
struct ChatMessage {
    #[serde(default)]
    content: Option<String>,
}
