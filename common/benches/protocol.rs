//! The per-push protocol work on ingest's request path, and the record codec on both sides.
//!
//! Run: `cargo bench -p wxkf-common --bench protocol -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use common::codec::{self, Format};
use common::crypto::{self, AesKey};
use common::push::{self, AppCredentials, Mode, PushQuery};
use common::{signature, AppId, DedupKey, DedupStatus, Envelope, EnvelopeV1};
use criterion::{criterion_group, criterion_main, Criterion};

const TOKEN: &str = "AAAAA";
const APPID: &str = "wxba5fad812f8e6fb9";
const TIMESTAMP: &str = "1714112445";
const NONCE: &str = "415670741";

const XML_TEXT: &str = "<xml><ToUserName><![CDATA[gh_97417a04a28d]]></ToUserName>\
    <FromUserName><![CDATA[o9AgO5Kd5ggOC-bXrbNODIiE3bGY]]></FromUserName>\
    <CreateTime>1714112445</CreateTime><MsgType><![CDATA[text]]></MsgType>\
    <Content><![CDATA[你好，请问订单什么时候发货？]]></Content><MsgId>22876340532172986</MsgId></xml>";
const JSON_TEXT: &str = r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"text","Content":"你好，请问订单什么时候发货？","MsgId":22876340532172986}"#;

fn key() -> AesKey {
    AesKey::from_encoding_aes_key(&"A".repeat(43)).expect("valid key")
}

fn parse(c: &mut Criterion) {
    c.bench_function("parse/xml_text", |b| {
        b.iter(|| codec::parse(Format::Xml, black_box(XML_TEXT.as_bytes())))
    });
    c.bench_function("parse/json_text", |b| {
        b.iter(|| codec::parse(Format::Json, black_box(JSON_TEXT.as_bytes())))
    });
}

/// A safe-mode JSON push like V6: verify `msg_signature`, decrypt, parse.
fn encrypted_push(c: &mut Criterion) {
    let key = key();
    let creds = AppCredentials {
        token: TOKEN,
        aes_key: Some(&key),
        appid: APPID,
    };
    let encrypt = crypto::encrypt(&key, JSON_TEXT.as_bytes(), APPID);
    let body = format!(r#"{{"ToUserName":"gh_97417a04a28d","Encrypt":"{encrypt}"}}"#);
    let query = PushQuery {
        signature: Some(signature::sign(&[TOKEN, TIMESTAMP, NONCE])),
        timestamp: Some(TIMESTAMP.into()),
        nonce: Some(NONCE.into()),
        encrypt_type: Some("aes".into()),
        msg_signature: Some(signature::sign(&[TOKEN, TIMESTAMP, NONCE, &encrypt])),
        ..PushQuery::default()
    };
    c.bench_function("push/verify_open_parse_safe_json", |b| {
        b.iter(|| {
            push::verify(&query, black_box(body.as_bytes()), Format::Json, &creds)
                .and_then(|verified| verified.open(&creds))
                .map(|opened| opened.parse())
        })
    });
    c.bench_function("crypto/decrypt_safe_json", |b| {
        b.iter(|| crypto::decrypt(&key, black_box(&encrypt), APPID))
    });
}

fn envelope(c: &mut Criterion) {
    let message = codec::parse(Format::Json, JSON_TEXT.as_bytes()).expect("text message");
    let envelope = Envelope::V1(EnvelopeV1 {
        app: "shop".into(),
        appid: AppId::new(APPID),
        dedup_key: DedupKey::for_message("shop", &message),
        dedup: DedupStatus::Checked,
        received_at_ms: 1_714_112_445_123,
        format: Format::Json,
        mode: Mode::Safe,
        message,
        payload: JSON_TEXT.into(),
    });
    let bytes = envelope.to_bytes();
    c.bench_function("envelope/encode", |b| {
        b.iter(|| black_box(&envelope).to_bytes())
    });
    c.bench_function("envelope/decode", |b| {
        b.iter(|| Envelope::from_bytes(black_box(&bytes)))
    });
}

criterion_group!(benches, parse, encrypted_push, envelope);
criterion_main!(benches);
