//! WeChat's SHA-1 signatures: `signature` and `msg_signature`.
//!
//! Both are `lower_hex(sha1(concat(sort_bytewise(parts))))`, over token, timestamp and nonce —
//! plus the `Encrypt` text for `msg_signature`. Parts are taken exactly as received; nothing is
//! trimmed or re-encoded, because WeChat signs the bytes it sent.
//!
//! Verification compares digests in constant time, so a caller learns nothing from timing about
//! how much of a forged signature was right.

use sha1::{Digest, Sha1};
use subtle::ConstantTimeEq;

const DIGEST_LEN: usize = 20;

fn digest(parts: &[&str]) -> [u8; DIGEST_LEN] {
    let mut sorted = parts.to_vec();
    // `str` orders by bytes, which is the order WeChat sorts in.
    sorted.sort_unstable();
    let mut hasher = Sha1::new();
    for part in sorted {
        hasher.update(part.as_bytes());
    }
    hasher.finalize().into()
}

/// Signs `parts`: sort bytewise, concatenate, SHA-1, lowercase hex (40 characters).
pub fn sign(parts: &[&str]) -> String {
    hex::encode(digest(parts))
}

/// Whether `expected_hex` is the signature of `parts`.
///
/// Hex case is ignored; anything that is not 40 hex digits is simply a wrong signature.
pub fn verify(parts: &[&str], expected_hex: &str) -> bool {
    let mut expected = [0u8; DIGEST_LEN];
    if hex::decode_to_slice(expected_hex, &mut expected).is_err() {
        return false;
    }
    digest(parts).ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The official URL-verification vector (docs/wechat-protocol.md §8).
    const URL_PARTS: [&str; 3] = ["AAAAA", "1714036504", "1514711492"];
    const URL_SIGNATURE: &str = "f464b24fc39322e44b38aa78f5edd27bd1441696";

    #[test]
    fn signs_the_official_vector_in_any_input_order() {
        assert_eq!(sign(&URL_PARTS), URL_SIGNATURE);
        assert_eq!(sign(&["1514711492", "AAAAA", "1714036504"]), URL_SIGNATURE);
    }

    #[test]
    fn verify_accepts_either_case() {
        assert!(verify(&URL_PARTS, URL_SIGNATURE));
        assert!(verify(&URL_PARTS, &URL_SIGNATURE.to_uppercase()));
    }

    #[test]
    fn verify_rejects_wrong_or_malformed_signatures() {
        let mut flipped = URL_SIGNATURE.to_owned();
        flipped.replace_range(39.., "7");
        for candidate in [
            flipped.as_str(),
            &URL_SIGNATURE[..38],
            "",
            "zz64b24fc39322e44b38aa78f5edd27bd1441696",
            "f464b24fc39322e44b38aa78f5edd27bd144169600",
        ] {
            assert!(!verify(&URL_PARTS, candidate), "{candidate:?}");
        }
        assert!(!verify(
            &["AAAAB", "1714036504", "1514711492"],
            URL_SIGNATURE
        ));
    }
}
