//! Liveness, readiness and the Prometheus endpoint.

use crate::helpers::*;

#[tokio::test]
async fn health_and_readiness_against_the_real_services() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    let ready = app.get("/readyz").await;
    let status = ready.status();
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["redis"], "ok");
    assert_eq!(body["kafka"], "ok");
}

#[tokio::test]
async fn metrics_are_exposed_in_prometheus_text_format() {
    let app = spawn_app().await;
    let message = text_message("u-metrics", "hi");
    let p = push(&message, common::codec::Format::Json, PushMode::Safe, now());
    assert_eq!(app.post("json", &p).await.status(), 200);
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for name in [
        "ingest_pushes_total{outcome=\"accepted\"} 1",
        "ingest_ack_duration_seconds_bucket{result=\"ok\",le=\"5\"} 1",
        "ingest_publish_duration_seconds_count 1",
        "ingest_in_flight_pushes 0",
        "ingest_producer_queue_records",
    ] {
        assert!(text.contains(name), "missing `{name}` in:\n{text}");
    }
    assert!(!text.contains("u-metrics"), "no openid becomes a label");
}

#[tokio::test]
async fn readiness_reports_kafka_down_when_no_spool_can_take_pushes() {
    let mut settings = test_settings();
    // With the spool on, a Kafka outage keeps ingest ready: `spool.rs`.
    settings.spool.enabled = false;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    settings.kafka.brokers = dead.local_addr().unwrap().to_string();
    drop(dead);
    let app = spawn_app_with(settings).await;
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), 503);
    assert_eq!(
        app.get("/healthz").await.status(),
        200,
        "liveness ignores dependencies"
    );
}
