//! Two-phase dedup: WeChat's retries, sequential or concurrent, never publish twice.

use common::codec::Format;
use common::envelope::{DedupStatus, Envelope};

use crate::helpers::*;

#[tokio::test]
async fn a_sequential_retry_is_answered_success_and_not_published_again() {
    let app = spawn_app().await;
    let message = text_message("u-retry", "hello");
    let first = push(&message, Format::Xml, PushMode::Safe, now());
    // WeChat's retry carries the same message; its query may differ, so re-sign it.
    let retry = push(&message, Format::Xml, PushMode::Safe, now());
    for p in [&first, &retry, &retry] {
        let response = app.post("xml", p).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), "success");
    }
    assert_eq!(record_count(app.topic()), 1);
    assert_eq!(
        app.metric("ingest_duplicates_total", &[("kind", "done")]),
        2.0
    );
    assert_eq!(
        app.metric("ingest_pushes_total", &[("outcome", "accepted")]),
        1.0
    );
    assert_eq!(
        app.metric("ingest_pushes_total", &[("outcome", "duplicate")]),
        2.0
    );
}

#[tokio::test]
async fn concurrent_identical_pushes_publish_exactly_one_record() {
    let app = spawn_app().await;
    for round in 0..5 {
        let message = text_message("u-storm", &format!("storm {round}"));
        let p = push(&message, Format::Json, PushMode::Safe, now());
        let answers = futures::future::join_all((0..8).map(|_| app.post("json", &p))).await;
        for answer in answers {
            assert_eq!(answer.status(), 200, "every delivery is answered success");
        }
    }
    let records = read_records(app.topic());
    assert_eq!(
        records.len(),
        5,
        "one record per message, however many deliveries"
    );
    assert!(records
        .iter()
        .all(|(_, Envelope::V1(r))| r.dedup == DedupStatus::Checked));
}

#[tokio::test]
async fn events_are_deduplicated_by_sender_time_and_event() {
    let app = spawn_app().await;
    let enter = |time: i64| {
        format!(
            r#"{{"ToUserName":"gh_97417a04a28d","FromUserName":"u-enter","CreateTime":{time},"MsgType":"event","Event":"user_enter_tempsession","SessionFrom":"wxapp"}}"#
        )
    };
    let t = now();
    for body in [enter(t), enter(t), enter(t + 1)] {
        let p = push_raw(&body, Format::Json, PushMode::Safe, now(), TOKEN);
        assert_eq!(app.post("json", &p).await.status(), 200);
    }
    assert_eq!(
        record_count(app.topic()),
        2,
        "same second is a retry, the next one is not"
    );
}

#[tokio::test]
async fn the_same_msg_id_for_two_apps_is_two_messages() {
    let app = spawn_app().await;
    let message = text_message("u-two-apps", "hello");
    let p = push(&message, Format::Json, PushMode::Plaintext, now());
    assert_eq!(app.post("json", &p).await.status(), 200);
    assert_eq!(app.post("sniff", &p).await.status(), 200);
    assert_eq!(record_count(app.topic()), 2);
}

#[tokio::test]
async fn every_stored_push_is_marked_done_after_its_answer() {
    let app = spawn_app().await;
    let messages: Vec<_> = (0..24)
        .map(|i| text_message(&format!("u-done-{i}"), &format!("mark {i}")))
        .collect();
    let pushes: Vec<_> = messages
        .iter()
        .map(|m| push(m, Format::Json, PushMode::Safe, now()))
        .collect();
    let answers = futures::future::join_all(pushes.iter().map(|p| app.post("json", p))).await;
    assert!(answers.iter().all(|a| a.status() == 200));

    // The marks are written after the answers, gathered in rounds: each claim reads `done`
    // shortly after, never stays `pending`.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = messages
        .iter()
        .map(|m| {
            format!(
                "{}{}",
                app.settings.redis.key_prefix,
                common::dedup::DedupKey::for_message("json", m)
            )
        })
        .collect();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await
            .unwrap();
        if values.iter().all(|v| v.as_deref() == Some("done")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "claims not marked done: {values:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.metric("ingest_dedup_errors_total", &[("op", "complete")]),
        0.0
    );
    // A retry now finds the mark and publishes nothing.
    let retry = app.post("json", &pushes[0]).await;
    assert_eq!(retry.status(), 200);
    assert_eq!(record_count(app.topic()), 24);
}
