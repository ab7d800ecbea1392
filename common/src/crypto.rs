//! WeChat message encryption (safe and compatible mode): AES-256-CBC with WeChat's framing.
//!
//! Layout of the plaintext before encryption (docs/wechat-protocol.md §4.2):
//!
//! ```text
//! random (16) | msg_len (u32, big-endian) | msg | appid | padding
//! ```
//!
//! padded to a multiple of **32** bytes PKCS#7-style (`pad` bytes of value `pad`, 1..=32), then
//! AES-256-CBC with key = the 32-byte AES key and IV = its first 16 bytes, no further padding,
//! then standard base64.
//!
//! [`decrypt`] is deliberately stricter than the SDKs: every padding byte is checked, the length
//! prefix is bounds-checked, and the trailing appid must equal the configured one (WxJava has that
//! comparison commented out). It never panics, whatever it is given; every index is checked.
//! It is not constant time — it does not need to be, because [`crate::push`] verifies
//! `msg_signature` (which covers the ciphertext) first, so an attacker without the token cannot
//! submit ciphertexts for a padding oracle.

use std::fmt;

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use secrecy::{ExposeSecret, SecretBox};

type Encryptor = cbc::Encryptor<aes::Aes256>;
type Decryptor = cbc::Decryptor<aes::Aes256>;

const KEY_LEN: usize = 32;
const IV_LEN: usize = 16;
const RANDOM_LEN: usize = 16;
const HEADER_LEN: usize = RANDOM_LEN + 4;
/// WeChat pads to the key length, not the AES block size.
const PAD_BLOCK: usize = 32;
const AES_BLOCK: usize = 16;
const ENCODING_AES_KEY_LEN: usize = 43;

/// Base64 as WeChat's peers write it, read leniently: a 43-character EncodingAESKey almost always
/// has non-zero trailing bits (the console draws random characters), and the ciphertext text is
/// authenticated by `msg_signature` before it is decoded, so leniency there costs nothing.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A Mini Program's 32-byte AES key. Zeroed on drop; never printed.
pub struct AesKey(SecretBox<[u8; KEY_LEN]>);

impl AesKey {
    /// Derives the key from the console's 43-character EncodingAESKey: `base64(s + "=")`.
    pub fn from_encoding_aes_key(encoding_aes_key: &str) -> Result<AesKey, CryptoError> {
        if encoding_aes_key.len() != ENCODING_AES_KEY_LEN {
            return Err(CryptoError::BadKey);
        }
        let mut padded = String::with_capacity(ENCODING_AES_KEY_LEN + 1);
        padded.push_str(encoding_aes_key);
        padded.push('=');
        let mut key = Box::new([0u8; KEY_LEN]);
        match LENIENT_BASE64.decode_slice(padded.as_bytes(), key.as_mut_slice()) {
            Ok(KEY_LEN) => Ok(AesKey(SecretBox::new(key))),
            _ => Err(CryptoError::BadKey),
        }
    }

    fn bytes(&self) -> &[u8; KEY_LEN] {
        self.0.expose_secret()
    }

    fn iv(&self) -> [u8; IV_LEN] {
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&self.bytes()[..IV_LEN]);
        iv
    }
}

impl Clone for AesKey {
    fn clone(&self) -> Self {
        AesKey(SecretBox::new(Box::new(*self.bytes())))
    }
}

impl fmt::Debug for AesKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AesKey(<redacted>)")
    }
}

/// Why a ciphertext could not be opened (or a key not derived). Never carries key material.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The EncodingAESKey is not 43 base64 characters decoding to 32 bytes.
    #[error("EncodingAESKey must be 43 base64 characters decoding to 32 bytes")]
    BadKey,
    /// The `Encrypt` text is not base64.
    #[error("ciphertext is not valid base64")]
    BadBase64,
    /// The ciphertext is shorter than 32 bytes or not whole AES blocks.
    #[error("ciphertext length {0} is not a multiple of 16 of at least 32")]
    BadLength(usize),
    /// The padding is not 1..=32 bytes all equal to their count (usually: wrong key).
    #[error("invalid padding after decryption (wrong key?)")]
    BadPadding,
    /// The length prefix points outside the decrypted data.
    #[error("message length prefix is out of bounds")]
    BadMessageLength,
    /// The ciphertext was made for another Mini Program.
    ///
    /// `actual` is shown only when it looks like an appid, so that garbage from a corrupted
    /// ciphertext (which might contain message text) never reaches a log.
    #[error("appid mismatch: expected {expected}, found {}", actual.as_deref().unwrap_or("<not an appid>"))]
    AppIdMismatch {
        expected: String,
        actual: Option<String>,
    },
}

impl CryptoError {
    /// A bounded label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            CryptoError::BadKey => "bad_key",
            CryptoError::BadBase64 => "bad_base64",
            CryptoError::BadLength(_) => "bad_length",
            CryptoError::BadPadding => "bad_padding",
            CryptoError::BadMessageLength => "bad_message_length",
            CryptoError::AppIdMismatch { .. } => "appid_mismatch",
        }
    }
}

