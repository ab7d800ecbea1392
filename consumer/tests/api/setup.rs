//! `consumer setup` on the real broker: topics created with explicit replication, min ISR,
//! retention and unclean leader election off; a re-run that changes nothing; a topic created
//! before with other settings reported setting by setting with its fix; and what a cluster of one
//! broker cannot hold refused.

use std::time::Duration;

use consumer::operator::setup::{create_topics, TopicStatus};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::ClientConfig;

use crate::helpers::*;

fn admin() -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", kafka_brokers())
        .create()
        .expect("admin client")
}

/// The topic's configuration values for `keys`.
async fn topic_config(topic: &str, keys: &[&str]) -> Vec<String> {
    let described = admin()
        .describe_configs(
            &[ResourceSpecifier::Topic(topic)],
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("describe configs");
    let resource = described
        .into_iter()
        .next()
        .expect("one resource")
        .expect("described");
    keys.iter()
        .map(|k| {
            resource
                .get(k)
                .and_then(|e| e.value.clone())
                .unwrap_or_default()
        })
        .collect()
}

#[tokio::test]
async fn setup_creates_the_topics_explicitly_and_a_rerun_changes_nothing() {
    let h = Harness::new("").await;
    require_kafka();
    let k = &h.settings.kafka;
    let first = create_topics(k).await.expect("created");
    assert_eq!(
        first.brokers, 1,
        "the local broker (scripts/services.sh up)"
    );
    assert_eq!(first.topics.len(), 3);
    for (plan, status) in &first.topics {
        assert_eq!(status, &TopicStatus::Created, "{}", plan.name);
        // One broker: the derived defaults are one replica, min ISR 1.
        assert_eq!((plan.replication_factor, plan.min_insync_replicas), (1, 1));
    }
    let dead_letters = topic_config(
        &k.dead_letter_topic,
        &[
            "retention.ms",
            "min.insync.replicas",
            "unclean.leader.election.enable",
        ],
    )
    .await;
    let fourteen_days = (14 * 24 * 3600 * 1000_i64).to_string();
    assert_eq!(dead_letters, [fourteen_days.as_str(), "1", "false"]);
    let inbound = topic_config(&k.inbound_topic, &["retention.ms"]).await;
    assert_eq!(inbound, [(7 * 24 * 3600 * 1000_i64).to_string()]);

    let again = create_topics(k).await.expect("idempotent");
    assert!(!again.differs(), "{}", again.render());
    assert!(again
        .topics
        .iter()
        .all(|(_, status)| *status == TopicStatus::Matches));
    assert!(again.render().contains("exists as configured"));
}

#[tokio::test]
async fn a_topic_that_differs_is_reported_setting_by_setting_with_its_fix() {
    let h = Harness::new("").await;
    require_kafka();
    let k = &h.settings.kafka;
    // The inbound topic exists already, made by hand with other settings.
    let results = admin()
        .create_topics(
            &[
                NewTopic::new(&k.inbound_topic, 2, TopicReplication::Fixed(1))
                    .set("retention.ms", "3600000")
                    .set("min.insync.replicas", "2"),
            ],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create by hand");
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let report = create_topics(k).await.expect("setup runs");
    assert!(report.differs());
    let (plan, status) = &report.topics[0];
    assert_eq!(plan.name, k.inbound_topic);
    let TopicStatus::Differs(differences) = status else {
        panic!("the inbound topic differs: {status:?}")
    };
    let settings: Vec<(&str, &str, &str)> = differences
        .iter()
        .map(|d| (d.setting.as_str(), d.actual.as_str(), d.wanted.as_str()))
        .collect();
    assert_eq!(
        settings,
        [
            ("partitions", "2", "3"),
            ("min.insync.replicas", "2", "1"),
            ("retention.ms", "3600000", "604800000"),
        ]
    );
    assert!(differences[0].fix.contains("--partitions 3"));
    assert!(differences[1].fix.contains(&format!(
        "--entity-name {} --add-config min.insync.replicas=1",
        k.inbound_topic
    )));
    let rendered = report.render();
    assert!(rendered.contains("DIFFERS"), "{rendered}");
    assert!(
        rendered.contains("retention.ms: is 3600000, configured 604800000"),
        "{rendered}"
    );
    // The other two were created as configured; nothing was altered on the inbound topic.
    assert_eq!(report.topics[1].1, TopicStatus::Created);
    assert_eq!(
        topic_config(&k.inbound_topic, &["retention.ms"]).await,
        ["3600000"]
    );
}

#[tokio::test]
async fn more_replicas_than_brokers_are_refused_before_anything_is_created() {
    let mut h = Harness::new("").await;
    require_kafka();
    h.settings.kafka.topics.replication_factor = 3;
    h.settings.kafka.topics.min_insync_replicas = 2;
    h.settings.validate().expect("valid on its own");
    let refused = create_topics(&h.settings.kafka)
        .await
        .expect_err("one broker cannot hold three replicas")
        .to_string();
    assert!(
        refused.contains("replication_factor (3) is larger than the cluster's 1 broker(s)"),
        "{refused}"
    );
    let report_after = {
        h.settings.kafka.topics.replication_factor = 0;
        h.settings.kafka.topics.min_insync_replicas = 0;
        create_topics(&h.settings.kafka).await.expect("setup runs")
    };
    assert!(
        report_after
            .topics
            .iter()
            .all(|(_, s)| *s == TopicStatus::Created),
        "nothing was created by the refused run"
    );
}

#[tokio::test]
async fn replication_settings_that_cannot_survive_a_broker_loss_are_refused_at_start() {
    let h = Harness::new("").await;
    type Breakage = fn(&mut consumer::config::Settings);
    let cases: &[(&str, Breakage)] = &[
        ("must be below replication_factor (3)", |s| {
            s.kafka.topics.replication_factor = 3;
            s.kafka.topics.min_insync_replicas = 3;
        }),
        ("must be below replication_factor (2)", |s| {
            s.kafka.topics.replication_factor = 2;
            s.kafka.topics.min_insync_replicas = 2;
        }),
        ("must be 1 with one replica", |s| {
            s.kafka.topics.replication_factor = 1;
            s.kafka.topics.min_insync_replicas = 2;
        }),
        ("at least 14 days", |s| {
            s.kafka.topics.dead_letter_retention = Duration::from_secs(3 * 24 * 3600)
        }),
    ];
    for (reason, break_it) in cases {
        let mut settings = h.settings.clone();
        break_it(&mut settings);
        let refused = settings.validate().expect_err("refused").to_string();
        assert!(
            refused.contains(reason),
            "expected '{reason}' in: {refused}"
        );
    }
    let mut fine = h.settings.clone();
    fine.kafka.topics.replication_factor = 3;
    fine.validate().expect("RF 3 derives min ISR 2");
}

#[tokio::test]
async fn setup_takes_a_bootstrap_list_with_a_dead_broker_in_it() {
    let mut h = Harness::new("").await;
    require_kafka();
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    h.settings.kafka.brokers = format!("127.0.0.1:{dead},{}", kafka_brokers());
    let report = create_topics(&h.settings.kafka).await.expect("setup runs");
    assert_eq!(report.brokers, 1, "the live broker's metadata");
    assert!(report
        .topics
        .iter()
        .all(|(_, s)| *s == TopicStatus::Created));
}
