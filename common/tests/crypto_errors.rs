//! Every way a key or a ciphertext can be wrong is reached, and reported as itself.

use aes::cipher::{BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::crypto::{self, AesKey, CryptoError};

const APPID: &str = "wxba5fad812f8e6fb9";
/// 43 × `A`: the all-zero key, so raw ciphertexts can be built here with the same key and IV.
const ZERO_KEY: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

fn key() -> AesKey {
    AesKey::from_encoding_aes_key(ZERO_KEY).expect("valid key")
}

/// Encrypts `plaintext` (whole blocks) with the zero key and IV, bypassing WeChat's framing.
fn seal_raw(plaintext: &[u8]) -> String {
    assert_eq!(plaintext.len() % 16, 0, "whole blocks only");
    let mut data = plaintext.to_vec();
    let mut cipher = cbc::Encryptor::<aes::Aes256>::new(&[0u8; 32].into(), &[0u8; 16].into());
    for block in data.chunks_exact_mut(16) {
        cipher.encrypt_block_mut(block.into());
    }
    STANDARD.encode(data)
}

/// A WeChat frame with a caller-chosen length prefix and padding, padded to `total` bytes.
fn frame(msg_len: u32, body: &[u8], pad_byte: u8, total: usize) -> Vec<u8> {
    let mut data = vec![b'r'; 16];
    data.extend_from_slice(&msg_len.to_be_bytes());
    data.extend_from_slice(body);
    data.resize(total, pad_byte);
    data
}

#[test]
fn bad_keys() {
    for encoding_aes_key in [
        "",
        "A",
        &"A".repeat(42),
        &"A".repeat(44),
        // 43 bytes but not base64.
        &format!("{}*", "A".repeat(42)),
        // 43 bytes, non-ASCII.
        &format!("é{}", "A".repeat(41)),
    ] {
        assert_eq!(
            AesKey::from_encoding_aes_key(encoding_aes_key).map(|_| ()),
            Err(CryptoError::BadKey),
            "{encoding_aes_key:?}"
        );
    }
}

#[test]
fn bad_base64() {
    for text in ["not base64!", "AAAA AAAA", "A===", "é"] {
        assert_eq!(
            crypto::decrypt(&key(), text, APPID),
            Err(CryptoError::BadBase64),
            "{text:?}"
        );
    }
}

#[test]
fn bad_length() {
    for len in [0usize, 16, 31, 33, 48 + 1] {
        let text = STANDARD.encode(vec![0u8; len]);
        assert_eq!(
            crypto::decrypt(&key(), &text, APPID),
            Err(CryptoError::BadLength(len)),
            "{len} bytes"
        );
    }
}

#[test]
fn bad_padding() {
    let appid = APPID.as_bytes();
    let mut body = b"{}".to_vec();
    body.extend_from_slice(appid);
    // 16 + 4 + 2 + 18 = 40 bytes of content, so 24 bytes of padding in a 64-byte frame.
    let good = frame(2, &body, 24, 64);
    assert_eq!(
        crypto::decrypt(&key(), &seal_raw(&good), APPID),
        Ok(b"{}".to_vec()),
        "the well-formed frame opens"
    );

    let zero_pad = frame(2, &body, 0, 64);
    let oversized_pad = frame(2, &body, 33, 64);
    let mut uneven_pad = good.clone();
    uneven_pad[50] = 23;
    for (case, plaintext) in [
        ("pad 0", zero_pad),
        ("pad 33", oversized_pad),
        ("uneven", uneven_pad),
    ] {
        assert_eq!(
            crypto::decrypt(&key(), &seal_raw(&plaintext), APPID),
            Err(CryptoError::BadPadding),
            "{case}"
        );
    }
}

#[test]
fn bad_message_length() {
    // Length prefix beyond the data.
    let overlong = frame(1000, APPID.as_bytes(), 26, 64);
    // Content shorter than the 20-byte header: 32 bytes with 16 of padding leaves 16.
    let mut short = vec![b'r'; 16];
    short.resize(32, 16);
    // The largest prefix: must not overflow anything.
    let huge = frame(u32::MAX, APPID.as_bytes(), 26, 64);
    for (case, plaintext) in [("overlong", overlong), ("short", short), ("huge", huge)] {
        assert_eq!(
            crypto::decrypt(&key(), &seal_raw(&plaintext), APPID),
            Err(CryptoError::BadMessageLength),
            "{case}"
        );
    }
}

#[test]
fn wrong_appid() {
    let encrypt = crypto::encrypt(&key(), b"<xml/>", APPID);
    let error = crypto::decrypt(&key(), &encrypt, "wx0000000000000000").expect_err("wrong appid");
    assert_eq!(
        error,
        CryptoError::AppIdMismatch {
            expected: "wx0000000000000000".into(),
            actual: Some(APPID.into()),
        }
    );
    assert!(error.to_string().contains(APPID));
    assert_eq!(error.kind(), "appid_mismatch");

    // An appid suffix that is not appid-like is not echoed.
    let mut body = b"hi".to_vec();
    body.extend_from_slice(b"secret message text");
    let garbage = seal_raw(&frame(2, &body, 23, 64));
    assert_eq!(
        crypto::decrypt(&key(), &garbage, APPID),
        Err(CryptoError::AppIdMismatch {
            expected: APPID.into(),
            actual: None,
        })
    );
}

#[test]
fn wrong_key_does_not_open() {
    let encrypt = crypto::encrypt(&key(), b"{\"a\":1}", APPID);
    let other = AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
        .expect("valid key");
    assert!(crypto::decrypt(&other, &encrypt, APPID).is_err());
}

#[test]
fn tampered_ciphertext_does_not_open() {
    // 16 + 4 + 18 + 18 = 56 bytes of content, then 8 bytes of 0x08: a 64-byte ciphertext.
    let msg = br#"{"MsgType":"text"}"#;
    let encrypt = crypto::encrypt(&key(), msg, APPID);
    let original = STANDARD.decode(&encrypt).expect("own output is base64");
    assert_eq!(original.len(), 64);

    // In CBC a bit flipped in one ciphertext block flips the same bit of the next plaintext block.
    let mut pad_flip = original.clone();
    pad_flip[47] ^= 0x01; // last padding byte: 0x08 -> 0x09
    assert_eq!(
        crypto::decrypt(&key(), &STANDARD.encode(&pad_flip), APPID),
        Err(CryptoError::BadPadding)
    );

    let mut length_flip = original;
    length_flip[0] ^= 0x80; // first byte of the length prefix: 0x00 -> 0x80
    assert_eq!(
        crypto::decrypt(&key(), &STANDARD.encode(&length_flip), APPID),
        Err(CryptoError::BadMessageLength)
    );
}

#[test]
fn fresh_randomness_per_encryption() {
    let a = crypto::encrypt(&key(), b"same", APPID);
    let b = crypto::encrypt(&key(), b"same", APPID);
    assert_ne!(a, b, "16 random bytes lead every plaintext");
    assert_eq!(crypto::decrypt(&key(), &a, APPID), Ok(b"same".to_vec()));
    assert_eq!(crypto::decrypt(&key(), &b, APPID), Ok(b"same".to_vec()));
}

#[test]
fn aligned_data_gets_a_full_padding_block() {
    // 16 + 4 + 12 + 0 = 32 bytes: already aligned, so 32 bytes of 0x20 follow.
    let encrypt = crypto::encrypt_with_random(&key(), &[b'x'; 12], "", &[0u8; 16]);
    assert_eq!(STANDARD.decode(&encrypt).expect("base64").len(), 64);
    assert_eq!(crypto::decrypt(&key(), &encrypt, ""), Ok(vec![b'x'; 12]));
}
