//! Typed, layered configuration, checked once at start.
//!
//! Layers (each overrides the previous): `config/ingest.toml` (the commented defaults, which double
//! as documentation), `config/ingest.<APP_ENVIRONMENT>.toml`, then `INGEST__SECTION__KEY`
//! environment variables. Unknown keys are rejected, durations are typed, secrets are wrapped in
//! [`SecretString`] so they never reach a log line, and cross-field rules (delivery timeout below
//! the ack budget, budget below WeChat's 5 s) are enforced by [`Settings::validate`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::codec::Format;
use common::crypto::AesKey;
use common::AppName;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// WeChat gives a push 5 seconds before it retries and shows the user an error.
pub const WECHAT_DEADLINE: Duration = Duration::from_secs(5);
/// WeChat's retries of one push arrive within about 20 s (four deliveries, 5 s apart).
pub const WECHAT_RETRY_HORIZON: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub deadline: DeadlineSettings,
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub telemetry: TelemetrySettings,
    #[serde(default)]
    pub apps: BTreeMap<String, AppSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    pub workers: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Serve HTTPS directly (for deployments without a TLS-terminating proxy).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// PEM file with the certificate chain, leaf first.
    pub cert_path: PathBuf,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadlineSettings {
    /// Every push is answered within this budget.
    #[serde(with = "humantime_serde")]
    pub ack_budget: Duration,
    /// Largest accepted distance between the push's timestamp and our clock; zero disables.
    #[serde(with = "humantime_serde")]
    pub timestamp_tolerance: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    /// librdkafka `message.timeout.ms`: the longest a record may wait for its acknowledgement.
    #[serde(with = "humantime_serde")]
    pub delivery_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    pub compression: String,
    /// Producer queue bound; a full queue answers 503 instead of buffering without limit.
    pub queue_max_messages: u32,
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    pub url: SecretString,
    pub key_prefix: String,
    /// Bound on every Redis command; slower counts as unavailable (and fails open).
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Lifetime of a `pending` claim; must outlive a whole push.
    #[serde(with = "humantime_serde")]
    pub claim_lease: Duration,
    /// Lifetime of a `done` mark; must outlive WeChat's retry horizon.
    #[serde(with = "humantime_serde")]
    pub done_ttl: Duration,
    #[serde(with = "humantime_serde")]
    pub pending_poll: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetrySettings {
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

/// What a successfully stored push is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AnswerMode {
    /// The body `success`, WeChat's recommended answer.
    #[default]
    Success,
    /// An empty body, equally accepted by WeChat.
    Empty,
    /// A `transfer_customer_service` packet for user messages (events still get `success`),
    /// handing the conversation to the web customer-service tool.
    Transfer,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    pub appid: String,
    pub original_id: String,
    pub token: SecretString,
    #[serde(default)]
    pub encoding_aes_key: Option<SecretString>,
    #[serde(default)]
    pub format: Option<Format>,
    #[serde(default)]
    pub encryption_required: bool,
    #[serde(default)]
    pub answer: AnswerMode,
}

/// Why the configuration was refused; printed as it is at start.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Settings {
    /// Loads the layers from `dir` (see the module docs) and validates the result.
    pub fn load_from(dir: &Path, environment: &str) -> Result<Settings, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from(dir.join("ingest.toml")).required(true))
            .add_source(
                config::File::from(dir.join(format!("ingest.{environment}.toml"))).required(false),
            )
            .add_source(
                config::Environment::with_prefix("INGEST")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true),
            )
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Loads from `$INGEST_CONFIG_DIR` (default `./config`) and `$APP_ENVIRONMENT` (default `local`).
    pub fn load() -> Result<Settings, ConfigError> {
        let dir = std::env::var_os("INGEST_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        let environment = std::env::var("APP_ENVIRONMENT").unwrap_or_else(|_| "local".into());
        Settings::load_from(&dir, &environment)
    }

    /// Cross-field rules that keep the service's promises; each message names the keys involved.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(msg));
        let d = &self.deadline;
        if d.ack_budget.is_zero() || d.ack_budget >= WECHAT_DEADLINE {
            return invalid(format!(
                "deadline.ack_budget is {:?}; it must be above zero and below WeChat's 5 s",
                d.ack_budget
            ));
        }
        if self.kafka.delivery_timeout >= d.ack_budget {
            return invalid(format!(
                "kafka.delivery_timeout ({:?}) must be below deadline.ack_budget ({:?}) so a push \
                 can still be answered 503 when Kafka does not acknowledge",
                self.kafka.delivery_timeout, d.ack_budget
            ));
        }
        if self.kafka.delivery_timeout < Duration::from_millis(100) {
            return invalid("kafka.delivery_timeout must be at least 100ms".into());
        }
        if self.redis.command_timeout >= d.ack_budget {
            return invalid("redis.command_timeout must be below deadline.ack_budget".into());
        }
        if self.redis.claim_lease < d.ack_budget {
            return invalid(format!(
                "redis.claim_lease ({:?}) must be at least deadline.ack_budget ({:?}): a claim that \
                 expires mid-push lets a concurrent retry publish the same message",
                self.redis.claim_lease, d.ack_budget
            ));
        }
        if self.redis.done_ttl <= WECHAT_RETRY_HORIZON {
            return invalid(format!(
                "redis.done_ttl ({:?}) must exceed WeChat's retry horizon ({:?})",
                self.redis.done_ttl, WECHAT_RETRY_HORIZON
            ));
        }
        if self.redis.pending_poll.is_zero() {
            return invalid("redis.pending_poll must be above zero".into());
        }
        if self.server.max_body_bytes < 1024 {
            return invalid("server.max_body_bytes must be at least 1024".into());
        }
        if self.kafka.topic.is_empty() {
            return invalid("kafka.topic must not be empty".into());
        }
        for reserved in ["acks", "enable.idempotence", "bootstrap.servers"] {
            if self.kafka.properties.contains_key(reserved) {
                return invalid(format!(
                    "kafka.properties.{reserved} cannot be overridden; the service relies on it"
                ));
            }
        }
        for (name, app) in &self.apps {
            app.validate(name)?;
        }
        Ok(())
    }
}

impl AppSettings {
    fn validate(&self, name: &str) -> Result<(), ConfigError> {
        let invalid = |msg: String| Err(ConfigError::Invalid(format!("apps.{name}: {msg}")));
        if let Err(e) = AppName::parse(name) {
            return invalid(e.to_string());
        }
        if self.appid.is_empty() {
            return invalid("appid is empty".into());
        }
        if self.token.expose_secret().is_empty() {
            return invalid("token is empty".into());
        }
        match &self.encoding_aes_key {
            Some(key) => {
                if let Err(e) = AesKey::from_encoding_aes_key(key.expose_secret()) {
                    return invalid(format!("encoding_aes_key is not usable: {e}"));
                }
            }
            None if self.encryption_required => {
                return invalid("encryption_required needs an encoding_aes_key".into());
            }
            None => {}
        }
        Ok(())
    }

    /// The decoded AES key, if one is configured. Validation already proved it decodes.
    pub fn aes_key(&self) -> Option<AesKey> {
        self.encoding_aes_key
            .as_ref()
            .and_then(|k| AesKey::from_encoding_aes_key(k.expose_secret()).ok())
    }
}
