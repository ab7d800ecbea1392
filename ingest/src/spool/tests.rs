//! The spool on its own, on a real filesystem: appends read back in order, recovery after a crash
//! at any byte, the bounds, group commit. Draining into Kafka is tested against the real broker in
//! `ingest/tests/api/spool.rs`.

use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::files::{self, segment_path};
use super::frame::SpooledRecord;
use super::*;
use crate::config::{FsyncPolicy, SpoolSettings};
use crate::metrics::Metrics;

fn settings(dir: &Path) -> SpoolSettings {
    SpoolSettings {
        enabled: true,
        dir: dir.to_owned(),
        max_bytes: 64 * 1024 * 1024,
        max_age: None,
        segment_bytes: 64 * 1024,
        fsync: FsyncPolicy::Always,
        write_timeout: Duration::from_secs(5),
        shutdown_drain: Duration::ZERO,
    }
}

fn metrics() -> Metrics {
    Metrics::new(&prometheus::Registry::new()).unwrap()
}

fn open(settings: &SpoolSettings, metrics: &Metrics) -> Spool {
    let (spool, _drainer) = Spool::open(settings, metrics.spool.clone()).unwrap();
    spool
}

/// Everything the directory holds to drain, oldest first, the way the drainer reads it.
fn contents(dir: &Path) -> Vec<SpooledRecord> {
    let recovered = files::recover(dir).unwrap();
    let mut records = Vec::new();
    for (i, segment) in recovered.segments.iter().enumerate() {
        let from = if i == 0 { recovered.cursor } else { 0 };
        let (read, end) = files::read_range(dir, segment.seq, from, segment.len, u64::MAX).unwrap();
        assert_eq!(
            end, segment.len,
            "every byte up to the committed length is a record"
        );
        records.extend(read.into_iter().map(|(r, _)| r));
    }
    records
}

fn kv(records: &[SpooledRecord]) -> Vec<(String, String)> {
    records
        .iter()
        .map(|r| {
            (
                String::from_utf8(r.key.clone()).unwrap(),
                String::from_utf8(r.value.clone()).unwrap(),
            )
        })
        .collect()
}

/// Waits (bounded) until the writer thread of a dropped spool has let go of the directory.
async fn reopen(settings: &SpoolSettings, metrics: &Metrics) -> Spool {
    for _ in 0..200 {
        if let Ok((spool, _)) = Spool::open(settings, metrics.spool.clone()) {
            return spool;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the spool directory stayed locked after its handles were dropped");
}

#[tokio::test]
async fn appends_read_back_in_order_across_segments_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let m = metrics();
    let spool = open(&settings, &m);
    let value = "v".repeat(5000);
    let expected: Vec<_> = (0..40)
        .map(|i| (format!("app:user-{}", i % 3), format!("{i}:{value}")))
        .collect();
    for (k, v) in &expected {
        spool.append(k.as_bytes(), v.as_bytes()).await.unwrap();
    }
    assert!(spool.holds_records());
    assert_eq!(spool.stats().records, 40);
    assert_eq!(m.spool.appended.get(), 40);
    drop(spool);

    let segments = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "seg")
        })
        .count();
    assert!(segments > 1, "200 KB of records roll over 64 KiB segments");
    assert_eq!(kv(&contents(dir.path())), expected);

    let again = reopen(&settings, &m).await;
    assert!(
        again.holds_records(),
        "recovered records are still to drain"
    );
    assert_eq!(again.stats().records, 40);
}

#[tokio::test]
async fn a_full_spool_refuses_and_keeps_what_it_holds() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    let value = "x".repeat(300);
    let frame_len = frame::encode(0, b"app:u", value.as_bytes()).unwrap().len() as u64;
    settings.max_bytes = 3 * frame_len;
    let m = metrics();
    let spool = open(&settings, &m);
    for _ in 0..3 {
        spool.append(b"app:u", value.as_bytes()).await.unwrap();
    }
    let refused = spool.append(b"app:u", value.as_bytes()).await.unwrap_err();
    assert!(matches!(refused, SpoolError::Full { .. }), "{refused}");
    assert_eq!(refused.reason(), "full");
    assert_eq!(m.spool.refused.with_label_values(&["full"]).get(), 1);
    assert_eq!(spool.stats().records, 3);
    assert!(spool.stats().full);
    drop(spool);
    assert_eq!(contents(dir.path()).len(), 3);
}

