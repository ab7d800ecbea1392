//! HTTP routes: the push URL, health, readiness and metrics.

mod health;
mod push;

use actix_web::web;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(health::healthz))
        .route("/readyz", web::get().to(health::readyz))
        .route("/metrics", web::get().to(health::metrics))
        .route("/wechat/{app}", web::get().to(push::verify_url))
        .route("/wechat/{app}", web::post().to(push::receive));
}
