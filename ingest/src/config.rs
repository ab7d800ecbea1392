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

use common::app_file::AppFilesSettings;
use common::codec::Format;
use common::crypto::AesKey;
use common::kafka_properties;
use common::redis::{RedisTarget, TargetError};
use common::{AppId, AppName};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// WeChat gives a push 5 seconds before it retries and shows the user an error.
pub const WECHAT_DEADLINE: Duration = Duration::from_secs(5);
/// WeChat's retries of one push arrive within about 20 s (four deliveries, 5 s apart).
pub const WECHAT_RETRY_HORIZON: Duration = Duration::from_secs(20);
/// WeChat's next delivery of an unanswered push comes about this long after the previous one.
pub const WECHAT_RETRY_SPACING: Duration = Duration::from_secs(5);

/// librdkafka properties the producer sets itself, with every other name librdkafka accepts for
/// the same property: an alias in `kafka.properties` could silently replace `acks=all` or the
/// idempotence the ack promise rests on, since which of two names wins is not defined.
const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "bootstrap.servers",
    "metadata.broker.list",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "request.timeout.ms",
    "linger.ms",
    "queue.buffering.max.ms",
    "compression.type",
    "compression.codec",
    "queue.buffering.max.messages",
    "max.in.flight.requests.per.connection",
    "max.in.flight",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub deadline: DeadlineSettings,
    pub kafka: KafkaSettings,
    pub redis: RedisSettings,
    pub telemetry: TelemetrySettings,
    pub spool: SpoolSettings,
    /// Apps defined one file per app in a directory, reloaded while running (`crate::apps`).
    #[serde(default)]
    pub app_files: AppFilesSettings,
    #[serde(default)]
    pub apps: BTreeMap<String, AppSettings>,
}

/// The worker count for `workers = 0` on a machine with `cores` cores: half of them, at least one.
/// A worker spends most of a push's CPU waking up (for the request, Redis's answer and Kafka's
/// acknowledgement); the rest goes to librdkafka's threads and the kernel's network stack, which
/// need cores of their own. On two cores one worker took about a fifth less CPU per push at
/// saturation than two, and sustained more (BENCHMARKS.md).
pub fn default_workers(cores: usize) -> usize {
    (cores / 2).max(1)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub max_body_bytes: usize,
    /// HTTP worker threads; 0: [`ServerSettings::effective_workers`] decides.
    pub workers: usize,
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Serve HTTPS directly (for deployments without a TLS-terminating proxy).
    #[serde(default)]
    pub tls: Option<TlsSettings>,
}

impl ServerSettings {
    /// The workers to start: `workers`, or for 0 [`default_workers`] of the cores this process
    /// may use (its CPU quota included).
    pub fn effective_workers(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        default_workers(cores)
    }
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

#[derive(Clone, Deserialize)]
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
    /// Extra librdkafka properties. Names may use `_` for `.` (`security_protocol`), which is how
    /// they arrive from environment variables.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// A file of librdkafka properties, `name=value` per line (`#` starts a comment): how a
    /// mounted Secret passes credentials. `properties` override it.
    #[serde(default)]
    pub properties_file: Option<PathBuf>,
}

