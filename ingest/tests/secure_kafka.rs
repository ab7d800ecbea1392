//! ingest against a Kafka that authenticates clients (SASL/SCRAM-SHA-512, in clear and over TLS)
//! and authorises them (ACLs: only ingest's principal may write the `secure-inbound*` topics): the
//! broker of `scripts/services.sh secure-kafka-up`, found through the variables that
//! `scripts/services.sh secure-kafka-env` prints. The tests fail, never skip, when those are unset
//! or the broker is down. Dedup uses the usual Redis (`WXKF_TEST_REDIS`).
#![allow(clippy::unwrap_used)]

// The harness of the API tests: settings, pushes signed as WeChat signs them.
#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::path::Path;
use std::time::Duration;

use common::codec::Format;
use helpers::*;
use ingest::config::Settings;
use ingest::Application;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is unset: start the secured broker with `scripts/services.sh secure-kafka-up` \
             and export what `scripts/services.sh secure-kafka-env` prints"
        )
    })
}

/// (user, password) of `WXKF_TEST_SECURE_KAFKA_{who}`, given as `user:password`.
fn principal(who: &str) -> (String, String) {
    let value = var(&format!("WXKF_TEST_SECURE_KAFKA_{who}"));
    let (user, password) = value.split_once(':').expect("user:password");
    (user.to_owned(), password.to_owned())
}

/// A client of the secured broker's SASL_PLAINTEXT listener as the admin (a super user).
fn admin_config() -> ClientConfig {
    let (user, password) = principal("ADMIN");
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", var("WXKF_TEST_SECURE_KAFKA"))
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", user)
        .set("sasl.password", password);
    config
}

/// A fresh topic the ACLs let ingest's principal write (its name starts with `secure-inbound`).
async fn create_topic() -> String {
    let topic = unique("secure-inbound");
    let admin: AdminClient<DefaultClientContext> = admin_config().create().unwrap();
    let results = admin
        .create_topics(
            &[NewTopic::new(
                &topic,
                PARTITIONS,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(20))),
        )
        .await
        .unwrap_or_else(|e| panic!("the secured Kafka is unreachable ({e})"));
    for result in results {
        result.unwrap_or_else(|(t, e)| panic!("creating {t} on the secured Kafka: {e}"));
    }
    topic
}

/// How many records `topic` holds, read as the admin.
fn record_count(topic: &str) -> i64 {
    let consumer: BaseConsumer = admin_config()
        .set("group.id", unique("secure-reader"))
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            let (low, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(20))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
            high - low
        })
        .sum()
}

/// A properties file for `who`, as a mounted Secret holds it.
fn properties_file(dir: &Path, who: &str, password: Option<&str>) -> std::path::PathBuf {
    let (user, right) = principal(who);
    let file = dir.join(format!("{who}.properties"));
    std::fs::write(
        &file,
        format!(
            "# mounted from a Secret\nsasl.mechanism=SCRAM-SHA-512\nsasl.username={user}\n\
             sasl.password={}\n",
            password.unwrap_or(&right)
        ),
    )
    .unwrap();
    file
}

/// Settings for the secured broker's SASL_PLAINTEXT listener, credentials from `file`, without a
/// spool: a push Kafka does not take is answered 503.
fn secured_settings(topic: &str, file: std::path::PathBuf) -> Settings {
    let mut settings = test_settings();
    settings.kafka.brokers = var("WXKF_TEST_SECURE_KAFKA");
    settings.kafka.topic = topic.to_owned();
    settings.kafka.properties_file = Some(file);
    // As an environment variable writes it: INGEST__KAFKA__PROPERTIES__SECURITY_PROTOCOL.
    settings
        .kafka
        .properties
        .insert("security_protocol".into(), "SASL_PLAINTEXT".into());
    settings.spool.enabled = false;
    settings.validate().unwrap();
    settings
}

