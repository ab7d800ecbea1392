//! The published and derived test vectors of the protocol (docs/wechat-protocol.md §8).
//!
//! V4 (easywechat) and V5 (wechatpy) are not here: only excerpts of their ciphertexts and echostr
//! were recorded, and a vector cannot be checked from an excerpt.

use common::codec::{self, Format};
use common::crypto::{self, AesKey};
use common::push::{self, AppCredentials, Mode, PushQuery};
use common::reply;
use common::signature;
use common::{MessageBody, OpenId};

/// V1/V2/V6 share the official page's Token, key and appid.
const TOKEN: &str = "AAAAA";
const APPID: &str = "wxba5fad812f8e6fb9";

fn official_key() -> AesKey {
    AesKey::from_encoding_aes_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").expect("43 × A")
}

fn creds(key: &AesKey) -> AppCredentials<'_> {
    AppCredentials {
        token: TOKEN,
        aes_key: Some(key),
        appid: APPID,
    }
}

fn random(ascii16: &str) -> [u8; 16] {
    ascii16.as_bytes().try_into().expect("16 ASCII characters")
}

const V1_TIMESTAMP: &str = "1714112445";
const V1_NONCE: &str = "415670741";
const V1_ENCRYPT: &str = "+qdx1OKCy+5JPCBFWw70tm0fJGb2Jmeia4FCB7kao+/Q5c/ohsOzQHi8khUOb05JCpj0JB4RvQMkUyus8TPxLKJGQqcvZqzDpVzazhZv6JsXUnnR8XGT740XgXZUXQ7vJVnAG+tE8NUd4yFyjPy7GgiaviNrlCTj+l5kdfMuFUPpRSrfMZuMcp3Fn2Pede2IuQrKEYwKSqFIZoNqJ4M8EajAsjLY2km32IIjdf8YL/P50F7mStwntrA2cPDrM1kb6mOcfBgRtWygb3VIYnSeOBrebufAlr7F9mFUPAJGj04=";
const V1_MSG: &str = r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"event","Event":"debug_demo","debug_str":"hello world"}"#;

fn v1_query() -> PushQuery {
    PushQuery {
        signature: Some("6c5c811b55cc85e0e1b54100749188c20beb3f5d".into()),
        timestamp: Some(V1_TIMESTAMP.into()),
        nonce: Some(V1_NONCE.into()),
        openid: Some("o9AgO5Kd5ggOC-bXrbNODIiE3bGY".into()),
        encrypt_type: Some("aes".into()),
        msg_signature: Some("046e02f8204d34f8ba5fa3b1db94908f3df2e9b3".into()),
        echostr: None,
    }
}

#[test]
fn url_verification_official_vector() {
    assert_eq!(
        signature::sign(&["AAAAA", "1714036504", "1514711492"]),
        "f464b24fc39322e44b38aa78f5edd27bd1441696"
    );
    let query = PushQuery {
        signature: Some("f464b24fc39322e44b38aa78f5edd27bd1441696".into()),
        timestamp: Some("1714036504".into()),
        nonce: Some("1514711492".into()),
        echostr: Some("4375120948345356249".into()),
        ..PushQuery::default()
    };
    assert_eq!(push::verify_url(&query, TOKEN), Ok("4375120948345356249"));
}

#[test]
fn v1_signatures() {
    assert_eq!(
        signature::sign(&[TOKEN, V1_TIMESTAMP, V1_NONCE]),
        "6c5c811b55cc85e0e1b54100749188c20beb3f5d"
    );
    assert_eq!(
        signature::sign(&[TOKEN, V1_TIMESTAMP, V1_NONCE, V1_ENCRYPT]),
        "046e02f8204d34f8ba5fa3b1db94908f3df2e9b3"
    );
}

#[test]
fn v1_decrypts_to_the_exact_message() {
    let msg = crypto::decrypt(&official_key(), V1_ENCRYPT, APPID).expect("V1 decrypts");
    assert_eq!(msg.len(), 167);
    assert_eq!(msg, V1_MSG.as_bytes());
}

#[test]
fn v1_encrypts_back_with_its_random() {
    let encrypt = crypto::encrypt_with_random(
        &official_key(),
        V1_MSG.as_bytes(),
        APPID,
        &random("a8eedb185eb2fecf"),
    );
    assert_eq!(encrypt, V1_ENCRYPT);
}

