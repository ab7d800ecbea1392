//! Integration tests of the consumer against the real Kafka and Redis (`scripts/services.sh up`),
//! with the WeChat API as a wiremock server. They fail, never skip, when Kafka or Redis is
//! unreachable.

/// These tests run on the single Redis (`tests/redis_cluster` runs some of them on a cluster).
const ON_REDIS_CLUSTER: bool = false;

mod actions;
mod errors;
mod explain;
mod helpers;
mod pipeline;
mod redis_config;
mod redrive;
mod reload;
mod replay;
mod rules_file;
mod setup;
mod tokens;
mod windows;
