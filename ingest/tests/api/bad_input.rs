//! Bad input is a precise 4xx, never a crash, never a record.

use common::codec::Format;

use crate::helpers::*;

async fn assert_refused(app: &TestApp, name: &str, p: &Push, status: u16, outcome: &str) {
    let before = app.metric("ingest_pushes_total", &[("outcome", outcome)]);
    let response = app.post(name, p).await;
    let got = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(got, status, "{outcome}: {body}");
    assert!(
        !body.contains(TOKEN) && !body.contains(AES_KEY),
        "no secret in {body}"
    );
    assert_eq!(
        app.metric("ingest_pushes_total", &[("outcome", outcome)]),
        before + 1.0,
        "{outcome} counted"
    );
}

#[tokio::test]
async fn each_class_of_bad_input_gets_its_status_and_nothing_is_published() {
    let mut settings = test_settings();
    settings.deadline.timestamp_tolerance = std::time::Duration::from_secs(600);
    let app = spawn_app_with(settings).await;
    let message = text_message("u-bad", "hello");
    let good = push(&message, Format::Json, PushMode::Safe, now());

    assert_refused(&app, "nope", &good, 404, "unknown_app").await;

    let forged = push_raw(
        &common::codec::to_json(&message),
        Format::Json,
        PushMode::Safe,
        now(),
        "wrong-token",
    );
    assert_refused(&app, "json", &forged, 401, "bad_signature").await;

    let unsigned = Push {
        query: "timestamp=1&nonce=2".into(),
        ..good.clone()
    };
    assert_refused(&app, "json", &unsigned, 401, "bad_signature").await;

    let stale = push(&message, Format::Json, PushMode::Safe, now() - 3600);
    assert_refused(&app, "json", &stale, 401, "stale_timestamp").await;

    let plaintext = push(&message, Format::Json, PushMode::Plaintext, now());
    assert_refused(&app, "strict", &plaintext, 401, "encryption_required").await;

    let huge = "x".repeat(app.settings.server.max_body_bytes + 1);
    let too_large = push_raw(&huge, Format::Json, PushMode::Plaintext, now(), TOKEN);
    assert_refused(&app, "json", &too_large, 413, "too_large").await;

    let garbage = push_raw(
        "{\"ToUserName\": 12",
        Format::Json,
        PushMode::Plaintext,
        now(),
        TOKEN,
    );
    assert_refused(&app, "json", &garbage, 400, "malformed").await;

    let not_a_message = push_raw(
        "<xml><Foo>1</Foo></xml>",
        Format::Xml,
        PushMode::Plaintext,
        now(),
        TOKEN,
    );
    assert_refused(&app, "xml", &not_a_message, 400, "malformed").await;

    // A correctly signed ciphertext that is not one: msg_signature covers it, decryption fails.
    let ts = now().to_string();
    let bogus = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let sig = common::signature::sign(&[TOKEN, &ts, "1"]);
    let msg_sig = common::signature::sign(&[TOKEN, &ts, "1", bogus]);
    let undecryptable = Push {
        query: format!(
            "signature={sig}&timestamp={ts}&nonce=1&encrypt_type=aes&msg_signature={msg_sig}"
        ),
        body: format!(r#"{{"ToUserName":"gh_97417a04a28d","Encrypt":"{bogus}"}}"#),
        format: Format::Json,
    };
    assert_refused(&app, "json", &undecryptable, 400, "undecryptable").await;

    // Encrypted for another mini program: the appid inside the ciphertext gives it away.
    let key = common::crypto::AesKey::from_encoding_aes_key(AES_KEY).unwrap();
    let foreign = common::crypto::encrypt(
        &key,
        common::codec::to_json(&message).as_bytes(),
        "wx0000000000000000",
    );
    let msg_sig = common::signature::sign(&[TOKEN, &ts, "1", &foreign]);
    let other_app = Push {
        query: format!(
            "signature={sig}&timestamp={ts}&nonce=1&encrypt_type=aes&msg_signature={msg_sig}"
        ),
        body: format!(r#"{{"ToUserName":"gh_97417a04a28d","Encrypt":"{foreign}"}}"#),
        format: Format::Json,
    };
    assert_refused(&app, "json", &other_app, 400, "undecryptable").await;

    assert_eq!(record_count(app.topic()), 0, "nothing bad was published");
    // And the good push still goes through afterwards.
    assert_eq!(app.post("json", &good).await.status(), 200);
    assert_eq!(record_count(app.topic()), 1);
}

#[tokio::test]
async fn arbitrary_bytes_never_crash_the_edge() {
    let app = spawn_app().await;
    let ts = now().to_string();
    let sig = common::signature::sign(&[TOKEN, &ts, "7"]);
    let bodies: Vec<Vec<u8>> = vec![
        vec![],
        vec![0xff, 0xfe, 0x00, 0x3c],
        b"<xml><![CDATA[".to_vec(),
        b"{\"MsgId\": 1e400}".to_vec(),
        b"<xml><ToUserName>a</ToUserName><FromUserName>b</FromUserName><CreateTime>99999999999999999999999</CreateTime><MsgType>text</MsgType></xml>".to_vec(),
        "<xml>".repeat(5000).into_bytes(),
        "[".repeat(5000).into_bytes(),
    ];
    for body in bodies {
        for name in ["json", "xml", "sniff"] {
            let response = app
                .client
                .post(format!(
                    "{}/wechat/{name}?signature={sig}&timestamp={ts}&nonce=7",
                    app.address
                ))
                .body(body.clone())
                .send()
                .await
                .expect("the server still answers");
            assert!(
                response.status().is_client_error(),
                "{name}: {}",
                response.status()
            );
        }
    }
    assert_eq!(record_count(app.topic()), 0);
    assert_eq!(app.get("/healthz").await.status(), 200);
}

#[test]
fn secrets_do_not_print() {
    let settings = test_settings();
    let printed = format!("{settings:?}");
    assert!(
        !printed.contains(AES_KEY),
        "the EncodingAESKey leaks through Debug"
    );
    assert!(
        !printed.contains("\"AAAAA\""),
        "the token leaks through Debug"
    );
    let key = common::crypto::AesKey::from_encoding_aes_key(AES_KEY).unwrap();
    assert!(!format!("{key:?}").contains("AAAA"));
}