#[test]
fn v1_end_to_end_verify_open_parse() {
    let key = official_key();
    let body = format!(r#"{{"ToUserName":"gh_97417a04a28d","Encrypt":"{V1_ENCRYPT}"}}"#);
    let verified = push::verify(&v1_query(), body.as_bytes(), Format::Json, &creds(&key))
        .expect("V1 verifies");
    assert_eq!(verified.mode(), Mode::Safe);
    assert_eq!(verified.format(), Format::Json);
    assert_eq!(verified.timestamp(), 1714112445);

    let opened = verified.open(&creds(&key)).expect("V1 opens");
    assert_eq!(opened.payload, V1_MSG.as_bytes());
    let message = opened.parse().expect("V1 parses");
    assert_eq!(message.to_user_name, "gh_97417a04a28d");
    assert_eq!(
        message.from_user_name,
        OpenId::new("o9AgO5Kd5ggOC-bXrbNODIiE3bGY")
    );
    assert_eq!(message.create_time, 1714112445);
    assert_eq!(message.msg_type(), "event");
    assert_eq!(message.event(), Some("debug_demo"));
    let MessageBody::Other { fields, .. } = &message.body else {
        panic!("debug_demo is not a typed kind: {message:?}");
    };
    assert_eq!(
        fields.get("debug_str").map(String::as_str),
        Some("hello world")
    );
}

#[test]
fn v1_plaintext_companion() {
    assert_eq!(
        signature::sign(&[TOKEN, "1714037059", "486452656"]),
        "899cf89e464efb63f54ddac96b0a0a235f53aa78"
    );
    let query = PushQuery {
        signature: Some("899cf89e464efb63f54ddac96b0a0a235f53aa78".into()),
        timestamp: Some("1714037059".into()),
        nonce: Some("486452656".into()),
        ..PushQuery::default()
    };
    let key = official_key();
    let verified = push::verify(&query, V1_MSG.as_bytes(), Format::Json, &creds(&key))
        .expect("plaintext verifies");
    assert_eq!(verified.mode(), Mode::Plaintext);
    let opened = verified.open(&creds(&key)).expect("plaintext opens");
    assert_eq!(opened.payload, V1_MSG.as_bytes());
    assert_eq!(opened.parse().expect("parses").event(), Some("debug_demo"));
}

#[test]
fn v2_reply_encryption() {
    let envelope = reply::encrypted_reply_with_random(
        &official_key(),
        TOKEN,
        APPID,
        r#"{"demo_resp":"good luck"}"#,
        1713424427,
        "415670741",
        Format::Json,
        &random("707722b803182950"),
    );
    // Byte for byte the official final example.
    assert_eq!(
        envelope,
        r#"{"Encrypt":"ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ==","MsgSignature":"1b9339964ed2e271e7c7b6ff2b0ef902fc94dea1","TimeStamp":1713424427,"Nonce":"415670741"}"#
    );
}

#[test]
fn v2_reply_envelope_in_xml() {
    let envelope = reply::encrypted_reply_with_random(
        &official_key(),
        TOKEN,
        APPID,
        r#"{"demo_resp":"good luck"}"#,
        1713424427,
        "415670741",
        Format::Xml,
        &random("707722b803182950"),
    );
    assert_eq!(
        envelope,
        "<xml><Encrypt><![CDATA[ELGduP2YcVatjqIS+eZbp80MNLoAUWvzzyJxgGzxZO/5sAvd070Bs6qrLARC9nVHm48Y4hyRbtzve1L32tmxSQ==]]></Encrypt>\
         <MsgSignature><![CDATA[1b9339964ed2e271e7c7b6ff2b0ef902fc94dea1]]></MsgSignature>\
         <TimeStamp>1713424427</TimeStamp><Nonce><![CDATA[415670741]]></Nonce></xml>"
    );
}

#[test]
fn transfer_customer_service_derived_example() {
    let text = br#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"text","Content":"hi","MsgId":1}"#;
    let message = codec::parse(Format::Json, text).expect("text message");
    let packet = reply::transfer_customer_service(&message, 1714112446, Format::Json);
    assert_eq!(
        packet,
        r#"{"ToUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","FromUserName":"gh_97417a04a28d","CreateTime":1714112446,"MsgType":"transfer_customer_service"}"#
    );
    assert_eq!(
        reply::transfer_customer_service(&message, 1714112446, Format::Xml),
        "<xml><ToUserName><![CDATA[o9AgO5Kd5ggOC-bXrbNODIiE3bGY]]></ToUserName>\
         <FromUserName><![CDATA[gh_97417a04a28d]]></FromUserName>\
         <CreateTime>1714112446</CreateTime>\
         <MsgType><![CDATA[transfer_customer_service]]></MsgType></xml>"
    );

    let sealed = reply::encrypted_reply_with_random(
        &official_key(),
        TOKEN,
        APPID,
        &packet,
        1714112446,
        "415670741",
        Format::Json,
        &random("fedcba9876543210"),
    );
    let sealed: serde_json::Value = serde_json::from_str(&sealed).expect("JSON envelope");
    assert_eq!(
        sealed["MsgSignature"],
        "18649ca601e8a12ec81ae42dac7c3d2c623a00eb"
    );
    let encrypt = sealed["Encrypt"].as_str().expect("Encrypt is a string");
    let opened = crypto::decrypt(&official_key(), encrypt, APPID).expect("reply decrypts");
    assert_eq!(opened, packet.as_bytes());
}

#[test]
fn v3_wxjava_vector() {
    let key = AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
        .expect("V3 key");
    let appid = "wxb11529c136998cb6";
    let expected =
        "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg==";
    let encrypt = crypto::encrypt_with_random(
        &key,
        "我是中文abcd123".as_bytes(),
        appid,
        &random("aaaabbbbccccdddd"),
    );
    assert_eq!(encrypt, expected);
    assert_eq!(
        signature::sign(&["pamtest", "1409304348", "xxxxxx", expected]),
        "82c962d39941aa48552f90ef55aa323dc620cc10"
    );
    assert_eq!(
        crypto::decrypt(&key, expected, appid).expect("V3 decrypts"),
        "我是中文abcd123".as_bytes()
    );
}

#[test]
fn v5_key_derivation() {
    // Only the key of V5 is fully given; it must derive like any other 43-character key.
    assert!(AesKey::from_encoding_aes_key("kWxPEV2UEDyxWpmPdKC3F4dgPDmOvfKX1HGnEUDS1aR").is_ok());
}

const V6_ENCRYPT: &str = "uMMzGtqcnpOzXOYBwDQNrSp2HE7Ry0URdHaF455pfjEAtCA3xz23LYOeokDKfxUCwAzp4Ci/koaSDFE8W4IRXL0orHJrkDM7xNTguKIpK1GH6zlvkVwNUBfATDGKBy2UEruYK/2xvXSMehTwvmhv0myOFwxT9rEK+50v0AKmzyAE9uyxT43WXBJXUX4ooSX++sUqI33U+G82row7dCaSc4Oo1hLMgvpb2n8T7lkP6XMZgeMu2FPCHgbw8pR2I6qWQpbID6qL81swrV+3FiGWuFu2GLhMO34flOXbP3Fxcis=";
const V6_MSG: &str = r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"text","Content":"你好","MsgId":22876340532172986}"#;

