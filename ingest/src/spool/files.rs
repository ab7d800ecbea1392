//! The spool directory on disk: segment files, the drain cursor, the lock, and reading them all
//! back at start.
//!
//! ```text
//! <dir>/LOCK                      held (flock) by the one process that owns this spool
//! <dir>/00000000000000000007.seg  segments, appended in order; the lowest number drains first
//! <dir>/cursor                    "<segment> <offset>": where draining resumes
//! ```
//!
//! The cursor is written after every drained batch (write to a temporary file, then rename), but
//! not fsynced: after a process crash it is exact; after a machine crash it may be one batch
//! behind, which republishes that batch — a duplicate the consumer's send ledger absorbs, never a
//! loss. Every other byte the spool answered `success` for was fsynced before the answer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::frame::{self, Decoded};

const SEGMENT_SUFFIX: &str = ".seg";
const CURSOR: &str = "cursor";
const LOCK: &str = "LOCK";

pub fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}{SEGMENT_SUFFIX}"))
}

/// Creates segment `seq` (empty) and makes its directory entry durable.
pub fn create_segment(dir: &Path, seq: u64) -> io::Result<File> {
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(segment_path(dir, seq))?;
    sync_dir(dir)?;
    Ok(file)
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Takes the spool's lock, so two processes never share one spool (each would drain and delete
/// the other's segments). Held as long as the returned file is open.
pub fn lock(dir: &Path) -> io::Result<File> {
    fs::create_dir_all(dir)?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(LOCK))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{} is locked by another process; every ingest process needs a spool directory \
                 of its own",
                dir.display()
            ),
        )),
        Err(fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Where draining resumes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub seq: u64,
    pub offset: u64,
}

pub fn write_cursor(dir: &Path, cursor: Cursor) -> io::Result<()> {
    let tmp = dir.join("cursor.tmp");
    let mut file = File::create(&tmp)?;
    writeln!(file, "{} {}", cursor.seq, cursor.offset)?;
    drop(file);
    fs::rename(tmp, dir.join(CURSOR))
}

/// The saved cursor; a missing or unreadable one means "from the start of the oldest segment".
fn read_cursor(dir: &Path) -> Option<Cursor> {
    let text = fs::read_to_string(dir.join(CURSOR)).ok()?;
    let mut parts = text.split_whitespace();
    let seq = parts.next()?.parse().ok()?;
    let offset = parts.next()?.parse().ok()?;
    Some(Cursor { seq, offset })
}

/// The segment numbers in `dir`, oldest first.
fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name
            .strip_suffix(SEGMENT_SUFFIX)
            .and_then(|s| s.parse().ok())
        {
            seqs.push(seq);
        }
    }
    seqs.sort_unstable();
    Ok(seqs)
}

/// A segment that still holds records to drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredSegment {
    pub seq: u64,
    /// Length of its intact records; anything after was cut off.
    pub len: u64,
}

/// What a spool directory held at start.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Segments with records left to drain, oldest first.
    pub segments: Vec<RecoveredSegment>,
    /// Where draining resumes in the first of them.
    pub cursor: u64,
    pub records: u64,
    pub bytes: u64,
    pub oldest_at_ms: Option<u64>,
    /// The number the next new segment gets.
    pub next_seq: u64,
    /// Bytes cut from the end of the newest segment: a write a crash interrupted. It was never
    /// fsynced, so never answered `success`.
    pub torn_bytes: u64,
    /// Bytes cut from older segments: damage to data that was fsynced (a disk fault).
    pub corrupt_bytes: u64,
}

