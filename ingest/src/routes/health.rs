//! `/healthz` (the process answers; no dependency is consulted, so a Redis or Kafka outage never
//! gets the pod restarted), `/readyz` (whether pushes can be made durable now: Kafka answers, or
//! the spool has room) and `/metrics` (Prometheus text format).

use std::time::Duration;

use actix_web::{web, HttpResponse};
use prometheus::{Encoder, TextEncoder};

use crate::state::AppState;

const READY_TIMEOUT: Duration = Duration::from_secs(1);

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok")
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let log = state.intake.log();
    let (redis, kafka) = tokio::join!(
        tokio::time::timeout(READY_TIMEOUT, state.intake.dedup().ping()),
        log.publisher().ready(READY_TIMEOUT),
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
    let spool = log.spool().map(|spool| spool.stats());
    let body = serde_json::json!({
        "redis": redis,
        "kafka": kafka,
        "spool": spool.map(|s| serde_json::json!({
            "records": s.records,
            "bytes": s.bytes,
            "oldest_age_seconds": s.oldest_age.map_or(0.0, |age| age.as_secs_f64()),
            "full": s.full,
        })),
    });
    // Redis being down does not make ingest unready: pushes are still stored (fail open). Kafka
    // being down does not either while the spool has room, since pushes are spooled and answered
    // `success`. Only when neither can take a push would every push be answered 503.
    let spool_has_room = spool.is_some_and(|s| !s.full);
    if kafka == "ok" || spool_has_room {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let log = state.intake.log();
    state
        .metrics
        .producer_queue
        .set(i64::from(log.publisher().queued()));
    if let Some(spool) = log.spool() {
        state.metrics.spool.sample(spool.stats());
    }
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4")
            .body(buffer),
        Err(e) => HttpResponse::InternalServerError().body(e.to_string()),
    }
}
