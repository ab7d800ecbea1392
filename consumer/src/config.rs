//! Typed, layered configuration, checked once at start.
//!
//! Layers (each overrides the previous): `config/consumer.toml` (the commented defaults, which
//! double as documentation), `config/consumer.<APP_ENVIRONMENT>.toml`, then
//! `CONSUMER__SECTION__KEY` environment variables. Unknown keys are rejected, durations are typed,
//! app secrets are [`SecretString`]s so they never reach a log line, and the cross-field rules
//! that keep the service's promises (a send lease outliving one API call, a ledger outliving the
//! reply window, ...) are enforced by [`Settings::validate`].
//!
//! The routing rules live in their own file (`rules.path`), reloaded while running; see
//! [`crate::rules`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::app_file::AppFilesSettings;
use common::kafka_properties;
use common::redis::{RedisTarget, TargetError};
use common::{AppId, AppName};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::http_url::HttpUrl;

/// WeChat's reply window after a user message (docs/wechat-protocol.md §6.3). A send ledger entry never needs
/// to outlive it by much: any send after the window fails with 45015 anyway.
pub const REPLY_WINDOW: Duration = Duration::from_secs(48 * 3600);
/// `stable_token` rolls a token 5 minutes before it expires (docs/wechat-protocol.md §7); refreshing earlier
/// than that only returns the same token again.
pub const STABLE_TOKEN_ROLLOVER: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub kafka: KafkaSettings,
    pub processing: ProcessingSettings,
    pub redis: RedisSettings,
    pub wechat: WechatSettings,
    pub ledger: LedgerSettings,
    pub window: WindowSettings,
    pub rules: RulesSettings,
    pub handoff: HandoffSettings,
    pub forward: ForwardSettings,
    pub telemetry: TelemetrySettings,
    pub quota: QuotaSettings,
    /// Apps defined one file per app in a directory, reloaded while running (`crate::apps`).
    #[serde(default)]
    pub app_files: AppFilesSettings,
    /// The `ask` action's backends and limits (`crate::ask::config`).
    #[serde(default)]
    pub ask: crate::ask::config::AskSettings,
    #[serde(default)]
    pub apps: BTreeMap<String, AppSettings>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    /// Listener of `/healthz`, `/readyz` and `/metrics`.
    pub host: String,
    pub port: u16,
    /// On SIGTERM: how long in-flight records may take to finish before the process stops anyway
    /// (unfinished records are redelivered: their offsets were never stored).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    pub brokers: String,
    pub group_id: String,
    pub inbound_topic: String,
    pub dead_letter_topic: String,
    pub handoff_topic: String,
    /// An app's records wait in `<hold_topic_prefix><app>` while its daily API quota is spent
    /// (`crate::quota`); `consumer setup` creates one per configured app.
    pub hold_topic_prefix: String,
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How often stored offsets are committed (besides on revoke and on shutdown).
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How often librdkafka reports statistics, from which `consumer_lag_records` is set.
    #[serde(with = "humantime_serde")]
    pub statistics_interval: Duration,
    /// Bound on producing one dead-letter, hand-off or forward record.
    #[serde(with = "humantime_serde")]
    pub produce_timeout: Duration,
    pub topics: TopicSettings,
    /// Extra librdkafka properties, for every Kafka client of the binary. Names may use `_` for
    /// `.` (`security_protocol`), which is how they arrive from environment variables. Once
    /// loaded ([`Settings::load_from`]) this holds the file's properties too, under the
    /// configuration's, every name dotted.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// A file of librdkafka properties, `name=value` per line (`#` starts a comment): how a
    /// mounted Secret passes credentials. `properties` override it.
    #[serde(default)]
    pub properties_file: Option<PathBuf>,
}

/// The librdkafka properties the consumer's clients set themselves, with every other name
/// librdkafka accepts for the same property. The offset discipline rests on the group settings
/// (no auto commit, offsets stored only after an outcome), and the dead letters' durability on
/// the producers' (acks=all, idempotence); an alias in `kafka.properties` could silently replace
/// one of them, since which of two names wins is not defined.
const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "enable.auto.commit",
    "auto.commit.enable",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "enable.partition.eof",
    "session.timeout.ms",
    "statistics.interval.ms",
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "message.timeout.ms",
    "delivery.timeout.ms",
];