/// ingest, started with `settings` on a free port.
struct Running {
    address: String,
    client: reqwest::Client,
    handle: actix_web::dev::ServerHandle,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn start(settings: Settings) -> Running {
        let app = Application::build(settings, prometheus::Registry::new()).unwrap();
        Running {
            address: format!("http://127.0.0.1:{}", app.port()),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            handle: app.handle(),
            task: tokio::spawn(app.run_until_stopped()),
        }
    }

    /// `/readyz`'s status (Kafka answers a metadata request for the topic, with this principal).
    async fn readiness(&self) -> u16 {
        let answer = self.client.get(format!("{}/readyz", self.address)).send();
        answer.await.unwrap().status().as_u16()
    }

    /// Waits until ready, as an orchestrator does before sending traffic: the first connection
    /// (TLS handshake, SCRAM exchange) may take a while on a busy machine.
    async fn wait_ready(&self) {
        let ready = async {
            while self.readiness().await != 200 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .expect("ingest ready within 60 s");
    }

    /// Posts one push; its answer's status, None when the service is gone.
    async fn push(&self) -> Option<u16> {
        let message = text_message("u-secure", "over a secured Kafka");
        let p = push(&message, Format::Json, PushMode::Safe, now());
        self.client
            .post(format!("{}/wechat/json?{}", self.address, p.query))
            .header("Content-Type", "application/json")
            .body(p.body)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    async fn stop(self) {
        self.handle.stop(true).await;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.task).await;
    }
}

/// Publishes one push through a ready ingest.
async fn push_when_ready(settings: Settings) -> Option<u16> {
    let app = Running::start(settings);
    app.wait_ready().await;
    let answer = app.push().await;
    app.stop().await;
    answer
}

/// A push to an ingest whose principal Kafka refuses: not ready, and the push answered 503.
async fn refused(settings: Settings) {
    let app = Running::start(settings);
    assert_eq!(app.readiness().await, 503, "Kafka refuses this principal");
    assert_eq!(app.push().await, Some(503));
    app.stop().await;
}

#[tokio::test]
async fn ingest_publishes_with_its_principal_over_sasl_scram() {
    let dir = tempfile::tempdir().unwrap();
    let topic = create_topic().await;
    let settings = secured_settings(&topic, properties_file(dir.path(), "INGEST", None));
    assert_eq!(push_when_ready(settings).await, Some(200));
    assert_eq!(record_count(&topic), 1);
}

#[tokio::test]
async fn ingest_publishes_over_tls_trusting_the_brokers_ca() {
    let dir = tempfile::tempdir().unwrap();
    let topic = create_topic().await;
    let mut settings = secured_settings(&topic, properties_file(dir.path(), "INGEST", None));
    settings.kafka.brokers = var("WXKF_TEST_SECURE_KAFKA_TLS");
    let properties = &mut settings.kafka.properties;
    properties.insert("security_protocol".into(), "SASL_SSL".into());
    properties.insert("ssl_ca_location".into(), var("WXKF_TEST_SECURE_KAFKA_CA"));
    assert_eq!(push_when_ready(settings).await, Some(200));
    assert_eq!(record_count(&topic), 1);
}

#[tokio::test]
async fn a_wrong_password_is_refused_not_ready_503_and_nothing_published() {
    let dir = tempfile::tempdir().unwrap();
    let topic = create_topic().await;
    let wrong = "not-the-password";
    let settings = secured_settings(&topic, properties_file(dir.path(), "INGEST", Some(wrong)));
    assert!(!format!("{settings:?}").contains(wrong));
    refused(settings).await;
    assert_eq!(record_count(&topic), 0);
}

#[tokio::test]
async fn a_principal_without_write_on_the_topic_cannot_publish() {
    let dir = tempfile::tempdir().unwrap();
    let topic = create_topic().await;
    let settings = secured_settings(&topic, properties_file(dir.path(), "OUTSIDER", None));
    refused(settings).await;
    assert_eq!(record_count(&topic), 0);
}
