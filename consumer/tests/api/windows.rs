//! Reply windows and the send ledger: replies WeChat would refuse are not attempted, quotas reset
//! per qualifying action, and a reply recorded as sent is never sent again.

use consumer::dead_letter::Reason;
use consumer::processor::{Outcome, Skip};

use crate::helpers::*;

fn replies(n: usize) -> String {
    let mut rules = String::from("[[rule]]\nname = \"burst\"\n");
    for i in 0..n {
        rules.push_str(&format!(
            "[[rule.actions]]\ntype = \"text\"\ncontent = \"reply {i}\"\n"
        ));
    }
    rules
}

fn reason(outcome: Outcome) -> (Reason, Option<usize>) {
    match outcome {
        Outcome::DeadLettered(letter) => (letter.reason, letter.action_index),
        other => panic!("expected a dead letter, got {other:?}"),
    }
}

#[tokio::test]
async fn a_user_message_allows_five_replies_and_the_sixth_is_not_attempted() {
    let h = Harness::new(&replies(6)).await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 5).await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-q", "1", "hi"))
        .await
        .expect("processed");

    assert_eq!(reason(outcome), (Reason::QuotaExhausted, Some(5)));
    assert_eq!(
        h.metric(
            "consumer_sends_total",
            &[("msgtype", "text"), ("result", "refused")]
        ),
        1.0
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn entering_the_session_allows_two_replies() {
    let h = Harness::new(&replies(3)).await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 2).await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&enter("o-e", "wxapp"))
        .await
        .expect("processed");

    assert_eq!(reason(outcome), (Reason::QuotaExhausted, Some(2)));
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_closed_window_sends_nothing() {
    let h = Harness::new(&replies(1)).await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 0).await;
    let services = h.services().await;

    // Written three days ago: the 48 h window is long closed.
    let old = text_at("o-old", "1", "hi", now() - 3 * 24 * 3600);
    assert_eq!(
        reason(services.processor.process(&old).await.expect("processed")),
        (Reason::WindowClosed, Some(0))
    );
    // A platform event opens no window, and this user never wrote.
    let mut event = enter("o-never", "x");
    event.message.body = common::message::MessageBody::Other {
        msg_type: "event".into(),
        event: Some("subscribe_msg_popup_event".into()),
        msg_id: None,
        fields: Default::default(),
    };
    assert_eq!(
        reason(services.processor.process(&event).await.expect("processed")),
        (Reason::WindowClosed, Some(0))
    );
    h.wechat.verify().await;
}

/// Any CreateTime has a clear outcome (the window arithmetic once overflowed on values near the
/// ends of i64): one in the future counts as now, so the reply goes out and a later genuine
/// message still opens its own window; one long past finds the window closed.
#[tokio::test]
async fn any_create_time_gives_a_clear_outcome() {
    let h = Harness::new(&replies(1)).await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 4).await;
    let services = h.services().await;

    for (i, future) in [i64::MAX, i64::MAX / 1000, now() + 3600]
        .into_iter()
        .enumerate()
    {
        let user = format!("o-future-{i}");
        let env = text_at(&user, "1", "hi", future);
        assert_eq!(
            services.processor.process(&env).await.expect("processed"),
            replied(1),
            "CreateTime {future}"
        );
        if i == 0 {
            // The far-future message does not keep the user's window from opening anew.
            let next = text(&user, "2", "again");
            assert_eq!(
                services.processor.process(&next).await.expect("processed"),
                replied(1)
            );
        }
    }
    for (i, past) in [i64::MIN, i64::MIN / 1000, -1].into_iter().enumerate() {
        let env = text_at(&format!("o-past-{i}"), "1", "hi", past);
        assert_eq!(
            reason(services.processor.process(&env).await.expect("processed")),
            (Reason::WindowClosed, Some(0)),
            "CreateTime {past}"
        );
    }
    h.wechat.verify().await;
}

#[tokio::test]
async fn each_new_message_resets_the_allowance_but_a_redelivery_does_not() {
    let h = Harness::new(&replies(3)).await;
    h.mount_token().await;
    h.expect_calls(SEND, ok(), 6).await;
    let services = h.services().await;
    let first = text("o-reset", "1", "a");
    let second = text("o-reset", "2", "b");

    // 3 of 5 used; the redelivery sends nothing and does not reopen the window.
    assert_eq!(
        services.processor.process(&first).await.expect("processed"),
        replied(3)
    );
    assert_eq!(
        services.processor.process(&first).await.expect("processed"),
        Outcome::Replied {
            sent: 0,
            already_sent: 3
        }
    );
    // A new message resets the allowance to 5: three more go out.
    assert_eq!(
        services
            .processor
            .process(&second)
            .await
            .expect("processed"),
        replied(3)
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn the_window_check_can_be_turned_off() {
    let mut h = Harness::new(&replies(1)).await;
    h.settings.window.enabled = false;
    h.mount_token().await;
    h.expect_calls(SEND, errcode(45015, "response out of time limit"), 1)
        .await;
    let services = h.services().await;

    let old = text_at("o-off", "1", "hi", now() - 3 * 24 * 3600);
    let (reason, _) = reason(services.processor.process(&old).await.expect("processed"));

    assert_eq!(
        reason.errcode(),
        Some(45015),
        "attempted, and WeChat's answer is kept"
    );
    h.wechat.verify().await;
}

#[tokio::test]
async fn a_message_no_rule_answers_still_opens_its_window() {
    let h = Harness::new(
        "[[rule]]\nname = \"never\"\n[rule.when]\ntext = \"zzz\"\n\
         [[rule.actions]]\ntype = \"text\"\ncontent = \"x\"\n",
    )
    .await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-no-rule", "1", "hi"))
        .await
        .expect("processed");

    assert_eq!(outcome, Outcome::Skipped(Skip::NoMatch));
    assert_eq!(
        window_remaining(&h, "o-no-rule").await,
        Some(5),
        "the window is open"
    );
}
