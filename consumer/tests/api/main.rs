//! Integration tests of the consumer against the real Kafka and Redis (`scripts/services.sh up`),
//! with the WeChat API as a wiremock server. They fail, never skip, when Kafka or Redis is
//! unreachable.

/// These tests run on the single Redis (`tests/redis_cluster` runs some of them on a cluster).
const ON_REDIS_CLUSTER: bool = false;

mod actions;
mod app_files;
mod ask;
mod credentials;
mod errors;
mod explain;
mod helpers;
mod pipeline;
mod quota;
mod redis_proxy;
// The same test Redis servers as ingest's tests (a password, TLS with a CA of the test's own).
mod redis_config;
#[path = "../../../ingest/tests/api/redis_server.rs"]
mod redis_server;
mod redrive;
mod reload;
mod replay;
mod rules_file;
mod send_path;
mod settings;
mod setup;
mod tokens;
mod windows;
