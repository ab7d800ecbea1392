//! Prometheus metrics of the edge, built around WeChat's 5-second deadline.
//!
//! Registered into a registry the caller injects (never the global one), so tests can read them.
//! Every label value comes from a closed enum: no openid, app-supplied string or error text ever
//! becomes a label.

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry,
};

use crate::spool::{SpoolStats, REFUSAL_REASONS};

/// Ack latency buckets, in seconds, dense near the budget and reaching WeChat's 5 s.
const ACK_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0,
];
const PUBLISH_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every value of `ingest_pushes_total{outcome}`: the two successes and
/// [`crate::error::IngestError::outcome`] of each failure.
pub const PUSH_OUTCOMES: &[&str] = &[
    "accepted",
    "spooled",
    "duplicate",
    "unknown_app",
    "too_large",
    "body_read",
    "bad_signature",
    "stale_timestamp",
    "encryption_required",
    "replayed",
    "wrong_recipient",
    "malformed",
    "undecryptable",
    "backpressure",
    "publish_timeout",
    "publish_failed",
    "spool_full",
    "spool_failed",
    "user_busy",
    "duplicate_in_flight",
    "deadline_exceeded",
];
const DUPLICATE_KINDS: &[&str] = &["done", "pending"];
const DEDUP_OPS: &[&str] = &["claim", "complete", "release", "signature"];
const ACK_RESULTS: &[&str] = &["ok", "client_error", "server_error"];

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Pushes answered, by outcome (see `IngestError::outcome` and `Outcome`).
    pub pushes: IntCounterVec,
    /// Retries of WeChat recognised as duplicates, by what the claim said (`done`, `pending`).
    pub duplicates: IntCounterVec,
    /// Dedup-store failures by operation; each one published a record without dedup (fail open).
    pub dedup_errors: IntCounterVec,
    /// Records published without dedup because Redis was unavailable.
    pub unchecked_records: IntCounter,
    /// Time from handing a record to the producer to Kafka's acknowledgement.
    pub publish_duration: Histogram,
    /// Time from receiving a push to answering it, by result class.
    pub ack_duration: HistogramVec,
    /// Pushes being handled right now.
    pub in_flight: IntGauge,
    /// Records in the producer's queue not yet acknowledged (sampled at scrape).
    pub producer_queue: IntGauge,
    /// Reloads of the app files, by result (`applied`, `refused`).
    pub app_reloads: IntCounterVec,
    /// Apps served right now.
    pub apps: IntGauge,
    /// Pushes and URL checks authenticated, by app, credential (`token`, `aes_key`) and the slot
    /// that matched (`primary`, `previous`, `older`): shows when a retiring one stops being used.
    pub credential_slots: IntCounterVec,
    pub spool: SpoolMetrics,
}

/// Every value of `ingest_app_reloads_total{result}`.
pub const RELOAD_RESULTS: &[&str] = &["applied", "refused"];

/// The `slot` label of a credential's position in its list (0 is the primary).
pub fn slot_label(slot: usize) -> &'static str {
    match slot {
        0 => "primary",
        1 => "previous",
        _ => "older",
    }
}

/// The spool's metrics: what went in, what drained out, what it holds.
#[derive(Debug, Clone)]
pub struct SpoolMetrics {
    /// Records made durable in the spool.
    pub appended: IntCounter,
    /// Records drained: acknowledged by Kafka and so deletable.
    pub drained: IntCounter,
    /// Appends refused, by reason (full, too_old, too_large, io, timeout, closed).
    pub refused: IntCounterVec,
    /// Drain attempts that failed (Kafka did not acknowledge); each is retried after a backoff.
    pub drain_failures: IntCounter,
    /// Bytes cut at recovery or skipped while draining: `torn_tail` (a write cut by a crash, never
    /// acknowledged) or `corrupt` (damaged synced data).
    pub discarded_bytes: IntCounterVec,
    /// Duration of the fsync of one group commit.
    pub fsync_duration: Histogram,
    /// Records per group commit.
    pub batch_records: Histogram,
    /// Sampled at scrape: records and bytes waiting to drain, age of the oldest.
    pub records: IntGauge,
    pub bytes: IntGauge,
    pub oldest_age: Gauge,
}

