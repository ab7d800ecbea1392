//! Prometheus metrics of the consumer.
//!
//! Registered into a registry the caller injects (never the global one), so tests read them.
//! Every label value is bounded: outcomes, reasons, message types and result classes come from
//! closed enums in this crate; rule names come from the rules file (configuration, not traffic);
//! partitions are bounded by the topic. No openid, errmsg or URL ever becomes a label.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::dead_letter::Reason;

/// API latency buckets in seconds, from a fast local fake up to the configured timeout range.
const API_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Ask-backend latency buckets in seconds: chat models answer in seconds, not milliseconds.
const ASK_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0];

#[derive(Debug, Clone)]
pub struct Metrics {
    /// Records finished, by outcome: `replied`, `skipped`, `dead_lettered`.
    pub records: IntCounterVec,
    /// Rules that matched a record, by rule name.
    pub rule_matches: IntCounterVec,
    /// API calls carrying a message or typing state, by msgtype and result class.
    pub sends: IntCounterVec,
    /// Duration of each WeChat API call, by endpoint.
    pub api_duration: HistogramVec,
    /// Token fetches, by result (`ok`, `error`, `fenced`).
    pub token_refreshes: IntCounterVec,
    /// Dead letters written, by reason.
    pub dead_letters: IntCounterVec,
    /// Transient processing failures that put a record back for another attempt, by kind.
    pub process_retries: IntCounterVec,
    /// Users (record keys) with records in progress.
    pub in_flight_keys: IntGauge,
    /// Records between the committed position and the end of each assigned partition.
    pub lag: IntGaugeVec,
    /// Rules files refused by the hot reload (the running rules stayed).
    pub rules_reloads: IntCounterVec,
    /// Reloads of the app files, by result (`applied`, `refused`).
    pub app_reloads: IntCounterVec,
    /// Apps served right now.
    pub apps: IntGauge,
    /// Group rebalance events of this process, by event (`assign`, `revoke`).
    pub rebalances: IntCounterVec,
    /// 1 while the inbound partitions are paused because the records in hand fill every bound.
    pub backpressure: IntGauge,
    /// 1 while the app is paused because its daily API quota is spent (45009), as Redis says;
    /// the same in every process.
    pub quota_paused: IntGaugeVec,
    /// When the app's pause ends (Unix seconds), 0 when it is not paused.
    pub quota_paused_until: IntGaugeVec,
    /// Records of the app in its hold topic and not released yet, as Redis says.
    pub quota_backlog: IntGaugeVec,
    /// Pauses this process started (45009 answers), by app.
    pub quota_pauses: IntCounterVec,
    /// Records this process parked in the app's hold topic.
    pub quota_held: IntCounterVec,
    /// Held records this process finished (replied, skipped or dead-lettered) after the pause.
    pub quota_released: IntCounterVec,
    /// `ask` actions, by outcome (`crate::ask::OUTCOMES`).
    pub asks: IntCounterVec,
    /// Calls to ask backends, by result (`crate::ask::CALL_RESULTS`).
    pub ask_calls: IntCounterVec,
    /// Fallbacks taken by `ask` actions, by reason (`crate::ask::FALLBACK_REASONS`).
    pub ask_fallbacks: IntCounterVec,
    /// Duration of each call to an ask backend, the wait for the limits included.
    pub ask_duration: Histogram,
}

