//! Tracing set-up, once per process: `RUST_LOG` filters (default `info`), the format comes from
//! the configuration. Log lines carry app, partition, offset and dedup key, never a secret, a
//! token or message text.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}

/// For operator commands (`replay`, `dlq`), whose report is stdout: logs go to stderr, and the
/// processor's per-record dead-letter warnings (the report already has a line per record) are
/// left out unless `RUST_LOG` asks for them.
pub fn init_for_operator(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,consumer::processor=error"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.try_init(),
    };
}
