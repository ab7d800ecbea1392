//! Ciphertexts: never panic, both as raw text and as valid base64 of the input (which reaches
//! the AES and framing checks).
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::crypto::{self, AesKey};
use libfuzzer_sys::fuzz_target;

const APPID: &str = "wxba5fad812f8e6fb9";

fuzz_target!(|data: &[u8]| {
    let key = AesKey::from_encoding_aes_key("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .expect("valid key");
    let _ = crypto::decrypt(&key, &String::from_utf8_lossy(data), APPID);
    if let Ok(msg) = crypto::decrypt(&key, &STANDARD.encode(data), APPID) {
        // What opens must be what a fresh encryption of it opens to.
        let again = crypto::encrypt(&key, &msg, APPID);
        assert_eq!(crypto::decrypt(&key, &again, APPID), Ok(msg));
    }
});
