//! Pushes in every mode and format, the published vectors, and the record written for each.

use common::codec::Format;
use common::envelope::{DedupStatus, Envelope};
use common::message::MessageBody;
use common::push::Mode;

use crate::helpers::*;

#[tokio::test]
async fn url_verification_echoes_echostr_exactly() {
    let app = spawn_app().await;
    // The official example of the message-push page.
    let ok = app
        .get("/wechat/json?signature=f464b24fc39322e44b38aa78f5edd27bd1441696&echostr=4375120948345356249&timestamp=1714036504&nonce=1514711492")
        .await;
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.text().await.unwrap(), "4375120948345356249");

    let forged = app
        .get("/wechat/json?signature=0000000000000000000000000000000000000000&echostr=1&timestamp=1714036504&nonce=1514711492")
        .await;
    assert_eq!(forged.status(), 401);
    let unknown = app
        .get("/wechat/nope?signature=f464b24fc39322e44b38aa78f5edd27bd1441696&echostr=1&timestamp=1714036504&nonce=1514711492")
        .await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn the_official_encrypted_json_push_is_stored_verbatim() {
    let app = spawn_app().await;
    let body = r#"{"ToUserName":"gh_97417a04a28d","Encrypt":"+qdx1OKCy+5JPCBFWw70tm0fJGb2Jmeia4FCB7kao+/Q5c/ohsOzQHi8khUOb05JCpj0JB4RvQMkUyus8TPxLKJGQqcvZqzDpVzazhZv6JsXUnnR8XGT740XgXZUXQ7vJVnAG+tE8NUd4yFyjPy7GgiaviNrlCTj+l5kdfMuFUPpRSrfMZuMcp3Fn2Pede2IuQrKEYwKSqFIZoNqJ4M8EajAsjLY2km32IIjdf8YL/P50F7mStwntrA2cPDrM1kb6mOcfBgRtWygb3VIYnSeOBrebufAlr7F9mFUPAJGj04="}"#;
    let push = Push {
        query: "signature=6c5c811b55cc85e0e1b54100749188c20beb3f5d&timestamp=1714112445&nonce=415670741&openid=o9AgO5Kd5ggOC-bXrbNODIiE3bGY&encrypt_type=aes&msg_signature=046e02f8204d34f8ba5fa3b1db94908f3df2e9b3".into(),
        body: body.into(),
        format: Format::Json,
    };
    let response = app.post("json", &push).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "success");

    let records = read_records(app.topic());
    assert_eq!(records.len(), 1);
    let (key, Envelope::V1(record)) = &records[0];
    assert_eq!(key, "json:o9AgO5Kd5ggOC-bXrbNODIiE3bGY");
    assert_eq!(record.app, "json");
    assert_eq!(record.mode, Mode::Safe);
    assert_eq!(record.format, Format::Json);
    assert_eq!(record.dedup, DedupStatus::Checked);
    assert_eq!(
        record.payload,
        r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"event","Event":"debug_demo","debug_str":"hello world"}"#
    );
    assert_eq!(record.message.event(), Some("debug_demo"));
    assert_eq!(
        record.dedup_key.as_str(),
        "json:evt:o9AgO5Kd5ggOC-bXrbNODIiE3bGY:1714112445:debug_demo"
    );
}

#[tokio::test]
async fn a_msg_id_above_2_pow_53_survives_json_mode() {
    let app = spawn_app().await;
    // Vector V6: a text message whose MsgId a float parser would corrupt.
    let push = Push {
        query: "signature=6c5c811b55cc85e0e1b54100749188c20beb3f5d&timestamp=1714112445&nonce=415670741&encrypt_type=aes&msg_signature=2e4fb0821b8b57bef2c74ea4634008f2d46f2fe7".into(),
        body: r#"{"ToUserName":"gh_97417a04a28d","Encrypt":"uMMzGtqcnpOzXOYBwDQNrSp2HE7Ry0URdHaF455pfjEAtCA3xz23LYOeokDKfxUCwAzp4Ci/koaSDFE8W4IRXL0orHJrkDM7xNTguKIpK1GH6zlvkVwNUBfATDGKBy2UEruYK/2xvXSMehTwvmhv0myOFwxT9rEK+50v0AKmzyAE9uyxT43WXBJXUX4ooSX++sUqI33U+G82row7dCaSc4Oo1hLMgvpb2n8T7lkP6XMZgeMu2FPCHgbw8pR2I6qWQpbID6qL81swrV+3FiGWuFu2GLhMO34flOXbP3Fxcis="}"#.into(),
        format: Format::Json,
    };
    assert_eq!(app.post("json", &push).await.status(), 200);
    let records = read_records(app.topic());
    assert_eq!(records.len(), 1);
    let Envelope::V1(record) = &records[0].1;
    assert_eq!(
        record.message.msg_id().map(|id| id.as_str()),
        Some("22876340532172986")
    );
    assert_eq!(record.message.text(), Some("你好"));
    assert_eq!(record.dedup_key.as_str(), "json:msg:22876340532172986");
}