impl KafkaSettings {
    /// The extra librdkafka properties: the file's, then `properties` over them, every name in
    /// librdkafka's dotted form. A malformed file line is an error naming the file and the line.
    pub fn librdkafka_properties(&self) -> Result<BTreeMap<String, String>, ConfigError> {
        let file = match &self.properties_file {
            Some(path) => {
                let invalid = |e: &dyn std::fmt::Display| {
                    ConfigError::Invalid(format!("kafka.properties_file {}: {e}", path.display()))
                };
                let text = std::fs::read_to_string(path).map_err(|e| invalid(&e))?;
                Some(kafka_properties::parse(&text).map_err(|e| invalid(&e))?)
            }
            None => None,
        };
        Ok(kafka_properties::merge(file, &self.properties))
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Properties may carry credentials (sasl.password, ssl.key.password, ...): their names
        // print, the values of those that look secret do not.
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("topic", &self.topic)
            .field("delivery_timeout", &self.delivery_timeout)
            .field("linger", &self.linger)
            .field("compression", &self.compression)
            .field("queue_max_messages", &self.queue_max_messages)
            .field("properties", &kafka_properties::redacted(&self.properties))
            .field("properties_file", &self.properties_file)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// One Redis server (or an endpoint that always leads to the current primary). Empty when
    /// `cluster_nodes` is used.
    #[serde(default = "no_secret")]
    pub url: SecretString,
    /// A Redis Cluster instead: comma-separated node URLs, some or all of the cluster's nodes
    /// (the rest are discovered). A secret, since the URLs may carry a password. Environment
    /// variables arrive as one string; it is split here, not by the configuration loader.
    #[serde(default)]
    pub cluster_nodes: Option<SecretString>,
    /// PEM file of the CA(s) that signed a `rediss://` server's certificate, trusted instead of
    /// the platform's roots (for a Redis with a private CA). Without it the platform's roots are
    /// trusted (`SSL_CERT_FILE` replaces them).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
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

fn no_secret() -> SecretString {
    SecretString::from("")
}

impl RedisSettings {
    /// Which of `url` and `cluster_nodes` is used; exactly one must be set (an empty string is
    /// unset, so an environment variable can clear the defaults file's `url`).
    pub fn target(&self) -> Result<RedisTarget, TargetError> {
        RedisTarget::from_settings(&self.url, self.cluster_nodes.as_ref(), "INGEST__REDIS__URL")
    }
}

/// The local spool: where a push becomes durable when Kafka cannot acknowledge it in time.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolSettings {
    /// Off: a push Kafka does not acknowledge in time is answered 503, as without a spool.
    pub enabled: bool,
    /// The spool's directory; one per ingest process (it is locked), on a persistent volume.
    pub dir: PathBuf,
    /// Bound on the spooled bytes; past it pushes are answered 503.
    pub max_bytes: u64,
    /// Optional bound on the age of the oldest spooled record; past it pushes are answered 503.
    #[serde(default, with = "humantime_serde::option")]
    pub max_age: Option<Duration>,
    /// Size at which the writer starts a new segment file.
    pub segment_bytes: u64,
    /// Whether each commit is fsynced before the pushes in it are answered.
    pub fsync: FsyncPolicy,
    /// Bound on one append, fsync included; a slower disk answers 503.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// On shutdown, how long the drainer may go on emptying the spool into Kafka.
    #[serde(with = "humantime_serde")]
    pub shutdown_drain: Duration,
}

/// When the spool's writes reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fsync every commit before answering: survives a power loss.
    Always,
    /// Never fsync: survives a crash of the process, not of the machine. For tests and benchmarks.
    Off,
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
    /// Accept plaintext pushes although the app has an AES key. Off by default: a plaintext
    /// push's signature does not cover its body, so anyone who saw one push URL could post any
    /// body with it. Only for the migration from plaintext to safe mode in the console.
    #[serde(default)]
    pub allow_plaintext: bool,
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
        Settings::load_layers(dir, environment, None)
    }

    /// As [`Settings::load_from`], with `env` standing in for the process environment.
    pub fn load_layers(
        dir: &Path,
        environment: &str,
        env: Option<config::Map<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let settings: Settings = config::Config::builder()
            .add_source(config::File::from(dir.join("ingest.toml")).required(true))
            .add_source(
                config::File::from(dir.join(format!("ingest.{environment}.toml"))).required(false),
            )
            // Variables stay strings until a setting's own type parses them: a token `0123`, a
            // digits-only key or a `True` must reach the service byte for byte, never guessed into
            // a number or a boolean first.
            .add_source(
                config::Environment::with_prefix("INGEST")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(false)
                    .source(env),
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
    /// Every problem is reported, not only the first, so one start shows everything to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut invalid = |msg: String| problems.push(msg);
        let d = &self.deadline;
        if d.ack_budget.is_zero() || d.ack_budget >= WECHAT_DEADLINE {
            invalid(format!(
                "deadline.ack_budget is {:?}; it must be above zero and below WeChat's 5 s",
                d.ack_budget
            ));
        }
        if self.kafka.delivery_timeout >= d.ack_budget {
            invalid(format!(
                "kafka.delivery_timeout ({:?}) must be below deadline.ack_budget ({:?}) so a push \
                 can still be answered 503 when Kafka does not acknowledge",
                self.kafka.delivery_timeout, d.ack_budget
            ));
        }
        if self.kafka.delivery_timeout < Duration::from_millis(100) {
            invalid("kafka.delivery_timeout must be at least 100ms".into());
        }
        if self.redis.command_timeout >= d.ack_budget {
            invalid("redis.command_timeout must be below deadline.ack_budget".into());
        }
        if self.redis.claim_lease >= WECHAT_RETRY_SPACING {
            invalid(format!(
                "redis.claim_lease ({:?}) must be below WeChat's retry spacing ({:?}): the claim \
                 of a delivery whose process died must be gone when WeChat's retry arrives, or \
                 every retry finds it pending and is answered 503 until WeChat gives up",
                self.redis.claim_lease, WECHAT_RETRY_SPACING
            ));
        }
        if !d.timestamp_tolerance.is_zero() && self.redis.done_ttl <= d.timestamp_tolerance {
            invalid(format!(
                "redis.done_ttl ({:?}) must exceed deadline.timestamp_tolerance ({:?}): a push \
                 replayed inside the accepted window must still find its `done` mark",
                self.redis.done_ttl, d.timestamp_tolerance
            ));
        }
        if self.redis.pending_poll >= d.ack_budget {
            invalid(format!(
                "redis.pending_poll ({:?}) must be below deadline.ack_budget ({:?})",
                self.redis.pending_poll, d.ack_budget
            ));
        }
        // The steps of one push, each bounded on its own, must fit in the budget together: the
        // claim (and the plaintext signature check), Kafka, the spool, the answer.
        let steps = self.redis.command_timeout * 2
            + self.kafka.delivery_timeout
            + if self.spool.enabled {
                crate::durable::REPORT_SLACK + self.spool.write_timeout
            } else {
                Duration::ZERO
            };
        if steps > d.ack_budget {
            invalid(format!(
                "redis.command_timeout ×2 + kafka.delivery_timeout{} add up to {steps:?}, more \
                 than deadline.ack_budget ({:?}): a push that meets every bound would still be \
                 answered after the budget",
                if self.spool.enabled {
                    " + 200ms for the producer's report + spool.write_timeout"
                } else {
                    ""
                },
                d.ack_budget
            ));
        }
        if self.redis.claim_lease < d.ack_budget {
            invalid(format!(
                "redis.claim_lease ({:?}) must be at least deadline.ack_budget ({:?}): a claim that \
                 expires mid-push lets a concurrent retry publish the same message",
                self.redis.claim_lease, d.ack_budget
            ));
        }
        if self.redis.done_ttl <= WECHAT_RETRY_HORIZON {
            invalid(format!(
                "redis.done_ttl ({:?}) must exceed WeChat's retry horizon ({:?})",
                self.redis.done_ttl, WECHAT_RETRY_HORIZON
            ));
        }
        if self.redis.pending_poll.is_zero() {
            invalid("redis.pending_poll must be above zero".into());
        }
        if let Err(e) = self.redis.target() {
            invalid(e.to_string());
        }
        if self.redis.ca_file.is_some()
            && !self.redis.url.expose_secret().starts_with("rediss://")
            && !self
                .redis
                .cluster_nodes
                .as_ref()
                .is_some_and(|n| n.expose_secret().trim_start().starts_with("rediss://"))
        {
            invalid(
                "redis.ca_file is set but Redis is not reached through rediss:// (TLS) URLs: the \
                 CA would never be used and the traffic would go in clear"
                    .into(),
            );
        }
        self.spool.validate(&mut invalid);
        if self.server.max_body_bytes < 1024 {
            invalid("server.max_body_bytes must be at least 1024".into());
        }
        if self.kafka.topic.is_empty() {
            invalid("kafka.topic must not be empty".into());
        }
        let properties = match self.kafka.librdkafka_properties() {
            Ok(properties) => properties,
            Err(e) => {
                invalid(e.to_string());
                BTreeMap::new()
            }
        };
        if let Some(reserved) =
            kafka_properties::first_reserved(&properties, RESERVED_KAFKA_PROPERTIES)
        {
            invalid(format!(
                "kafka.properties.{reserved} cannot be set: the service sets it (or the \
                 property it is another name for) itself and relies on its value"
            ));
        }
        for (name, app) in &self.apps {
            app.validate(name, &mut invalid);
        }
        for problem in self.app_files.problems() {
            invalid(problem);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }
}

impl SpoolSettings {
    fn validate(&self, problem: &mut impl FnMut(String)) {
        let mut invalid = |msg: String| problem(format!("spool.{msg}"));
        if !self.enabled {
            return;
        }
        if self.dir.as_os_str().is_empty() {
            invalid("dir must not be empty".into());
        }
        if self.write_timeout.is_zero() {
            invalid("write_timeout must be above zero".into());
        }
        if self.segment_bytes < 64 * 1024 {
            invalid("segment_bytes must be at least 65536".into());
        }
        if self.max_bytes < self.segment_bytes {
            invalid(format!(
                "max_bytes ({}) must be at least segment_bytes ({})",
                self.max_bytes, self.segment_bytes
            ));
        }
        if self.max_age.is_some_and(|age| age <= WECHAT_RETRY_HORIZON) {
            invalid(format!(
                "max_age must exceed WeChat's retry horizon ({WECHAT_RETRY_HORIZON:?}), or be left out"
            ));
        }
    }
}

impl AppSettings {
    fn validate(&self, name: &str, problem: &mut impl FnMut(String)) {
        let mut invalid = |msg: String| problem(format!("apps.{name}: {msg}"));
        if let Err(e) = AppName::parse(name) {
            invalid(e.to_string());
        }
        if let Err(e) = AppId::parse(&self.appid) {
            invalid(e.to_string());
        }
        if self.original_id.is_empty() {
            invalid(
                "original_id is empty; it is the ToUserName every push to this app carries".into(),
            );
        }
        if self.token.expose_secret().is_empty() {
            invalid("token is empty".into());
        }
        match &self.encoding_aes_key {
            Some(key) => {
                if let Err(e) = AesKey::from_encoding_aes_key(key.expose_secret()) {
                    invalid(format!("encoding_aes_key is not usable: {e}"));
                }
            }
            None if self.allow_plaintext => {
                invalid(
                    "allow_plaintext is set but there is no encoding_aes_key: without a key every \
                     push is plaintext anyway; remove allow_plaintext"
                        .into(),
                );
            }
            None => {}
        }
    }

    /// Whether a plaintext push is refused: always once the app has an AES key, unless the
    /// migration opt-out `allow_plaintext` is set.
    pub fn refuses_plaintext(&self) -> bool {
        self.encoding_aes_key.is_some() && !self.allow_plaintext
    }

    /// The decoded AES key, if one is configured. Validation already proved it decodes.
    pub fn aes_key(&self) -> Option<AesKey> {
        self.encoding_aes_key
            .as_ref()
            .and_then(|k| AesKey::from_encoding_aes_key(k.expose_secret()).ok())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn zero_workers_is_half_the_cores_and_at_least_one() {
        assert_eq!(default_workers(1), 1);
        assert_eq!(default_workers(2), 1);
        assert_eq!(default_workers(3), 1);
        assert_eq!(default_workers(8), 4);
        let mut settings = load(&[]).unwrap();
        assert_eq!(settings.server.workers, 0, "the defaults file's value");
        assert!(settings.server.effective_workers() >= 1);
        settings.server.workers = 3;
        assert_eq!(
            settings.server.effective_workers(),
            3,
            "a set count is kept"
        );
    }

    fn load(env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::load_layers(&dir, "none", Some(env))
    }

    #[test]
    fn secrets_from_the_environment_stay_byte_exact() {
        // Each of these was changed by type guessing: a leading zero dropped, a long digit string
        // rounded through a float, a capital `True` lowered.
        let key_of_digits = "1234567890123456789012345678901234567890123";
        for token in [
            "0123",
            "True",
            "1e5",
            "12345678901234567890123",
            "-0",
            " padded ",
        ] {
            let settings = load(&[
                ("INGEST__APPS__DEMO__APPID", "0012345"),
                ("INGEST__APPS__DEMO__ORIGINAL_ID", "007"),
                ("INGEST__APPS__DEMO__TOKEN", token),
                ("INGEST__APPS__DEMO__ENCODING_AES_KEY", key_of_digits),
            ])
            .unwrap();
            let app = &settings.apps["demo"];
            assert_eq!(app.token.expose_secret(), token);
            assert_eq!(app.appid, "0012345");
            assert_eq!(app.original_id, "007");
            assert_eq!(
                app.encoding_aes_key.as_ref().unwrap().expose_secret(),
                key_of_digits
            );
        }
    }

    #[test]
    fn aliases_of_the_properties_the_producer_relies_on_are_refused() {
        for alias in [
            "request.required.acks",
            "metadata.broker.list",
            "delivery.timeout.ms",
        ] {
            let mut settings = load(&[]).unwrap();
            settings.kafka.properties.insert(alias.into(), "1".into());
            let refused = settings.validate().unwrap_err().to_string();
            assert!(refused.contains(alias), "{refused}");
        }
    }

    #[test]
    fn dotted_kafka_properties_come_from_the_environment_and_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("kafka.properties");
        std::fs::write(
            &file,
            "# mounted from a Secret\nsasl.mechanism=SCRAM-SHA-512\nsasl.password = s3cret=x\n",
        )
        .unwrap();
        let settings = load(&[
            ("INGEST__KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL"),
            ("INGEST__KAFKA__PROPERTIES__SASL_MECHANISM", "SCRAM-SHA-256"),
            ("INGEST__KAFKA__PROPERTIES_FILE", file.to_str().unwrap()),
        ])
        .unwrap();
        let properties = settings.kafka.librdkafka_properties().unwrap();
        assert_eq!(properties["security.protocol"], "SASL_SSL");
        assert_eq!(
            properties["sasl.mechanism"], "SCRAM-SHA-256",
            "the variable wins"
        );
        assert_eq!(properties["sasl.password"], "s3cret=x");

        std::fs::write(
            &file,
            "sasl.mechanism=PLAIN\nthis line has no equals sign\n",
        )
        .unwrap();
        let refused = load(&[("INGEST__KAFKA__PROPERTIES_FILE", file.to_str().unwrap())])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("line 2"), "{refused}");
        std::fs::write(&file, "request.required.acks=1\n").unwrap();
        let refused = load(&[("INGEST__KAFKA__PROPERTIES_FILE", file.to_str().unwrap())])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("request.required.acks"), "{refused}");
    }

    #[test]
    fn kafka_credentials_never_print() {
        let mut settings = load(&[]).unwrap();
        let props = &mut settings.kafka.properties;
        props.insert("sasl.password".into(), "hunter2-kafka".into());
        props.insert("ssl.key.password".into(), "hunter3-kafka".into());
        props.insert("security.protocol".into(), "SASL_SSL".into());
        let printed = format!("{settings:?}");
        assert!(!printed.contains("hunter2-kafka") && !printed.contains("hunter3-kafka"));
        assert!(printed.contains("SASL_SSL") && printed.contains("sasl.password"));
    }

    #[test]
    fn timing_bounds_that_would_lose_pushes_are_refused_with_the_reason() {
        type Breakage = fn(&mut Settings);
        let cases: &[(&str, Breakage)] = &[
            ("retry spacing", |s| {
                s.redis.claim_lease = Duration::from_secs(20)
            }),
            ("at least deadline.ack_budget", |s| {
                s.redis.claim_lease = Duration::from_secs(2)
            }),
            ("timestamp_tolerance", |s| {
                s.redis.done_ttl = Duration::from_secs(60);
                s.deadline.timestamp_tolerance = Duration::from_secs(15 * 60);
            }),
            ("add up to", |s| {
                s.redis.command_timeout = Duration::from_millis(600)
            }),
            ("spool.write_timeout add up to", |s| {
                s.spool.write_timeout = Duration::from_secs(2)
            }),
        ];
        for (reason, break_it) in cases {
            let mut settings = load(&[]).unwrap();
            break_it(&mut settings);
            let refused = settings.validate().unwrap_err().to_string();
            assert!(
                refused.contains(reason),
                "expected '{reason}' in: {refused}"
            );
        }
        load(&[]).unwrap().validate().unwrap();
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut settings = load(&[
            ("INGEST__APPS__SHOP__APPID", ""),
            ("INGEST__APPS__SHOP__ORIGINAL_ID", "gh_1"),
            ("INGEST__APPS__SHOP__TOKEN", "t"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            settings.contains("apps.shop: the appid `` must not be empty"),
            "{settings}"
        );
        let mut broken = load(&[]).unwrap();
        broken.redis.claim_lease = Duration::from_secs(20);
        broken.kafka.topic.clear();
        broken.spool.segment_bytes = 1;
        settings = broken.validate().unwrap_err().to_string();
        for part in ["claim_lease", "kafka.topic", "spool.segment_bytes"] {
            assert!(settings.contains(part), "{part} missing from: {settings}");
        }
    }

    #[test]
    fn one_start_names_a_bad_setting_and_every_problem_of_a_static_app() {
        let refused = load(&[
            ("INGEST__REDIS__CLAIM_LEASE", "1s"),
            ("INGEST__APPS__SHOP__APPID", "wx 1"),
            ("INGEST__APPS__SHOP__ORIGINAL_ID", "gh_1"),
            ("INGEST__APPS__SHOP__TOKEN", "t"),
            ("INGEST__APPS__OUTLET__APPID", "wx2"),
            ("INGEST__APPS__OUTLET__ORIGINAL_ID", "gh_2"),
            ("INGEST__APPS__OUTLET__TOKEN", ""),
            ("INGEST__APPS__OUTLET__ENCODING_AES_KEY", "short-hunter2"),
        ])
        .unwrap_err()
        .to_string();
        for part in [
            "redis.claim_lease",
            "apps.shop: the appid `wx 1` must not be empty nor hold whitespace",
            "apps.outlet: token is empty",
            "apps.outlet: encoding_aes_key is not usable",
        ] {
            assert!(refused.contains(part), "{part} missing from: {refused}");
        }
        assert!(!refused.contains("hunter2"), "{refused}");
    }

    #[test]
    fn redis_is_one_server_or_a_cluster_never_both() {
        let cluster = load(&[
            ("INGEST__REDIS__URL", ""),
            (
                "INGEST__REDIS__CLUSTER_NODES",
                " redis://:hunter2@127.0.0.1:7000 , redis://127.0.0.1:7001,",
            ),
        ])
        .unwrap();
        match cluster.redis.target().unwrap() {
            RedisTarget::Cluster(nodes) => {
                let nodes: Vec<&str> = nodes.iter().map(|n| n.expose_secret()).collect();
                assert_eq!(
                    nodes,
                    ["redis://:hunter2@127.0.0.1:7000", "redis://127.0.0.1:7001"]
                );
            }
            other => panic!("expected a cluster, got {other:?}"),
        }
        assert!(!format!("{cluster:?}").contains("hunter2"));
        assert!(matches!(
            load(&[]).unwrap().redis.target().unwrap(),
            RedisTarget::Single(_)
        ));
        let refusals: &[(&[(&str, &str)], &str)] = &[
            (
                &[("INGEST__REDIS__CLUSTER_NODES", "redis://127.0.0.1:7000")],
                "both set",
            ),
            (&[("INGEST__REDIS__URL", " ")], "set redis.url"),
            (
                &[
                    ("INGEST__REDIS__URL", ""),
                    (
                        "INGEST__REDIS__CLUSTER_NODES",
                        "redis://127.0.0.1:7000,127.0.0.1:7001",
                    ),
                ],
                "node 2 is not a redis://",
            ),
            (
                &[
                    ("INGEST__REDIS__URL", ""),
                    (
                        "INGEST__REDIS__CLUSTER_NODES",
                        "redis://:hunter2@127.0.0.1:7000/3",
                    ),
                ],
                "database 3",
            ),
        ];
        for (env, reason) in refusals {
            let refused = load(env).unwrap_err().to_string();
            assert!(
                refused.contains(reason),
                "expected '{reason}' in: {refused}"
            );
            assert!(!refused.contains("hunter2"), "{refused}");
        }
    }

    #[test]
    fn numbers_booleans_and_durations_still_parse_from_the_environment() {
        let settings = load(&[
            ("INGEST__SERVER__PORT", "9999"),
            ("INGEST__SPOOL__ENABLED", "false"),
            ("INGEST__DEADLINE__ACK_BUDGET", "2500ms"),
            ("INGEST__KAFKA__DELIVERY_TIMEOUT", "1s"),
        ])
        .unwrap();
        assert_eq!(settings.server.port, 9999);
        assert!(!settings.spool.enabled);
        assert_eq!(settings.deadline.ack_budget, Duration::from_millis(2500));
        let bad = load(&[("INGEST__SERVER__PORT", "eighty")]).unwrap_err();
        assert!(bad.to_string().contains("port"), "{bad}");
    }
}
