//! The small HTTP listener: `/healthz` (the process runs), `/readyz` (consuming, joined to the
//! consumer group, and Redis answers) and `/metrics` (Prometheus text format from the injected
//! registry).

use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use prometheus::{Encoder, Registry, TextEncoder};

use crate::store::Store;

/// What `/readyz` looks at.
#[derive(Debug, Clone)]
pub struct Readiness {
    pub consuming: Arc<AtomicBool>,
    /// The group gave this process its first assignment (an empty one counts: the group has more
    /// processes than partitions, and this one stands by).
    pub joined: Arc<AtomicBool>,
    pub store: Store,
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().body("ok")
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    if !readiness.consuming.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().body("not consuming");
    }
    if !readiness.joined.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().body("not yet in the consumer group");
    }
    if !readiness.store.ping().await {
        return HttpResponse::ServiceUnavailable().body("redis unavailable");
    }
    HttpResponse::Ok().body("ready")
}

async fn metrics(registry: web::Data<Registry>) -> HttpResponse {
    let mut buffer = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        return HttpResponse::InternalServerError().body(e.to_string());
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(buffer)
}

/// The server on `listener` (bind port 0 in tests and read the port from the listener).
pub fn server(
    listener: TcpListener,
    registry: Registry,
    readiness: Readiness,
) -> std::io::Result<Server> {
    let registry = web::Data::new(registry);
    let readiness = web::Data::new(readiness);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(registry.clone())
            .app_data(readiness.clone())
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route("/metrics", web::get().to(metrics))
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    Ok(server)
}
