//! The test harness: an ingest server on a free port, wired to the real Kafka (a fresh topic per
//! test) and the real Redis (a fresh key prefix per test), plus a client that signs and encrypts
//! pushes exactly as WeChat does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::codec::Format;
use common::crypto::AesKey;
use common::envelope::Envelope;
use common::ids::{MsgId, OpenId};
use common::message::{Message, MessageBody};
use ingest::config::{AnswerMode, AppSettings, Settings};
use ingest::Application;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use secrecy::SecretString;

/// The published test secrets of the WeChat documentation (vector V1).
pub const TOKEN: &str = "AAAAA";
pub const AES_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
pub const APPID: &str = "wxba5fad812f8e6fb9";
pub const ORIGINAL_ID: &str = "gh_97417a04a28d";
pub const PARTITIONS: i32 = 3;

pub fn kafka_brokers() -> String {
    std::env::var("WXKF_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("WXKF_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
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

fn app(format: Option<Format>) -> AppSettings {
    AppSettings {
        appid: APPID.into(),
        original_id: ORIGINAL_ID.into(),
        token: SecretString::from(TOKEN),
        encoding_aes_key: Some(SecretString::from(AES_KEY)),
        format,
        // Most tests push in every mode; the default (plaintext refused once there is a key) is
        // the `strict` app's, and `security.rs` tests it.
        allow_plaintext: true,
        answer: AnswerMode::Success,
    }
}

/// Settings for a test: the project's defaults file, a fresh topic and key prefix, and the apps
/// `json`, `xml`, `sniff` (format detected per push), `strict` (the default: plaintext refused
/// since it has a key), `transfer` (answers transfer_customer_service), `transfer-sniff` (the
/// same, format detected per push) and `empty` (answers an empty body, format detected).
pub fn test_settings() -> Settings {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut settings = Settings::load_from(&dir, "test").expect("the default configuration loads");
    settings.server.host = "127.0.0.1".into();
    settings.server.port = 0;
    settings.server.workers = 2;
    settings.kafka.brokers = kafka_brokers();
    settings.kafka.topic = unique("ingest-test");
    settings.redis.url = SecretString::from(redis_url());
    settings.redis.key_prefix = format!("{}:", unique("test-dedup"));
    // A spool of this test's own (each process locks its spool directory).
    settings.spool.dir = std::env::temp_dir().join(unique("ingest-spool"));
    // The published vectors carry 2024 timestamps; the window is tested on its own.
    settings.deadline.timestamp_tolerance = Duration::ZERO;
    let mut apps = BTreeMap::new();
    apps.insert("json".into(), app(Some(Format::Json)));
    apps.insert("xml".into(), app(Some(Format::Xml)));
    apps.insert("sniff".into(), app(None));
    apps.insert(
        "strict".into(),
        AppSettings {
            allow_plaintext: false,
            ..app(Some(Format::Json))
        },
    );
    apps.insert(
        "transfer".into(),
        AppSettings {
            answer: AnswerMode::Transfer,
            ..app(Some(Format::Xml))
        },
    );
    apps.insert(
        "transfer-sniff".into(),
        AppSettings {
            answer: AnswerMode::Transfer,
            ..app(None)
        },
    );
    apps.insert(
        "empty".into(),
        AppSettings {
            answer: AnswerMode::Empty,
            ..app(None)
        },
    );
    settings.apps = apps;
    settings
}

pub struct TestApp {
    pub address: String,
    pub settings: Settings,
    pub registry: prometheus::Registry,
    pub client: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub fn topic(&self) -> &str {
        &self.settings.kafka.topic
    }

    /// POSTs a push to `/wechat/{app}`.
    pub async fn post(&self, app: &str, push: &Push) -> reqwest::Response {
        self.client
            .post(format!("{}/wechat/{app}?{}", self.address, push.query))
            .header("Content-Type", push.content_type())
            .body(push.body.clone())
            .send()
            .await
            .expect("ingest answers")
    }

    pub async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path_and_query}", self.address))
            .send()
            .await
            .expect("ingest answers")
    }

    /// The value of a counter or gauge with the given labels, read from the injected registry.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        for family in self.registry.gather() {
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

    /// Stops the server the way SIGTERM does and waits for it to drain and flush.
    pub async fn stop(self) {
        self.handle.stop(true).await;
        self.task
            .await
            .expect("server task")
            .expect("server stops cleanly");
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(test_settings()).await
}

/// Starts ingest with `settings`, creating its topic on the real broker first.
pub async fn spawn_app_with(settings: Settings) -> TestApp {
    create_topic(&kafka_brokers(), &settings.kafka.topic).await;
    let registry = prometheus::Registry::new();
    let app = Application::build(settings.clone(), registry.clone()).expect("ingest builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        settings,
        registry,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client"),
        handle,
        task,
    }
}

pub async fn create_topic(brokers: &str, topic: &str) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap_or_else(|e| {
            panic!("Kafka at {brokers} is unreachable ({e}); start it with scripts/services.sh up")
        });
    for r in results {
        match r {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => panic!("creating topic {t} on {brokers}: {e}"),
        }
    }
}