/// Decrypts an `Encrypt` text and returns the message bytes, following docs/wechat-protocol.md §4.3 strictly.
pub fn decrypt(
    key: &AesKey,
    encrypt_b64: &str,
    expected_appid: &str,
) -> Result<Vec<u8>, CryptoError> {
    let mut data = LENIENT_BASE64
        .decode(encrypt_b64)
        .map_err(|_| CryptoError::BadBase64)?;
    if data.len() < PAD_BLOCK || data.len() % AES_BLOCK != 0 {
        return Err(CryptoError::BadLength(data.len()));
    }
    let cipher_len = data.len();
    let plain_len = Decryptor::new(key.bytes().into(), &key.iv().into())
        .decrypt_padded_mut::<NoPadding>(&mut data)
        .map_err(|_| CryptoError::BadLength(cipher_len))?
        .len();
    data.truncate(plain_len);

    let content = unpad(&data)?;
    let (_random, rest) = content
        .split_first_chunk::<RANDOM_LEN>()
        .ok_or(CryptoError::BadMessageLength)?;
    let (len_bytes, rest) = rest
        .split_first_chunk::<4>()
        .ok_or(CryptoError::BadMessageLength)?;
    let msg_len = usize::try_from(u32::from_be_bytes(*len_bytes))
        .map_err(|_| CryptoError::BadMessageLength)?;
    let (msg, appid) = rest
        .split_at_checked(msg_len)
        .ok_or(CryptoError::BadMessageLength)?;
    if appid != expected_appid.as_bytes() {
        return Err(CryptoError::AppIdMismatch {
            expected: expected_appid.to_owned(),
            actual: plausible_appid(appid),
        });
    }
    Ok(msg.to_vec())
}

/// Strips WeChat's 32-byte-block padding, checking every padding byte.
fn unpad(data: &[u8]) -> Result<&[u8], CryptoError> {
    let pad = *data.last().ok_or(CryptoError::BadPadding)?;
    let pad_len = usize::from(pad);
    if !(1..=PAD_BLOCK).contains(&pad_len) {
        return Err(CryptoError::BadPadding);
    }
    let content_len = data
        .len()
        .checked_sub(pad_len)
        .ok_or(CryptoError::BadPadding)?;
    let (content, padding) = data.split_at(content_len);
    if padding.iter().all(|&b| b == pad) {
        Ok(content)
    } else {
        Err(CryptoError::BadPadding)
    }
}

fn plausible_appid(bytes: &[u8]) -> Option<String> {
    let plausible = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    plausible.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// Encrypts `msg` for `appid` with 16 fresh random bytes; returns the base64 `Encrypt` text.
///
/// # Panics
///
/// If `msg` is longer than `u32::MAX` bytes, which the length prefix cannot express.
pub fn encrypt(key: &AesKey, msg: &[u8], appid: &str) -> String {
    encrypt_with_random(key, msg, appid, &rand::random())
}

/// [`encrypt`] with caller-chosen random bytes, for reproducing published test vectors.
///
/// Production code should call [`encrypt`]: reusing `random` makes equal messages encrypt equally.
///
/// # Panics
///
/// If `msg` is longer than `u32::MAX` bytes, which the length prefix cannot express.
pub fn encrypt_with_random(
    key: &AesKey,
    msg: &[u8],
    appid: &str,
    random: &[u8; RANDOM_LEN],
) -> String {
    let msg_len = u32::try_from(msg.len()).expect("message longer than u32::MAX bytes");
    let unpadded = HEADER_LEN + msg.len() + appid.len();
    // Always 1..=32: a full block of padding when the data is already aligned.
    let pad = PAD_BLOCK - unpadded % PAD_BLOCK;
    let mut data = Vec::with_capacity(unpadded + pad);
    data.extend_from_slice(random);
    data.extend_from_slice(&msg_len.to_be_bytes());
    data.extend_from_slice(msg);
    data.extend_from_slice(appid.as_bytes());
    // `pad` ≤ 32, so the cast cannot truncate.
    data.resize(unpadded + pad, pad as u8);

    let mut cipher = Encryptor::new(key.bytes().into(), &key.iv().into());
    for block in data.chunks_exact_mut(AES_BLOCK) {
        cipher.encrypt_block_mut(block.into());
    }
    STANDARD.encode(&data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zero_key() -> AesKey {
        AesKey::from_encoding_aes_key(&"A".repeat(43)).expect("valid key")
    }

    #[test]
    fn derives_the_documented_keys() {
        assert_eq!(zero_key().bytes(), &[0u8; 32]);
        let key = AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
            .expect("valid key with non-zero trailing bits");
        assert_eq!(
            hex::encode(key.bytes()),
            "69b71d79f8218a39259a7a29aabb2dbafc31cb3d35db7e39ebbf3d0010831051"
        );
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert_eq!(format!("{:?}", zero_key()), "AesKey(<redacted>)");
    }

    #[test]
    fn unpad_checks_every_byte() {
        let mut data = vec![7u8; 32];
        data[31] = 3;
        data[30] = 3;
        data[29] = 3;
        assert_eq!(unpad(&data).map(<[u8]>::len), Ok(29));
        data[29] = 4;
        assert_eq!(unpad(&data), Err(CryptoError::BadPadding));
        assert_eq!(unpad(&[0u8; 32]), Err(CryptoError::BadPadding));
        assert_eq!(unpad(&[33u8; 32]), Err(CryptoError::BadPadding));
        assert_eq!(unpad(&[]), Err(CryptoError::BadPadding));
    }

    #[test]
    fn appid_shown_only_when_plausible() {
        assert_eq!(
            plausible_appid(b"wxba5fad812f8e6fb9").as_deref(),
            Some("wxba5fad812f8e6fb9")
        );
        assert_eq!(plausible_appid(b"hello world"), None);
        assert_eq!(plausible_appid(b""), None);
        assert_eq!(plausible_appid(&[0xff, 0x00]), None);
    }
}
