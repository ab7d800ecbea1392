//! The Kafka record contract. The pinned wire form below is version 1: if this test has to
//! change, the change needs a new envelope version instead.

use std::collections::BTreeMap;

use common::envelope::record_key;
use common::{
    AppId, DedupKey, DedupStatus, Envelope, EnvelopeError, EnvelopeV1, Format, Message,
    MessageBody, Mode, MsgId, OpenId, ENVELOPE_VERSION,
};

const PAYLOAD: &str = r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"text","Content":"你好","MsgId":22876340532172986}"#;

fn text_envelope() -> Envelope {
    let message = Message {
        to_user_name: "gh_97417a04a28d".into(),
        from_user_name: OpenId::new("o9AgO5Kd5ggOC-bXrbNODIiE3bGY"),
        create_time: 1714112445,
        body: MessageBody::Text {
            msg_id: MsgId::new("22876340532172986"),
            content: "你好".into(),
        },
    };
    Envelope::V1(EnvelopeV1 {
        app: "shop".into(),
        appid: AppId::new("wxba5fad812f8e6fb9"),
        dedup_key: DedupKey::for_message("shop", &message),
        dedup: DedupStatus::Checked,
        received_at_ms: 1714112445123,
        format: Format::Json,
        mode: Mode::Safe,
        message,
        payload: PAYLOAD.into(),
    })
}

#[test]
fn version_one_wire_form_is_pinned() {
    let bytes = text_envelope().to_bytes();
    let expected = serde_json::json!({
        "v": 1,
        "app": "shop",
        "appid": "wxba5fad812f8e6fb9",
        "dedup_key": "shop:msg:22876340532172986",
        "dedup": "checked",
        "received_at_ms": 1714112445123_i64,
        "format": "json",
        "mode": "safe",
        "message": {
            "to_user_name": "gh_97417a04a28d",
            "from_user_name": "o9AgO5Kd5ggOC-bXrbNODIiE3bGY",
            "create_time": 1714112445,
            "body": {"kind": "text", "msg_id": "22876340532172986", "content": "你好"}
        },
        "payload": PAYLOAD,
    });
    let actual: serde_json::Value = serde_json::from_slice(&bytes).expect("JSON");
    assert_eq!(actual, expected);
    assert_eq!(ENVELOPE_VERSION, 1);
}

#[test]
fn round_trip_and_accessors() {
    let envelope = text_envelope();
    let back = Envelope::from_bytes(&envelope.to_bytes()).expect("decodes");
    assert_eq!(back, envelope);
    assert_eq!(back.version(), 1);
    assert_eq!(back.v1().payload, PAYLOAD);
    assert_eq!(
        back.v1().message.msg_id().map(MsgId::as_str),
        Some("22876340532172986")
    );
}

#[test]
fn every_body_kind_and_status_round_trips() {
    let bodies = [
        MessageBody::Image {
            msg_id: MsgId::new("1"),
            pic_url: "u".into(),
            media_id: "m".into(),
        },
        MessageBody::MiniProgramPage {
            msg_id: MsgId::new("49d72d67_1555684067"),
            title: "t".into(),
            app_id: "wx1".into(),
            page_path: "pages/index".into(),
            thumb_url: String::new(),
            thumb_media_id: String::new(),
        },
        MessageBody::EnterSession {
            session_from: "wxapp".into(),
        },
        MessageBody::Other {
            msg_type: "event".into(),
            event: Some("subscribe_msg_popup_event".into()),
            msg_id: None,
            fields: BTreeMap::from([("List".into(), r#"[{"a":1}]"#.into())]),
        },
    ];
    for body in bodies {
        let Envelope::V1(mut v1) = text_envelope();
        v1.message.body = body;
        v1.dedup = DedupStatus::Unchecked;
        v1.mode = Mode::Compatible;
        v1.format = Format::Xml;
        let envelope = Envelope::from(v1);
        let read = Envelope::from_bytes(&envelope.to_bytes()).expect("readable");
        assert_eq!(read, envelope);
    }
}

#[test]
fn unknown_versions_are_refused_not_guessed() {
    let mut value: serde_json::Value =
        serde_json::from_slice(&text_envelope().to_bytes()).expect("JSON");
    value["v"] = 2.into();
    let error =
        Envelope::from_bytes(&serde_json::to_vec(&value).expect("JSON")).expect_err("version 2");
    assert!(
        matches!(error, EnvelopeError::UnknownVersion(2)),
        "{error:?}"
    );
    assert_eq!(error.kind(), "unknown_version");
    assert!(matches!(
        Envelope::from_bytes(br#"{"v":0}"#),
        Err(EnvelopeError::UnknownVersion(0))
    ));
}

#[test]
fn undecodable_records_are_malformed() {
    let mut missing_field: serde_json::Value =
        serde_json::from_slice(&text_envelope().to_bytes()).expect("JSON");
    missing_field
        .as_object_mut()
        .expect("object")
        .remove("dedup_key");
    let missing_field = serde_json::to_vec(&missing_field).expect("JSON");
    for bytes in [
        &b""[..],
        b"not json",
        b"[]",
        br#"{"app":"shop"}"#,
        br#"{"v":"1"}"#,
        br#"{"v":-1}"#,
        br#"{"v":1.5}"#,
        br#"{"v":1}"#,
        &missing_field,
    ] {
        let error = Envelope::from_bytes(bytes).expect_err("malformed");
        assert!(
            matches!(error, EnvelopeError::Malformed(_)),
            "{}: {error:?}",
            String::from_utf8_lossy(bytes)
        );
        assert_eq!(error.kind(), "malformed");
        // The cause stays typed: its line and column reach an operator's log.
        let cause = std::error::Error::source(&error).expect("a source");
        assert!(cause.is::<serde_json::Error>(), "{cause:?}");
    }
}

#[test]
fn extra_fields_in_a_version_one_record_are_ignored() {
    let mut value: serde_json::Value =
        serde_json::from_slice(&text_envelope().to_bytes()).expect("JSON");
    value["trace"] = "abc".into();
    let envelope =
        Envelope::from_bytes(&serde_json::to_vec(&value).expect("JSON")).expect("decodes");
    assert_eq!(envelope, text_envelope());
}

#[test]
fn record_key_groups_a_users_records() {
    assert_eq!(
        record_key("shop", &OpenId::new("o9AgO5Kd5ggOC-bXrbNODIiE3bGY")),
        "shop:o9AgO5Kd5ggOC-bXrbNODIiE3bGY"
    );
}