/// How many records the topic holds. Ingest answers only after Kafka acknowledged, so once every
/// answer is in this is exact — no waiting needed.
pub fn record_count(topic: &str) -> i64 {
    let consumer = plain_consumer();
    (0..PARTITIONS)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
            high - low
        })
        .sum()
}

/// Every record of the topic, as (key, envelope), read from the beginning of all partitions.
pub fn read_records(topic: &str) -> Vec<(String, Envelope)> {
    let expected = record_count(topic);
    let consumer = plain_consumer();
    let mut assignment = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        assignment
            .add_partition_offset(topic, p, Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut records = Vec::new();
    while (records.len() as i64) < expected {
        assert!(
            std::time::Instant::now() < deadline,
            "read {} of {expected} records of {topic} within 20 s",
            records.len()
        );
        if let Some(m) = consumer.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            let key = String::from_utf8(m.key().expect("record key").to_vec()).expect("utf-8 key");
            let envelope = Envelope::from_bytes(m.payload().expect("payload")).expect("envelope");
            records.push((key, envelope));
        }
    }
    records
}

fn plain_consumer() -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .set("group.id", unique("ingest-test-reader"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer")
}

/// A push as WeChat would send it: query string, body, format.
#[derive(Clone, Debug)]
pub struct Push {
    pub query: String,
    pub body: String,
    pub format: Format,
}

impl Push {
    fn content_type(&self) -> &'static str {
        match self.format {
            Format::Xml => "text/xml",
            Format::Json => "application/json",
        }
    }
}

/// WeChat's push modes, as the tests name them.
pub use common::push::Mode as PushMode;

/// Signs (and in compatible and safe mode encrypts) `message` as WeChat does, with `token`.
pub fn push(message: &Message, format: Format, mode: PushMode, timestamp: i64) -> Push {
    let plain = match format {
        Format::Xml => common::codec::to_xml(message),
        Format::Json => common::codec::to_json(message),
    };
    push_raw(&plain, format, mode, timestamp, TOKEN)
}

pub fn push_raw(plain: &str, format: Format, mode: PushMode, timestamp: i64, token: &str) -> Push {
    let key = AesKey::from_encoding_aes_key(AES_KEY).expect("test key");
    let creds = common::push::AppCredentials {
        token,
        aes_key: Some(&key),
        appid: APPID,
    };
    // A fresh nonce per push, as WeChat sends: a reposted `Push` is a retry of the same delivery.
    let nonce = (uuid::Uuid::new_v4().as_u128() % 1_000_000_000).to_string();
    let sealed = common::seal::seal(plain, format, mode, &creds, timestamp, &nonce);
    Push {
        query: sealed.query,
        body: sealed.body,
        format,
    }
}

/// A text message from `openid` with a MsgId nobody else uses.
pub fn text_message(openid: &str, content: &str) -> Message {
    Message {
        to_user_name: ORIGINAL_ID.into(),
        from_user_name: OpenId::new(openid),
        create_time: now(),
        body: MessageBody::Text {
            msg_id: MsgId::new(unique_msg_id()),
            content: content.into(),
        },
    }
}

/// Random 64-bit ids above 2^53, as real ones are.
pub fn unique_msg_id() -> String {
    let n = u64::from_le_bytes(
        uuid::Uuid::new_v4().as_bytes()[..8]
            .try_into()
            .expect("8 bytes"),
    );
    ((n >> 2) | (1 << 60)).to_string()
}
