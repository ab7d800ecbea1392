//! The test harness: settings wired to the real Kafka (fresh topics and group per test) and the
//! real Redis (a fresh key prefix per test), the WeChat API as a wiremock server, a rules file in
//! a fresh folder, and builders of inbound envelopes.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::codec::Format;
use common::dedup::DedupKey;
use common::envelope::{record_key, DedupStatus, Envelope, EnvelopeV1};
use common::ids::{AppId, MsgId, OpenId};
use common::message::{Message, MessageBody};
use common::push::Mode;
use consumer::config::{AppSettings, Settings};
use consumer::http_url::HttpUrl;
use consumer::metrics::Metrics;
use consumer::processor::Outcome;
use consumer::startup::Services;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use secrecy::SecretString;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

pub const APP: &str = "demo";
pub const APPID: &str = "wxba5fad812f8e6fb9";
pub const TOKEN: &str = "ACCESS-TOKEN-1";
pub const SEND: &str = "/cgi-bin/message/custom/send";
pub const TYPING: &str = "/cgi-bin/message/custom/typing";
pub const UPLOAD: &str = "/cgi-bin/media/upload";
pub const STABLE_TOKEN: &str = "/cgi-bin/stable_token";

/// The configuration of `config/` (no environment file), with `env` for the process environment.
pub fn load_settings(env: &[(&str, &str)]) -> Result<Settings, consumer::config::ConfigError> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let env = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Settings::load_layers(&dir, "none", Some(env))
}

