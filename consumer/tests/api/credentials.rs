//! Credentials: Kafka properties from a mounted file and from the environment (`_` for `.`),
//! reserved properties refused under every name, secrets never printed; Redis with a password and
//! over TLS, against `redis-server`s started by the tests.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use consumer::startup::Services;
use secrecy::ExposeSecret;

use crate::helpers::{load_settings as load, *};
use crate::redis_server::RedisServer;

const REPLY: &str =
    "[[rule]]\nname = \"r\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"answer\"\n";
const PASSWORD: &str = "store-test-p4ss";
const WRONG: &str = "not-the-p4ss";

#[test]
fn kafka_properties_come_from_a_file_and_the_environment_for_every_client() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.properties");
    std::fs::write(
        &file,
        "# mounted from a Secret\nsecurity.protocol=SASL_SSL\nsasl.mechanism=PLAIN\n\
         sasl.username=wxkf-consumer\nsasl.password=0123=x\n",
    )
    .unwrap();
    let settings = load(&[
        ("CONSUMER__KAFKA__PROPERTIES_FILE", file.to_str().unwrap()),
        (
            "CONSUMER__KAFKA__PROPERTIES__SASL_MECHANISM",
            "SCRAM-SHA-512",
        ),
        // Stays a string, byte for byte: never guessed into the number 123.
        ("CONSUMER__KAFKA__PROPERTIES__SSL_KEY_PASSWORD", "0123"),
    ])
    .unwrap();
    let p = &settings.kafka.properties;
    assert_eq!(p["security.protocol"], "SASL_SSL");
    assert_eq!(p["sasl.mechanism"], "SCRAM-SHA-512", "the variable wins");
    assert_eq!(p["sasl.password"], "0123=x");
    assert_eq!(p["ssl.key.password"], "0123");

    // What an operator tool's client is given (the group consumer, its producers and `setup`
    // take the same resolved map).
    let tool = consumer::operator::range::client_config(&settings.kafka, "g");
    assert_eq!(tool.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    assert_eq!(tool.get("sasl.password"), Some("0123=x"));
    assert_eq!(tool.get("bootstrap.servers"), Some("127.0.0.1:9092"));
    assert_eq!(tool.get("enable.auto.commit"), Some("false"));

    std::fs::write(&file, "sasl.mechanism=PLAIN\nno equals sign here\n").unwrap();
    let refused = load(&[("CONSUMER__KAFKA__PROPERTIES_FILE", file.to_str().unwrap())])
        .unwrap_err()
        .to_string();
    assert!(refused.contains("line 2"), "{refused}");
}

#[test]
fn properties_the_consumer_relies_on_are_refused_under_every_name() {
    for (variable, name) in [
        ("ENABLE_AUTO_COMMIT", "enable.auto.commit"),
        ("AUTO_COMMIT_ENABLE", "auto.commit.enable"),
        ("ENABLE_AUTO_OFFSET_STORE", "enable.auto.offset.store"),
        ("GROUP_ID", "group.id"),
        ("METADATA_BROKER_LIST", "metadata.broker.list"),
        ("REQUEST_REQUIRED_ACKS", "request.required.acks"),
        ("ENABLE_IDEMPOTENCE", "enable.idempotence"),
        ("DELIVERY_TIMEOUT_MS", "delivery.timeout.ms"),
    ] {
        let key = format!("CONSUMER__KAFKA__PROPERTIES__{variable}");
        let refused = load(&[(key.as_str(), "1")]).unwrap_err().to_string();
        assert!(refused.contains(name), "{name}: {refused}");
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client.properties");
    std::fs::write(&file, "metadata.broker.list=elsewhere:9092\n").unwrap();
    let refused = load(&[("CONSUMER__KAFKA__PROPERTIES_FILE", file.to_str().unwrap())])
        .unwrap_err()
        .to_string();
    assert!(refused.contains("metadata.broker.list"), "{refused}");
}

#[test]
fn credentials_never_print() {
    let settings = load(&[
        (
            "CONSUMER__KAFKA__PROPERTIES__SASL_PASSWORD",
            "hunter2-kafka",
        ),
        ("CONSUMER__KAFKA__PROPERTIES__SECURITY_PROTOCOL", "SASL_SSL"),
        (
            "CONSUMER__REDIS__URL",
            "redis://:hunter3-redis@127.0.0.1:6379/",
        ),
        ("CONSUMER__APPS__DEMO__APPID", "wx0"),
        ("CONSUMER__APPS__DEMO__SECRET", "hunter4-app"),
    ])
    .unwrap();
    let printed = format!("{settings:?}");
    for secret in ["hunter2-kafka", "hunter3-redis", "hunter4-app"] {
        assert!(!printed.contains(secret), "{secret} in {printed}");
    }
    assert!(printed.contains("SASL_SSL") && printed.contains("sasl.password"));
}

#[test]
fn a_redis_ca_file_without_a_tls_url_is_refused() {
    let refused = load(&[("CONSUMER__REDIS__CA_FILE", "/etc/wxkf/redis/ca.crt")])
        .unwrap_err()
        .to_string();
    assert!(refused.contains("rediss://"), "{refused}");
}

/// A harness whose Redis is `url` (with `ca_file` trusted), the rest as usual.
async fn harness_with_redis(url: String, ca_file: Option<PathBuf>) -> Harness {
    let mut h = Harness::new(REPLY).await;
    h.settings.redis.url = url.into();
    h.settings.redis.ca_file = ca_file;
    h
}

/// One record through the processor: the token broker, the send ledger and the reply window all
/// read and write Redis.
async fn reply_once(h: &Harness, services: &Services) {
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 1).await;
    let outcome = services
        .processor
        .process(&text("o-secure", &unique_id(), "hi"))
        .await
        .expect("processed");
    assert_eq!(outcome, replied(1));
}

fn unique_id() -> String {
    (uuid::Uuid::new_v4().as_u128() % 1_000_000_000_000).to_string()
}

#[tokio::test]
async fn the_store_works_with_the_password_in_the_url_and_refuses_a_wrong_one() {
    let redis = RedisServer::with_password(PASSWORD).await;
    let h = harness_with_redis(redis.url(PASSWORD), None).await;
    let services = Services::build(&h.settings, &h.metrics)
        .await
        .expect("connects with the password");
    assert!(services.store.ping().await);
    reply_once(&h, &services).await;

    let wrong = harness_with_redis(redis.url(WRONG), None).await;
    assert!(wrong.settings.redis.url.expose_secret().contains(WRONG));
    let Err(refused) = Services::build(&wrong.settings, &wrong.metrics).await else {
        panic!("a wrong password must be refused at start");
    };
    for printed in [
        format!("{refused:#}"),
        format!("{refused:?}"),
        format!("{:?}", wrong.settings),
    ] {
        assert!(!printed.contains(WRONG), "{printed}");
    }
}

#[tokio::test]
async fn the_store_works_over_tls_with_the_configured_ca_and_not_without_it() {
    let redis = RedisServer::with_tls(PASSWORD).await;
    let h = harness_with_redis(redis.url(PASSWORD), redis.ca_file.clone()).await;
    let services = Services::build(&h.settings, &h.metrics)
        .await
        .expect("connects over TLS");
    reply_once(&h, &services).await;

    // The platform's roots do not know the test's CA.
    let untrusted = harness_with_redis(redis.url(PASSWORD), None).await;
    assert!(Services::build(&untrusted.settings, &untrusted.metrics)
        .await
        .is_err());
}