impl KafkaSettings {
    /// Reads `properties_file` and merges it under `properties`, every name in librdkafka's
    /// dotted form; afterwards `properties` is what every client of the binary is given. A
    /// malformed file line is an error naming the file and the line.
    pub fn resolve_properties(&mut self) -> Result<(), ConfigError> {
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
        self.properties = kafka_properties::merge(file, &self.properties);
        Ok(())
    }
}

impl std::fmt::Debug for KafkaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Properties may carry credentials (sasl.password, ssl.key.password, ...): their names
        // print, the values of those that look secret do not.
        f.debug_struct("KafkaSettings")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("inbound_topic", &self.inbound_topic)
            .field("dead_letter_topic", &self.dead_letter_topic)
            .field("handoff_topic", &self.handoff_topic)
            .field("hold_topic_prefix", &self.hold_topic_prefix)
            .field("session_timeout", &self.session_timeout)
            .field("commit_interval", &self.commit_interval)
            .field("statistics_interval", &self.statistics_interval)
            .field("produce_timeout", &self.produce_timeout)
            .field("topics", &self.topics)
            .field("properties", &kafka_properties::redacted(&self.properties))
            .field("properties_file", &self.properties_file)
            .finish()
    }
}

/// How `consumer setup` creates the topics (and what it compares existing ones with).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    pub inbound_partitions: i32,
    pub dead_letter_partitions: i32,
    pub handoff_partitions: i32,
    /// Replicas of every partition; 0: derived from the cluster, 3 when it has three or more
    /// brokers, else 1. Larger than the broker count is refused.
    pub replication_factor: i32,
    /// `min.insync.replicas` of every topic: how many replicas must have a record before
    /// `acks=all` acknowledges it; 0: derived, 2 with a replication factor of 3 or more, else 1.
    /// Must be below the replication factor (or 1 with one replica), so one broker can be lost
    /// without stopping writes.
    pub min_insync_replicas: i32,
    /// How long inbound records are kept (what `consumer replay` can reach back to).
    #[serde(with = "humantime_serde")]
    pub inbound_retention: Duration,
    /// How long dead letters are kept; at least [`MIN_DEAD_LETTER_RETENTION`].
    #[serde(with = "humantime_serde")]
    pub dead_letter_retention: Duration,
    /// How long hand-off records are kept.
    #[serde(with = "humantime_serde")]
    pub handoff_retention: Duration,
    /// How long the hold topics keep records; at least the 48 h reply window, so a record held
    /// through a whole pause is still there when it ends.
    #[serde(with = "humantime_serde")]
    pub hold_retention: Duration,
}

/// The pause of an app whose daily WeChat API quota is spent (45009): `crate::quota`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaSettings {
    /// The pause ends at the next midnight at this offset from UTC, in minutes (480: China
    /// Standard Time, WeChat's day).
    pub reset_utc_offset_minutes: i32,
    /// A fixed pause instead of "until the next midnight".
    #[serde(default, with = "humantime_serde")]
    pub pause_for: Option<Duration>,
    /// How often each process looks whether a paused app may go again (and updates the quota
    /// gauges).
    #[serde(with = "humantime_serde")]
    pub check_interval: Duration,
}

/// Dead letters wait for a person: they must outlive a long weekend plus a week of catching up.
pub const MIN_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(14 * 24 * 3600);

/// The `min.insync.replicas` used when none is configured: 2 with three or more replicas (one
/// broker may be lost and every acknowledged record is still on two), else 1.
pub fn derived_min_insync_replicas(replication_factor: i32) -> i32 {
    if replication_factor >= 3 {
        2
    } else {
        1
    }
}

