//! The consumer against a Kafka that authenticates clients (SASL/SCRAM-SHA-512) and authorises
//! them (ACLs): the broker of `scripts/services.sh secure-kafka-up`, found through the variables
//! that `scripts/services.sh secure-kafka-env` prints. Fails, never skips, when those are unset or
//! the broker is down. Redis and the WeChat fake are the usual ones of the API tests.
#![allow(clippy::unwrap_used)]

// The harness of the API tests: settings, envelopes, the WeChat fake, the running service.
/// The shared helpers run here on the single Redis.
const ON_REDIS_CLUSTER: bool = false;

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::path::Path;
use std::time::Duration;

use consumer::operator::setup::{create_topics, TopicStatus};
use helpers::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const ECHO: &str =
    "[[rule]]\nname = \"echo\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"{content}\"\n";

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is unset: start the secured broker with `scripts/services.sh secure-kafka-up` \
             and export what `scripts/services.sh secure-kafka-env` prints"
        )
    })
}

/// A client of the secured broker's SASL_PLAINTEXT listener as `who` (`ADMIN`, `INGEST`, ...).
fn client_as(who: &str) -> ClientConfig {
    let value = var(&format!("WXKF_TEST_SECURE_KAFKA_{who}"));
    let (user, password) = value.split_once(':').expect("user:password");
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", var("WXKF_TEST_SECURE_KAFKA"))
        .set("security.protocol", "SASL_PLAINTEXT")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", user)
        .set("sasl.password", password);
    config
}

/// Produces one record as `who`; the broker's answer.
async fn produce_as(who: &str, topic: &str, key: &str, payload: &[u8]) -> Result<(), String> {
    let producer: FutureProducer = client_as(who)
        .set("acks", "all")
        .set("message.timeout.ms", "20000")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(payload),
            Timeout::After(Duration::from_secs(20)),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

/// The consumer's properties file, as its mounted Secret holds it.
fn properties_file(dir: &Path) -> std::path::PathBuf {
    let value = var("WXKF_TEST_SECURE_KAFKA_CONSUMER");
    let (user, password) = value.split_once(':').expect("user:password");
    let file = dir.join("client.properties");
    std::fs::write(
        &file,
        format!(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n\
             sasl.username={user}\nsasl.password={password}\n"
        ),
    )
    .unwrap();
    file
}

fn records_in(topic: &str, partitions: i32) -> i64 {
    let reader: BaseConsumer = client_as("ADMIN")
        .set("group.id", unique("secure-reader"))
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            let (low, high) = reader
                .fetch_watermarks(topic, p, Duration::from_secs(20))
                .unwrap();
            high - low
        })
        .sum()
}

fn committed_total(group: &str, topic: &str, partitions: i32) -> i64 {
    let reader: BaseConsumer = client_as("ADMIN").set("group.id", group).create().unwrap();
    let mut list = TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    let committed = reader
        .committed_offsets(list, Duration::from_secs(20))
        .unwrap();
    committed
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

/// The consumer running in this process, as `spawn_app` starts it, without requiring the plain
/// broker the API tests use.
async fn start(h: &Harness) -> TestApp {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let registry = prometheus::Registry::new();
    let app = consumer::Application::build(h.settings.clone(), registry.clone(), shutdown.clone())
        .await
        .expect("the consumer starts");
    TestApp {
        port: app.port(),
        registry,
        shutdown,
        task: tokio::spawn(app.run_until_stopped()),
    }
}

#[tokio::test]
async fn the_consumer_sets_up_consumes_and_dead_letters_with_its_principal_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = Harness::new(ECHO).await;
    let k = &mut h.settings.kafka;
    k.brokers = var("WXKF_TEST_SECURE_KAFKA");
    k.inbound_topic = unique("secure-inbound");
    k.dead_letter_topic = unique("secure-consumer-dlq");
    k.handoff_topic = unique("secure-consumer-handoff");
    // Made by the consumer at start, read back by its `<group>.hold` group.
    k.hold_topic_prefix = format!("{}.", unique("secure-consumer-hold"));
    k.group_id = unique("secure-group");
    k.topics.inbound_partitions = 1;
    k.properties.clear();
    k.properties_file = Some(properties_file(dir.path()));
    // What loading the configuration does with the file.
    k.resolve_properties().unwrap();
    h.settings.validate().unwrap();
    let (inbound, dead_letters, group) = (
        h.settings.kafka.inbound_topic.clone(),
        h.settings.kafka.dead_letter_topic.clone(),
        h.settings.kafka.group_id.clone(),
    );

    // `setup` with the consumer's principal creates the three topics.
    let created = create_topics(&h.settings.kafka).await.unwrap();
    assert!(
        created
            .topics
            .iter()
            .all(|(_, status)| matches!(status, TopicStatus::Created)),
        "{created:?}"
    );

    // Only ingest's principal writes the inbound topic.
    let refused = produce_as("CONSUMER", &inbound, "demo:o-x", b"{}")
        .await
        .unwrap_err();
    assert!(
        refused.contains(&format!("{:?}", RDKafkaErrorCode::TopicAuthorizationFailed)),
        "{refused}"
    );
    let good = text("o-secure", "1", "over SCRAM");
    produce_as("INGEST", &inbound, "demo:o-bad", b"\x00not json")
        .await
        .unwrap();
    produce_as("INGEST", &inbound, "demo:o-secure", &bytes(&good))
        .await
        .unwrap();

    // The group consumer reads and commits, the producer dead-letters, all as the consumer.
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 1).await;
    let app = start(&h).await;
    let done = eventually(Duration::from_secs(60), || async {
        committed_total(&group, &inbound, 1) == 2
    })
    .await;
    assert!(done, "both records processed and committed");
    assert_eq!(records_in(&dead_letters, 1), 1);
    app.stop().await;
    h.wechat.verify().await;
}