impl Metrics {
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let metrics = Metrics {
            records: IntCounterVec::new(
                Opts::new("consumer_records_total", "Records finished, by outcome."),
                &["outcome"],
            )?,
            rule_matches: IntCounterVec::new(
                Opts::new("consumer_rule_matches_total", "Rule matches, by rule name."),
                &["rule"],
            )?,
            sends: IntCounterVec::new(
                Opts::new(
                    "consumer_sends_total",
                    "Customer-service API calls, by message type and result class.",
                ),
                &["msgtype", "result"],
            )?,
            api_duration: HistogramVec::new(
                HistogramOpts::new(
                    "consumer_api_duration_seconds",
                    "Duration of WeChat API calls, by endpoint.",
                )
                .buckets(API_BUCKETS.to_vec()),
                &["endpoint"],
            )?,
            token_refreshes: IntCounterVec::new(
                Opts::new(
                    "consumer_token_refreshes_total",
                    "Access-token fetches, by result.",
                ),
                &["result"],
            )?,
            dead_letters: IntCounterVec::new(
                Opts::new(
                    "consumer_dead_letters_total",
                    "Dead letters written, by reason.",
                ),
                &["reason"],
            )?,
            process_retries: IntCounterVec::new(
                Opts::new(
                    "consumer_process_retries_total",
                    "Records put back for another attempt after a transient failure, by kind.",
                ),
                &["kind"],
            )?,
            in_flight_keys: IntGauge::new(
                "consumer_in_flight_keys",
                "Users (record keys) with records in progress.",
            )?,
            lag: IntGaugeVec::new(
                Opts::new(
                    "consumer_lag_records",
                    "Records behind the end of each assigned inbound partition.",
                ),
                &["partition"],
            )?,
            app_reloads: IntCounterVec::new(
                Opts::new(
                    "consumer_app_reloads_total",
                    "Changes of the app files (or the secret files they name), by result: \
                     applied, or refused (the running apps stay).",
                ),
                &["result"],
            )?,
            apps: IntGauge::new("consumer_apps", "Apps served right now.")?,
            rules_reloads: IntCounterVec::new(
                Opts::new(
                    "consumer_rules_reloads_total",
                    "Rules file reloads, by result (`ok`, `refused`).",
                ),
                &["result"],
            )?,
            rebalances: IntCounterVec::new(
                Opts::new(
                    "consumer_rebalances_total",
                    "Consumer-group rebalance events of this process, by event.",
                ),
                &["event"],
            )?,
            backpressure: IntGauge::new(
                "consumer_backpressure",
                "1 while fetching is paused because the records in hand fill every bound.",
            )?,
            quota_paused: IntGaugeVec::new(
                Opts::new(
                    "consumer_quota_paused",
                    "1 while the app is paused: its daily WeChat API quota is spent (45009).",
                ),
                &["app"],
            )?,
            quota_paused_until: IntGaugeVec::new(
                Opts::new(
                    "consumer_quota_paused_until_seconds",
                    "When the app's quota pause ends (Unix seconds); 0 when not paused.",
                ),
                &["app"],
            )?,
            quota_backlog: IntGaugeVec::new(
                Opts::new(
                    "consumer_quota_backlog_records",
                    "Records of the app in its hold topic, not released yet.",
                ),
                &["app"],
            )?,
            quota_pauses: IntCounterVec::new(
                Opts::new(
                    "consumer_quota_pauses_total",
                    "45009 answers that paused the app (or extended its pause), by app.",
                ),
                &["app"],
            )?,
            quota_held: IntCounterVec::new(
                Opts::new(
                    "consumer_quota_held_records_total",
                    "Records parked in the app's hold topic, by app.",
                ),
                &["app"],
            )?,
            quota_released: IntCounterVec::new(
                Opts::new(
                    "consumer_quota_released_records_total",
                    "Held records finished after the app's pause, by app.",
                ),
                &["app"],
            )?,
            asks: IntCounterVec::new(
                Opts::new("consumer_ask_total", "Ask actions, by outcome."),
                &["outcome"],
            )?,
            ask_calls: IntCounterVec::new(
                Opts::new(
                    "consumer_ask_calls_total",
                    "Calls to ask backends, by result.",
                ),
                &["result"],
            )?,
            ask_fallbacks: IntCounterVec::new(
                Opts::new(
                    "consumer_ask_fallbacks_total",
                    "Ask actions that took their fallback, by reason.",
                ),
                &["reason"],
            )?,
            ask_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "consumer_ask_duration_seconds",
                    "Duration of calls to ask backends, waits for the limits included.",
                )
                .buckets(ASK_BUCKETS.to_vec()),
            )?,
        };
        metrics.zero_known_series();
        registry.register(Box::new(metrics.records.clone()))?;
        registry.register(Box::new(metrics.rule_matches.clone()))?;
        registry.register(Box::new(metrics.sends.clone()))?;
        registry.register(Box::new(metrics.api_duration.clone()))?;
        registry.register(Box::new(metrics.token_refreshes.clone()))?;
        registry.register(Box::new(metrics.dead_letters.clone()))?;
        registry.register(Box::new(metrics.process_retries.clone()))?;
        registry.register(Box::new(metrics.in_flight_keys.clone()))?;
        registry.register(Box::new(metrics.lag.clone()))?;
        registry.register(Box::new(metrics.rules_reloads.clone()))?;
        for result in ["applied", "refused"] {
            metrics.app_reloads.with_label_values(&[result]);
        }
        registry.register(Box::new(metrics.app_reloads.clone()))?;
        registry.register(Box::new(metrics.apps.clone()))?;
        registry.register(Box::new(metrics.rebalances.clone()))?;
        registry.register(Box::new(metrics.backpressure.clone()))?;
        registry.register(Box::new(metrics.quota_paused.clone()))?;
        registry.register(Box::new(metrics.quota_paused_until.clone()))?;
        registry.register(Box::new(metrics.quota_backlog.clone()))?;
        registry.register(Box::new(metrics.quota_pauses.clone()))?;
        registry.register(Box::new(metrics.quota_held.clone()))?;
        registry.register(Box::new(metrics.quota_released.clone()))?;
        registry.register(Box::new(metrics.asks.clone()))?;
        registry.register(Box::new(metrics.ask_calls.clone()))?;
        registry.register(Box::new(metrics.ask_fallbacks.clone()))?;
        registry.register(Box::new(metrics.ask_duration.clone()))?;
        Ok(metrics)
    }

    /// Creates every series whose label values are known in advance at zero, so dashboards and
    /// alerts see `0` rather than no data before the first event.
    fn zero_known_series(&self) {
        for outcome in ["replied", "skipped", "dead_lettered", "parked"] {
            self.records.with_label_values(&[outcome]);
        }
        for reason in Reason::KINDS {
            self.dead_letters.with_label_values(&[reason]);
        }
        for msgtype in ["text", "image", "link", "miniprogrampage", "typing"] {
            for result in [
                "ok",
                "duplicate",
                "refused",
                "retryable",
                "token",
                "ambiguous",
                "final",
                "superseded",
            ] {
                self.sends.with_label_values(&[msgtype, result]);
            }
        }
        for result in ["ok", "error", "fenced"] {
            self.token_refreshes.with_label_values(&[result]);
        }
        for result in ["ok", "refused"] {
            self.rules_reloads.with_label_values(&[result]);
        }
        for kind in ["redis", "token", "sink"] {
            self.process_retries.with_label_values(&[kind]);
        }
        for event in ["assign", "revoke"] {
            self.rebalances.with_label_values(&[event]);
        }
        for outcome in crate::ask::OUTCOMES {
            self.asks.with_label_values(&[outcome]);
        }
        for result in crate::ask::CALL_RESULTS {
            self.ask_calls.with_label_values(&[result]);
        }
        for reason in crate::ask::FALLBACK_REASONS {
            self.ask_fallbacks.with_label_values(&[reason]);
        }
    }

    /// Metrics on a private registry, for tests and one-shot commands.
    pub fn unregistered() -> Metrics {
        Metrics::new(&Registry::new()).expect("fresh registry accepts every metric")
    }
}

/// Adds the process collector (CPU seconds, RSS, open fds) to `registry`, where supported.
pub fn register_process_metrics(registry: &Registry) {
    #[cfg(target_os = "linux")]
    {
        let collector = prometheus::process_collector::ProcessCollector::for_self();
        let _ = registry.register(Box::new(collector));
    }
}