impl SpoolMetrics {
    fn new() -> Result<SpoolMetrics, prometheus::Error> {
        let metrics = SpoolMetrics {
            appended: IntCounter::new(
                "ingest_spool_appended_records_total",
                "Records made durable in the local spool because Kafka could not acknowledge them in time.",
            )?,
            drained: IntCounter::new(
                "ingest_spool_drained_records_total",
                "Spooled records acknowledged by Kafka.",
            )?,
            refused: IntCounterVec::new(
                Opts::new(
                    "ingest_spool_refused_total",
                    "Appends the spool refused (the push was answered 503), by reason.",
                ),
                &["reason"],
            )?,
            drain_failures: IntCounter::new(
                "ingest_spool_drain_failures_total",
                "Attempts to drain the spool into Kafka that failed.",
            )?,
            discarded_bytes: IntCounterVec::new(
                Opts::new(
                    "ingest_spool_discarded_bytes_total",
                    "Spool bytes that were not intact records: torn_tail (a write cut by a crash, \
                     never acknowledged) or corrupt (damaged synced data).",
                ),
                &["reason"],
            )?,
            fsync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "ingest_spool_fsync_duration_seconds",
                    "Duration of the fsync of one spool commit.",
                )
                .buckets(PUBLISH_BUCKETS.to_vec()),
            )?,
            batch_records: Histogram::with_opts(
                HistogramOpts::new(
                    "ingest_spool_commit_records",
                    "Records written and synced together by one spool commit.",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0]),
            )?,
            records: IntGauge::new(
                "ingest_spool_records",
                "Records in the spool waiting to be drained into Kafka.",
            )?,
            bytes: IntGauge::new("ingest_spool_bytes", "Bytes in the spool waiting to be drained.")?,
            oldest_age: Gauge::new(
                "ingest_spool_oldest_age_seconds",
                "Age of the oldest record waiting in the spool; 0 when it is empty.",
            )?,
        };
        for reason in REFUSAL_REASONS {
            metrics.refused.with_label_values(&[reason]);
        }
        for reason in ["torn_tail", "corrupt"] {
            metrics.discarded_bytes.with_label_values(&[reason]);
        }
        Ok(metrics)
    }

    fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.appended.clone()))?;
        registry.register(Box::new(self.drained.clone()))?;
        registry.register(Box::new(self.refused.clone()))?;
        registry.register(Box::new(self.drain_failures.clone()))?;
        registry.register(Box::new(self.discarded_bytes.clone()))?;
        registry.register(Box::new(self.fsync_duration.clone()))?;
        registry.register(Box::new(self.batch_records.clone()))?;
        registry.register(Box::new(self.records.clone()))?;
        registry.register(Box::new(self.bytes.clone()))?;
        registry.register(Box::new(self.oldest_age.clone()))?;
        Ok(())
    }

    /// Sets the gauges from what the spool holds now (at scrape).
    pub fn sample(&self, stats: SpoolStats) {
        self.records.set(stats.records as i64);
        self.bytes.set(stats.bytes as i64);
        self.oldest_age
            .set(stats.oldest_age.map_or(0.0, |age| age.as_secs_f64()));
    }
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let metrics = Metrics {
            pushes: IntCounterVec::new(
                Opts::new("ingest_pushes_total", "Pushes answered, by outcome."),
                &["outcome"],
            )?,
            duplicates: IntCounterVec::new(
                Opts::new(
                    "ingest_duplicates_total",
                    "Pushes recognised as WeChat retries of an already stored or in-flight push.",
                ),
                &["kind"],
            )?,
            dedup_errors: IntCounterVec::new(
                Opts::new(
                    "ingest_dedup_errors_total",
                    "Dedup-store (Redis) failures, by operation.",
                ),
                &["op"],
            )?,
            unchecked_records: IntCounter::new(
                "ingest_unchecked_records_total",
                "Records published without dedup because Redis was unavailable.",
            )?,
            publish_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "ingest_publish_duration_seconds",
                    "Time from handing a record to the producer to Kafka's acknowledgement.",
                )
                .buckets(PUBLISH_BUCKETS.to_vec()),
            )?,
            ack_duration: HistogramVec::new(
                HistogramOpts::new(
                    "ingest_ack_duration_seconds",
                    "Time from receiving a push to answering it, by result (ok, client_error, \
                     server_error).",
                )
                .buckets(ACK_BUCKETS.to_vec()),
                &["result"],
            )?,
            in_flight: IntGauge::new("ingest_in_flight_pushes", "Pushes being handled now.")?,
            producer_queue: IntGauge::new(
                "ingest_producer_queue_records",
                "Records in the Kafka producer's queue awaiting acknowledgement.",
            )?,
            app_reloads: IntCounterVec::new(
                Opts::new(
                    "ingest_app_reloads_total",
                    "Changes of the app files (or the secret files they name), by result: applied, \
                     or refused (the running apps stay).",
                ),
                &["result"],
            )?,
            apps: IntGauge::new("ingest_apps", "Apps served right now.")?,
            credential_slots: IntCounterVec::new(
                Opts::new(
                    "ingest_credential_matches_total",
                    "Authenticated pushes and URL checks, by app, credential (token, aes_key) and \
                     the slot that matched (primary, previous, older).",
                ),
                &["app", "credential", "slot"],
            )?,
            spool: SpoolMetrics::new()?,
        };
        // Every series exists from the start at zero: dashboards show it, and `increase()` in an
        // alert sees the first event (a series born at 1 has no increase).
        for outcome in PUSH_OUTCOMES {
            metrics.pushes.with_label_values(&[outcome]);
        }
        for kind in DUPLICATE_KINDS {
            metrics.duplicates.with_label_values(&[kind]);
        }
        for op in DEDUP_OPS {
            metrics.dedup_errors.with_label_values(&[op]);
        }
        for result in ACK_RESULTS {
            metrics.ack_duration.with_label_values(&[result]);
        }
        registry.register(Box::new(metrics.pushes.clone()))?;
        registry.register(Box::new(metrics.duplicates.clone()))?;
        registry.register(Box::new(metrics.dedup_errors.clone()))?;
        registry.register(Box::new(metrics.unchecked_records.clone()))?;
        registry.register(Box::new(metrics.publish_duration.clone()))?;
        registry.register(Box::new(metrics.ack_duration.clone()))?;
        registry.register(Box::new(metrics.in_flight.clone()))?;
        registry.register(Box::new(metrics.producer_queue.clone()))?;
        for result in RELOAD_RESULTS {
            metrics.app_reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(metrics.app_reloads.clone()))?;
        registry.register(Box::new(metrics.apps.clone()))?;
        registry.register(Box::new(metrics.credential_slots.clone()))?;
        // Registered whether or not the spool is on, so dashboards and alerts see zeros.
        metrics.spool.register(registry)?;
        Ok(metrics)
    }
}

/// Registers the process collector (CPU seconds, resident memory, open fds) where supported.
pub fn register_process_metrics(registry: &Registry) {
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        // Registering twice (several apps in one test process) is harmless to skip.
        let _ = registry.register(Box::new(collector));
    }
}