#[test]
fn v6_encrypts_exactly() {
    assert_eq!(V6_MSG.len(), 164);
    let encrypt = crypto::encrypt_with_random(
        &official_key(),
        V6_MSG.as_bytes(),
        APPID,
        &random("0123456789abcdef"),
    );
    assert_eq!(encrypt, V6_ENCRYPT);
    assert_eq!(
        signature::sign(&[TOKEN, V1_TIMESTAMP, V1_NONCE, V6_ENCRYPT]),
        "2e4fb0821b8b57bef2c74ea4634008f2d46f2fe7"
    );
}

#[test]
fn v6_int64_msg_id_survives_decrypt_and_parse() {
    let key = official_key();
    let query = PushQuery {
        msg_signature: Some("2e4fb0821b8b57bef2c74ea4634008f2d46f2fe7".into()),
        ..v1_query()
    };
    let body = format!(r#"{{"ToUserName":"gh_97417a04a28d","Encrypt":"{V6_ENCRYPT}"}}"#);
    let message = push::verify(&query, body.as_bytes(), Format::Json, &creds(&key))
        .expect("V6 verifies")
        .open(&creds(&key))
        .expect("V6 opens")
        .parse()
        .expect("V6 parses");
    assert_eq!(
        message.msg_id().map(|id| id.as_str()),
        Some("22876340532172986"),
        "2^53 < id: must not pass through a float"
    );
    assert_eq!(message.text(), Some("你好"));
    assert!(message.is_user_message());
    // Written back, the id is still the same bare number.
    assert!(codec::to_json(&message).contains(r#""MsgId":22876340532172986"#));
}
