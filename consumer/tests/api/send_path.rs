//! The send path under the conditions a review of it found: leases that must outlive long waits, marks
//! taken over by someone else, Redis answers that time out, gateway errors, rule reloads,
//! panics, and shutdown or a rebalance in the middle of a wait. Each test failed before its fix.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::envelope::EnvelopeV1;
use consumer::error::ProcessError;
use consumer::processor::{ClaimOwner, Outcome};
use rdkafka::message::{Headers, Message as _};
use wiremock::matchers::{body_partial_json, path};
use wiremock::{Mock, Request, Respond, ResponseTemplate};

use crate::helpers::*;
use crate::redis_proxy::{RedisProxy, Trigger};

const REPLY: &str =
    "[[rule]]\nname = \"r\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"answer\"\n";

fn reason_kind(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::DeadLettered(letter) => letter.reason.kind(),
        _ => "none",
    }
}

fn ledger_entries(h: &Harness) -> Vec<(String, String)> {
    let mut conn = redis_conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}ledger:*", h.settings.redis.key_prefix))
        .query(&mut conn)
        .expect("keys");
    keys.into_iter()
        .map(|k| {
            let v: String = redis::cmd("GET").arg(&k).query(&mut conn).expect("get");
            (k, v)
        })
        .collect()
}

/// Leases: a 45011 answer and its minute-quota backoff outlast the lease. A redelivery of the
/// record meanwhile (another process after a rebalance) must wait for the first sender's outcome,
/// not dead-letter a reply that is about to be sent as ambiguous.
#[tokio::test]
async fn the_lease_outlives_a_minute_quota_backoff_while_a_redelivery_waits() {
    let mut h = Harness::new(REPLY).await;
    h.settings.wechat.minute_quota_backoff = Duration::from_secs(9);
    h.settings.validate().expect("valid");
    h.mount_token().await;
    Mock::given(path(SEND))
        .respond_with(errcode(45011, "api minute-quota reach limit"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&h.wechat)
        .await;
    h.expect_calls(SEND, ok(), 1).await;
    let first_process = h.services().await;
    let second_process = h.services().await;
    let env = text("o-quota", "1", "q");

    let (first, second) = tokio::time::timeout(Duration::from_secs(40), async {
        tokio::join!(first_process.processor.process(&env), async {
            assert!(
                eventually(Duration::from_secs(10), || async {
                    !received(&h.wechat, SEND).await.is_empty()
                })
                .await,
                "the first attempt was made"
            );
            second_process.processor.process(&env).await
        })
    })
    .await
    .expect("both finish");

    assert_eq!(first.expect("first processed"), replied(1));
    assert_eq!(
        second.expect("second processed"),
        Outcome::Replied {
            sent: 0,
            already_sent: 1
        },
        "the redelivery waited for the live sender instead of giving the reply up"
    );
    h.wechat.verify().await;
}

/// Answers -1 and, while doing so, hands the ledger mark of the reply to another owner (as a
/// redelivery elsewhere would after the lease ran out).
struct TakeOverMark {
    prefix: String,
    calls: Arc<AtomicUsize>,
}

impl Respond for TakeOverMark {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut conn = redis_conn();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}ledger:*", self.prefix))
            .query(&mut conn)
            .expect("keys");
        let deadline = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis()
            + 60_000;
        for key in keys {
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg(format!("sending:someone-else:{deadline}"))
                .query(&mut conn)
                .expect("set");
        }
        errcode(-1, "system error")
    }
}

/// Marks taken over: when the mark is no longer ours, the old sender stops: no further attempt, and the
/// other owner's mark is left as it is. The record ends visibly (a `superseded` dead letter).
#[tokio::test]
async fn a_sender_whose_mark_was_taken_over_sends_nothing_more() {
    let h = Harness::new(REPLY).await;
    h.mount_token().await;
    let calls = Arc::new(AtomicUsize::new(0));
    Mock::given(path(SEND))
        .respond_with(TakeOverMark {
            prefix: h.settings.redis.key_prefix.clone(),
            calls: Arc::clone(&calls),
        })
        .mount(&h.wechat)
        .await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-taken", "1", "q"))
        .await
        .expect("processed");

    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "no attempt after the mark was lost"
    );
    assert_eq!(reason_kind(&outcome), "superseded", "{outcome:?}");
    let entries = ledger_entries(&h);
    assert!(
        entries
            .iter()
            .all(|(_, v)| v.starts_with("sending:someone-else:")),
        "the other owner's mark is untouched: {entries:?}"
    );
}

