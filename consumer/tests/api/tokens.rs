//! The token broker against the real Redis: one refresher across processes, fencing of slow
//! fetches, compare-and-expire on token errors, refresh ahead of expiry, both endpoints.

use std::time::Duration;

use consumer::config::TokenEndpoint;
use wiremock::matchers::{method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

const REPLY: &str =
    "[[rule]]\nname = \"r\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"answer\"\n";

/// Writes a token into Redis as another process would have stored it.
async fn seed_token(h: &Harness, token: &str, expires_ms: i64, generation: i64) {
    let mut conn = redis_connection(&h.settings).await;
    let key = format!("{}token:{{{APP}}}", h.settings.redis.key_prefix);
    redis::cmd("HSET")
        .arg(&key)
        .arg("token")
        .arg(token)
        .arg("expires_ms")
        .arg(expires_ms)
        .arg("gen")
        .arg(generation)
        .query_async::<()>(&mut conn)
        .await
        .expect("seed token");
}

fn now_ms() -> i64 {
    now() * 1000
}

fn token_answer(token: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .set_body_json(serde_json::json!({"access_token": token, "expires_in": 7200}))
}

#[tokio::test]
async fn three_processes_with_an_expired_token_refresh_exactly_once() {
    let h = Harness::new(REPLY).await;
    seed_token(&h, "EXPIRED", now_ms() - 1000, 1).await;
    Mock::given(method("POST"))
        .and(path(STABLE_TOKEN))
        .respond_with(token_answer("FRESH").set_delay(Duration::from_millis(300)))
        .expect(1)
        .mount(&h.wechat)
        .await;
    // Three brokers with their own connections: three processes sharing one Redis.
    let (a, b, c) = (h.services().await, h.services().await, h.services().await);

    let (ta, tb, tc) = tokio::join!(
        a.tokens.token(APP),
        b.tokens.token(APP),
        c.tokens.token(APP)
    );

    for t in [ta, tb, tc] {
        let t = t.expect("a token");
        assert_eq!(t.value.expose(), "FRESH");
        assert_eq!(t.generation, 2);
    }
    assert_eq!(
        h.metric("consumer_token_refreshes_total", &[("result", "ok")]),
        1.0
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn three_sends_rejecting_the_same_token_cause_one_refresh() {
    let h = Harness::new(REPLY).await;
    seed_token(&h, "OLD", now_ms() + 3_600_000, 7).await;
    h.expect_calls(
        STABLE_TOKEN,
        token_answer("NEW").set_delay(Duration::from_millis(200)),
        1,
    )
    .await;
    Mock::given(path(SEND))
        .and(query_param("access_token", "OLD"))
        // Slow, so all three have read OLD before the first rejection expires it (on a Redis
        // Cluster the three processes' first commands can be far enough apart for a fast
        // rejection to overtake the last read).
        .respond_with(errcode(40001, "invalid credential").set_delay(Duration::from_millis(500)))
        .expect(3)
        .mount(&h.wechat)
        .await;
    Mock::given(path(SEND))
        .and(query_param("access_token", "NEW"))
        .respond_with(ok())
        .expect(3)
        .mount(&h.wechat)
        .await;
    let services = h.services().await;
    let p = &services.processor;
    let (e1, e2, e3) = (
        text("o-1", "1", "q"),
        text("o-2", "2", "q"),
        text("o-3", "3", "q"),
    );

    let (r1, r2, r3) = tokio::join!(p.process(&e1), p.process(&e2), p.process(&e3));

    for r in [r1, r2, r3] {
        assert_eq!(r.expect("processed"), replied(1));
    }
    h.wechat.verify().await;
}

#[tokio::test]
async fn an_older_slower_fetch_never_overwrites_a_newer_token() {
    let mut h = Harness::new(REPLY).await;
    // A lease shorter than the slow fetch: the second process takes over the lock meanwhile.
    h.settings.wechat.token_lock_lease = Duration::from_millis(300);
    Mock::given(path(STABLE_TOKEN))
        .respond_with(token_answer("SLOW-OLDER").set_delay(Duration::from_millis(1200)))
        .up_to_n_times(1)
        .expect(1)
        .mount(&h.wechat)
        .await;
    h.expect_calls(STABLE_TOKEN, token_answer("FAST-NEWER"), 1)
        .await;
    let (a, b) = (h.services().await, h.services().await);

    let slow = tokio::spawn(async move {
        a.tokens
            .token(APP)
            .await
            .map(|t| t.value.expose().to_owned())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let fast = b.tokens.token(APP).await.expect("a token");
    let slow = slow.await.expect("task").expect("a token");

    assert_eq!(fast.value.expose(), "FAST-NEWER");
    assert_eq!(
        slow, "FAST-NEWER",
        "the fenced fetch adopts the newer token"
    );
    assert_eq!(
        b.tokens.token(APP).await.expect("token").value.expose(),
        "FAST-NEWER"
    );
    assert_eq!(
        h.metric("consumer_token_refreshes_total", &[("result", "fenced")]),
        1.0
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn tokens_refresh_ahead_of_expiry_and_not_before() {
    let h = Harness::new(REPLY).await;
    h.expect_calls(STABLE_TOKEN, token_answer("ROLLED"), 1)
        .await;
    let services = h.services().await;

    seed_token(&h, "LONG-LIVED", now_ms() + 3_600_000, 1).await;
    let t = services.tokens.token(APP).await.expect("token");
    assert_eq!(t.value.expose(), "LONG-LIVED", "far from expiry: no fetch");

    // Another process, which has not read the token yet (each process reuses what it read for
    // up to a second), finds it inside the margin.
    seed_token(&h, "ALMOST-DUE", now_ms() + 60_000, 1).await;
    let other = h.services().await;
    let t = other.tokens.token(APP).await.expect("token");
    assert_eq!(
        t.value.expose(),
        "ROLLED",
        "inside the refresh-ahead margin: refreshed"
    );
    h.wechat.verify().await;
}

/// A process reuses the token it read, but one WeChat rejected is never reused: the next call
/// reads what Redis holds now (here, the token another process stored meanwhile).
#[tokio::test]
async fn a_rejected_token_is_forgotten_at_once() {
    let h = Harness::new(REPLY).await;
    let services = h.services().await;
    seed_token(&h, "FIRST", now_ms() + 3_600_000, 1).await;
    let first = services.tokens.token(APP).await.expect("token");
    assert_eq!(first.value.expose(), "FIRST");

    seed_token(&h, "SECOND", now_ms() + 3_600_000, 2).await;
    let expired = services
        .tokens
        .expire_if_current(APP, &first)
        .await
        .expect("expire");
    assert!(!expired, "another process already replaced it");
    let next = services.tokens.token(APP).await.expect("token");
    assert_eq!(next.value.expose(), "SECOND");
    assert_eq!(next.generation, 2);
}

#[tokio::test]
async fn the_classic_token_endpoint_is_selectable() {
    let mut h = Harness::new(REPLY).await;
    h.settings.wechat.token_endpoint = TokenEndpoint::Classic;
    Mock::given(method("GET"))
        .and(path("/cgi-bin/token"))
        .and(query_param("grant_type", "client_credential"))
        .and(query_param("appid", APPID))
        .respond_with(token_answer("CLASSIC"))
        .expect(1)
        .mount(&h.wechat)
        .await;
    h.expect_calls(STABLE_TOKEN, token_answer("X"), 0).await;
    let services = h.services().await;

    assert_eq!(
        services
            .tokens
            .token(APP)
            .await
            .expect("token")
            .value
            .expose(),
        "CLASSIC"
    );
    h.wechat.verify().await;
}

/// A refresh ahead of expiry that fails is not tried again on every call; the
/// still-valid token keeps serving, and the token endpoint is asked once per lock lease.
#[tokio::test]
async fn a_failed_early_refresh_is_not_repeated_on_every_call() {
    let h = Harness::new(REPLY).await;
    h.expect_calls(STABLE_TOKEN, errcode(-1, "system error"), 1)
        .await;
    let services = h.services().await;
    seed_token(&h, "ALMOST-DUE", now_ms() + 60_000, 1).await;

    for _ in 0..3 {
        let t = services.tokens.token(APP).await.expect("token");
        assert_eq!(
            t.value.expose(),
            "ALMOST-DUE",
            "the valid token serves meanwhile"
        );
    }
    h.wechat.verify().await;
}
