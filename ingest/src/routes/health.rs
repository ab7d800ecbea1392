//! `/healthz` (the process answers; no dependency is consulted, so a Redis or Kafka outage never
//! gets the pod restarted), `/readyz` (Redis and Kafka answer within a short timeout) and
//! `/metrics` (Prometheus text format).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use prometheus::{Encoder, TextEncoder};

use crate::startup::AppState;

const READY_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let (redis, kafka) = tokio::join!(
        tokio::time::timeout(READY_TIMEOUT, state.dedup.ping()),
        state.publisher.ready(READY_TIMEOUT),
    );
    let redis = match redis {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timeout".to_string(),
    };
    let kafka = match kafka {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let body = serde_json::json!({ "redis": redis, "kafka": kafka });
    // Redis being down does not make ingest unready: pushes are still stored (fail open). Kafka
    // being down does, since every push would be answered 503.
    if kafka == "ok" {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    state
        .metrics
        .producer_queue
        .set(i64::from(state.publisher.queued()));
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(buffer),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}
