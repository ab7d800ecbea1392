//! Pushes: never panic in verify, open or parse — for arbitrary queries and bodies, and for
//! correctly signed bodies carrying an arbitrary `Encrypt`, which reach decryption.
#![no_main]

use arbitrary::Arbitrary;
use common::codec::Format;
use common::crypto::AesKey;
use common::push::{self, AppCredentials, PushQuery};
use common::signature;
use libfuzzer_sys::fuzz_target;

const TOKEN: &str = "AAAAA";
const APPID: &str = "wxba5fad812f8e6fb9";

#[derive(Debug, Arbitrary)]
struct Input {
    signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    encrypt_type: Option<String>,
    msg_signature: Option<String>,
    xml: bool,
    /// Build a correctly signed encrypted body around `encrypt` instead of using `body`.
    signed: bool,
    encrypt: String,
    body: Vec<u8>,
}

fuzz_target!(|input: Input| {
    let key = AesKey::from_encoding_aes_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .expect("valid key");
    let creds = AppCredentials {
        token: TOKEN,
        aes_key: Some(&key),
        appid: APPID,
    };
    let format = if input.xml { Format::Xml } else { Format::Json };
    let mut query = PushQuery {
        signature: input.signature,
        timestamp: input.timestamp,
        nonce: input.nonce,
        encrypt_type: input.encrypt_type,
        msg_signature: input.msg_signature,
        ..PushQuery::default()
    };
    let body = if input.signed {
        let timestamp = query
            .timestamp
            .get_or_insert_with(|| "1714112445".into())
            .clone();
        let nonce = query
            .nonce
            .get_or_insert_with(|| "415670741".into())
            .clone();
        query.encrypt_type = Some("aes".into());
        query.msg_signature = Some(signature::sign(&[
            TOKEN,
            &timestamp,
            &nonce,
            &input.encrypt,
        ]));
        match format {
            Format::Xml => format!(
                "<xml><Encrypt><![CDATA[{}]]></Encrypt></xml>",
                input.encrypt.replace("]]>", "]]]]><![CDATA[>")
            )
            .into_bytes(),
            Format::Json => {
                let mut escaped = String::new();
                for ch in input.encrypt.chars() {
                    match ch {
                        '"' => escaped.push_str("\\\""),
                        '\\' => escaped.push_str("\\\\"),
                        c if u32::from(c) < 0x20 => {
                            escaped.push_str(&format!("\\u{:04x}", u32::from(c)))
                        }
                        c => escaped.push(c),
                    }
                }
                format!(r#"{{"Encrypt":"{escaped}"}}"#).into_bytes()
            }
        }
    } else {
        input.body
    };
    if let Ok(verified) = push::verify(&query, &body, format, &creds) {
        if let Ok(opened) = verified.open(&creds) {
            let _ = opened.parse();
        }
    }
});
