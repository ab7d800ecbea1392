//! `consumer setup`: creates the inbound, dead-letter and hand-off topics, and each configured
//! app's hold topic (`crate::quota`), with the configured
//! partitions, replication factor, `min.insync.replicas`, retention and unclean leader election
//! off — and says exactly what differs when a topic already exists with other settings.
//!
//! The replication factor and `min.insync.replicas` default from the cluster's broker count (read
//! from its metadata): three or more brokers give RF 3 and min ISR 2, so one broker can be lost
//! without stopping writes or losing an acknowledged record; fewer give 1 and 1. A replication
//! factor larger than the broker count is refused, since Kafka could not place the replicas.
//!
//! Idempotent: an existing topic that matches is left alone. One that differs is *not* altered —
//! growing the inbound topic's partitions moves some users to another partition (per-user order),
//! a replica reassignment moves data, and shortening a retention deletes records — so setup
//! prints each difference with the command that fixes it and exits 1 (`--warn-only`: exit 0,
//! for scripts that only want the topics to exist).

use std::fmt::Write as _;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientConfig;

use crate::config::{KafkaSettings, Settings};

/// `consumer setup`'s options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SetupArgs {
    /// Exit 0 even when an existing topic differs from the configuration (the differences are
    /// still printed): for scripts that only need the topics to exist.
    #[arg(long)]
    pub warn_only: bool,
}

/// Bound on each admin request and on reading the cluster's metadata.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

/// What one topic should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPlan {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub min_insync_replicas: i32,
    pub retention_ms: i64,
    /// Whether an existing topic's partition count must match. Not for a hold topic: it keeps
    /// the count it was created with, since its records are keyed by user (any count keeps each
    /// user's order) and adding partitions while it holds records would break that order.
    pub partitions_fixed_at_creation: bool,
}

/// One setting of an existing topic that is not what the configuration says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// `partitions`, `replication factor`, or the topic config's name.
    pub setting: String,
    pub actual: String,
    pub wanted: String,
    /// What an operator runs or changes to make them agree.
    pub fix: String,
}

/// What `setup` found or did with one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicStatus {
    Created,
    /// Existed already, as configured.
    Matches,
    /// Existed already, with other settings; nothing was changed.
    Differs(Vec<Difference>),
}

/// The outcome of a `setup` run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetupReport {
    pub brokers: usize,
    pub topics: Vec<(TopicPlan, TopicStatus)>,
}

impl SetupReport {
    /// Whether an existing topic differs from the configuration.
    pub fn differs(&self) -> bool {
        self.topics
            .iter()
            .any(|(_, s)| matches!(s, TopicStatus::Differs(_)))
    }

    /// The report for a person: one line per topic, each difference with its fix.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "cluster: {} broker(s)", self.brokers);
        for (plan, status) in &self.topics {
            let wanted = format!(
                "{} partitions, replication factor {}, min.insync.replicas {}, retention {}",
                plan.partitions,
                plan.replication_factor,
                plan.min_insync_replicas,
                humantime::format_duration(Duration::from_millis(plan.retention_ms as u64))
            );
            match status {
                TopicStatus::Created => {
                    let _ = writeln!(out, "{}: created ({wanted})", plan.name);
                }
                TopicStatus::Matches => {
                    let _ = writeln!(out, "{}: exists as configured ({wanted})", plan.name);
                }
                TopicStatus::Differs(differences) => {
                    let _ = writeln!(
                        out,
                        "{}: exists and DIFFERS from the configuration ({} setting(s)):",
                        plan.name,
                        differences.len()
                    );
                    for d in differences {
                        let _ = writeln!(
                            out,
                            "  {}: is {}, configured {}\n    fix: {}",
                            d.setting, d.actual, d.wanted, d.fix
                        );
                    }
                }
            }
        }
        out
    }
}

/// Creates the three topics and every configured app's hold topic (`crate::quota`; the apps of
/// the configuration and of the app files), or compares the existing ones with the
/// configuration: what `consumer setup` does.
pub async fn create_all_topics(settings: &Settings) -> anyhow::Result<SetupReport> {
    let names = crate::apps::names(settings);
    let apps: Vec<&str> = names.iter().map(String::as_str).collect();
    create(&settings.kafka, &apps).await
}

/// Creates the three topics, or compares the existing ones with the configuration.
pub async fn create_topics(kafka: &KafkaSettings) -> anyhow::Result<SetupReport> {
    create(kafka, &[]).await
}

