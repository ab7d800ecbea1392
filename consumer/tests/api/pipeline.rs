//! The consumer group end to end on the real Kafka: poison records, per-user order with
//! concurrency, a crash mid-batch (a `kill -9` of the real binary), graceful shutdown, endpoints.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::message::{Headers, Message as _};
use wiremock::matchers::path;
use wiremock::Mock;

use crate::helpers::*;

const ECHO: &str =
    "[[rule]]\nname = \"echo\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"{content}\"\n";

fn finished(app: &TestApp) -> f64 {
    ["replied", "skipped", "dead_lettered"]
        .iter()
        .map(|o| app.metric("consumer_records_total", &[("outcome", o)]))
        .sum()
}

#[tokio::test]
async fn poison_records_are_dead_lettered_with_the_reason_and_offsets_advance() {
    let h = Harness::new(ECHO).await;
    h.create_topics().await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 1).await;
    let good = text("o-good", "1", "fine");
    let unknown_version = br#"{"v":9,"app":"demo"}"#.to_vec();
    produce(
        &h.settings.kafka.inbound_topic,
        &[
            ("demo:o-bad".into(), b"\x00not json".to_vec()),
            ("demo:o-new".into(), unknown_version.clone()),
            ("demo:o-good".into(), bytes(&good)),
        ],
    )
    .await;
    let app = spawn_app(&h).await;

    assert!(
        eventually(Duration::from_secs(30), || async {
            total_committed(&h).await == 3
        })
        .await,
        "all three offsets are committed, poison included"
    );
    let letters = read_topic(
        &h.settings.kafka.dead_letter_topic,
        1,
        2,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(letters.len(), 2);
    let mut reasons = HashMap::new();
    for letter in &letters {
        let headers = letter.headers().expect("headers");
        let reason = headers
            .iter()
            .find(|h| h.key == "wxkf-dlq-reason")
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .expect("reason header");
        let body: consumer::dead_letter::DeadLetterRecord =
            serde_json::from_slice(letter.payload().expect("body")).expect("dead letter json");
        assert_eq!(body.reason, reason);
        assert_eq!(body.source.topic, h.settings.kafka.inbound_topic);
        assert_eq!(letter.key(), body.source.key.as_deref().map(str::as_bytes));
        reasons.insert(reason, body.original().expect("base64"));
    }
    assert_eq!(reasons["undecodable"], b"\x00not json");
    assert_eq!(reasons["unknown_version"], unknown_version);
    let lag_reported = eventually(Duration::from_secs(10), || async {
        app.get("/metrics")
            .await
            .text()
            .await
            .unwrap_or_default()
            .contains("consumer_lag_records{partition=")
    });
    assert!(lag_reported.await, "lag per partition is reported");
    assert_eq!(
        app.metric("consumer_dead_letters_total", &[("reason", "undecodable")]),
        1.0
    );
    assert_eq!(
        app.metric("consumer_records_total", &[("outcome", "replied")]),
        1.0
    );
    app.stop().await;
    h.wechat.verify().await;
}

