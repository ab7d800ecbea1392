//! Prometheus metrics of the edge, built around WeChat's 5-second deadline.
//!
//! Registered into a registry the caller injects (never the global one), so tests can read them.
//! Every label value comes from a closed enum: no openid, app-supplied string or error text ever
//! becomes a label.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

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
    "duplicate",
    "unknown_app",
    "too_large",
    "body_read",
    "bad_signature",
    "stale_timestamp",
    "encryption_required",
    "malformed",
    "undecryptable",
    "backpressure",
    "publish_timeout",
    "publish_failed",
    "duplicate_in_flight",
    "deadline_exceeded",
];
const DUPLICATE_KINDS: &[&str] = &["done", "pending"];
const DEDUP_OPS: &[&str] = &["claim", "complete", "release"];
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
