//! Property tests: no byte sequence makes the protocol code panic (`docs/architecture.md`, promise 8).
//!
//! Random bytes rarely get past the first syntax check, so each input is also tried as a small
//! edit of a valid document, which reaches the deeper code paths. `cargo fuzz` (see `fuzz/`)
//! explores the same entry points with coverage guidance.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::codec::{self, Format};
use common::crypto::{self, AesKey};
use common::push::{self, AppCredentials, PushQuery};
use common::{signature, Envelope};
use proptest::collection::vec;
use proptest::prelude::*;

const XML: &str = "<xml><ToUserName><![CDATA[gh_97417a04a28d]]></ToUserName>\
    <FromUserName><![CDATA[o9AgO5Kd5ggOC-bXrbNODIiE3bGY]]></FromUserName>\
    <CreateTime>1482048670</CreateTime><MsgType><![CDATA[event]]></MsgType>\
    <Event><![CDATA[subscribe_msg_popup_event]]></Event>\
    <SubscribeMsgPopupEvent><List><TemplateId>a&amp;b</TemplateId></List></SubscribeMsgPopupEvent>\
    <MsgId>1234567890123456</MsgId></xml>";
const JSON: &str = r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":"1610969440","MsgType":"event","Event":"subscribe_msg_popup_event","List":[{"TemplateId":"a"},{"TemplateId":"b"}],"MsgId":22876340532172986}"#;
const TOKEN: &str = "AAAAA";
const APPID: &str = "wxba5fad812f8e6fb9";

fn key() -> AesKey {
    AesKey::from_encoding_aes_key(&"A".repeat(43)).expect("valid key")
}

/// `base` with `insert` spliced in at `at` (scaled into range) after removing `cut` bytes.
fn edit(base: &[u8], at: usize, cut: usize, insert: &[u8]) -> Vec<u8> {
    let at = at % (base.len() + 1);
    let end = (at + cut).min(base.len());
    let mut out = base[..at].to_vec();
    out.extend_from_slice(insert);
    out.extend_from_slice(&base[end..]);
    out
}

fn any_edit() -> impl Strategy<Value = (usize, usize, Vec<u8>)> {
    (any::<usize>(), 0usize..8, vec(any::<u8>(), 0..8))
}

fn any_format() -> impl Strategy<Value = Format> {
    prop_oneof![Just(Format::Xml), Just(Format::Json)]
}

fn any_param() -> impl Strategy<Value = Option<String>> {
    proptest::option::of(prop_oneof!["[0-9a-f]{40}", "[0-9]{0,12}", any::<String>()])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics(bytes in vec(any::<u8>(), 0..512), format in any_format()) {
        let _ = codec::parse(format, &bytes);
    }

    #[test]
    fn parse_of_edited_documents_never_panics((at, cut, insert) in any_edit()) {
        let _ = codec::parse(Format::Xml, &edit(XML.as_bytes(), at, cut, &insert));
        let _ = codec::parse(Format::Json, &edit(JSON.as_bytes(), at, cut, &insert));
    }

    #[test]
    fn decrypt_never_panics(text in any::<String>(), bytes in vec(any::<u8>(), 0..512)) {
        let key = key();
        let _ = crypto::decrypt(&key, &text, APPID);
        // Valid base64 of any length reaches the AES and framing checks.
        let _ = crypto::decrypt(&key, &STANDARD.encode(&bytes), APPID);
    }

    #[test]
    fn decrypt_of_edited_ciphertexts_never_panics(
        blocks in 2usize..20,
        seed in any::<u8>(),
        (at, cut, insert) in any_edit(),
    ) {
        let key = key();
        let msg = vec![seed; blocks * 16];
        let sealed = STANDARD.decode(crypto::encrypt(&key, &msg, APPID)).expect("base64");
        let edited = edit(&sealed, at, cut, &insert);
        let _ = crypto::decrypt(&key, &STANDARD.encode(edited), APPID);
    }

    #[test]
    fn envelope_decode_never_panics(bytes in vec(any::<u8>(), 0..512), (at, cut, insert) in any_edit()) {
        let _ = Envelope::from_bytes(&bytes);
        let valid = br#"{"v":1,"app":"a","appid":"wx","dedup_key":"a:msg:1","dedup":"checked","received_at_ms":1,"format":"xml","mode":"safe","message":{"to_user_name":"gh","from_user_name":"o","create_time":1,"body":{"kind":"text","msg_id":"1","content":"x"}},"payload":"<xml/>"}"#;
        let _ = Envelope::from_bytes(&edit(valid, at, cut, &insert));
    }

    #[test]
    fn push_verify_never_panics(
        signature in any_param(),
        timestamp in any_param(),
        nonce in any_param(),
        encrypt_type in proptest::option::of(prop_oneof![Just("aes".to_owned()), Just("raw".to_owned()), any::<String>()]),
        msg_signature in any_param(),
        body in vec(any::<u8>(), 0..512),
        format in any_format(),
    ) {
        let key = key();
        let creds = AppCredentials { token: TOKEN, aes_key: Some(&key), appid: APPID };
        let query = PushQuery { signature, timestamp, nonce, encrypt_type, msg_signature, ..PushQuery::default() };
        if let Ok(verified) = push::verify(&query, &body, format, &creds) {
            if let Ok(opened) = verified.open(&creds) {
                let _ = opened.parse();
            }
        }
    }

    #[test]
    fn signed_arbitrary_ciphertext_never_panics(encrypt in prop_oneof!["[A-Za-z0-9+/=]{0,200}", any::<String>()], format in any_format()) {
        // A correctly signed body carrying any `Encrypt` text reaches decryption through `open`.
        let key = key();
        let creds = AppCredentials { token: TOKEN, aes_key: Some(&key), appid: APPID };
        let body = match format {
            Format::Json => serde_json::json!({"ToUserName": "gh", "Encrypt": encrypt}).to_string(),
            Format::Xml => format!("<xml><Encrypt><![CDATA[{}]]></Encrypt></xml>", encrypt.replace("]]>", "]]]]><![CDATA[>")),
        };
        let query = PushQuery {
            timestamp: Some("1714112445".into()),
            nonce: Some("415670741".into()),
            encrypt_type: Some("aes".into()),
            msg_signature: Some(signature::sign(&[TOKEN, "1714112445", "415670741", &encrypt])),
            ..PushQuery::default()
        };
        let verified = push::verify(&query, body.as_bytes(), format, &creds);
        prop_assert!(verified.is_ok(), "signed body must verify: {:?}", verified);
        if let Ok(verified) = verified {
            let _ = verified.open(&creds);
        }
    }
}