/// Redis timeouts: the claim's answer times out (the claim itself was written). The record's retry must
/// recognise its own mark and send, not wait out the lease and dead-letter it as ambiguous.
#[tokio::test]
async fn a_claim_whose_answer_timed_out_is_recognised_by_the_retry() {
    let mut h = Harness::new(REPLY).await;
    let (proxy, url) = RedisProxy::start(&redis_url()).await;
    h.settings.redis.url = secrecy::SecretString::from(url);
    h.settings.redis.command_timeout = Duration::from_millis(300);
    h.settings.validate().expect("valid");
    h.create_topics().await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 1).await;
    let app = spawn_app(&h).await;
    proxy.arm(Trigger {
        pattern: b"sending:".to_vec(),
        nth: 1,
        delay: Duration::from_millis(800),
    });
    produce_envelopes(&h.settings.kafka.inbound_topic, &[text("o-t", "1", "q")]).await;

    let replied = eventually(Duration::from_secs(20), || async {
        app.metric("consumer_records_total", &[("outcome", "replied")]) == 1.0
    })
    .await;
    let ambiguous = app.metric("consumer_dead_letters_total", &[("reason", "ambiguous")]);
    app.stop().await;
    assert_eq!(
        proxy.delayed.load(Ordering::SeqCst),
        1,
        "the claim's answer was held back"
    );
    assert!(
        replied,
        "the reply went out once (ambiguous dead letters: {ambiguous})"
    );
    assert_eq!(ambiguous, 0.0);
    h.wechat.verify().await;
}

/// Redis timeouts, the reply window: a take whose answer timed out, retried, spends one reply, not two.
#[tokio::test]
async fn a_window_take_whose_answer_timed_out_spends_one_reply() {
    let mut h = Harness::new(REPLY).await;
    let (proxy, url) = RedisProxy::start(&redis_url()).await;
    h.settings.redis.url = secrecy::SecretString::from(url);
    h.settings.redis.command_timeout = Duration::from_millis(300);
    h.settings.validate().expect("valid");
    h.create_topics().await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 1).await;
    let app = spawn_app(&h).await;
    // The first request naming the user's window opens it and takes a reply from it.
    proxy.arm(Trigger {
        pattern: b"window:".to_vec(),
        nth: 1,
        delay: Duration::from_millis(800),
    });
    produce_envelopes(&h.settings.kafka.inbound_topic, &[text("o-w", "1", "q")]).await;

    let replied = eventually(Duration::from_secs(20), || async {
        app.metric("consumer_records_total", &[("outcome", "replied")]) == 1.0
    })
    .await;
    app.stop().await;
    assert!(replied, "the reply went out");
    assert_eq!(
        proxy.delayed.load(Ordering::SeqCst),
        1,
        "the take's answer was held back"
    );
    assert_eq!(
        window_remaining(&h, "o-w").await,
        Some(4),
        "one reply sent, one reply spent"
    );
    h.wechat.verify().await;
}

/// Gateway errors: a 502 or 504 from a gateway may mean WeChat handled the send; not repeated.
#[tokio::test]
async fn a_gateway_error_on_a_send_is_ambiguous_and_never_repeated() {
    for status in [502, 504] {
        let h = Harness::new(REPLY).await;
        h.mount_token().await;
        h.expect_calls(SEND, ResponseTemplate::new(status), 1).await;
        let services = h.services().await;

        let outcome = services
            .processor
            .process(&text("o-gw", "1", "q"))
            .await
            .expect("processed");

        assert_eq!(reason_kind(&outcome), "ambiguous", "HTTP {status}");
        h.wechat.verify().await;
    }
}

