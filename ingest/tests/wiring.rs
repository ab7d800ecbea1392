//! Wiring: the real Kafka broker and the real Redis that every other test depends on are reachable
//! and behave as the pipeline assumes. These tests fail, loudly, when either service is down —
//! start them with `scripts/services.sh up`.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

fn kafka_brokers() -> String {
    std::env::var("WXKF_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn redis_url() -> String {
    std::env::var("WXKF_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn kafka_produce_consume_and_commit_in_a_group() {
    let brokers = kafka_brokers();
    let topic = unique("wiring");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin client");
    let created = admin
        .create_topics(
            &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .unwrap_or_else(|e| {
            panic!("Kafka at {brokers} is unreachable ({e}); start it with scripts/services.sh up")
        });
    for result in created {
        result.unwrap_or_else(|(t, e)| panic!("creating topic {t} on {brokers}: {e}"));
    }

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer");
    let delivery = producer
        .send(
            FutureRecord::to(&topic).key("app:user").payload("hello"),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("Kafka at {brokers} did not acknowledge a record: {e}"));
    assert_eq!(delivery.offset, 0, "a fresh topic starts at offset 0");

    let group = unique("wiring-group");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let message = loop {
        assert!(
            std::time::Instant::now() < deadline,
            "no record consumed from {topic} within 30 s (group {group})"
        );
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => break m.detach(),
            Some(Err(e)) => panic!("consuming from {topic}: {e}"),
            None => continue,
        }
    };
    assert_eq!(message.key(), Some(&b"app:user"[..]));
    assert_eq!(message.payload(), Some(&b"hello"[..]));

    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset(&topic, 0, Offset::Offset(message.offset() + 1))
        .expect("offset");
    consumer
        .commit(&offsets, CommitMode::Sync)
        .expect("commit the consumed offset");
    let committed = consumer
        .committed(Duration::from_secs(10))
        .expect("read committed offsets back");
    let elem = committed
        .find_partition(&topic, 0)
        .expect("partition 0 in the committed list");
    assert_eq!(elem.offset(), Offset::Offset(1));
}

#[tokio::test]
async fn redis_set_nx_takes_a_key_once() {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("redis url");
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|_| panic!("Redis at {url} did not answer within 5 s"))
    .unwrap_or_else(|e| {
        panic!("Redis at {url} is unreachable ({e}); start it with scripts/services.sh up")
    });

    let key = unique("wiring:nx");
    let set = |value: &'static str| {
        redis::cmd("SET")
            .arg(&key)
            .arg(value)
            .arg("NX")
            .arg("PX")
            .arg(10_000)
            .clone()
    };
    let first: Option<String> = set("first").query_async(&mut conn).await.expect("SET NX");
    let second: Option<String> = set("second").query_async(&mut conn).await.expect("SET NX");
    assert_eq!(
        first.as_deref(),
        Some("OK"),
        "the first SET NX takes the key"
    );
    assert_eq!(second, None, "the second SET NX finds it taken");
    let value: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(value, "first");
}