/// Reads the spool back: drops segments already drained, truncates each segment after its last
/// intact record, and counts what is left.
pub fn recover(dir: &Path) -> io::Result<Recovered> {
    let seqs = list_segments(dir)?;
    let cursor = read_cursor(dir);
    // A new segment must sort after every segment and after the cursor's: a number at or below
    // the cursor's would be taken for drained at the next start.
    let next_seq = seqs
        .last()
        .copied()
        .into_iter()
        .chain(cursor.map(|c| c.seq))
        .max()
        .map_or(0, |seq| seq + 1);
    let mut recovered = Recovered {
        next_seq,
        ..Recovered::default()
    };
    let newest = seqs.last().copied();
    for seq in seqs {
        let path = segment_path(dir, seq);
        if cursor.is_some_and(|c| seq < c.seq) {
            fs::remove_file(&path)?;
            continue;
        }
        let bytes = fs::read(&path)?;
        let (records, intact) = frame::decode_all(&bytes);
        let cut = (bytes.len() - intact) as u64;
        if cut > 0 {
            if Some(seq) == newest {
                recovered.torn_bytes += cut;
            } else {
                recovered.corrupt_bytes += cut;
            }
            OpenOptions::new()
                .write(true)
                .open(&path)?
                .set_len(intact as u64)?;
        }
        // Skip what was drained before the restart.
        let start = match cursor {
            Some(c) if c.seq == seq => c.offset.min(intact as u64),
            _ => 0,
        };
        let mut at = 0u64;
        let mut left = 0u64;
        for record in records {
            let len = record.frame_len() as u64;
            if at >= start {
                left += 1;
                recovered.oldest_at_ms.get_or_insert(record.spooled_at_ms);
            }
            at += len;
        }
        if left == 0 {
            fs::remove_file(&path)?;
            continue;
        }
        if recovered.segments.is_empty() {
            recovered.cursor = start;
        }
        recovered.records += left;
        recovered.bytes += intact as u64 - start;
        recovered.segments.push(RecoveredSegment {
            seq,
            len: intact as u64,
        });
    }
    Ok(recovered)
}

/// Reads the intact records of a segment between `from` and `to` (at most `max` bytes of them).
/// Returns them with the offset just after the last one; an offset equal to `from` with bytes
/// left means the data there is damaged.
pub fn read_range(
    dir: &Path,
    seq: u64,
    from: u64,
    to: u64,
    max: u64,
) -> io::Result<(Vec<(frame::SpooledRecord, u64)>, u64)> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = File::open(segment_path(dir, seq))?;
    file.seek(SeekFrom::Start(from))?;
    let want = (to - from).min(max) as usize;
    let mut bytes = vec![0; want];
    file.read_exact(&mut bytes)?;
    let mut records = Vec::new();
    let mut at = 0usize;
    while let Decoded::Record { record, len } = frame::decode(&bytes[at..]) {
        at += len;
        records.push((record, from + at as u64));
    }
    Ok((records, from + at as u64))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn write(dir: &Path, seq: u64, frames: &[Vec<u8>]) {
        let mut file = create_segment(dir, seq).unwrap();
        for f in frames {
            file.write_all(f).unwrap();
        }
    }

    fn frame(i: u64) -> Vec<u8> {
        frame::encode(i, format!("app:u{i}").as_bytes(), b"{\"v\":1}").unwrap()
    }

    #[test]
    fn recovery_skips_what_was_drained_and_cuts_the_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, 3, &[frame(1), frame(2)]);
        let first_len = frame(1).len() as u64;
        let mut torn = frame(4);
        torn.truncate(torn.len() - 3);
        write(d, 4, &[frame(3), torn.clone()]);
        write_cursor(
            d,
            Cursor {
                seq: 3,
                offset: first_len,
            },
        )
        .unwrap();
        let r = recover(d).unwrap();
        assert_eq!(r.records, 2, "record 2, then record 3");
        assert_eq!(r.cursor, first_len);
        assert_eq!(r.oldest_at_ms, Some(2));
        assert_eq!(r.torn_bytes, torn.len() as u64);
        assert_eq!(r.corrupt_bytes, 0);
        assert_eq!(r.next_seq, 5);
        assert_eq!(
            fs::metadata(segment_path(d, 4)).unwrap().len(),
            frame(3).len() as u64,
            "the torn tail is cut from the file"
        );
    }

    #[test]
    fn drained_segments_are_removed_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, 0, &[frame(1)]);
        write(d, 1, &[frame(2)]);
        write_cursor(
            d,
            Cursor {
                seq: 1,
                offset: frame(2).len() as u64,
            },
        )
        .unwrap();
        let r = recover(d).unwrap();
        assert_eq!(r.records, 0);
        assert!(r.segments.is_empty());
        assert!(list_segments(d).unwrap().is_empty());
        assert_eq!(r.next_seq, 2, "numbers are never reused");
    }

    #[test]
    fn new_segments_sort_after_a_retired_one_the_cursor_names() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // Segment 7 was drained and removed while the process ran; only its cursor is left.
        write_cursor(d, Cursor { seq: 7, offset: 90 }).unwrap();
        assert_eq!(recover(d).unwrap().next_seq, 8);
    }

    #[test]
    fn a_second_process_cannot_take_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err();
        assert!(err.to_string().contains("another process"), "{err}");
    }
}
