//! Sealing a push the way WeChat does: the inverse of [`crate::push::verify`] and
//! [`crate::push::VerifiedPush::open`].
//!
//! The pipeline itself never seals pushes; the WeChat simulator, the load generator and the tests
//! do, and they must agree byte for byte with what the edge verifies. So the one implementation
//! lives here, next to the verification it mirrors.

use crate::codec::Format;
use crate::crypto;
use crate::push::{AppCredentials, Mode};
use crate::signature;

/// A push ready to send: the query string (without `?`), the body, and its content type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedPush {
    pub query: String,
    pub body: String,
    pub content_type: &'static str,
}

/// Signs `plain` (a complete message in `format`) and, in compatible and safe mode, encrypts it
/// with `creds` (which then needs an AES key; without one the push is sealed in plaintext mode).
pub fn seal(
    plain: &str,
    format: Format,
    mode: Mode,
    creds: &AppCredentials<'_>,
    timestamp: i64,
    nonce: &str,
) -> SealedPush {
    let ts = timestamp.to_string();
    let signature = signature::sign(&[creds.token, &ts, nonce]);
    let content_type = match format {
        Format::Xml => "text/xml",
        Format::Json => "application/json",
    };
    let key = match (mode, creds.aes_key) {
        (Mode::Plaintext, _) | (_, None) => {
            return SealedPush {
                query: format!("signature={signature}&timestamp={ts}&nonce={nonce}"),
                body: plain.to_owned(),
                content_type,
            }
        }
        (_, Some(key)) => key,
    };
    let encrypt = crypto::encrypt(key, plain.as_bytes(), creds.appid);
    let msg_signature = signature::sign(&[creds.token, &ts, nonce, &encrypt]);
    let to_user_name = original_id(plain, format);
    // Base64 needs no escaping in either format; the plaintext copy of compatible mode is spliced
    // in verbatim so not even a MsgId's digits pass through a re-encoding.
    let body = match (format, mode) {
        (Format::Json, Mode::Compatible) => match plain.trim_end().strip_suffix('}') {
            Some(open) if open.trim_end().ends_with('{') => {
                format!("{open}\"Encrypt\":\"{encrypt}\"}}")
            }
            Some(open) => format!("{open},\"Encrypt\":\"{encrypt}\"}}"),
            None => format!("{{\"Encrypt\":\"{encrypt}\"}}"),
        },
        (Format::Xml, Mode::Compatible) => match plain.rfind("</xml>") {
            Some(end) => format!(
                "{}<Encrypt><![CDATA[{encrypt}]]></Encrypt>{}",
                &plain[..end],
                &plain[end..]
            ),
            None => format!("<xml><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"),
        },
        (Format::Json, _) => {
            format!("{{\"ToUserName\":\"{to_user_name}\",\"Encrypt\":\"{encrypt}\"}}")
        }
        (Format::Xml, _) => format!(
            "<xml><ToUserName><![CDATA[{to_user_name}]]></ToUserName>\
             <Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>"
        ),
    };
    SealedPush {
        query: format!(
            "signature={signature}&timestamp={ts}&nonce={nonce}&encrypt_type=aes\
             &msg_signature={msg_signature}"
        ),
        body,
        content_type,
    }
}

/// The `ToUserName` of the plaintext, repeated on the outside of a safe-mode push; empty if the
/// plaintext has none (or is not a message at all — sealing never fails).
fn original_id(plain: &str, format: Format) -> String {
    crate::codec::parse(format, plain.as_bytes())
        .map(|m| m.to_user_name)
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::AesKey;
    use crate::push::{verify, PushQuery};

    const PLAIN_JSON: &str = r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY","CreateTime":1714112445,"MsgType":"text","Content":"hi","MsgId":22876340532172986}"#;

    fn query(sealed: &SealedPush) -> PushQuery {
        let mut q = PushQuery::default();
        for pair in sealed.query.split('&') {
            let (k, v) = pair.split_once('=').expect("k=v");
            let v = Some(v.to_owned());
            match k {
                "signature" => q.signature = v,
                "timestamp" => q.timestamp = v,
                "nonce" => q.nonce = v,
                "encrypt_type" => q.encrypt_type = v,
                "msg_signature" => q.msg_signature = v,
                other => panic!("unexpected {other}"),
            }
        }
        q
    }

    #[test]
    fn every_sealed_mode_and_format_verifies_and_opens_to_the_plaintext() {
        let key = AesKey::from_encoding_aes_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
            .expect("key");
        let creds = AppCredentials {
            token: "AAAAA",
            aes_key: Some(&key),
            appid: "wxba5fad812f8e6fb9",
        };
        let message = crate::codec::parse(Format::Json, PLAIN_JSON.as_bytes()).expect("message");
        for format in [Format::Json, Format::Xml] {
            let plain = match format {
                Format::Json => PLAIN_JSON.to_owned(),
                Format::Xml => crate::codec::to_xml(&message),
            };
            for mode in [Mode::Plaintext, Mode::Compatible, Mode::Safe] {
                let sealed = seal(&plain, format, mode, &creds, 1714112445, "415670741");
                let verified = verify(&query(&sealed), sealed.body.as_bytes(), format, &creds)
                    .unwrap_or_else(|e| panic!("{format:?} {mode:?}: {e}"));
                assert_eq!(verified.mode(), mode, "{format:?}");
                let opened = verified.open(&creds).expect("opens");
                assert_eq!(opened.payload, plain.as_bytes(), "{format:?} {mode:?}");
                assert_eq!(opened.parse().expect("parses"), message);
            }
        }
    }
}