#[tokio::test]
async fn a_spool_whose_oldest_record_is_too_old_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.max_age = Some(Duration::from_millis(50));
    let m = metrics();
    let spool = open(&settings, &m);
    spool.append(b"app:u", b"first").await.unwrap();
    tokio::time::sleep(Duration::from_millis(120)).await;
    let refused = spool.append(b"app:u", b"second").await.unwrap_err();
    assert!(matches!(refused, SpoolError::TooOld(_)), "{refused}");
    assert_eq!(spool.stats().records, 1);
}

#[test]
fn appends_queued_together_share_one_write_and_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let (spool, _drainer) = Spool::open(&settings(dir.path()), m.spool.clone()).unwrap();
    // Queue 100 appends before a writer runs, as concurrent pushes do while it is busy syncing.
    let (sender, receiver) = std::sync::mpsc::channel();
    let mut answers = Vec::new();
    for i in 0..100 {
        let (done, answer) = oneshot::channel();
        spool.shared.outstanding.fetch_add(1, Ordering::AcqRel);
        let frame = frame::encode(1, b"app:u", format!("{i}").as_bytes()).unwrap();
        sender.send(writer::Append { frame, done }).unwrap();
        answers.push(answer);
    }
    drop(sender);
    writer::run(spool.shared.clone(), receiver);
    for mut answer in answers {
        assert!(matches!(answer.try_recv(), Ok(Ok(()))));
    }
    assert_eq!(m.spool.batch_records.get_sample_count(), 1, "one commit");
    assert_eq!(m.spool.batch_records.get_sample_sum(), 100.0);
    assert_eq!(m.spool.fsync_duration.get_sample_count(), 1, "one fsync");
    drop(spool);
    let read = contents(dir.path());
    assert_eq!(read.len(), 100);
    assert_eq!(read[99].value, b"99");
}

#[tokio::test]
async fn concurrent_appends_all_land_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let m = metrics();
    let spool = open(&settings(dir.path()), &m);
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let spool = spool.clone();
            tokio::spawn(async move {
                spool
                    .append(format!("app:u{i}").as_bytes(), format!("{i}").as_bytes())
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    drop(spool);
    let mut values: Vec<u32> = contents(dir.path())
        .iter()
        .map(|r| std::str::from_utf8(&r.value).unwrap().parse().unwrap())
        .collect();
    values.sort_unstable();
    assert_eq!(values, (0..200).collect::<Vec<_>>());
    assert!(m.spool.batch_records.get_sample_count() <= 200);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// A crash can cut the newest segment at any byte. Reopened, the spool holds exactly the
    /// records wholly written before the cut, counts the cut bytes, and appends after them.
    #[test]
    fn recovery_after_a_crash_at_any_byte(count in 1usize..8, cut_fraction in 0.0f64..1.0) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let settings = settings(dir.path());
            let m = metrics();
            let spool = open(&settings, &m);
            for i in 0..count {
                spool.append(b"app:u", format!("record {i}").as_bytes()).await.unwrap();
            }
            drop(spool);
            let recovered = files::recover(dir.path()).unwrap();
            let seq = recovered.segments[0].seq;
            let full = recovered.segments[0].len;
            let cut = (full as f64 * cut_fraction) as u64;
            let file = std::fs::OpenOptions::new().write(true).open(segment_path(dir.path(), seq)).unwrap();
            file.set_len(cut).unwrap();
            drop(file);

            let frame_len = frame::encode(0, b"app:u", b"record 0").unwrap().len() as u64;
            let whole = (cut / frame_len) as usize;
            let m2 = metrics();
            let spool = reopen(&settings, &m2).await;
            prop_assert_eq!(spool.stats().records, whole as u64);
            prop_assert_eq!(
                m2.spool.discarded_bytes.with_label_values(&["torn_tail"]).get(),
                cut - whole as u64 * frame_len
            );
            spool.append(b"app:u", b"after").await.unwrap();
            drop(spool);
            let values: Vec<_> = contents(dir.path()).into_iter().map(|r| r.value).collect();
            let mut expected: Vec<Vec<u8>> = (0..whole).map(|i| format!("record {i}").into_bytes()).collect();
            expected.push(b"after".to_vec());
            prop_assert_eq!(values, expected);
            Ok(())
        })?;
    }
}