/// Stable reply keys: renaming the rule and inserting an action before the reply, then redelivering the
/// record, sends only the new reply; the old one is recognised by what it says.
#[tokio::test]
async fn a_renamed_rule_with_an_inserted_action_does_not_send_a_reply_again() {
    let h = Harness::new(REPLY).await;
    h.mount_token().await;
    Mock::given(path(SEND))
        .and(body_partial_json(
            serde_json::json!({"text": {"content": "answer"}}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&h.wechat)
        .await;
    Mock::given(path(SEND))
        .and(body_partial_json(
            serde_json::json!({"text": {"content": "hello first"}}),
        ))
        .respond_with(ok())
        .expect(1)
        .mount(&h.wechat)
        .await;
    let env = text("o-rn", "1", "q");
    let before = h.services().await;
    assert_eq!(
        before.processor.process(&env).await.expect("processed"),
        replied(1)
    );

    std::fs::write(
        &h.settings.rules.path,
        "[[rule]]\nname = \"renamed\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"hello first\"\n\
         [[rule.actions]]\ntype = \"text\"\ncontent = \"answer\"\n",
    )
    .expect("rules");
    let after = h.services().await;
    let outcome = after.processor.process(&env).await.expect("processed");

    assert_eq!(
        outcome,
        Outcome::Replied {
            sent: 1,
            already_sent: 1
        }
    );
    h.wechat.verify().await;
}

/// Reply windows: a replied record opens its user's window and takes its reply from it in one
/// Redis request, not two.
#[tokio::test]
async fn a_reply_opens_its_window_and_takes_from_it_in_one_request() {
    let mut h = Harness::new(REPLY).await;
    let (proxy, url) = RedisProxy::start(&redis_url()).await;
    h.settings.redis.url = secrecy::SecretString::from(url);
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 1).await;
    let services = h.services().await;
    proxy.arm(Trigger {
        pattern: b"window:".to_vec(),
        nth: usize::MAX,
        delay: Duration::ZERO,
    });

    let outcome = services
        .processor
        .process(&text("o-one-request", "1", "q"))
        .await
        .expect("processed");

    assert_eq!(
        outcome,
        Outcome::Replied {
            sent: 1,
            already_sent: 0
        }
    );
    assert_eq!(proxy.seen(), 1, "the opening went with the take");
    assert_eq!(
        window_remaining(&h, "o-one-request").await,
        Some(4),
        "opened with five, one taken"
    );
    h.wechat.verify().await;
}

/// Writes a `sent` entry for the record's first reply under the key it had before reply keys
/// were stable (`{dedup key}:{rule}:{index}`), as an older version left it.
fn seed_sent_under_the_old_key(h: &Harness, env: &EnvelopeV1) {
    let _: () = redis::cmd("SET")
        .arg(format!(
            "{}ledger:{}:r:0",
            h.settings.redis.key_prefix,
            env.dedup_key.as_str()
        ))
        .arg("sent:1")
        .query(&mut redis_conn())
        .expect("seed");
}

/// Stable reply keys, the transition: a reply recorded under the old key (`{dedup key}:{rule}:{index}`)
/// before the upgrade is not sent again by a redelivery after it — while `ledger.read_legacy_keys`
/// is on. Off (every entry under an old key has expired), the old key is not read: the reply is
/// decided by its stable key alone.
#[tokio::test]
async fn a_reply_recorded_under_the_old_key_counts_while_old_keys_are_read() {
    for read_legacy_keys in [true, false] {
        let mut h = Harness::new(REPLY).await;
        h.settings.ledger.read_legacy_keys = read_legacy_keys;
        h.mount_token().await;
        let (sent, already_sent) = if read_legacy_keys { (0, 1) } else { (1, 0) };
        h.expect_calls(SEND, ok(), sent as u64).await;
        let env = text("o-old", "1", "q");
        seed_sent_under_the_old_key(&h, &env);
        let services = h.services().await;

        let outcome = services.processor.process(&env).await.expect("processed");

        assert_eq!(
            outcome,
            Outcome::Replied { sent, already_sent },
            "read_legacy_keys = {read_legacy_keys}"
        );
        if read_legacy_keys {
            // The claim made under the new key while the old one was read is given back: no
            // `sending` mark is left for a later redelivery to wait on and give up as ambiguous.
            let entries = ledger_entries(&h);
            assert_eq!(entries.len(), 1, "only the old entry: {entries:?}");
            assert_eq!(entries[0].1, "sent:1");
        }
        h.wechat.verify().await;
    }
}

/// Panics: a record whose handler panics becomes a `panic` dead letter and its partition moves
/// on. The panic is real, set off by a hook the tests arm for one record (`consumer::test_hooks`,
/// only in builds of the tests): the product keeps no panic for a test to reach.
#[tokio::test]
async fn a_panicking_record_is_dead_lettered_and_the_partition_moves_on() {
    let mut h = Harness::new(REPLY).await;
    h.settings.kafka.topics.inbound_partitions = 1;
    h.create_topics().await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 1).await;
    // A msg id of its own: the hook is process-wide, and the tests share the process.
    let poison = text("o-p", &unique("m"), "q");
    consumer::test_hooks::panic_on_record(poison.dedup_key.as_str());
    let good = text("o-p", "2", "q");
    produce_envelopes(&h.settings.kafka.inbound_topic, &[poison, good]).await;
    let app = spawn_app(&h).await;

    let moved_on = eventually(Duration::from_secs(30), || async {
        total_committed(&h).await == 2
    })
    .await;
    app.stop().await;
    assert!(moved_on, "both offsets are committed");
    let letters = read_topic(
        &h.settings.kafka.dead_letter_topic,
        1,
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(letters.len(), 1, "one dead letter");
    let reason = letters[0]
        .headers()
        .and_then(|hs| hs.iter().find(|hd| hd.key == "wxkf-dlq-reason"))
        .and_then(|hd| hd.value.map(|v| String::from_utf8_lossy(v).into_owned()));
    assert_eq!(reason.as_deref(), Some("panic"));
    h.wechat.verify().await;
}

/// Waits and shutdown: shutdown during a send's backoff gives the claim back (the reply was never sent), so
/// the redelivery after the restart sends it instead of finding a stale mark.
#[tokio::test]
async fn shutdown_during_a_backoff_gives_the_claim_back() {
    let mut h = Harness::new(REPLY).await;
    h.settings.wechat.minute_quota_backoff = Duration::from_secs(60);
    h.settings.server.shutdown_timeout = Duration::from_secs(3);
    h.settings.validate().expect("valid");
    h.create_topics().await;
    h.mount_token().await;
    h.expect_calls(SEND, errcode(45011, "api minute-quota reach limit"), 1)
        .await;
    produce_envelopes(&h.settings.kafka.inbound_topic, &[text("o-sd", "1", "q")]).await;
    let app = spawn_app(&h).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            !received(&h.wechat, SEND).await.is_empty()
        })
        .await,
        "the first attempt was made"
    );

    app.stop().await;

    let entries = ledger_entries(&h);
    assert!(
        entries.is_empty(),
        "no mark left behind for a reply never sent: {entries:?}"
    );
    assert_eq!(
        window_remaining(&h, "o-sd").await,
        Some(5),
        "the reply was given back to the allowance"
    );
    h.wechat.verify().await;
}

