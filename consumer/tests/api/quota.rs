//! The daily API quota (errcode 45009): the app is paused, its records are parked in order in
//! its hold topic, other apps keep flowing, and the parked records are sent once each, in order
//! per user, when the pause ends (by time, or by `consumer quota resume`).

use consumer::processor::Outcome;
use wiremock::matchers::path;
use wiremock::Mock;

use crate::helpers::*;

/// Replies to every text with its own content, so the order of the sends shows.
const ECHO: &str =
    "[[rule]]\nname = \"echo\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"{{content}}\"\n";

fn quota_used_up() -> wiremock::ResponseTemplate {
    errcode(45009, "reach max api daily quota limit")
}

/// The first record meets 45009; the second record of the same app must not call WeChat, nor
/// be dead-lettered: nothing of the app is lost while its quota is spent.
#[tokio::test]
async fn after_a_daily_quota_answer_the_next_record_of_the_app_does_not_call_wechat() {
    let h = Harness::new(ECHO).await;
    h.create_topics().await;
    h.mount_token().await;
    Mock::given(path(SEND))
        .respond_with(quota_used_up())
        .mount(&h.wechat)
        .await;
    let services = h.services().await;

    let first = services
        .processor
        .process(&text("o-1", "1", "one"))
        .await
        .expect("processed");
    let second = services
        .processor
        .process(&text("o-2", "2", "two"))
        .await
        .expect("processed");

    assert_eq!(
        received(&h.wechat, SEND).await.len(),
        1,
        "only the first record called WeChat"
    );
    for outcome in [&first, &second] {
        assert!(
            !matches!(outcome, Outcome::DeadLettered(_)),
            "a record of a paused app is kept, not dead-lettered: {outcome:?}"
        );
    }
}