/// Creates the hold topics of `apps` that do not exist yet: what the consumer does at start and
/// when the app files add an app, since a deployment runs `consumer setup` without the apps'
/// configuration.
pub async fn create_hold_topics(
    kafka: &KafkaSettings,
    apps: &[&str],
) -> anyhow::Result<SetupReport> {
    create_only(kafka, apps, false).await
}

async fn create(kafka: &KafkaSettings, hold_apps: &[&str]) -> anyhow::Result<SetupReport> {
    create_only(kafka, hold_apps, true).await
}

async fn create_only(
    kafka: &KafkaSettings,
    hold_apps: &[&str],
    main_topics: bool,
) -> anyhow::Result<SetupReport> {
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.properties {
        config.set(key, value);
    }
    config.set("bootstrap.servers", &kafka.brokers);
    let admin: AdminClient<DefaultClientContext> = config.create()?;
    // Blocking, bounded: an operator command, nothing else runs meanwhile.
    // The admin client's own metadata: a consumer built from `kafka.properties` could refuse
    // consumer-only settings that do not fit a reader.
    let metadata = admin
        .inner()
        .fetch_metadata(None, ADMIN_TIMEOUT)
        .map_err(|e| anyhow::anyhow!("reading the cluster metadata from {}: {e}", kafka.brokers))?;
    let brokers = metadata.brokers().len();
    let mut plans = if main_topics {
        plan(kafka, brokers)?
    } else {
        Vec::new()
    };
    plans.extend(hold_plans(kafka, brokers, hold_apps)?);
    if plans.is_empty() {
        return Ok(SetupReport {
            brokers,
            topics: Vec::new(),
        });
    }

    let options = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let min_isr: Vec<String> = plans
        .iter()
        .map(|p| p.min_insync_replicas.to_string())
        .collect();
    let retention: Vec<String> = plans.iter().map(|p| p.retention_ms.to_string()).collect();
    let new_topics: Vec<NewTopic<'_>> = plans
        .iter()
        .zip(min_isr.iter().zip(&retention))
        .map(|(p, (min_isr, retention))| {
            NewTopic::new(
                &p.name,
                p.partitions,
                TopicReplication::Fixed(p.replication_factor),
            )
            .set("min.insync.replicas", min_isr)
            .set("retention.ms", retention)
            // A replica that fell behind must never become leader: it would drop records
            // already acknowledged to ingest.
            .set("unclean.leader.election.enable", "false")
        })
        .collect();
    let results = admin.create_topics(&new_topics, &options).await?;
    let mut topics = Vec::new();
    for (result, plan) in results.into_iter().zip(plans) {
        let status = match result {
            Ok(_) => TopicStatus::Created,
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {
                let differences = compare(&admin, &plan, &kafka.brokers).await?;
                if differences.is_empty() {
                    TopicStatus::Matches
                } else {
                    TopicStatus::Differs(differences)
                }
            }
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        };
        topics.push((plan, status));
    }
    Ok(SetupReport { brokers, topics })
}

/// The three topics as configured, with the replication defaults of a cluster of `brokers`.
pub fn plan(kafka: &KafkaSettings, brokers: usize) -> anyhow::Result<Vec<TopicPlan>> {
    let t = &kafka.topics;
    let replication_factor = match t.replication_factor {
        0 if brokers >= 3 => 3,
        0 => 1,
        configured => configured,
    };
    let min_insync_replicas = match t.min_insync_replicas {
        0 => crate::config::derived_min_insync_replicas(replication_factor),
        configured => configured,
    };
    if replication_factor as usize > brokers {
        anyhow::bail!(
            "kafka.topics.replication_factor ({replication_factor}) is larger than the cluster's \
             {brokers} broker(s) at {}: Kafka cannot place that many replicas. Lower it, or \
             set it to 0 to derive it from the broker count",
            kafka.brokers
        );
    }
    crate::config::check_replication(replication_factor, min_insync_replicas)
        .map_err(|e| anyhow::anyhow!(e))?;
    let ms = |d: Duration| d.as_millis() as i64;
    Ok([
        (
            &kafka.inbound_topic,
            t.inbound_partitions,
            ms(t.inbound_retention),
        ),
        (
            &kafka.dead_letter_topic,
            t.dead_letter_partitions,
            ms(t.dead_letter_retention),
        ),
        (
            &kafka.handoff_topic,
            t.handoff_partitions,
            ms(t.handoff_retention),
        ),
    ]
    .into_iter()
    .map(|(name, partitions, retention_ms)| TopicPlan {
        name: name.clone(),
        partitions,
        replication_factor,
        min_insync_replicas,
        retention_ms,
        partitions_fixed_at_creation: false,
    })
    .collect())
}

