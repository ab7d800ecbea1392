//! Rule-file errors at start and hot reload while running: a good new file takes effect, a bad
//! one is refused and the running rules stay.

use std::time::Duration;

use consumer::processor::{Outcome, Skip};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const DROP_ALL: &str = "[[rule]]\nname = \"first\"\n[[rule.actions]]\ntype = \"drop\"\n";
const DROP_RENAMED: &str = "[[rule]]\nname = \"second\"\n[[rule.actions]]\ntype = \"drop\"\n";

#[tokio::test]
async fn a_bad_rules_file_stops_the_start_with_its_line_number() {
    let h = Harness::new("[[rule]]\nname = \"a\"\n[rule.when]\nkewyord = [\"x\"]\n").await;
    require_redis().await;
    let err = consumer::startup::Services::build(&h.settings, &h.metrics)
        .await
        .expect_err("start refused")
        .to_string();
    let expected = format!(
        "{}:4:1: unknown field `kewyord`",
        h.settings.rules.path.display()
    );
    assert!(err.starts_with(&expected), "{err}");
}

#[tokio::test]
async fn a_changed_file_is_reloaded_and_a_broken_one_refused() {
    let h = Harness::new(DROP_ALL).await;
    h.expect_calls(SEND, ok(), 0).await;
    let services = h.services().await;
    let shutdown = CancellationToken::new();
    let watcher = tokio::spawn(
        services
            .watcher
            .run(services.rules_source.clone(), shutdown.clone()),
    );
    let p = &services.processor;
    let rule_of = |outcome: Outcome| match outcome {
        Outcome::Skipped(Skip::Rule(name)) => name,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(
        rule_of(p.process(&text("o", "1", "x")).await.expect("processed")),
        "first"
    );

    std::fs::write(&h.settings.rules.path, DROP_RENAMED).expect("rewrite rules");
    let mut n = 1;
    let reloaded = eventually(Duration::from_secs(5), || {
        n += 1;
        let env = text("o", &n.to_string(), "x");
        async move { rule_of(p.process(&env).await.expect("processed")) == "second" }
    })
    .await;
    assert!(reloaded, "the new rules took effect");

    std::fs::write(
        &h.settings.rules.path,
        "[[rule]]\nname = \"third\"\n[[rule.actions]]\ntype = \"txt\"\n",
    )
    .expect("break rules");
    assert!(
        eventually(Duration::from_secs(5), || async {
            h.metric("consumer_rules_reloads_total", &[("result", "refused")]) == 1.0
        })
        .await,
        "the broken file was seen and refused"
    );
    assert_eq!(
        rule_of(p.process(&text("o", "99", "x")).await.expect("processed")),
        "second"
    );
    shutdown.cancel();
    watcher.await.expect("watcher stops");
    h.wechat.verify().await;
}
