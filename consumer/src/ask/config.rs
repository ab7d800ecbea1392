//! The `[ask]` section of `consumer.toml`: the backends the `ask` action may name, the limits on
//! calling them, and how long anything about a user is kept. Checked once at start
//! ([`AskSettings::problems`]); the API keys themselves are read by [`super::backend`], never
//! held here, so this section's `Debug` cannot show one.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::http_url::HttpUrl;

/// WeChat's documented bound on one text message: 2048 bytes of UTF-8.
pub const WECHAT_TEXT_LIMIT: usize = 2048;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AskSettings {
    /// Backend calls in flight at once, per app (across the users of one process).
    pub max_concurrency: usize,
    /// Backend calls started per second, per app, and the burst above that rate.
    pub rate_per_second: f64,
    pub burst: u32,
    /// Attempts of one ask (timeouts, 429 and 5xx are retried), each bounded by the backend's
    /// `timeout`, all of them within `max_wait` and before the user's reply window closes.
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
    /// How long a backend's answer is kept until its replies are sent (it is deleted once they
    /// are). A record redelivered within it sends this answer instead of asking again.
    #[serde(with = "humantime_serde")]
    pub answer_ttl: Duration,
    /// While the backend thinks, the typing indicator is shown again this often (WeChat lets
    /// it lapse after a while).
    #[serde(with = "humantime_serde")]
    pub typing_refresh: Duration,
    /// Longest text reply, in bytes of UTF-8 (at most WeChat's 2048); longer answers are split
    /// at line or character boundaries ...
    pub text_limit_bytes: usize,
    /// ... into at most this many messages; what does not fit is cut, ending in "…".
    pub max_text_parts: usize,
    pub memory: MemorySettings,
    /// The backends, by the name the rules use (`backend = "..."`).
    pub backends: BTreeMap<String, BackendSettings>,
}

impl Default for AskSettings {
    fn default() -> AskSettings {
        AskSettings {
            max_concurrency: 32,
            rate_per_second: 50.0,
            burst: 50,
            max_attempts: 3,
            retry_initial_backoff: Duration::from_millis(500),
            retry_max_backoff: Duration::from_secs(4),
            max_wait: Duration::from_secs(60),
            answer_ttl: Duration::from_secs(48 * 3600),
            typing_refresh: Duration::from_secs(10),
            text_limit_bytes: WECHAT_TEXT_LIMIT,
            max_text_parts: 2,
            memory: MemorySettings::default(),
            backends: BTreeMap::new(),
        }
    }
}

/// Conversation memory: the last turns per user, sent to the backend as context.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemorySettings {
    /// Turns kept (one turn: a user message and the replies sent to it); 0 keeps none.
    pub turns: usize,
    /// The memory of a user is deleted this long after their last turn.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for MemorySettings {
    fn default() -> MemorySettings {
        MemorySettings {
            turns: 10,
            ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// One backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendSettings {
    /// A bot of our own: the request and answer of docs/ask.md.
    Http {
        #[serde(deserialize_with = "url")]
        url: HttpUrl,
        #[serde(with = "humantime_serde", default = "default_timeout")]
        timeout: Duration,
        /// The name of an environment variable holding a key, sent as `Authorization: Bearer`.
        #[serde(default)]
        api_key_env: Option<String>,
        /// A file holding the key (surrounding whitespace is ignored).
        #[serde(default)]
        api_key_file: Option<PathBuf>,
    },
    /// An OpenAI-compatible `POST {base_url}/chat/completions`.
    Chat {
        /// Up to and including the API version, e.g. `https://api.example.com/v1`.
        #[serde(deserialize_with = "base_url")]
        base_url: HttpUrl,
        model: String,
        /// Where the API key comes from, as for `http`.
        #[serde(default)]
        api_key_env: Option<String>,
        #[serde(default)]
        api_key_file: Option<PathBuf>,
        /// The system message, a template of the message fields (`{app}`, `{openid}`, ...).
        #[serde(default)]
        system_prompt: String,
        #[serde(default)]
        temperature: Option<f32>,
        #[serde(default)]
        max_tokens: Option<u32>,
        #[serde(with = "humantime_serde", default = "default_timeout")]
        timeout: Duration,
        /// When the model's answer contains this text, it is removed and the user is handed
        /// off to a human (the prompt tells the model when to write it); empty: never.
        #[serde(default)]
        handoff_marker: String,
    },
}

// A backend's fields reach serde buffered (the enum is tagged by `kind`), so an error names the
// backend, not the field: these name it.
fn url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HttpUrl, D::Error> {
    HttpUrl::deserialize(d).map_err(|e| serde::de::Error::custom(format!("url: {e}")))
}

fn base_url<'de, D: serde::Deserializer<'de>>(d: D) -> Result<HttpUrl, D::Error> {
    HttpUrl::deserialize(d).map_err(|e| serde::de::Error::custom(format!("base_url: {e}")))
}

fn default_timeout() -> Duration {
    Duration::from_secs(20)
}

impl BackendSettings {
    pub fn timeout(&self) -> Duration {
        match self {
            BackendSettings::Http { timeout, .. } | BackendSettings::Chat { timeout, .. } => {
                *timeout
            }
        }
    }

    /// The environment variable and the file the API key may come from.
    pub fn key_source(&self) -> (Option<&str>, Option<&std::path::Path>) {
        match self {
            BackendSettings::Http {
                api_key_env,
                api_key_file,
                ..
            }
            | BackendSettings::Chat {
                api_key_env,
                api_key_file,
                ..
            } => (api_key_env.as_deref(), api_key_file.as_deref()),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            BackendSettings::Http { .. } => "http",
            BackendSettings::Chat { .. } => "chat",
        }
    }
}

impl AskSettings {
    /// What is wrong with this section, one message per problem (keys named `ask.*`).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.max_concurrency == 0 || self.rate_per_second <= 0.0 || self.burst == 0 {
            problems
                .push("ask: max_concurrency, rate_per_second and burst must be above zero".into());
        }
        if self.max_attempts == 0
            || self.retry_initial_backoff.is_zero()
            || self.retry_max_backoff < self.retry_initial_backoff
        {
            problems.push(
                "ask: max_attempts must be ≥ 1 and retry_initial_backoff > 0 and ≤ retry_max_backoff"
                    .into(),
            );
        }
        if self.answer_ttl.is_zero() || self.typing_refresh.is_zero() || self.max_wait.is_zero() {
            problems.push("ask: answer_ttl, typing_refresh and max_wait must be above zero".into());
        }
        if !(16..=WECHAT_TEXT_LIMIT).contains(&self.text_limit_bytes) || self.max_text_parts == 0 {
            problems.push(format!(
                "ask.text_limit_bytes must be between 16 and {WECHAT_TEXT_LIMIT} (WeChat's bound \
                 on one text message) and ask.max_text_parts ≥ 1"
            ));
        }
        if self.memory.ttl.is_zero() {
            problems.push("ask.memory.ttl must be above zero".into());
        }
        for (name, backend) in &self.backends {
            if backend.timeout().is_zero() {
                problems.push(format!("ask.backends.{name}.timeout must be above zero"));
            }
            if let BackendSettings::Chat { model, .. } = backend {
                if model.is_empty() {
                    problems.push(format!("ask.backends.{name}.model must not be empty"));
                }
            }
        }
        problems
    }
}