/// Waits and rebalances: a second consumer joins the group while the first waits out a long 45011
/// backoff. The rebalance revokes the record's partition, which ends the first one's run as
/// shutdown would: it gives its claim back, and the redelivery (at whichever member owns the
/// partition now) sends the reply — long before the backoff would have ended, and not as an
/// `ambiguous` dead letter.
#[tokio::test]
async fn a_revoked_partition_ends_a_backoff_and_gives_the_claim_back() {
    let mut h = Harness::new(REPLY).await;
    h.settings.kafka.topics.inbound_partitions = 1;
    h.settings.wechat.minute_quota_backoff = Duration::from_secs(600);
    h.settings.validate().expect("valid");
    h.create_topics().await;
    h.mount_token().await;
    Mock::given(path(SEND))
        .respond_with(errcode(45011, "api minute-quota reach limit"))
        .up_to_n_times(1)
        .expect(1)
        .mount(&h.wechat)
        .await;
    h.expect_calls(SEND, ok(), 1).await;
    produce_envelopes(&h.settings.kafka.inbound_topic, &[text("o-rb", "1", "q")]).await;
    let first = spawn_app(&h).await;
    assert!(
        eventually(Duration::from_secs(30), || async {
            !received(&h.wechat, SEND).await.is_empty()
        })
        .await,
        "the first attempt was made"
    );

    let second = spawn_app(&h).await;
    let sent = eventually(Duration::from_secs(60), || async {
        let entries = ledger_entries(&h);
        !entries.is_empty() && entries.iter().all(|(_, v)| v.starts_with("sent:"))
    })
    .await;

    let ambiguous = first.metric("consumer_dead_letters_total", &[("reason", "ambiguous")])
        + second.metric("consumer_dead_letters_total", &[("reason", "ambiguous")]);
    let entries = ledger_entries(&h);
    first.stop().await;
    second.stop().await;
    assert!(
        sent,
        "the reply was sent after the rebalance, not held for the backoff: {entries:?}"
    );
    assert_eq!(ambiguous, 0.0, "no ambiguous dead letter");
    h.wechat.verify().await;
}

/// Waits on another sender: a run waiting on another sender's live `sending` mark ends when its
/// run does (here the end signal the pipeline fires on a revoke), leaving that mark alone.
#[tokio::test]
async fn the_end_of_a_run_ends_its_wait_on_another_senders_mark() {
    let h = Harness::new(REPLY).await;
    h.mount_token().await;
    // One send: the probe's, which shows the reply's ledger key; none from the waiting run.
    h.expect_calls(SEND, ok(), 1).await;
    let env = text("o-wait", "1", "q");
    let services = h.services().await;
    let probe = services.processor.process(&env).await;
    assert_eq!(probe.expect("processed"), replied(1));
    let entries = ledger_entries(&h);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let key = entries[0].0.clone();
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis()
        + 600_000;
    let foreign = format!("sending:someone-else:{far}");
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg(&foreign)
        .query(&mut redis_conn())
        .expect("seed");
    let end = tokio_util::sync::CancellationToken::new();
    let owner = ClaimOwner::until(end.clone());

    let (result, ()) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(services.processor.process_as(&env, &owner), async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            end.cancel();
        })
    })
    .await
    .expect("the wait ends with the run");

    assert!(matches!(result, Err(ProcessError::Stopping)), "{result:?}");
    let entries = ledger_entries(&h);
    assert_eq!(
        entries,
        vec![(key, foreign)],
        "the other sender's mark is untouched"
    );
    h.wechat.verify().await;
}