pub fn kafka_brokers() -> String {
    std::env::var("WXKF_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("WXKF_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// The Redis Cluster's node URLs, comma-separated, for the tests that run on one
/// (`tests/redis_cluster`, whose crate root sets `ON_REDIS_CLUSTER`); fails when unset.
pub fn redis_cluster_nodes() -> String {
    std::env::var("WXKF_TEST_REDIS_CLUSTER").unwrap_or_else(|_| {
        panic!(
            "WXKF_TEST_REDIS_CLUSTER is not set: start a Redis Cluster (scripts/services.sh \
             redis-cluster-up) and set it to its node URLs, comma-separated"
        )
    })
}

/// The test's Redis settings: the single Redis, or the Redis Cluster in the cluster tests.
fn use_test_redis(s: &mut Settings) {
    if crate::ON_REDIS_CLUSTER {
        s.redis.url = SecretString::from("");
        s.redis.cluster_nodes = Some(SecretString::from(redis_cluster_nodes()));
    } else {
        s.redis.url = SecretString::from(redis_url());
    }
}

/// A blocking connection to the test Redis, for reading and seeding keys directly.
pub fn redis_conn() -> redis::Connection {
    redis::Client::open(redis_url())
        .expect("redis url")
        .get_connection()
        .expect("redis connection")
}

/// What is left of `openid`'s reply window in the harness's app (`None`: no window).
pub async fn window_remaining(h: &Harness, openid: &str) -> Option<i64> {
    redis::cmd("HGET")
        .arg(format!(
            "{}window:demo:{openid}",
            h.settings.redis.key_prefix
        ))
        .arg("remaining")
        .query_async(&mut redis_connection(&h.settings).await)
        .await
        .expect("HGET")
}

/// A connection to the test's Redis, for tests that look at or seed keys directly.
pub async fn redis_connection(settings: &Settings) -> common::redis::RedisConnection {
    let target = settings.redis.target().expect("redis settings");
    let client = common::redis::RedisClient::new(&target, Duration::from_secs(3), None)
        .expect("redis client");
    tokio::time::timeout(
        Duration::from_secs(10),
        client.connect(
            Duration::from_secs(3),
            common::redis::Reconnect {
                retries: 1,
                max_delay_ms: 500,
            },
        ),
    )
    .await
    .expect("redis connects in time")
    .expect("redis connects")
}

pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A test with its own rules file, WeChat fake, key prefix, topics and group.
pub struct Harness {
    pub settings: Settings,
    pub wechat: MockServer,
    pub dir: PathBuf,
    pub metrics: Metrics,
    pub registry: prometheus::Registry,
}

impl Harness {
    pub async fn new(rules: &str) -> Harness {
        let wechat = MockServer::start().await;
        let dir = std::env::temp_dir().join(unique("consumer-test"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("rules.toml"), rules).expect("write rules");
        let config_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
        let mut s =
            Settings::load_from(&config_dir, "test").expect("the default configuration loads");
        s.server.host = "127.0.0.1".into();
        s.server.port = 0;
        s.server.shutdown_timeout = Duration::from_secs(10);
        s.kafka.brokers = kafka_brokers();
        s.kafka.group_id = unique("group");
        s.kafka.inbound_topic = unique("inbound");
        s.kafka.dead_letter_topic = unique("dlq");
        s.kafka.handoff_topic = unique("handoff");
        s.kafka.hold_topic_prefix = format!("{}.", unique("hold"));
        s.kafka.topics.inbound_partitions = 3;
        s.kafka.topics.dead_letter_partitions = 1;
        s.kafka.topics.handoff_partitions = 1;
        s.kafka.session_timeout = Duration::from_secs(6);
        s.kafka.commit_interval = Duration::from_millis(200);
        s.kafka.statistics_interval = Duration::from_millis(500);
        s.processing.retry_initial_backoff = Duration::from_millis(20);
        s.processing.retry_max_backoff = Duration::from_millis(200);
        use_test_redis(&mut s);
        s.redis.key_prefix = format!("{}:", unique("test"));
        s.wechat.base_url = HttpUrl::parse(&wechat.uri()).expect("a URL");
        s.wechat.timeout = Duration::from_secs(2);
        s.wechat.token_wait = Duration::from_secs(3);
        s.wechat.retry_initial_backoff = Duration::from_millis(10);
        s.wechat.retry_max_backoff = Duration::from_millis(40);
        s.wechat.minute_quota_backoff = Duration::from_millis(50);
        s.ledger.sending_lease = Duration::from_secs(6);
        s.rules.path = dir.join("rules.toml");
        s.rules.reload_interval = Duration::from_millis(100);
        let mut apps = BTreeMap::new();
        apps.insert(
            APP.to_owned(),
            AppSettings {
                appid: APPID.into(),
                secret: SecretString::from("test-secret"),
            },
        );
        s.apps = apps;
        s.validate().expect("test settings are valid");
        let registry = prometheus::Registry::new();
        let metrics = Metrics::new(&registry).expect("metrics");
        Harness {
            settings: s,
            wechat,
            dir,
            metrics,
            registry,
        }
    }

    /// The record-processing parts, connected to the real Redis.
    pub async fn services(&self) -> Services {
        require_redis().await;
        Services::build(&self.settings, &self.metrics)
            .await
            .expect("services build")
    }

    /// WeChat's stable_token endpoint hands out [`TOKEN`].
    pub async fn mount_token(&self) {
        mount_token_answer(&self.wechat, TOKEN, 7200).await;
    }

    /// The fake API answers `endpoint` with `answer`, and must be called exactly `times` times.
    pub async fn expect_calls(&self, endpoint: &str, answer: ResponseTemplate, times: u64) {
        Mock::given(path(endpoint))
            .respond_with(answer)
            .expect(times)
            .mount(&self.wechat)
            .await;
    }

    /// Creates the inbound, dead-letter and hand-off topics, and the apps' hold topics.
    pub async fn create_topics(&self) {
        require_kafka();
        consumer::operator::setup::create_all_topics(&self.settings)
            .await
            .expect("topics created");
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.registry, name, labels)
    }
}

pub async fn mount_token_answer(server: &MockServer, token: &str, expires_in: u64) {
    mount_token_answer_with_priority(server, token, expires_in, 5).await;
}

/// Like [`mount_token_answer`], winning over mocks of a larger `priority` number (the default
/// is 5), so a test can heal an endpoint it mounted failing.
pub async fn mount_token_answer_with_priority(
    server: &MockServer,
    token: &str,
    expires_in: u64,
    priority: u8,
) {
    Mock::given(method("POST"))
        .and(path(STABLE_TOKEN))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(
                serde_json::json!({"access_token": token, "expires_in": expires_in}),
            ),
        )
        .with_priority(priority)
        .mount(server)
        .await;
}

/// The outcome of a record whose replies all went out now.
pub fn replied(sent: usize) -> Outcome {
    Outcome::Replied {
        sent,
        already_sent: 0,
    }
}

pub fn ok() -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({"errcode": 0, "errmsg": "ok"}))
}

