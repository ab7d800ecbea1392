//! The on-disk form of one spooled record, and reading a segment back.
//!
//! ```text
//! frame := len:u32le  crc:u32le  body[len]
//! body  := spooled_at_ms:u64le  key_len:u16le  key[key_len]  value[..]
//! ```
//!
//! `crc` is the CRC-32 of `body`. A reader accepts a frame only when the whole of it is present
//! and the checksum matches, so a write cut short by a crash (a *torn tail*: never fsynced, so
//! never acknowledged) is recognised and never published as a record. A zero length is never
//! valid, which also catches the zero-filled tail some filesystems show after a power loss.

/// Bytes before the body: its length and its checksum.
pub const HEADER_LEN: usize = 8;
/// Bytes of the body before the key: the spool time and the key length.
const BODY_PREFIX_LEN: usize = 10;
/// Largest body a frame may declare. Pushes are bounded far below this (`server.max_body_bytes`);
/// a larger length can only be garbage.
pub const MAX_BODY_LEN: usize = 16 * 1024 * 1024;

/// One record as the spool holds it: the Kafka key and value it will be published with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpooledRecord {
    /// When the record was spooled, unix milliseconds (for the age of the oldest record).
    pub spooled_at_ms: u64,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

impl SpooledRecord {
    /// The length of this record's frame on disk.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + BODY_PREFIX_LEN + self.key.len() + self.value.len()
    }
}

/// The frame bytes of a record. Keys longer than `u16::MAX` cannot occur (a record key is an app
/// name and an openid); they are refused rather than cut.
pub fn encode(spooled_at_ms: u64, key: &[u8], value: &[u8]) -> Option<Vec<u8>> {
    let key_len = u16::try_from(key.len()).ok()?;
    let body_len = BODY_PREFIX_LEN + key.len() + value.len();
    if body_len > MAX_BODY_LEN {
        return None;
    }
    let mut frame = Vec::with_capacity(HEADER_LEN + body_len);
    frame.extend_from_slice(&(body_len as u32).to_le_bytes());
    frame.extend_from_slice(&[0; 4]);
    frame.extend_from_slice(&spooled_at_ms.to_le_bytes());
    frame.extend_from_slice(&key_len.to_le_bytes());
    frame.extend_from_slice(key);
    frame.extend_from_slice(value);
    let crc = crc32fast::hash(&frame[HEADER_LEN..]);
    frame[4..8].copy_from_slice(&crc.to_le_bytes());
    Some(frame)
}

/// What the bytes at some offset of a segment hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, intact frame of `len` bytes.
    Record { record: SpooledRecord, len: usize },
    /// No bytes at all: the clean end of the segment.
    End,
    /// Bytes that are not a whole intact frame: a torn tail, or corruption.
    Invalid,
}

/// Decodes the frame at the start of `bytes`.
pub fn decode(bytes: &[u8]) -> Decoded {
    if bytes.is_empty() {
        return Decoded::End;
    }
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return Decoded::Invalid;
    };
    let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(BODY_PREFIX_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Decoded::Invalid;
    }
    let Some(body) = bytes.get(HEADER_LEN..HEADER_LEN + body_len) else {
        return Decoded::Invalid;
    };
    if crc32fast::hash(body) != crc {
        return Decoded::Invalid;
    }
    let spooled_at_ms = u64::from_le_bytes([
        body[0], body[1], body[2], body[3], body[4], body[5], body[6], body[7],
    ]);
    let key_len = u16::from_le_bytes([body[8], body[9]]) as usize;
    let Some(key) = body.get(BODY_PREFIX_LEN..BODY_PREFIX_LEN + key_len) else {
        return Decoded::Invalid;
    };
    Decoded::Record {
        record: SpooledRecord {
            spooled_at_ms,
            key: key.to_vec(),
            value: body[BODY_PREFIX_LEN + key_len..].to_vec(),
        },
        len: HEADER_LEN + body_len,
    }
}

/// The intact records at the start of `bytes`, and the offset where they end: at the end of
/// `bytes`, or at the first byte that is not an intact frame.
pub fn decode_all(bytes: &[u8]) -> (Vec<SpooledRecord>, usize) {
    let mut records = Vec::new();
    let mut at = 0;
    while let Decoded::Record { record, len } = decode(&bytes[at..]) {
        records.push(record);
        at += len;
    }
    (records, at)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(at: u64, key: &str, value: &str) -> SpooledRecord {
        SpooledRecord {
            spooled_at_ms: at,
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
        }
    }

    fn frame_of(r: &SpooledRecord) -> Vec<u8> {
        encode(r.spooled_at_ms, &r.key, &r.value).expect("encodable")
    }

    #[test]
    fn a_frame_reads_back_whole() {
        let r = record(1_714_112_445_123, "shop:o9Ag", r#"{"v":1}"#);
        let frame = frame_of(&r);
        assert_eq!(r.frame_len(), frame.len());
        assert_eq!(
            decode(&frame),
            Decoded::Record {
                record: r,
                len: frame.len()
            }
        );
    }

    #[test]
    fn empty_input_is_the_end_and_zeros_are_invalid() {
        assert_eq!(decode(&[]), Decoded::End);
        assert_eq!(decode(&[0; 64]), Decoded::Invalid);
    }

    #[test]
    fn a_flipped_bit_anywhere_is_detected() {
        let frame = frame_of(&record(7, "k", "some value"));
        for byte in 0..frame.len() {
            for bit in 0..8 {
                let mut bad = frame.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&bad), Decoded::Record { len, .. } if len == frame.len()),
                    "flip of bit {bit} in byte {byte} went unnoticed"
                );
            }
        }
    }

    #[test]
    fn oversized_keys_are_refused_not_cut() {
        assert!(encode(0, &vec![b'k'; 70_000], b"v").is_none());
    }

    proptest! {
        /// A log cut at any byte reads back exactly the records wholly before the cut.
        #[test]
        fn a_torn_tail_yields_exactly_the_whole_records(
            values in proptest::collection::vec(".{0,40}", 1..12),
            cut_fraction in 0.0f64..1.0,
        ) {
            let records: Vec<_> = values
                .iter()
                .enumerate()
                .map(|(i, v)| record(i as u64, &format!("app:user-{i}"), v))
                .collect();
            let mut log = Vec::new();
            let mut ends = Vec::new();
            for r in &records {
                log.extend(frame_of(r));
                ends.push(log.len());
            }
            let cut = (log.len() as f64 * cut_fraction) as usize;
            let whole = ends.iter().filter(|&&end| end <= cut).count();
            let (read, valid_end) = decode_all(&log[..cut]);
            prop_assert_eq!(&read[..], &records[..whole]);
            prop_assert_eq!(valid_end, if whole == 0 { 0 } else { ends[whole - 1] });
        }

        /// No byte sequence makes the decoder panic or claim more than it was given.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let (_, end) = decode_all(&bytes);
            prop_assert!(end <= bytes.len());
        }
    }
}
