//! `push::verify` / `open`: every refusal, the modes, and what each mode trusts.

use common::codec::{CodecError, Format};
use common::crypto::{self, AesKey, CryptoError};
use common::push::{self, AppCredentials, Mode, PushError, PushQuery};
use common::signature;

const TOKEN: &str = "AAAAA";
const APPID: &str = "wxba5fad812f8e6fb9";
const TIMESTAMP: &str = "1714112445";
const NONCE: &str = "415670741";
const MSG: &str = r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"text","Content":"hi","MsgId":22876340532172986}"#;

fn key() -> AesKey {
    AesKey::from_encoding_aes_key(&"A".repeat(43)).expect("valid key")
}

fn creds(key: &AesKey) -> AppCredentials<'_> {
    AppCredentials {
        token: TOKEN,
        aes_key: Some(key),
        appid: APPID,
    }
}

fn plaintext_query() -> PushQuery {
    PushQuery {
        signature: Some(signature::sign(&[TOKEN, TIMESTAMP, NONCE])),
        timestamp: Some(TIMESTAMP.into()),
        nonce: Some(NONCE.into()),
        ..PushQuery::default()
    }
}

fn encrypted_query(encrypt: &str) -> PushQuery {
    PushQuery {
        encrypt_type: Some("aes".into()),
        msg_signature: Some(signature::sign(&[TOKEN, TIMESTAMP, NONCE, encrypt])),
        openid: Some("o9AgO5Kd5ggOC-bXrbNODIiE3bGY".into()),
        ..plaintext_query()
    }
}