/// A replication factor and `min.insync.replicas` that keep writes going when one broker is
/// lost: min ISR at least 1 and below the replication factor, except with one replica.
pub fn check_replication(replication_factor: i32, min_insync_replicas: i32) -> Result<(), String> {
    if replication_factor < 1 || min_insync_replicas < 1 {
        return Err(format!(
            "kafka.topics: replication_factor ({replication_factor}) and min_insync_replicas \
             ({min_insync_replicas}) must be ≥ 1"
        ));
    }
    if replication_factor > 1 && min_insync_replicas >= replication_factor {
        return Err(format!(
            "kafka.topics.min_insync_replicas ({min_insync_replicas}) must be below \
             replication_factor ({replication_factor}): otherwise losing one broker stops every \
             write (ingest would spool or answer 503 until it is back)"
        ));
    }
    if replication_factor == 1 && min_insync_replicas != 1 {
        return Err(format!(
            "kafka.topics.min_insync_replicas ({min_insync_replicas}) must be 1 with one replica"
        ));
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingSettings {
    /// Threads that run the pipeline: 1 (the default) runs it all on one thread; N > 1 on a
    /// work-stealing runtime of N threads; 0 one thread per core
    /// ([`crate::startup::runtime`]).
    #[serde(default = "one_thread")]
    pub threads: usize,
    /// Users (record keys) processed at the same time by one process.
    pub max_in_flight_keys: usize,
    /// Records received but not finished, across all users; the consumer stops fetching above it.
    pub max_buffered_records: usize,
    /// Backoff between attempts of a record whose processing failed transiently (Redis or Kafka
    /// unavailable); such a record is retried until it succeeds or the process stops.
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// One Redis server (or an endpoint that always leads to the current primary). Empty when
    /// `cluster_nodes` is used.
    #[serde(default = "no_secret")]
    pub url: SecretString,
    /// A Redis Cluster instead: comma-separated node URLs, some or all of the cluster's nodes
    /// (the rest are discovered). A secret, since the URLs may carry a password. It arrives as
    /// one string (an environment variable is never split into a list by the loader) and is
    /// split here.
    #[serde(default)]
    pub cluster_nodes: Option<SecretString>,
    /// PEM file of the CA(s) that signed a `rediss://` server's certificate, trusted instead of
    /// the platform's roots (for a Redis with a private CA). Without it the platform's roots are
    /// trusted (`SSL_CERT_FILE` replaces them).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key; no `{` or `}`, which would become the keys' hash tag in a cluster
    /// (docs/redis-keys.md).
    pub key_prefix: String,
    /// Bound on every Redis command.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
}

fn one_thread() -> usize {
    1
}

fn no_secret() -> SecretString {
    SecretString::from("")
}

impl RedisSettings {
    /// Which of `url` and `cluster_nodes` is used; exactly one must be set (an empty string is
    /// unset, so an environment variable can clear the defaults file's `url`).
    pub fn target(&self) -> Result<RedisTarget, TargetError> {
        RedisTarget::from_settings(
            &self.url,
            self.cluster_nodes.as_ref(),
            "CONSUMER__REDIS__URL",
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenEndpoint {
    /// `cgi-bin/stable_token`, normal mode: every caller gets the same token.
    Stable,
    /// `cgi-bin/token`: each fetch invalidates the previous token after ~5 minutes.
    Classic,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WechatSettings {
    /// Where WeChat's API is (`https://api.weixin.qq.com`; the simulator in tests).
    pub base_url: HttpUrl,
    /// Bound on one HTTP call to the API.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub token_endpoint: TokenEndpoint,
    /// A token is refreshed this long before it expires.
    #[serde(with = "humantime_serde")]
    pub token_refresh_ahead: Duration,
    /// Lease of the refresh lock; must outlive one token fetch.
    #[serde(with = "humantime_serde")]
    pub token_lock_lease: Duration,
    /// How long a caller waits for another process's refresh before giving up (and retrying the
    /// record later).
    #[serde(with = "humantime_serde")]
    pub token_wait: Duration,
    /// Attempts of a call that fails retryably (-1, 5xx, network before sending, 45011).
    pub max_attempts: u32,
    #[serde(with = "humantime_serde")]
    pub retry_initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max_backoff: Duration,
    /// Wait after 45011 (per-minute quota reached; WeChat says "retry next minute").
    #[serde(with = "humantime_serde")]
    pub minute_quota_backoff: Duration,
    /// How long an uploaded temporary image is reused; WeChat keeps it 3 days.
    #[serde(with = "humantime_serde")]
    pub media_ttl: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSettings {
    /// How long a `sending` mark stays authoritative without a renewal; its sender renews it every
    /// third of this while it works or waits. A record that finds a live `sending` mark waits;
    /// an expired one means its sender died between the mark and the outcome, and the reply is
    /// dead-lettered as ambiguous instead of risking a second send.
    #[serde(with = "humantime_serde")]
    pub sending_lease: Duration,
    /// Lifetime of every ledger entry.
    #[serde(with = "humantime_serde")]
    pub entry_ttl: Duration,
    /// Replicas that must acknowledge a `sent` mark (Redis `WAIT`) before the record moves on, so
    /// a failover to a replica cannot lose it. Unset: 1 on a Redis Cluster, 0 (no wait) on one
    /// server. See docs/redis-keys.md.
    #[serde(default)]
    pub sent_replicas: Option<u32>,
    /// How long the wait for those replicas lasts; a mark not acknowledged by then is kept on the
    /// primary and logged. Below `redis.command_timeout`.
    #[serde(with = "humantime_serde")]
    pub sent_replica_timeout: Duration,
    /// Look for each reply's entry under its key from before stable reply keys too
    /// (`{dedup key}:{rule}:{index}`), so that a record processed before that upgrade is not
    /// replied again. One Redis read per reply; once every consumer has run the upgraded version
    /// for longer than `entry_ttl`, no such entry is left and this can be turned off.
    #[serde(default = "read_legacy_keys_by_default")]
    pub read_legacy_keys: bool,
}

fn read_legacy_keys_by_default() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowSettings {
    /// Track the 48 h / 5 replies and 1 min / 2 replies windows and refuse sends that must fail.
    pub enabled: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesSettings {
    pub path: PathBuf,
    /// How often the rules file is checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandoffSettings {
    /// Publish hand-offs to `kafka.handoff_topic`.
    pub publish: bool,
    /// Also POST each hand-off here; empty for none.
    #[serde(default, deserialize_with = "crate::http_url::optional")]
    pub webhook: Option<HttpUrl>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardSettings {
    /// Bound on one webhook POST (forward and hand-off).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSettings {
    pub appid: String,
    /// The AppSecret; used only in token fetches, never logged, never in a Redis key.
    pub secret: SecretString,
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
        let mut settings: Settings = config::Config::builder()
            .add_source(config::File::from(dir.join("consumer.toml")).required(true))
            .add_source(
                config::File::from(dir.join(format!("consumer.{environment}.toml")))
                    .required(false),
            )
            // Variables stay strings until a setting's own type parses them: a password `0123` or
            // `True` (a Kafka property, an AppSecret) must reach the service byte for byte, never
            // guessed into a number or a boolean first.
            .add_source(
                config::Environment::with_prefix("CONSUMER")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(false)
                    .source(env),
            )
            .build()?
            .try_deserialize()?;
        settings.kafka.resolve_properties()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Loads from `$CONSUMER_CONFIG_DIR` (default `./config`) and `$APP_ENVIRONMENT` (default
    /// `local`).
    pub fn load() -> Result<Settings, ConfigError> {
        let dir = std::env::var_os("CONSUMER_CONFIG_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("config"));
        let environment = std::env::var("APP_ENVIRONMENT").unwrap_or_else(|_| "local".into());
        Settings::load_from(&dir, &environment)
    }

    /// Cross-field rules; each message names the keys involved. Every rule is checked and every
    /// violation reported in one error, so a broken deployment is fixed in one round.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems: Vec<String> = Vec::new();
        let mut invalid = |msg: String| problems.push(msg);
        let k = &self.kafka;
        for (key, topic) in [
            ("kafka.inbound_topic", &k.inbound_topic),
            ("kafka.dead_letter_topic", &k.dead_letter_topic),
            ("kafka.handoff_topic", &k.handoff_topic),
            ("kafka.group_id", &k.group_id),
        ] {
            if topic.is_empty() {
                invalid(format!("{key} must not be empty"));
            }
        }
        if k.hold_topic_prefix.is_empty() {
            invalid("kafka.hold_topic_prefix must not be empty".into());
        }
        for app in self.apps.keys() {
            let hold = format!("{}{app}", k.hold_topic_prefix);
            if [&k.inbound_topic, &k.dead_letter_topic, &k.handoff_topic].contains(&&hold) {
                invalid(format!(
                    "the hold topic of app `{app}` ({hold}) is another topic of the consumer; \
                     change kafka.hold_topic_prefix"
                ));
            }
        }
        if k.topics.hold_retention < REPLY_WINDOW {
            invalid(format!(
                "kafka.topics.hold_retention ({}) must be at least the 48 h reply window: a \
                 record held through a pause must still be there when it ends",
                humantime::format_duration(k.topics.hold_retention)
            ));
        }
        let q = &self.quota;
        if q.check_interval.is_zero() || q.pause_for.is_some_and(|d| d.is_zero()) {
            invalid("quota: check_interval and pause_for (when set) must be above zero".into());
        }
        if !(-720..=840).contains(&q.reset_utc_offset_minutes) {
            invalid(format!(
                "quota.reset_utc_offset_minutes ({}) must be a UTC offset, -720 to 840",
                q.reset_utc_offset_minutes
            ));
        }
        if k.dead_letter_topic == k.inbound_topic || k.handoff_topic == k.inbound_topic {
            invalid(
                "kafka.dead_letter_topic and kafka.handoff_topic must differ from \
                 kafka.inbound_topic, or records would loop back into the consumer"
                    .into(),
            );
        }
        let t = &k.topics;
        if t.inbound_partitions < 1 || t.dead_letter_partitions < 1 || t.handoff_partitions < 1 {
            invalid("kafka.topics: partition counts must be ≥ 1".into());
        }
        // What is given is checked here; what is left at 0 is derived from the broker count by
        // `consumer setup`, which checks the result (and the broker count) again.
        if t.replication_factor < 0 || t.min_insync_replicas < 0 {
            invalid(
                "kafka.topics: replication_factor and min_insync_replicas must be ≥ 0 (0: derived \
                 from the broker count)"
                    .into(),
            );
        } else if t.replication_factor > 0 {
            let min_isr = match t.min_insync_replicas {
                0 => derived_min_insync_replicas(t.replication_factor),
                given => given,
            };
            if let Err(e) = check_replication(t.replication_factor, min_isr) {
                invalid(e);
            }
        }
        if t.dead_letter_retention < MIN_DEAD_LETTER_RETENTION {
            invalid(format!(
                "kafka.topics.dead_letter_retention ({}) must be at least 14 days: dead letters \
                 wait for a person, across a long weekend",
                humantime::format_duration(t.dead_letter_retention)
            ));
        }
        if t.inbound_retention < REPLY_WINDOW || t.handoff_retention.is_zero() {
            invalid(
                "kafka.topics: inbound_retention must be at least the 48 h reply window (a replay \
                 must reach every record that can still be answered) and handoff_retention above \
                 zero"
                    .into(),
            );
        }
        if let Some(reserved) =
            kafka_properties::first_reserved(&k.properties, RESERVED_KAFKA_PROPERTIES)
        {
            invalid(format!(
                "kafka.properties.{reserved} cannot be set: the service sets it (or the property \
                 it is another name for) itself, and its offset discipline or its producers' \
                 durability relies on the value"
            ));
        }
        if k.commit_interval.is_zero()
            || k.statistics_interval.is_zero()
            || k.produce_timeout.is_zero()
        {
            invalid(
                "kafka: commit_interval, statistics_interval and produce_timeout must be above zero".into(),
            );
        }
        let p = &self.processing;
        if p.max_in_flight_keys == 0 || p.max_buffered_records < p.max_in_flight_keys {
            invalid(format!(
                "processing.max_in_flight_keys ({}) must be ≥ 1 and ≤ processing.max_buffered_records ({})",
                p.max_in_flight_keys, p.max_buffered_records
            ));
        }
        if p.retry_initial_backoff.is_zero() || p.retry_max_backoff < p.retry_initial_backoff {
            invalid("processing: retry_initial_backoff must be > 0 and ≤ retry_max_backoff".into());
        }
        let w = &self.wechat;
        if w.timeout.is_zero() || w.max_attempts == 0 {
            invalid("wechat.timeout must be > 0 and wechat.max_attempts ≥ 1".into());
        }
        if w.retry_initial_backoff.is_zero() || w.retry_max_backoff < w.retry_initial_backoff {
            invalid("wechat: retry_initial_backoff must be > 0 and ≤ retry_max_backoff".into());
        }
        if w.token_endpoint == TokenEndpoint::Stable
            && w.token_refresh_ahead > STABLE_TOKEN_ROLLOVER
        {
            invalid(format!(
                "wechat.token_refresh_ahead ({:?}) must not exceed 5m with stable_token: it only \
                 hands out a new token in the last 5 minutes, so an earlier refresh would repeat",
                w.token_refresh_ahead
            ));
        }
        if w.token_lock_lease <= w.timeout {
            invalid(format!(
                "wechat.token_lock_lease ({:?}) must exceed wechat.timeout ({:?}): the lock must \
                 outlive the token fetch it protects",
                w.token_lock_lease, w.timeout
            ));
        }
        if w.media_ttl.is_zero() || w.media_ttl >= Duration::from_secs(3 * 24 * 3600) {
            invalid("wechat.media_ttl must be above zero and below WeChat's 3 days".into());
        }
        let l = &self.ledger;
        // One attempt of a send is a token fetch (bounded by token_wait) plus the call itself.
        let attempt = w.timeout + w.token_wait;
        if l.sending_lease <= attempt {
            invalid(format!(
                "ledger.sending_lease ({:?}) must exceed wechat.timeout + wechat.token_wait ({:?}): \
                 a live send must never look abandoned",
                l.sending_lease, attempt
            ));
        }
        // While a send holds its mark it renews the lease every third of it: before every
        // attempt and during every wait (backoff, 45011's minute, an upload, a slow call or token
        // fetch), so no wait needs to be capped below the lease. What the lease must outlive is
        // the gap between two renewals plus a renewal that takes its whole timeout.
        if l.sending_lease <= self.redis.command_timeout * 2 {
            invalid(format!(
                "ledger.sending_lease ({:?}) must exceed 2 × redis.command_timeout ({:?}): a \
                 sender renews it every third of its length, and a renewal may take that long",
                l.sending_lease, self.redis.command_timeout
            ));
        }
        if l.sent_replica_timeout.is_zero() || l.sent_replica_timeout >= self.redis.command_timeout
        {
            invalid(format!(
                "ledger.sent_replica_timeout ({:?}) must be above zero and below \
                 redis.command_timeout ({:?}): the client gives up on an answer after that",
                l.sent_replica_timeout, self.redis.command_timeout
            ));
        }
        if l.entry_ttl < REPLY_WINDOW {
            invalid(format!(
                "ledger.entry_ttl ({:?}) must be at least the 48 h reply window: a redelivered \
                 record must still find its replies",
                l.entry_ttl
            ));
        }
        if self.rules.reload_interval.is_zero() {
            invalid("rules.reload_interval must be above zero".into());
        }
        if self.redis.command_timeout.is_zero() {
            invalid("redis.command_timeout must be above zero".into());
        }
        if self.redis.key_prefix.is_empty() {
            invalid("redis.key_prefix must not be empty".into());
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
        if self.redis.key_prefix.contains(['{', '}']) {
            invalid(format!(
                "redis.key_prefix ({}) must not contain braces: in a Redis Cluster the first \
                 {{...}} of a key is its hash tag, and the keys a script uses together are \
                 tagged after the prefix (docs/redis-keys.md)",
                self.redis.key_prefix
            ));
        }
        if let Err(e) = self.redis.target() {
            invalid(e.to_string());
        }
        for (name, app) in &self.apps {
            if let Err(e) = AppName::parse(name) {
                invalid(format!("apps.{name}: {e}"));
            }
            if let Err(e) = AppId::parse(&app.appid) {
                invalid(format!("apps.{name}: {e}"));
            }
            if app.secret.expose_secret().is_empty() {
                invalid(format!("apps.{name}: secret must not be empty"));
            }
        }
        for problem in self.app_files.problems() {
            invalid(problem);
        }
        problems.extend(self.ask.problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(problems.join("; ")))
        }
    }
}