pub fn errcode(code: i64, msg: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(serde_json::json!({"errcode": code, "errmsg": msg}))
}

/// The value of a metric sample with exactly these labels (0 when absent).
pub fn metric(registry: &prometheus::Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    for family in registry.gather() {
        if family.name() != name {
            continue;
        }
        for m in family.get_metric() {
            let matches = labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            });
            if matches {
                return match family.get_field_type() {
                    prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
                    _ => m.get_gauge().get_value(),
                };
            }
        }
    }
    0.0
}

/// Fails the test with a clear message when Redis is not reachable.
pub async fn require_redis() {
    if crate::ON_REDIS_CLUSTER {
        // Connecting needs a node that answers; the cluster's own state is asked too.
        let settings_nodes = redis_cluster_nodes();
        let first = settings_nodes
            .split(',')
            .next()
            .unwrap_or_default()
            .to_owned();
        let info = async {
            let client = redis::Client::open(first.as_str()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query_async::<String>(&mut conn)
                .await
                .ok()
        };
        match tokio::time::timeout(Duration::from_secs(3), info).await {
            Ok(Some(info)) if info.contains("cluster_state:ok") => return,
            _ => panic!(
                "the Redis Cluster at {first} is unreachable or not ok; start it with \
                 scripts/services.sh redis-cluster-up"
            ),
        }
    }
    let url = redis_url();
    let reachable = async {
        let client = redis::Client::open(url.as_str()).ok()?;
        let mut conn = client.get_multiplexed_async_connection().await.ok()?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .ok()
    };
    match tokio::time::timeout(Duration::from_secs(3), reachable).await {
        Ok(Some(_)) => {}
        _ => panic!("Redis at {url} is unreachable; start it with scripts/services.sh up"),
    }
}

/// Fails the test with a clear message when Kafka is not reachable.
pub fn require_kafka() {
    let brokers = kafka_brokers();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("kafka client");
    if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(5)) {
        panic!("Kafka at {brokers} is unreachable ({e}); start it with scripts/services.sh up");
    }
}

fn envelope(openid: &str, create_time: i64, body: MessageBody) -> EnvelopeV1 {
    let message = Message {
        to_user_name: "gh_97417a04a28d".into(),
        from_user_name: OpenId::new(openid),
        create_time,
        body,
    };
    EnvelopeV1 {
        app: APP.into(),
        appid: AppId::new(APPID),
        dedup_key: DedupKey::for_message(APP, &message),
        dedup: DedupStatus::Checked,
        received_at_ms: create_time * 1000,
        format: Format::Json,
        mode: Mode::Safe,
        payload: "{}".into(),
        message,
    }
}

/// A text message sent now.
pub fn text(openid: &str, msg_id: &str, content: &str) -> EnvelopeV1 {
    envelope(
        openid,
        now(),
        MessageBody::Text {
            msg_id: MsgId::new(msg_id),
            content: content.into(),
        },
    )
}

/// A text message sent at `create_time`.
pub fn text_at(openid: &str, msg_id: &str, content: &str, create_time: i64) -> EnvelopeV1 {
    let mut env = text(openid, msg_id, content);
    env.message.create_time = create_time;
    env
}

pub fn enter(openid: &str, session_from: &str) -> EnvelopeV1 {
    envelope(
        openid,
        now(),
        MessageBody::EnterSession {
            session_from: session_from.into(),
        },
    )
}

pub fn image(openid: &str, msg_id: &str) -> EnvelopeV1 {
    envelope(
        openid,
        now(),
        MessageBody::Image {
            msg_id: MsgId::new(msg_id),
            pic_url: "https://mmbiz.example/pic".into(),
            media_id: "user-media".into(),
        },
    )
}