fn safe_json_body(encrypt: &str) -> String {
    format!(r#"{{"ToUserName":"gh_97417a04a28d","Encrypt":"{encrypt}"}}"#)
}

#[test]
fn safe_mode_in_xml() {
    let key = key();
    let encrypt = crypto::encrypt(&key, MSG.as_bytes(), APPID);
    let body = format!(
        "<xml><ToUserName><![CDATA[gh_97417a04a28d]]></ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
    );
    let verified = push::verify(
        &encrypted_query(&encrypt),
        body.as_bytes(),
        Format::Xml,
        &creds(&key),
    )
    .expect("verifies");
    assert_eq!(verified.mode(), Mode::Safe);
    assert_eq!(verified.format(), Format::Xml);
    let opened = verified.open(&creds(&key)).expect("opens");
    assert_eq!(opened.mode, Mode::Safe);
    assert_eq!(opened.payload, MSG.as_bytes());
}

#[test]
fn compatible_mode_uses_the_decrypted_message_not_the_plaintext_copy() {
    let key = key();
    let encrypt = crypto::encrypt(&key, MSG.as_bytes(), APPID);
    // The outer copy is unauthenticated; here it lies about the content.
    let body = format!(
        r#"{{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"text","Content":"forged","MsgId":1,"Encrypt":"{encrypt}"}}"#
    );
    let verified = push::verify(
        &encrypted_query(&encrypt),
        body.as_bytes(),
        Format::Json,
        &creds(&key),
    )
    .expect("verifies");
    assert_eq!(verified.mode(), Mode::Compatible);
    let message = verified
        .open(&creds(&key))
        .expect("opens")
        .parse()
        .expect("parses");
    assert_eq!(message.text(), Some("hi"));
    assert_eq!(
        message.msg_id().map(|id| id.as_str()),
        Some("22876340532172986")
    );
}

#[test]
fn plaintext_mode_passes_the_body_through() {
    let key = key();
    let verified = push::verify(
        &plaintext_query(),
        MSG.as_bytes(),
        Format::Json,
        &creds(&key),
    )
    .expect("verifies");
    assert_eq!(verified.mode(), Mode::Plaintext);
    assert_eq!(verified.timestamp(), 1714112445);
    // A plaintext-only app (no key) opens plaintext pushes too.
    let plain_creds = AppCredentials {
        aes_key: None,
        ..creds(&key)
    };
    let opened = verified.open(&plain_creds).expect("opens");
    assert_eq!(opened.payload, MSG.as_bytes());
    assert_eq!(opened.parse().expect("parses").text(), Some("hi"));
}

#[test]
fn missing_parameters() {
    let key = key();
    let encrypt = crypto::encrypt(&key, MSG.as_bytes(), APPID);
    let body = safe_json_body(&encrypt);
    type Strip = fn(&mut PushQuery);
    let cases: [(&str, Strip, &[u8]); 5] = [
        ("timestamp", |q| q.timestamp = None, MSG.as_bytes()),
        ("nonce", |q| q.nonce = None, MSG.as_bytes()),
        ("signature", |q| q.signature = None, MSG.as_bytes()),
        (
            "msg_signature",
            |q| {
                q.encrypt_type = Some("aes".into());
                q.msg_signature = None;
            },
            body.as_bytes(),
        ),
        (
            "timestamp",
            |q| {
                q.encrypt_type = Some("aes".into());
                q.timestamp = None;
            },
            body.as_bytes(),
        ),
    ];
    for (param, strip, body) in cases {
        let mut query = encrypted_query(&encrypt);
        query.encrypt_type = None;
        strip(&mut query);
        let error = push::verify(&query, body, Format::Json, &creds(&key)).expect_err(param);
        assert_eq!(error, PushError::MissingParam(param));
        assert_eq!(error.kind(), "missing_param");
    }
}

#[test]
fn bad_signatures() {
    let key = key();
    let mut query = plaintext_query();
    query.signature = Some("0".repeat(40));
    assert_eq!(
        push::verify(&query, MSG.as_bytes(), Format::Json, &creds(&key)).map(|_| ()),
        Err(PushError::BadSignature)
    );

    // Wrong token.
    let wrong_token = AppCredentials {
        token: "BBBBB",
        ..creds(&key)
    };
    assert_eq!(
        push::verify(
            &plaintext_query(),
            MSG.as_bytes(),
            Format::Json,
            &wrong_token
        )
        .map(|_| ()),
        Err(PushError::BadSignature)
    );

    // A tampered ciphertext no longer matches msg_signature, so it is never decrypted.
    let encrypt = crypto::encrypt_with_random(&key, MSG.as_bytes(), APPID, &[7; 16]);
    let query = encrypted_query(&encrypt);
    let tampered = encrypt.replacen(&encrypt[..4], "AAAA", 1);
    assert_ne!(tampered, encrypt);
    let error = push::verify(
        &query,
        safe_json_body(&tampered).as_bytes(),
        Format::Json,
        &creds(&key),
    )
    .map(|_| ())
    .expect_err("tampered");
    assert_eq!(error, PushError::BadSignature);
    assert_eq!(error.kind(), "bad_signature");

    // In encrypted mode the 3-part `signature` alone is not enough.
    let mut query = encrypted_query(&encrypt);
    query.msg_signature = query.signature.clone();
    assert_eq!(
        push::verify(
            &query,
            safe_json_body(&encrypt).as_bytes(),
            Format::Json,
            &creds(&key)
        )
        .map(|_| ()),
        Err(PushError::BadSignature)
    );
}

#[test]
fn encrypted_push_without_a_key() {
    let key = key();
    let encrypt = crypto::encrypt(&key, MSG.as_bytes(), APPID);
    let no_key = AppCredentials {
        aes_key: None,
        ..creds(&key)
    };
    let error = push::verify(
        &encrypted_query(&encrypt),
        safe_json_body(&encrypt).as_bytes(),
        Format::Json,
        &no_key,
    )
    .map(|_| ())
    .expect_err("no key");
    assert_eq!(error, PushError::NoKey);
    assert_eq!(error.kind(), "no_key");

    // Verified with a key, opened without one.
    let verified = push::verify(
        &encrypted_query(&encrypt),
        safe_json_body(&encrypt).as_bytes(),
        Format::Json,
        &creds(&key),
    )
    .expect("verifies");
    assert_eq!(verified.open(&no_key).map(|_| ()), Err(PushError::NoKey));
}

#[test]
fn malformed_encrypted_bodies() {
    let key = key();
    let encrypt = crypto::encrypt(&key, MSG.as_bytes(), APPID);
    let query = encrypted_query(&encrypt);
    let cases: [(&[u8], Format); 4] = [
        (br#"{"ToUserName":"gh_97417a04a28d"}"#, Format::Json),
        (b"<xml><ToUserName>gh</ToUserName></xml>", Format::Xml),
        (b"not a body", Format::Json),
        (b"<xml><Encrypt>", Format::Xml),
    ];
    for (body, format) in cases {
        let error = push::verify(&query, body, format, &creds(&key))
            .map(|_| ())
            .expect_err("malformed");
        assert!(matches!(error, PushError::Malformed(_)), "{error:?}");
        assert_eq!(error.kind(), "malformed");
    }
    assert_eq!(
        push::verify(&query, br#"{"a":1}"#, Format::Json, &creds(&key)).map(|_| ()),
        Err(PushError::Malformed(CodecError::MissingField("Encrypt")))
    );
}

#[test]
fn bad_timestamp_even_when_signed() {
    let key = key();
    for timestamp in ["soon", "-1", "1.5", ""] {
        let query = PushQuery {
            signature: Some(signature::sign(&[TOKEN, timestamp, NONCE])),
            timestamp: Some(timestamp.into()),
            nonce: Some(NONCE.into()),
            ..PushQuery::default()
        };
        let error = push::verify(&query, MSG.as_bytes(), Format::Json, &creds(&key))
            .map(|_| ())
            .expect_err(timestamp);
        assert_eq!(error, PushError::BadTimestamp);
        assert_eq!(error.kind(), "bad_timestamp");
    }
}

#[test]
fn wrong_appid_surfaces_on_open() {
    let key = key();
    let encrypt = crypto::encrypt(&key, MSG.as_bytes(), "wx_other_app");
    let verified = push::verify(
        &encrypted_query(&encrypt),
        safe_json_body(&encrypt).as_bytes(),
        Format::Json,
        &creds(&key),
    )
    .expect("signature is fine");
    let error = verified.open(&creds(&key)).map(|_| ()).expect_err("appid");
    assert_eq!(
        error,
        PushError::Crypto(CryptoError::AppIdMismatch {
            expected: APPID.into(),
            actual: Some("wx_other_app".into()),
        })
    );
    assert_eq!(error.kind(), "crypto");
}

#[test]
fn url_verification_refusals() {
    let good = PushQuery {
        signature: Some(signature::sign(&[TOKEN, TIMESTAMP, NONCE])),
        timestamp: Some(TIMESTAMP.into()),
        nonce: Some(NONCE.into()),
        echostr: Some("echo".into()),
        ..PushQuery::default()
    };
    assert_eq!(push::verify_url(&good, TOKEN), Ok("echo"));
    assert_eq!(
        push::verify_url(&good, "BBBBB"),
        Err(PushError::BadSignature)
    );
    let no_echo = PushQuery {
        echostr: None,
        ..good.clone()
    };
    assert_eq!(
        push::verify_url(&no_echo, TOKEN),
        Err(PushError::MissingParam("echostr"))
    );
    let no_signature = PushQuery {
        signature: None,
        ..good
    };
    assert_eq!(
        push::verify_url(&no_signature, TOKEN),
        Err(PushError::MissingParam("signature"))
    );
}

#[test]
fn query_deserializes_from_wechat_parameter_names() {
    let query: PushQuery = serde_json::from_str(
        r#"{"signature":"s","timestamp":"1","nonce":"n","openid":"o","encrypt_type":"aes","msg_signature":"m","unknown":"ignored"}"#,
    )
    .expect("query");
    assert_eq!(query.encrypt_type.as_deref(), Some("aes"));
    assert_eq!(query.msg_signature.as_deref(), Some("m"));
    assert_eq!(query.echostr, None);
}

#[test]
fn debug_output_shows_no_payload() {
    let key = key();
    let opened = push::verify(
        &plaintext_query(),
        MSG.as_bytes(),
        Format::Json,
        &creds(&key),
    )
    .expect("verifies")
    .open(&creds(&key))
    .expect("opens");
    let shown = format!("{opened:?}");
    assert!(!shown.contains("Content"), "{shown}");
    assert!(!shown.contains("22876340532172986"), "{shown}");
    assert!(shown.contains("payload_len"), "{shown}");
}

/// A rotation in progress: two live tokens and two live keys. Either token signs, either key
/// decrypts, and the caller learns which slot matched; a token or key no longer listed fails.
#[test]
fn rotation_accepts_every_live_token_and_key_and_says_which() {
    let new_key = AesKey::from_encoding_aes_key(&"B".repeat(43)).expect("valid key");
    let old_key = key();
    let encrypt = crypto::encrypt(&old_key, MSG.as_bytes(), APPID);
    let body = safe_json_body(&encrypt);
    // Signed with the old token (`TOKEN`), encrypted with the old key.
    let query = encrypted_query(&encrypt);
    let (verified, token_slot) = push::verify_any(
        &query,
        body.as_bytes(),
        Format::Json,
        &["new-token", TOKEN],
        true,
    )
    .expect("the previous token still signs");
    assert_eq!(token_slot, 1);
    let (opened, key_slot) = verified
        .open_any(&[&new_key, &old_key], APPID)
        .expect("the previous key still decrypts");
    assert_eq!(key_slot, Some(1));
    assert_eq!(opened.payload, MSG.as_bytes());

    let (verified, _) =
        push::verify_any(&query, body.as_bytes(), Format::Json, &[TOKEN], true).expect("signed");
    assert!(matches!(
        verified.open_any(&[&new_key], APPID),
        Err(PushError::Crypto(_))
    ));
    assert_eq!(
        push::verify_any(&query, body.as_bytes(), Format::Json, &["new-token"], true).map(|_| ()),
        Err(PushError::BadSignature)
    );

    let mut url = plaintext_query();
    url.echostr = Some("echo".into());
    assert_eq!(
        push::verify_url_any(&url, &["new-token", TOKEN]),
        Ok(("echo", 1))
    );
    assert_eq!(
        push::verify_url_any(&url, &[TOKEN, "other"]),
        Ok(("echo", 0))
    );
    assert_eq!(
        push::verify_url_any(&url, &["new-token"]),
        Err(PushError::BadSignature)
    );
}
