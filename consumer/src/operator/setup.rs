//! `consumer setup`: creates the inbound, dead-letter and hand-off topics.
//!
//! Idempotent: a topic that exists is left as it is and reported with its partition count (Kafka
//! can only grow partitions, and growing the inbound topic moves users between partitions, which
//! breaks per-user order for records in flight — so this never alters an existing topic).

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::config::KafkaSettings;

/// What `setup` did with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicStatus {
    Created { partitions: i32 },
    Exists { partitions: usize },
}

/// Creates the three topics with the configured partition counts.
pub async fn create_topics(kafka: &KafkaSettings) -> anyhow::Result<Vec<(String, TopicStatus)>> {
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config.set("bootstrap.servers", &kafka.brokers);
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    let t = &kafka.topics;
    let wanted = [
        (kafka.inbound_topic.as_str(), t.inbound_partitions),
        (kafka.dead_letter_topic.as_str(), t.dead_letter_partitions),
        (kafka.handoff_topic.as_str(), t.handoff_partitions),
    ];
    let new_topics: Vec<NewTopic<'_>> = wanted
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(
                name,
                *partitions,
                TopicReplication::Fixed(t.replication_factor),
            )
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(15)));
    let results = admin.create_topics(&new_topics, &options).await?;
    let mut report = Vec::new();
    for (result, (name, partitions)) in results.into_iter().zip(wanted) {
        match result {
            Ok(_) => report.push((name.to_owned(), TopicStatus::Created { partitions })),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let partitions = partition_count(&config, name)?;
                report.push((name.to_owned(), TopicStatus::Exists { partitions }));
            }
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(report)
}

fn partition_count(config: &ClientConfig, topic: &str) -> anyhow::Result<usize> {
    let consumer: BaseConsumer = config.create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or_default())
}
