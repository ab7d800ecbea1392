//! HTTPS served by ingest itself, with a self-signed certificate.

use common::codec::Format;
use ingest::config::TlsSettings;

use crate::helpers::*;

#[tokio::test]
async fn pushes_are_accepted_over_https() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let dir = std::env::temp_dir().join(unique("ingest-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let cert_path = dir.join("cert.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, certified.cert.pem()).unwrap();
    std::fs::write(&key_path, certified.signing_key.serialize_pem()).unwrap();

    let mut settings = test_settings();
    settings.server.tls = Some(TlsSettings {
        cert_path,
        key_path,
    });
    let mut app = spawn_app_with(settings).await;
    let port = app.address.rsplit(':').next().unwrap().to_owned();
    app.address = format!("https://localhost:{port}");
    app.client = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(certified.cert.pem().as_bytes()).unwrap(),
        )
        .build()
        .unwrap();

    let message = text_message("u-tls", "over TLS");
    let response = app
        .post("json", &push(&message, Format::Json, PushMode::Safe, now()))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "success");
    assert_eq!(read_records(app.topic())[0].1.v1().message, message);

    // Plain HTTP on the TLS port is refused, not served.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_missing_certificate_is_a_clear_startup_error() {
    let mut settings = test_settings();
    settings.server.tls = Some(TlsSettings {
        cert_path: "/nonexistent/cert.pem".into(),
        key_path: "/nonexistent/key.pem".into(),
    });
    let error = ingest::Application::build(settings, prometheus::Registry::new()).unwrap_err();
    assert!(
        format!("{error:#}").contains("/nonexistent/cert.pem"),
        "{error:#}"
    );
}
