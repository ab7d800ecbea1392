//! Kafka's acknowledgements reach the task waiting for them without a polling thread: they are
//! served on the runtime of the first task that sent (`ingest/src/publisher/acks.rs`). These
//! tests take that runtime away and check that no acknowledgement is lost with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ingest::publisher::Publisher;

use crate::helpers::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn publisher() -> Arc<Publisher> {
    let settings = test_settings();
    runtime().block_on(create_topic(&settings.kafka.brokers, &settings.kafka.topic));
    Arc::new(Publisher::new(&settings.kafka).unwrap())
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(20)
}

/// The runtime that served the acknowledgements shuts down (an actix worker restarting); the
/// next record, sent from another runtime, is acknowledged there.
#[test]
fn a_send_after_the_serving_runtime_is_gone_is_acknowledged() {
    let publisher = publisher();
    let first = runtime();
    let one = first
        .block_on(publisher.publish(b"user", b"one", deadline()))
        .unwrap();
    drop(first);

    let two = runtime()
        .block_on(publisher.publish(b"user", b"two", deadline()))
        .unwrap();
    assert_eq!(two.partition, one.partition);
    assert_eq!(two.offset, one.offset + 1);
}

/// A record is sent, and the runtime it was sent from is gone before Kafka answers; nothing is
/// sent after it. Its acknowledgement still reaches the task waiting for it elsewhere.
#[test]
fn an_acknowledgement_with_no_send_after_it_still_arrives() {
    let publisher = publisher();
    let first = runtime();
    let pending = first.block_on(async { publisher.send(b"user", b"one").unwrap() });
    drop(first);

    let stored = runtime().block_on(pending.wait(deadline()));
    assert!(stored.is_ok(), "{stored:?}");
}
