//! Integration tests of the consumer against the real Kafka and Redis (`scripts/services.sh up`),
//! with the WeChat API as a wiremock server. They fail, never skip, when Kafka or Redis is
//! unreachable.

mod actions;
mod errors;
mod explain;
mod helpers;
mod pipeline;
mod redis_proxy;
mod redrive;
mod reload;
mod replay;
mod rules_file;
mod send_path;
mod tokens;
mod windows;
