//! The configuration as loaded: values of the wrong type (a URL that is not one) refused with
//! their key, never repeating a secret; every problem, static apps' included, named at once.
#![allow(clippy::unwrap_used)]

use crate::helpers::load_settings as load;

/// Refused at load, naming `key`, without repeating the value (it may hold a password).
fn assert_refused(env: &[(&str, &str)], key: &str) {
    let refused = load(env).unwrap_err().to_string();
    assert!(
        refused.contains(&format!("for key `{key}`")),
        "{key} missing from: {refused}"
    );
    assert!(!refused.contains("hunter2"), "{refused}");
}

#[test]
fn a_bad_wechat_base_url_is_refused_with_its_key() {
    assert_refused(
        &[("CONSUMER__WECHAT__BASE_URL", "api.weixin.qq.com")],
        "wechat.base_url",
    );
    assert_refused(
        &[("CONSUMER__WECHAT__BASE_URL", "ftp://u:hunter2@example.com")],
        "wechat.base_url",
    );
    let settings = load(&[("CONSUMER__WECHAT__BASE_URL", "http://127.0.0.1:8081/")]).unwrap();
    assert_eq!(settings.wechat.base_url.base(), "http://127.0.0.1:8081");
}

#[test]
fn a_bad_handoff_webhook_is_refused_with_its_key_and_empty_is_none() {
    assert_refused(
        &[("CONSUMER__HANDOFF__WEBHOOK", "hooks.example.com/handoff")],
        "handoff.webhook",
    );
    assert!(load(&[]).unwrap().handoff.webhook.is_none());
    let hook = load(&[(
        "CONSUMER__HANDOFF__WEBHOOK",
        "https://hook:hunter2@example.com/h",
    )])
    .unwrap()
    .handoff
    .webhook
    .unwrap();
    assert_eq!(hook.as_str(), "https://hook:hunter2@example.com/h");
    assert!(!format!("{hook} {hook:?}").contains("hunter2"));
}

#[test]
fn a_bad_ask_backend_url_is_refused_with_its_key() {
    assert_refused(
        &[
            ("CONSUMER__ASK__BACKENDS__BOT__KIND", "http"),
            ("CONSUMER__ASK__BACKENDS__BOT__URL", "bot.internal/answer"),
        ],
        "ask.backends.bot",
    );
    let refused = load(&[
        ("CONSUMER__ASK__BACKENDS__BOT__KIND", "http"),
        ("CONSUMER__ASK__BACKENDS__BOT__URL", "bot.internal/answer"),
    ])
    .unwrap_err()
    .to_string();
    assert!(
        refused.contains("url: not a URL"),
        "the field too: {refused}"
    );
    assert_refused(
        &[
            ("CONSUMER__ASK__BACKENDS__LLM__KIND", "chat"),
            ("CONSUMER__ASK__BACKENDS__LLM__MODEL", "m"),
            ("CONSUMER__ASK__BACKENDS__LLM__BASE_URL", "mailto:hunter2@x"),
        ],
        "ask.backends.llm",
    );
}

#[test]
fn one_start_names_a_bad_setting_and_every_problem_of_a_static_app() {
    let refused = load(&[
        ("CONSUMER__REDIS__KEY_PREFIX", ""),
        ("CONSUMER__APPS__SHOP__APPID", "wx 1"),
        ("CONSUMER__APPS__SHOP__SECRET", "s"),
        ("CONSUMER__APPS__OUTLET__APPID", "wx2"),
        ("CONSUMER__APPS__OUTLET__SECRET", ""),
    ])
    .unwrap_err()
    .to_string();
    for part in [
        "redis.key_prefix must not be empty",
        "apps.shop: the appid `wx 1` must not be empty nor hold whitespace",
        "apps.outlet: secret must not be empty",
    ] {
        assert!(refused.contains(part), "{part} missing from: {refused}");
    }
}

#[test]
fn validation_messages_read_as_one_sentence_each() {
    // Two problems whose messages are split over source lines: a continuation without its
    // backslash printed a run of spaces in the middle of the sentence.
    let refused = load(&[
        ("CONSUMER__KAFKA__TOPICS__HOLD_RETENTION", "1h"),
        ("CONSUMER__KAFKA__HOLD_TOPIC_PREFIX", "wxkf.dead"),
        ("CONSUMER__KAFKA__DEAD_LETTER_TOPIC", "wxkf.deadshop"),
        ("CONSUMER__APPS__SHOP__APPID", "wx1"),
        ("CONSUMER__APPS__SHOP__SECRET", "s"),
    ])
    .unwrap_err()
    .to_string();
    assert!(refused.contains("hold_retention"), "{refused}");
    assert!(
        refused.contains("another topic of the consumer"),
        "{refused}"
    );
    assert!(!refused.contains("  "), "a run of spaces in: {refused}");
}

#[test]
fn records_run_on_one_thread_unless_the_setting_asks_for_a_pool() {
    use consumer::startup::runtime;
    use tokio::runtime::RuntimeFlavor;

    let threads = load(&[]).unwrap().processing.threads;
    assert_eq!(threads, 1, "the defaults file's value");
    let flavor = |threads| runtime(threads).unwrap().handle().runtime_flavor();
    assert_eq!(flavor(threads), RuntimeFlavor::CurrentThread);
    assert_eq!(flavor(0), RuntimeFlavor::MultiThread);
    let workers = |threads| runtime(threads).unwrap().metrics().num_workers();
    assert_eq!(workers(3), 3);
    let from_env = load(&[("CONSUMER__PROCESSING__THREADS", "3")]).unwrap();
    assert_eq!(workers(from_env.processing.threads), 3);
}