#[tokio::test]
async fn every_mode_and_format_is_accepted_and_stored_as_sent() {
    let app = spawn_app().await;
    let mut sent = Vec::new();
    for format in [Format::Xml, Format::Json] {
        for mode in [PushMode::Plaintext, PushMode::Compatible, PushMode::Safe] {
            let message = text_message(
                &format!("user-{format:?}-{mode:?}"),
                &format!("hello <{format:?}> & ]]> {mode:?} 你好"),
            );
            let push = push(&message, format, mode, now());
            for app_name in ["sniff", if format == Format::Xml { "xml" } else { "json" }] {
                let response = app.post(app_name, &push).await;
                assert_eq!(
                    response.status(),
                    200,
                    "{format:?} {mode:?} to {app_name}: {}",
                    response.text().await.unwrap()
                );
            }
            sent.push((message, format, mode));
        }
    }
    let records = read_records(app.topic());
    // Each push went to two apps: two records each (dedup keys differ by app).
    assert_eq!(records.len(), sent.len() * 2);
    for (message, format, mode) in &sent {
        let stored: Vec<_> = records
            .iter()
            .map(|(_, Envelope::V1(r))| r)
            .filter(|r| r.message.msg_id() == message.msg_id())
            .collect();
        assert_eq!(stored.len(), 2, "{format:?} {mode:?}");
        for record in stored {
            assert_eq!(&record.message, message, "{format:?} {mode:?}");
            assert_eq!(record.format, *format);
            assert_eq!(record.mode, *mode);
            let reparsed = common::codec::parse(record.format, record.payload.as_bytes()).unwrap();
            assert_eq!(
                &reparsed, message,
                "the payload re-parses to the same message"
            );
        }
    }
}

#[tokio::test]
async fn one_user_records_share_a_key_and_so_a_partition() {
    let app = spawn_app().await;
    for i in 0..6 {
        let message = text_message("same-user", &format!("message {i}"));
        assert_eq!(
            app.post("json", &push(&message, Format::Json, PushMode::Safe, now()))
                .await
                .status(),
            200
        );
    }
    let records = read_records(app.topic());
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|(key, _)| key == "json:same-user"));
    let texts: Vec<_> = records
        .iter()
        .map(|(_, Envelope::V1(r))| match &r.message.body {
            MessageBody::Text { content, .. } => content.clone(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    let expected: Vec<_> = (0..6).map(|i| format!("message {i}")).collect();
    assert_eq!(texts, expected, "one partition keeps the user's order");
}

#[tokio::test]
async fn transfer_mode_hands_user_messages_over_and_encrypts_in_safe_mode() {
    let app = spawn_app().await;
    let message = text_message("o9AgO5Kd5ggOC-bXrbNODIiE3bGY", "I want a human");
    let plain = app
        .post(
            "transfer",
            &push(&message, Format::Xml, PushMode::Plaintext, now()),
        )
        .await;
    assert_eq!(plain.status(), 200);
    let body = plain.text().await.unwrap();
    assert!(
        body.contains("<MsgType><![CDATA[transfer_customer_service]]></MsgType>"),
        "{body}"
    );
    assert!(body.contains("<ToUserName><![CDATA[o9AgO5Kd5ggOC-bXrbNODIiE3bGY]]></ToUserName>"));
    assert!(body.contains("<FromUserName><![CDATA[gh_97417a04a28d]]></FromUserName>"));

    let message = text_message("o9AgO5Kd5ggOC-bXrbNODIiE3bGY", "again, encrypted");
    let safe = app
        .post(
            "transfer",
            &push(&message, Format::Xml, PushMode::Safe, now()),
        )
        .await;
    assert_eq!(safe.status(), 200);
    let body = safe.text().await.unwrap();
    let encrypt = body
        .split("<Encrypt><![CDATA[")
        .nth(1)
        .and_then(|rest| rest.split("]]>").next())
        .unwrap_or_else(|| panic!("an encrypted envelope: {body}"));
    let key = common::crypto::AesKey::from_encoding_aes_key(AES_KEY).unwrap();
    let packet = String::from_utf8(common::crypto::decrypt(&key, encrypt, APPID).unwrap()).unwrap();
    assert!(packet.contains("transfer_customer_service"), "{packet}");

    // Events are never transferred.
    let event = r#"<xml><ToUserName><![CDATA[gh_97417a04a28d]]></ToUserName><FromUserName><![CDATA[u1]]></FromUserName><CreateTime>1714112445</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[user_enter_tempsession]]></Event><SessionFrom><![CDATA[wxapp]]></SessionFrom></xml>"#;
    let answer = app
        .post(
            "transfer",
            &push_raw(event, Format::Xml, PushMode::Plaintext, now(), TOKEN),
        )
        .await;
    assert_eq!(answer.text().await.unwrap(), "success");
    assert_eq!(record_count(app.topic()), 3);
}
