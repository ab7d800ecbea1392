//! Property tests: what is written is read back unchanged.

use std::collections::BTreeMap;

use common::codec::{self, Format};
use common::crypto::{self, AesKey};
use common::{
    AppId, DedupKey, DedupStatus, Envelope, EnvelopeV1, Message, MessageBody, Mode, MsgId, OpenId,
};
use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::select;

const COMMON_FIELDS: [&str; 6] = [
    "ToUserName",
    "FromUserName",
    "CreateTime",
    "MsgType",
    "Event",
    "MsgId",
];

/// Pieces that stress escaping and CDATA splitting when glued together.
const NASTY: [&str; 14] = [
    "]]>",
    "]]",
    "]",
    ">",
    "<![CDATA[",
    "</xml>",
    "&amp;",
    "&",
    "\"",
    "\\",
    "\r\n",
    "你好",
    "\u{0}",
    " ",
];

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,24}",
        vec(select(NASTY.to_vec()), 0..8).prop_map(|pieces| pieces.concat()),
    ]
}

fn any_msg_id() -> BoxedStrategy<MsgId> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        ((1u64 << 53)..=u64::MAX).prop_map(|n| n.to_string()),
        "[0-9a-f]{32}_[0-9]{10}",
        // Not canonical numbers: they must stay strings, leading zeros and sign included.
        "0[0-9]{1,18}",
        "-[1-9][0-9]{0,17}",
        "[A-Za-z0-9_-]{1,40}",
    ]
    .prop_map(MsgId::new)
    .boxed()
}

/// Whether `(msg_type, event)` selects a typed kind; `Other` bodies are generated outside these.
fn is_typed_kind(msg_type: &str, event: Option<&str>) -> bool {
    matches!(
        (msg_type, event),
        ("text" | "image" | "miniprogrampage", None) | ("event", Some("user_enter_tempsession"))
    )
}

fn other_body(field_name: BoxedStrategy<String>) -> impl Strategy<Value = MessageBody> {
    let field_name = field_name.prop_filter("common fields have their own members", |name| {
        !COMMON_FIELDS.contains(&name.as_str())
    });
    (
        prop_oneof![Just("event".to_owned()), "[a-z_]{1,16}"],
        proptest::option::of(any_text()),
        proptest::option::of(any_msg_id()),
        btree_map(field_name, any_text(), 0..5),
    )
        .prop_filter(
            "typed kinds are covered by their own variants",
            |(t, e, _, _)| !is_typed_kind(t, e.as_deref()),
        )
        .prop_map(|(msg_type, event, msg_id, fields)| MessageBody::Other {
            msg_type,
            event,
            msg_id,
            fields,
        })
}

fn any_body(field_name: BoxedStrategy<String>) -> impl Strategy<Value = MessageBody> {
    prop_oneof![
        (any_msg_id(), any_text())
            .prop_map(|(msg_id, content)| MessageBody::Text { msg_id, content }),
        (any_msg_id(), any_text(), any_text()).prop_map(|(msg_id, pic_url, media_id)| {
            MessageBody::Image {
                msg_id,
                pic_url,
                media_id,
            }
        }),
        (
            any_msg_id(),
            any_text(),
            any_text(),
            any_text(),
            any_text(),
            any_text()
        )
            .prop_map(
                |(msg_id, title, app_id, page_path, thumb_url, thumb_media_id)| {
                    MessageBody::MiniProgramPage {
                        msg_id,
                        title,
                        app_id,
                        page_path,
                        thumb_url,
                        thumb_media_id,
                    }
                }
            ),
        any_text().prop_map(|session_from| MessageBody::EnterSession { session_from }),
        other_body(field_name),
    ]
}

fn any_message(field_name: BoxedStrategy<String>) -> impl Strategy<Value = Message> {
    (any_text(), any_text(), any::<i64>(), any_body(field_name)).prop_map(
        |(to_user_name, from_user_name, create_time, body)| Message {
            to_user_name,
            from_user_name: OpenId::new(from_user_name),
            create_time,
            body,
        },
    )
}