#[tokio::test]
async fn one_users_records_stay_in_order_and_a_slow_user_holds_back_no_one() {
    let mut h = Harness::new(ECHO).await;
    // One partition: every user shares it, so only per-key concurrency can keep them moving.
    h.settings.kafka.topics.inbound_partitions = 1;
    h.create_topics().await;
    h.mount_token().await;
    Mock::given(path(SEND))
        .and(wiremock::matchers::body_partial_json(
            serde_json::json!({"touser": "o-slow"}),
        ))
        .respond_with(ok().set_delay(Duration::from_millis(1500)))
        .expect(2)
        .mount(&h.wechat)
        .await;
    h.expect_calls(SEND, ok(), 20).await;
    let mut envs = vec![
        text("o-slow", "s1", "slow-1"),
        text("o-slow", "s2", "slow-2"),
    ];
    for n in 0..5 {
        for user in 0..4 {
            envs.push(text(
                &format!("o-{user}"),
                &format!("{user}-{n}"),
                &format!("msg-{n}"),
            ));
        }
    }
    produce_envelopes(&h.settings.kafka.inbound_topic, &envs).await;
    let app = spawn_app(&h).await;

    assert!(
        eventually(Duration::from_secs(30), || async { finished(&app) == 22.0 }).await,
        "all 22 records finish"
    );
    let sends = received(&h.wechat, SEND).await;
    let order = |user: &str| -> Vec<String> {
        sends
            .iter()
            .filter(|s| s["touser"] == user)
            .map(|s| s["text"]["content"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(order("o-slow"), ["slow-1", "slow-2"]);
    for user in 0..4 {
        let expected: Vec<String> = (0..5).map(|n| format!("msg-{n}")).collect();
        assert_eq!(
            order(&format!("o-{user}")),
            expected,
            "user {user} in order"
        );
    }
    let second_slow = sends
        .iter()
        .position(|s| s["text"]["content"] == "slow-2")
        .expect("slow-2");
    assert_eq!(
        second_slow,
        sends.len() - 1,
        "the slow user's backlog delayed no one else"
    );
    app.stop().await;
    h.wechat.verify().await;
}

/// The environment that makes the real binary use `h.settings`.
fn child_env(h: &Harness) -> Vec<(String, String)> {
    let s = &h.settings;
    let dur = |d: Duration| format!("{}ms", d.as_millis());
    let vars = [
        ("SERVER__PORT", "0".to_owned()),
        ("KAFKA__BROKERS", s.kafka.brokers.clone()),
        ("KAFKA__GROUP_ID", s.kafka.group_id.clone()),
        ("KAFKA__INBOUND_TOPIC", s.kafka.inbound_topic.clone()),
        (
            "KAFKA__DEAD_LETTER_TOPIC",
            s.kafka.dead_letter_topic.clone(),
        ),
        ("KAFKA__HANDOFF_TOPIC", s.kafka.handoff_topic.clone()),
        ("KAFKA__SESSION_TIMEOUT", dur(s.kafka.session_timeout)),
        ("KAFKA__COMMIT_INTERVAL", dur(s.kafka.commit_interval)),
        (
            "PROCESSING__MAX_IN_FLIGHT_KEYS",
            s.processing.max_in_flight_keys.to_string(),
        ),
        ("REDIS__URL", redis_url()),
        ("REDIS__KEY_PREFIX", s.redis.key_prefix.clone()),
        ("WECHAT__BASE_URL", s.wechat.base_url.as_str().to_owned()),
        ("WECHAT__TIMEOUT", dur(s.wechat.timeout)),
        ("WECHAT__TOKEN_WAIT", dur(s.wechat.token_wait)),
        ("LEDGER__SENDING_LEASE", dur(s.ledger.sending_lease)),
        ("RULES__PATH", s.rules.path.display().to_string()),
        ("APPS__DEMO__APPID", APPID.to_owned()),
        ("APPS__DEMO__SECRET", "test-secret".to_owned()),
    ];
    vars.into_iter()
        .map(|(k, v)| (format!("CONSUMER__{k}"), v))
        .collect()
}

#[tokio::test]
async fn a_crash_mid_batch_redelivers_everything_without_a_second_send() {
    let mut h = Harness::new(ECHO).await;
    h.settings.kafka.topics.inbound_partitions = 1;
    // Nothing is committed before the crash: the whole batch comes back.
    h.settings.kafka.commit_interval = Duration::from_secs(3600);
    h.settings.processing.max_in_flight_keys = 3;
    h.settings.wechat.timeout = Duration::from_secs(1);
    h.settings.wechat.token_wait = Duration::from_secs(1);
    h.settings.ledger.sending_lease = Duration::from_millis(2500);
    h.settings.validate().expect("valid");
    h.create_topics().await;
    h.mount_token().await;
    Mock::given(path(SEND))
        .respond_with(ok().set_delay(Duration::from_millis(300)))
        .mount(&h.wechat)
        .await;
    let envs: Vec<_> = (0..12)
        .map(|u| text(&format!("o-{u}"), &format!("m{u}"), "hi"))
        .collect();
    produce_envelopes(&h.settings.kafka.inbound_topic, &envs).await;

    let config_dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_consumer"))
        .env("CONSUMER_CONFIG_DIR", &config_dir)
        .env("APP_ENVIRONMENT", "test")
        .envs(child_env(&h))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the consumer binary starts");
    let started = eventually(Duration::from_secs(30), || async {
        received(&h.wechat, SEND).await.len() >= 4
    })
    .await;
    child.kill().expect("kill -9");
    child.wait().expect("reaped");
    assert!(
        started,
        "the first process sent some replies before the crash"
    );
    let before = received(&h.wechat, SEND).await.len();
    assert!(
        before < 12,
        "the crash happened mid-batch ({before} of 12 sent)"
    );
    assert_eq!(
        total_committed(&h).await,
        0,
        "a crashed process commits nothing"
    );

    let app = spawn_app(&h).await;
    assert!(
        eventually(Duration::from_secs(60), || async { finished(&app) == 12.0 }).await,
        "the second process finishes all 12 redelivered records"
    );
    let mut per_user: HashMap<String, usize> = HashMap::new();
    for send in received(&h.wechat, SEND).await {
        *per_user
            .entry(send["touser"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    assert!(
        per_user.values().all(|&n| n == 1),
        "no reply sent twice: {per_user:?}"
    );
    let ambiguous = app.metric("consumer_dead_letters_total", &[("reason", "ambiguous")]);
    let replied = app.metric("consumer_records_total", &[("outcome", "replied")]);
    assert_eq!(
        replied + ambiguous,
        12.0,
        "each record replied (now or before) or held as ambiguous"
    );
    assert!(
        12 - per_user.len() <= ambiguous as usize,
        "a reply never sent is held as ambiguous, not lost silently"
    );
    app.stop().await;
    assert_eq!(total_committed(&h).await, 12);
}

#[tokio::test]
async fn shutdown_finishes_records_in_flight_commits_and_answers_the_endpoints() {
    let h = Harness::new(ECHO).await;
    h.create_topics().await;
    h.mount_token().await;
    h.expect_calls(SEND, ok().set_delay(Duration::from_millis(800)), 3)
        .await;
    let app = spawn_app(&h).await;
    assert_eq!(app.get("/healthz").await.status(), 200);
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.get("/readyz").await.status() == 200
        })
        .await,
        "ready once consuming"
    );
    let envs: Vec<_> = (0..3)
        .map(|u| text(&format!("o-{u}"), &format!("m{u}"), "hi"))
        .collect();
    produce_envelopes(&h.settings.kafka.inbound_topic, &envs).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            received(&h.wechat, SEND).await.len() == 3
        })
        .await,
        "three sends in flight"
    );
    let metrics = app
        .get("/metrics")
        .await
        .text()
        .await
        .expect("metrics text");
    assert!(metrics.contains("consumer_in_flight_keys"), "{metrics}");
    assert!(
        metrics.contains("consumer_api_duration_seconds_bucket"),
        "{metrics}"
    );

    // SIGTERM while the three sends are still waiting for WeChat's answer.
    assert_eq!(
        app.metric("consumer_records_total", &[("outcome", "replied")]),
        0.0,
        "still in flight when the shutdown starts"
    );
    app.stop().await;

    assert_eq!(
        total_committed(&h).await,
        3,
        "in-flight records finished and were committed"
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn two_processes_share_the_partitions_and_a_rebalance_sends_nothing_twice() {
    let mut h = Harness::new(ECHO).await;
    h.settings.kafka.topics.inbound_partitions = 4;
    h.settings.processing.max_in_flight_keys = 4;
    h.create_topics().await;
    h.mount_token().await;
    // Slow enough that the first process alone needs ~12 s for the 60 records (4 users at a
    // time), far longer than the second one needs to join: the rebalance happens mid-stream.
    h.expect_calls(SEND, ok().set_delay(Duration::from_millis(800)), 60)
        .await;
    let mut envs = Vec::new();
    for n in 0..5 {
        for user in 0..12 {
            envs.push(text(
                &format!("o-{user}"),
                &format!("{user}-{n}"),
                &format!("{user}:{n}"),
            ));
        }
    }
    produce_envelopes(&h.settings.kafka.inbound_topic, &envs).await;

    let first = spawn_app(&h).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            received(&h.wechat, SEND).await.len() >= 4
        })
        .await,
        "the first process is sending"
    );
    // A second member joins: the partitions are split, in-flight work is revoked and redelivered.
    let second = spawn_app(&h).await;
    assert!(
        eventually(Duration::from_secs(60), || async {
            total_committed(&h).await == 60
        })
        .await,
        "every record finished and committed"
    );
    assert!(
        finished(&second) > 0.0,
        "the second process took over partitions"
    );
    first.stop().await;
    second.stop().await;

    let sends = received(&h.wechat, SEND).await;
    let contents: Vec<String> = sends
        .iter()
        .map(|s| s["text"]["content"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut unique_contents = contents.clone();
    unique_contents.sort();
    unique_contents.dedup();
    assert_eq!(unique_contents.len(), 60, "every reply sent exactly once");
    for user in 0..12 {
        let of_user: Vec<&String> = contents
            .iter()
            .filter(|c| c.starts_with(&format!("{user}:")))
            .collect();
        let expected: Vec<String> = (0..5).map(|n| format!("{user}:{n}")).collect();
        assert_eq!(
            of_user,
            expected.iter().collect::<Vec<_>>(),
            "user {user} in order"
        );
    }
    h.wechat.verify().await;
}

#[tokio::test]
async fn records_held_up_past_the_poll_interval_pause_fetching_and_keep_the_partitions() {
    let mut h = Harness::new(ECHO).await;
    h.settings.kafka.topics.inbound_partitions = 1;
    // One user at a time and one record in hand: the second record already waits for a slot.
    h.settings.processing.max_in_flight_keys = 1;
    h.settings.processing.max_buffered_records = 1;
    // librdkafka drops a member that has not polled for this long (it must be ≥ the 6 s session).
    h.settings
        .kafka
        .properties
        .insert("max.poll.interval.ms".into(), "7000".into());
    h.create_topics().await;
    // The token endpoint is down, so the first record retries (transiently) until it heals.
    Mock::given(path(STABLE_TOKEN))
        .respond_with(wiremock::ResponseTemplate::new(503))
        .mount(&h.wechat)
        .await;
    h.expect_calls(SEND, ok(), 3).await;
    let envs: Vec<_> = (0..3)
        .map(|n| text(&format!("o-{n}"), &format!("m-{n}"), &format!("hello-{n}")))
        .collect();
    produce_envelopes(&h.settings.kafka.inbound_topic, &envs).await;
    let app = spawn_app(&h).await;

    assert!(
        eventually(Duration::from_secs(20), || async {
            app.metric("consumer_backpressure", &[]) == 1.0
        })
        .await,
        "fetching pauses while the records in hand fill the bounds"
    );
    // Held up well past max.poll.interval.ms: without polling, the group would drop the process.
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        app.metric("consumer_records_total", &[("outcome", "replied")]),
        0.0
    );
    mount_token_answer_with_priority(&h.wechat, TOKEN, 7200, 1).await;

    assert!(
        eventually(Duration::from_secs(30), || async { finished(&app) == 3.0 }).await,
        "all three records finish once the token endpoint heals"
    );
    assert_eq!(
        app.metric("consumer_records_total", &[("outcome", "replied")]),
        3.0
    );
    assert_eq!(
        app.metric("consumer_backpressure", &[]),
        0.0,
        "fetching resumed"
    );
    assert_eq!(
        app.metric("consumer_rebalances_total", &[("event", "revoke")]),
        0.0,
        "the process kept its partition through the whole wait"
    );
    assert_eq!(
        app.metric("consumer_rebalances_total", &[("event", "assign")]),
        1.0,
        "it joined once and never had to rejoin"
    );
    assert!(
        eventually(Duration::from_secs(10), || async {
            total_committed(&h).await == 3
        })
        .await,
        "all three offsets are committed"
    );
    app.stop().await;
    h.wechat.verify().await;
}