/// The hold topics of `apps`: keyed like the inbound topic, and created with its partition count (one
/// user's records in one partition, in order), and its replication settings.
pub fn hold_plans(
    kafka: &KafkaSettings,
    brokers: usize,
    apps: &[&str],
) -> anyhow::Result<Vec<TopicPlan>> {
    let Some(inbound) = plan(kafka, brokers)?.into_iter().next() else {
        return Ok(Vec::new());
    };
    Ok(apps
        .iter()
        .map(|app| TopicPlan {
            name: crate::quota::hold_topic(&kafka.hold_topic_prefix, app),
            retention_ms: kafka.topics.hold_retention.as_millis() as i64,
            partitions_fixed_at_creation: true,
            ..inbound.clone()
        })
        .collect())
}

/// The differences between an existing topic and its plan, each with its fix.
async fn compare(
    admin: &AdminClient<DefaultClientContext>,
    plan: &TopicPlan,
    bootstrap: &str,
) -> anyhow::Result<Vec<Difference>> {
    let metadata = admin
        .inner()
        .fetch_metadata(Some(&plan.name), ADMIN_TIMEOUT)?;
    let topic = metadata
        .topics()
        .first()
        .ok_or_else(|| anyhow::anyhow!("topic {} vanished while comparing it", plan.name))?;
    let partitions = topic.partitions().len() as i32;
    let replicas: Vec<i32> = topic
        .partitions()
        .iter()
        .map(|p| p.replicas().len() as i32)
        .collect();
    let mut differences = Vec::new();
    let name = &plan.name;
    if partitions != plan.partitions && !plan.partitions_fixed_at_creation {
        let fix = if partitions < plan.partitions {
            format!(
                "kafka-topics.sh --bootstrap-server {bootstrap} --alter --topic {name} \
                 --partitions {} — except on the inbound topic under traffic: there more \
                 partitions move some users to another partition, where newer records can be \
                 processed before older ones; move to a new topic instead (consumer/OPERATIONS.md, \
                 \"Raising the inbound topic's partition count\"). Or set the partition count to \
                 {partitions}",
                plan.partitions
            )
        } else {
            format!(
                "Kafka cannot remove partitions: set the partition count to {partitions} in \
                 kafka.topics, or recreate the topic"
            )
        };
        differences.push(Difference {
            setting: "partitions".into(),
            actual: partitions.to_string(),
            wanted: plan.partitions.to_string(),
            fix,
        });
    }
    if replicas.iter().any(|r| *r != plan.replication_factor) {
        let low = replicas.iter().min().copied().unwrap_or_default();
        let high = replicas.iter().max().copied().unwrap_or_default();
        differences.push(Difference {
            setting: "replication factor".into(),
            actual: if low == high {
                low.to_string()
            } else {
                format!("{low} to {high}")
            },
            wanted: plan.replication_factor.to_string(),
            fix: format!(
                "kafka-reassign-partitions.sh --bootstrap-server {bootstrap} --execute \
                 --reassignment-json-file <a plan giving every partition of {name} {} replicas>, \
                 or set kafka.topics.replication_factor = {low}",
                plan.replication_factor
            ),
        });
    }
    let described = admin
        .describe_configs(
            &[ResourceSpecifier::Topic(name)],
            &AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT)),
        )
        .await?;
    let resource = described
        .into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("no configuration returned for topic {name}"))?
        .map_err(|code| anyhow::anyhow!("describing topic {name}: {code}"))?;
    let value = |key: &str| {
        resource
            .get(key)
            .and_then(|e| e.value.clone())
            .unwrap_or_else(|| "unset".into())
    };
    for (key, wanted) in [
        ("min.insync.replicas", plan.min_insync_replicas.to_string()),
        ("retention.ms", plan.retention_ms.to_string()),
        ("unclean.leader.election.enable", "false".to_owned()),
    ] {
        let actual = value(key);
        if actual != wanted {
            differences.push(Difference {
                setting: key.into(),
                fix: format!(
                    "kafka-configs.sh --bootstrap-server {bootstrap} --alter --entity-type topics \
                     --entity-name {name} --add-config {key}={wanted}"
                ),
                actual,
                wanted,
            });
        }
    }
    Ok(differences)
}