pub fn card(openid: &str, msg_id: &str, title: &str, app_id: &str, page_path: &str) -> EnvelopeV1 {
    envelope(
        openid,
        now(),
        MessageBody::MiniProgramPage {
            msg_id: MsgId::new(msg_id),
            title: title.into(),
            app_id: app_id.into(),
            page_path: page_path.into(),
            thumb_url: String::new(),
            thumb_media_id: String::new(),
        },
    )
}

pub fn bytes(env: &EnvelopeV1) -> Vec<u8> {
    Envelope::V1(env.clone()).to_bytes()
}

/// Publishes raw record values with their keys, in order, and waits for the acks.
pub async fn produce(topic: &str, records: &[(String, Vec<u8>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .expect("producer");
    for (key, value) in records {
        producer
            .send(
                FutureRecord::to(topic).key(key.as_bytes()).payload(value),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .expect("record acknowledged");
    }
}

/// Publishes envelopes keyed as ingest keys them.
pub async fn produce_envelopes(topic: &str, envs: &[EnvelopeV1]) {
    let records: Vec<(String, Vec<u8>)> = envs
        .iter()
        .map(|e| (record_key(&e.app, &e.message.from_user_name), bytes(e)))
        .collect();
    produce(topic, &records).await;
}

/// Reads `count` records from every partition of `topic` (from the start), within `timeout`.
///
/// librdkafka's calls block, so the reading runs on a blocking thread: the test's runtime may be
/// the one running the consumers under test, and must not stall while this waits.
pub async fn read_topic(
    topic: &str,
    partitions: i32,
    count: usize,
    timeout: Duration,
) -> Vec<OwnedMessage> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .expect("reader");
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition_offset(&topic, p, Offset::Beginning)
                .expect("partition");
        }
        consumer.assign(&list).expect("assign");
        let deadline = std::time::Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < count && std::time::Instant::now() < deadline {
            if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
                out.push(m.detach());
            }
        }
        out
    })
    .await
    .expect("the reader thread")
}

/// The group's committed offset per partition (-1001 = none).
///
/// The lookup (a new client, a coordinator lookup, an offset fetch) blocks for a good part of a
/// second, so it runs on a blocking thread: on the test's own runtime it would stall the
/// consumers under test, which share that thread, every time a test polls for their progress.
pub async fn committed(group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_brokers())
            .set("group.id", &group)
            .create()
            .expect("client");
        let mut list = TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(&topic, p);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .expect("committed offsets");
        (0..partitions)
            .map(
                |p| match committed.find_partition(&topic, p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1001,
                },
            )
            .collect()
    })
    .await
    .expect("the lookup thread")
}

/// How many records of the harness's inbound topic its group has committed, over all partitions.
pub async fn total_committed(h: &Harness) -> i64 {
    committed(
        &h.settings.kafka.group_id,
        &h.settings.kafka.inbound_topic,
        h.settings.kafka.topics.inbound_partitions,
    )
    .await
    .into_iter()
    .map(|o| o.max(0))
    .sum()
}

/// Polls `condition` until it holds or `timeout` passes; returns whether it held.
pub async fn eventually<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    tokio::time::timeout(timeout, async {
        loop {
            if condition().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .is_ok()
}

/// Requests the fake WeChat received on `path`.
pub async fn received(server: &MockServer, on: &str) -> Vec<serde_json::Value> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.url.path() == on)
        .map(|r| serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null))
        .collect()
}

/// A consumer running in this process.
pub struct TestApp {
    pub port: u16,
    pub registry: prometheus::Registry,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    /// Stops it the way SIGTERM does and waits (bounded) until it has left the group.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("the consumer stops within 20 s")
            .expect("consumer task")
            .expect("consumer stops cleanly");
    }

    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric(&self.registry, name, labels)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(format!("http://127.0.0.1:{}{path}", self.port))
            .await
            .expect("consumer answers")
    }
}

pub async fn spawn_app(h: &Harness) -> TestApp {
    require_kafka();
    require_redis().await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let registry = prometheus::Registry::new();
    let app = consumer::Application::build(h.settings.clone(), registry.clone(), shutdown.clone())
        .await
        .expect("the consumer starts");
    let port = app.port();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        port,
        registry,
        shutdown,
        task,
    }
}