/// Names XML can carry as element names.
fn xml_field_name() -> BoxedStrategy<String> {
    "[A-Za-z_][A-Za-z0-9_]{0,15}".boxed()
}

/// JSON keys can be anything.
fn json_field_name() -> BoxedStrategy<String> {
    any_text().boxed()
}

fn any_key() -> impl Strategy<Value = AesKey> {
    "[A-Za-z0-9+/]{43}".prop_map(|text| {
        AesKey::from_encoding_aes_key(&text).expect("43 base64 characters are a key")
    })
}

fn any_envelope() -> impl Strategy<Value = Envelope> {
    (
        (any_text(), any_text()),
        (
            prop_oneof![Just(DedupStatus::Checked), Just(DedupStatus::Unchecked)],
            any::<i64>(),
            prop_oneof![Just(Format::Xml), Just(Format::Json)],
            prop_oneof![
                Just(Mode::Plaintext),
                Just(Mode::Compatible),
                Just(Mode::Safe)
            ],
        ),
        any_message(json_field_name()),
        any_text(),
    )
        .prop_map(
            |((app, appid), (dedup, received_at_ms, format, mode), message, payload)| {
                Envelope::V1(EnvelopeV1 {
                    dedup_key: DedupKey::for_message(&app, &message),
                    app,
                    appid: AppId::new(appid),
                    dedup,
                    received_at_ms,
                    format,
                    mode,
                    message,
                    payload,
                })
            },
        )
}

proptest! {
    #[test]
    fn message_xml_round_trip(message in any_message(xml_field_name())) {
        let xml = codec::to_xml(&message);
        prop_assert_eq!(codec::parse(Format::Xml, xml.as_bytes()), Ok(message), "{}", xml);
    }

    #[test]
    fn message_json_round_trip(message in any_message(json_field_name())) {
        let json = codec::to_json(&message);
        prop_assert_eq!(codec::parse(Format::Json, json.as_bytes()), Ok(message), "{}", json);
    }

    #[test]
    fn json_output_is_valid_json_with_exact_ids(message in any_message(json_field_name())) {
        let value: serde_json::Value = serde_json::from_str(&codec::to_json(&message))
            .expect("to_json writes JSON");
        if let Some(id) = message.msg_id() {
            match id.as_u64() {
                Some(number) => prop_assert_eq!(value["MsgId"].as_u64(), Some(number)),
                None => prop_assert_eq!(value["MsgId"].as_str(), Some(id.as_str())),
            }
        }
    }

    #[test]
    fn encrypt_decrypt_round_trip(
        key in any_key(),
        msg in vec(any::<u8>(), 0..2048),
        appid in "[A-Za-z0-9_]{0,32}",
    ) {
        let encrypt = crypto::encrypt(&key, &msg, &appid);
        prop_assert_eq!(crypto::decrypt(&key, &encrypt, &appid), Ok(msg));
    }

    #[test]
    fn envelope_round_trip(envelope in any_envelope()) {
        let bytes = envelope.to_bytes();
        let read = Envelope::from_bytes(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(read, envelope);
    }
}

#[test]
fn typed_kind_predicate_matches_the_codec() {
    // Guards the generator: an `Other` the predicate lets through must parse back as `Other`.
    let other = Message {
        to_user_name: "gh".into(),
        from_user_name: OpenId::new("o"),
        create_time: 1,
        body: MessageBody::Other {
            msg_type: "text".into(),
            event: Some("odd".into()),
            msg_id: Some(MsgId::new("1")),
            fields: BTreeMap::from([("Content".into(), "x".into())]),
        },
    };
    assert!(!is_typed_kind("text", Some("odd")));
    assert_eq!(
        codec::parse(Format::Json, codec::to_json(&other).as_bytes()),
        Ok(other)
    );
}
