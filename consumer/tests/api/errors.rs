//! Every error class of the WeChat API: retryable (bounded backoff), token (refresh once, retry
//! once), final (dead letter with errcode), ambiguous (a timed-out send is never repeated), and
//! transient infrastructure failures (the record is retried without losing or doubling a reply).

use std::time::Duration;

use consumer::dead_letter::Reason;
use consumer::processor::Outcome;
use wiremock::matchers::{body_partial_json, method, path, query_param};
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

const REPLY: &str =
    "[[rule]]\nname = \"r\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"answer\"\n";

fn dead_letter(outcome: Outcome) -> Reason {
    match outcome {
        Outcome::DeadLettered(letter) => letter.reason,
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

#[tokio::test]
async fn retryable_errors_back_off_and_then_succeed() {
    let h = Harness::new(REPLY).await;
    h.mount_token().await;
    for answer in [
        errcode(-1, "system error"),
        ResponseTemplate::new(429),
        errcode(45011, "api minute-quota reach limit"),
    ] {
        Mock::given(path(SEND))
            .respond_with(answer)
            .up_to_n_times(1)
            .expect(1)
            .mount(&h.wechat)
            .await;
    }
    h.expect_calls(SEND, ok(), 1).await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-r", "1", "q"))
        .await
        .expect("processed");

    assert_eq!(outcome, replied(1));
    assert_eq!(
        h.metric(
            "consumer_sends_total",
            &[("msgtype", "text"), ("result", "retryable")]
        ),
        3.0
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn retries_are_bounded_then_dead_lettered() {
    let h = Harness::new(REPLY).await;
    h.mount_token().await;
    let attempts = h.settings.wechat.max_attempts as u64;
    h.expect_calls(SEND, errcode(-1, "system error"), attempts)
        .await;
    let services = h.services().await;

    let reason = dead_letter(
        services
            .processor
            .process(&text("o-x", "1", "q"))
            .await
            .expect("processed"),
    );

    assert_eq!(reason.kind(), "retries_exhausted");
    assert_eq!(reason.errcode(), Some(-1));
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_stale_token_is_refreshed_once_and_the_send_retried_once() {
    let h = Harness::new(REPLY).await;
    Mock::given(method("POST"))
        .and(path(STABLE_TOKEN))
        .and(body_partial_json(
            serde_json::json!({"appid": APPID, "force_refresh": false}),
        ))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "OLD", "expires_in": 7200})),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&h.wechat)
        .await;
    mount_token_answer(&h.wechat, "NEW", 7200).await;
    Mock::given(path(SEND))
        .and(query_param("access_token", "OLD"))
        .respond_with(errcode(
            40001,
            "invalid credential, access_token is invalid or not latest",
        ))
        .expect(1)
        .mount(&h.wechat)
        .await;
    Mock::given(path(SEND))
        .and(query_param("access_token", "NEW"))
        .respond_with(ok())
        .expect(1)
        .mount(&h.wechat)
        .await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-tk", "1", "q"))
        .await
        .expect("processed");

    assert_eq!(outcome, replied(1));
    assert_eq!(
        received(&h.wechat, STABLE_TOKEN).await.len(),
        2,
        "one fetch, one refresh"
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_token_rejected_after_refresh_is_dead_lettered_not_looped() {
    let h = Harness::new(REPLY).await;
    h.mount_token().await;
    h.expect_calls(SEND, errcode(42001, "access_token expired"), 2)
        .await;
    let services = h.services().await;

    let reason = dead_letter(
        services
            .processor
            .process(&text("o-tr", "1", "q"))
            .await
            .expect("processed"),
    );

    assert_eq!(reason.kind(), "token_rejected");
    assert_eq!(reason.errcode(), Some(42001));
    h.wechat.verify().await;
}

#[tokio::test]
async fn final_errors_are_dead_lettered_with_errcode_and_errmsg() {
    let h = Harness::new(REPLY).await;
    h.mount_token().await;
    let codes = [
        (
            45015,
            "response out of time limit or subscription is canceled",
        ),
        (45047, "out of response count limit"),
        (40003, "invalid openid"),
        (45002, "content size out of limit"),
    ];
    for (code, msg) in codes {
        Mock::given(path(SEND))
            .and(body_partial_json(
                serde_json::json!({"touser": format!("o-{code}")}),
            ))
            .respond_with(errcode(code, msg))
            .expect(1)
            .mount(&h.wechat)
            .await;
    }
    let services = h.services().await;

    for (code, msg) in codes {
        let env = text(&format!("o-{code}"), &code.to_string(), "q");
        let reason = dead_letter(services.processor.process(&env).await.expect("processed"));
        assert_eq!(
            reason,
            Reason::WeChatRejected {
                errcode: code,
                errmsg: msg.into()
            }
        );
    }
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_timed_out_send_is_never_repeated() {
    let h = Harness::new(REPLY).await;
    h.mount_token().await;
    h.expect_calls(SEND, ok().set_delay(Duration::from_secs(4)), 1)
        .await;
    let services = h.services().await;
    let env = text("o-slow", "1", "q");

    let first = dead_letter(services.processor.process(&env).await.expect("processed"));
    // The redelivery of the same record must not try again either.
    let again = dead_letter(services.processor.process(&env).await.expect("processed"));

    assert_eq!(first.kind(), "ambiguous");
    assert_eq!(again.kind(), "ambiguous");
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_refused_token_fetch_is_final_and_an_unreachable_one_is_retried() {
    let h = Harness::new(REPLY).await;
    Mock::given(path(STABLE_TOKEN))
        .respond_with(errcode(40013, "invalid appid"))
        .up_to_n_times(1)
        .mount(&h.wechat)
        .await;
    Mock::given(path(STABLE_TOKEN))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&h.wechat)
        .await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 1).await;
    let services = h.services().await;

    let refused = dead_letter(
        services
            .processor
            .process(&text("o-f", "1", "q"))
            .await
            .expect("processed"),
    );
    assert_eq!(refused.kind(), "token_unavailable");

    // 503 from the token endpoint: transient, the record fails and will be retried...
    let env = text("o-f", "2", "q");
    let err = services
        .processor
        .process(&env)
        .await
        .expect_err("transient failure");
    assert_eq!(err.kind(), "token");
    // ... and the retry sends exactly once: the failed attempt left no claim behind.
    let outcome = services.processor.process(&env).await.expect("processed");
    assert_eq!(outcome, replied(1));
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_wrong_app_secret_40001_on_the_token_endpoint_is_dead_lettered_not_retried_forever() {
    let h = Harness::new(REPLY).await;
    // On cgi-bin/stable_token, 40001 means "invalid appsecret": no refresh will ever fix it.
    Mock::given(path(STABLE_TOKEN))
        .respond_with(errcode(
            40001,
            "invalid credential, access_token is invalid or not latest",
        ))
        .mount(&h.wechat)
        .await;
    h.expect_calls(SEND, ok(), 0).await;
    let services = h.services().await;
    let refused = dead_letter(
        services
            .processor
            .process(&text("o-secret", "1", "q"))
            .await
            .expect("a final outcome, not a transient error"),
    );
    assert_eq!(refused.kind(), "token_unavailable");
    h.wechat.verify().await;
}
