//! The `ask` action through `process()`: a chat-completions endpoint and an HTTP bot as wiremock
//! servers, the real Redis. Each test checks what WeChat receives, what the backend is asked, and
//! the counted outcome.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use consumer::ask::config::BackendSettings;
use consumer::dead_letter::Reason;
use consumer::http_url::HttpUrl;
use consumer::processor::Outcome;
use serde_json::json;
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use crate::helpers::*;

const API_KEY: &str = "sk-test-0123456789-very-secret";
const COMPLETIONS: &str = "/v1/chat/completions";
const BOT: &str = "/bot";

/// Rules that ask `backend` for every message, with `fallback` lines added to the action.
fn ask_rules(backend: &str, fallback: &str) -> String {
    format!(
        r#"
[[rule]]
name = "human"
when.keywords = ["人工"]
[[rule.actions]]
type = "handoff"

[default]
[[default.actions]]
type = "ask"
backend = "{backend}"
{fallback}
"#
    )
}

/// A harness whose `model` backend is a chat-completions fake and `bot` an HTTP bot fake, on
/// `server`; the key file holds [`API_KEY`].
async fn harness(rules: &str, server: &MockServer, timeout: Duration) -> Harness {
    let mut h = Harness::new(rules).await;
    let key_file = h.dir.join("api-key");
    std::fs::write(&key_file, format!("{API_KEY}\n")).expect("key file");
    h.settings.ask.backends.insert(
        "model".into(),
        BackendSettings::Chat {
            base_url: HttpUrl::parse(&format!("{}/v1", server.uri())).expect("a URL"),
            model: "test-model".into(),
            api_key_env: None,
            api_key_file: Some(key_file),
            system_prompt: "You answer for {app}.".into(),
            temperature: Some(0.2),
            max_tokens: Some(300),
            timeout,
            handoff_marker: "[HUMAN]".into(),
        },
    );
    h.settings.ask.backends.insert(
        "bot".into(),
        BackendSettings::Http {
            url: HttpUrl::parse(&format!("{}{BOT}", server.uri())).expect("a URL"),
            timeout,
            api_key_env: None,
            api_key_file: None,
        },
    );
    h.settings.ask.retry_initial_backoff = Duration::from_millis(10);
    h.settings.ask.retry_max_backoff = Duration::from_millis(50);
    h.settings.ask.typing_refresh = Duration::from_secs(30);
    h.settings.validate().expect("ask settings are valid");
    h
}

fn completion(content: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({
        "id": "c1",
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}]
    }))
}

fn typing_commands(requests: &[serde_json::Value]) -> Vec<String> {
    requests
        .iter()
        .map(|r| r["command"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn requests_to(server: &MockServer, on: &str) -> Vec<serde_json::Value> {
    received(server, on).await
}

#[tokio::test]
async fn a_question_gets_the_models_answer_once_with_typing_meanwhile() {
    let model = MockServer::start().await;
    let h = harness(&ask_rules("model", ""), &model, Duration::from_secs(5)).await;
    h.mount_token().await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .and(header(
            "authorization",
            format!("Bearer {API_KEY}").as_str(),
        ))
        .respond_with(completion("Our shop opens at 9."))
        .expect(1)
        .mount(&model)
        .await;
    h.expect_calls(TYPING, ok(), 2).await;
    h.expect_calls(SEND, ok(), 1).await;
    let services = h.services().await;
    let question = text("o-ask", "7001", "When do you open?");

    let first = services
        .processor
        .process(&question)
        .await
        .expect("processed");
    let again = services
        .processor
        .process(&question)
        .await
        .expect("processed");

    assert_eq!(first, replied(1));
    assert_eq!(
        again,
        Outcome::Replied {
            sent: 0,
            already_sent: 1
        }
    );
    assert_eq!(
        received(&h.wechat, SEND).await,
        vec![
            json!({"touser": "o-ask", "msgtype": "text", "text": {"content": "Our shop opens at 9."}})
        ]
    );
    assert_eq!(
        typing_commands(&received(&h.wechat, TYPING).await),
        vec!["Typing", "CancelTyping"]
    );
    let asked = requests_to(&model, COMPLETIONS).await;
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["model"], "test-model");
    assert_eq!(
        asked[0]["messages"],
        json!([
            {"role": "system", "content": "You answer for demo."},
            {"role": "user", "content": "When do you open?"}
        ])
    );
    assert_eq!(
        h.metric("consumer_ask_total", &[("outcome", "answered")]),
        1.0
    );
    assert_eq!(h.metric("consumer_ask_total", &[("outcome", "done")]), 1.0);
    assert_eq!(
        h.metric("consumer_ask_calls_total", &[("result", "ok")]),
        1.0
    );
}

#[tokio::test]
async fn a_timeout_takes_the_fallback_after_the_retries() {
    let model = MockServer::start().await;
    let h = harness(
        &ask_rules(
            "model",
            r#"fallback_text = "Sorry, please try again later.""#,
        ),
        &model,
        Duration::from_millis(300),
    )
    .await;
    h.mount_token().await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(completion("too late").set_delay(Duration::from_secs(5)))
        .expect(3)
        .mount(&model)
        .await;
    h.expect_calls(TYPING, ok(), 2).await;
    h.expect_calls(SEND, ok(), 1).await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-slow", "7002", "hello?"))
        .await
        .expect("processed");

    assert_eq!(outcome, replied(1));
    assert_eq!(
        received(&h.wechat, SEND).await[0]["text"]["content"],
        "Sorry, please try again later."
    );
    assert_eq!(
        typing_commands(&received(&h.wechat, TYPING).await),
        vec!["Typing", "CancelTyping"]
    );
    assert_eq!(
        h.metric("consumer_ask_calls_total", &[("result", "timeout")]),
        3.0
    );
    assert_eq!(
        h.metric("consumer_ask_fallbacks_total", &[("reason", "timeout")]),
        1.0
    );
    assert_eq!(
        h.metric("consumer_ask_total", &[("outcome", "fallback")]),
        1.0
    );
}

#[tokio::test]
async fn a_429_is_retried_and_the_answer_sent() {
    let model = MockServer::start().await;
    let h = harness(&ask_rules("model", ""), &model, Duration::from_secs(5)).await;
    h.mount_token().await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "0"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&model)
        .await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(completion("Here you are."))
        .mount(&model)
        .await;
    h.expect_calls(TYPING, ok(), 2).await;
    h.expect_calls(SEND, ok(), 1).await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-busy", "7003", "price?"))
        .await
        .expect("processed");

    assert_eq!(outcome, replied(1));
    assert_eq!(
        received(&h.wechat, SEND).await[0]["text"]["content"],
        "Here you are."
    );
    assert_eq!(requests_to(&model, COMPLETIONS).await.len(), 2);
    assert_eq!(
        h.metric("consumer_ask_calls_total", &[("result", "rate_limited")]),
        1.0
    );
    assert_eq!(
        h.metric("consumer_ask_calls_total", &[("result", "ok")]),
        1.0
    );
}

#[tokio::test]
async fn a_malformed_bot_answer_takes_the_fallback_and_is_counted() {
    let bot = MockServer::start().await;
    let h = harness(
        &ask_rules("bot", r#"fallback_text = "A person will answer you soon.""#),
        &bot,
        Duration::from_secs(5),
    )
    .await;
    h.mount_token().await;
    Mock::given(method("POST"))
        .and(path(BOT))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({"replies": [{"type": "text"}]})),
        )
        .expect(1)
        .mount(&bot)
        .await;
    h.expect_calls(TYPING, ok(), 2).await;
    h.expect_calls(SEND, ok(), 1).await;
    let services = h.services().await;
    let question = text("o-odd", "7004", "hi");

    let outcome = services
        .processor
        .process(&question)
        .await
        .expect("processed");

    assert_eq!(outcome, replied(1));
    assert_eq!(
        received(&h.wechat, SEND).await[0]["text"]["content"],
        "A person will answer you soon."
    );
    assert_eq!(
        h.metric("consumer_ask_calls_total", &[("result", "malformed")]),
        1.0
    );
    assert_eq!(
        h.metric("consumer_ask_fallbacks_total", &[("reason", "malformed")]),
        1.0
    );
    // What the bot was asked: the documented request.
    let asked = requests_to(&bot, BOT).await;
    assert_eq!(asked[0]["v"], 1);
    assert_eq!(asked[0]["app"], APP);
    assert_eq!(asked[0]["openid"], "o-odd");
    assert_eq!(asked[0]["rule"], "default");
    assert_eq!(asked[0]["message"]["content"], "hi");
    assert_eq!(asked[0]["message"]["msg_type"], "text");
    assert_eq!(asked[0]["history"], json!([]));
    assert!(asked[0]["idempotency_key"]
        .as_str()
        .is_some_and(|k| k.starts_with(question.dedup_key.as_str())));
}

#[tokio::test]
async fn a_bot_answers_several_replies_and_hands_off() {
    let bot = MockServer::start().await;
    let h = harness(&ask_rules("bot", ""), &bot, Duration::from_secs(5)).await;
    h.mount_token().await;
    Mock::given(method("POST"))
        .and(path(BOT))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "replies": [
                {"type": "text", "content": "Let me get a colleague."},
                {"type": "link", "title": "Help", "url": "https://example.com/help"}
            ],
            "handoff": true,
            "handoff_note": "asked for a refund"
        })))
        .expect(1)
        .mount(&bot)
        .await;
    h.expect_calls(TYPING, ok(), 2).await;
    h.expect_calls(SEND, ok(), 2).await;
    h.create_topics().await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-refund", "7005", "refund please"))
        .await
        .expect("processed");

    assert_eq!(outcome, replied(2));
    let sends = received(&h.wechat, SEND).await;
    assert_eq!(sends[0]["text"]["content"], "Let me get a colleague.");
    assert_eq!(sends[1]["link"]["url"], "https://example.com/help");
    let handoffs = read_topic(
        &h.settings.kafka.handoff_topic,
        1,
        1,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(handoffs.len(), 1);
}

#[tokio::test]
async fn a_closed_window_asks_nothing_and_sends_nothing() {
    let model = MockServer::start().await;
    let h = harness(&ask_rules("model", ""), &model, Duration::from_secs(5)).await;
    h.mount_token().await;
    Mock::given(path(COMPLETIONS))
        .respond_with(completion("never"))
        .expect(0)
        .mount(&model)
        .await;
    h.expect_calls(TYPING, ok(), 0).await;
    h.expect_calls(SEND, ok(), 0).await;
    let services = h.services().await;
    let three_days_ago = now() - 3 * 24 * 3600;

    let outcome = services
        .processor
        .process(&text_at("o-late", "7006", "still there?", three_days_ago))
        .await
        .expect("processed");

    match outcome {
        Outcome::DeadLettered(letter) => assert_eq!(letter.reason, Reason::WindowClosed),
        other => panic!("expected a dead letter, got {other:?}"),
    }
    assert_eq!(
        h.metric("consumer_ask_total", &[("outcome", "window_closed")]),
        1.0
    );
}

#[tokio::test]
async fn memory_carries_the_previous_turns_into_the_next_request() {
    let model = MockServer::start().await;
    let h = harness(&ask_rules("model", ""), &model, Duration::from_secs(5)).await;
    h.mount_token().await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(completion("answer one"))
        .up_to_n_times(1)
        .with_priority(1)
        .expect(1)
        .mount(&model)
        .await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(completion("answer two"))
        .expect(1)
        .mount(&model)
        .await;
    h.expect_calls(TYPING, ok(), 4).await;
    h.expect_calls(SEND, ok(), 2).await;
    let services = h.services().await;

    for (id, content) in [("7007", "first"), ("7008", "second")] {
        let outcome = services
            .processor
            .process(&text("o-mem", id, content))
            .await
            .expect("processed");
        assert_eq!(outcome, replied(1));
    }

    let asked = requests_to(&model, COMPLETIONS).await;
    assert_eq!(
        asked[0]["messages"],
        json!([
            {"role": "system", "content": "You answer for demo."},
            {"role": "user", "content": "first"}
        ])
    );
    assert_eq!(
        asked[1]["messages"],
        json!([
            {"role": "system", "content": "You answer for demo."},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "answer one"},
            {"role": "user", "content": "second"}
        ])
    );
}

#[tokio::test]
async fn stopped_between_answer_and_send_the_same_answer_is_sent_once_without_asking_again() {
    let model = MockServer::start().await;
    let mut h = harness(&ask_rules("model", ""), &model, Duration::from_secs(5)).await;
    // The typing indicator's cancel, between keeping the answer and sending it, hangs: the run is
    // stopped there, as a `kill -9` would stop it.
    h.settings.wechat.timeout = Duration::from_secs(30);
    h.mount_token().await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(completion("The answer."))
        .expect(1)
        .mount(&model)
        .await;
    Mock::given(method("POST"))
        .and(path(TYPING))
        .and(body_partial_json(json!({"command": "CancelTyping"})))
        .respond_with(ok().set_delay(Duration::from_secs(60)))
        .mount(&h.wechat)
        .await;
    Mock::given(method("POST"))
        .and(path(TYPING))
        .respond_with(ok())
        .mount(&h.wechat)
        .await;
    h.expect_calls(SEND, ok(), 1).await;
    let question = text("o-crash", "7009", "are you there?");

    let first = h.services().await;
    let run = {
        let processor = first.processor.clone();
        let question = question.clone();
        tokio::spawn(async move { processor.process(&question).await })
    };
    let cancelling = eventually(Duration::from_secs(20), || async {
        typing_commands(&received(&h.wechat, TYPING).await).contains(&"CancelTyping".to_owned())
    })
    .await;
    assert!(
        cancelling,
        "the run reached the point between answer and send"
    );
    run.abort();
    assert!(run.await.expect_err("aborted").is_cancelled());
    assert!(received(&h.wechat, SEND).await.is_empty());

    // A new process: the same answer goes out once, the model is not asked again.
    let second = h.services().await;
    let outcome = second
        .processor
        .process(&question)
        .await
        .expect("processed");

    assert_eq!(outcome, replied(1));
    assert_eq!(
        received(&h.wechat, SEND).await,
        vec![json!({"touser": "o-crash", "msgtype": "text", "text": {"content": "The answer."}})]
    );
    assert_eq!(requests_to(&model, COMPLETIONS).await.len(), 1);
}

/// A writer into a shared buffer: the log lines of one test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_api_key_appears_in_no_log_line_and_no_debug_output() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let model = MockServer::start().await;
    let h = harness(&ask_rules("model", ""), &model, Duration::from_secs(5)).await;
    h.mount_token().await;
    // The endpoint refuses the key, quoting it back, as some do.
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_string(format!("{{\"error\": \"invalid api key {API_KEY}\"}}")),
        )
        .expect(1)
        .mount(&model)
        .await;
    h.expect_calls(TYPING, ok(), 2).await;
    h.expect_calls(SEND, ok(), 0).await;
    let services = h.services().await;

    let outcome = services
        .processor
        .process(&text("o-key", "7010", "hello"))
        .await
        .expect("processed");

    let Outcome::DeadLettered(letter) = outcome else {
        panic!("a refused ask without a fallback is dead-lettered");
    };
    assert_eq!(letter.reason.kind(), "ask_failed");
    assert_eq!(
        h.metric("consumer_ask_total", &[("outcome", "failed")]),
        1.0
    );
    assert_eq!(
        h.metric("consumer_ask_fallbacks_total", &[("reason", "refused")]),
        1.0
    );
    let logged = String::from_utf8(logs.0.lock().expect("log buffer").clone()).expect("utf-8");
    assert!(
        logged.contains("the ask backend gave no answer"),
        "{logged}"
    );
    assert!(logged.contains("dead-lettered"), "{logged}");
    for shown in [
        logged,
        letter.reason.detail(),
        format!("{:?}", services.processor),
        format!("{:?}", h.settings),
    ] {
        assert!(!shown.contains(API_KEY), "the key leaked: {shown}");
    }
}

#[tokio::test]
async fn explain_shows_the_ask_and_calls_the_backend_only_when_asked_to() {
    let model = MockServer::start().await;
    let h = harness(&ask_rules("model", ""), &model, Duration::from_secs(5)).await;
    Mock::given(method("POST"))
        .and(path(COMPLETIONS))
        .respond_with(completion("Shown, not sent."))
        .expect(1)
        .mount(&model)
        .await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&h.wechat)
        .await;
    let file = h.dir.join("records.jsonl");
    std::fs::write(&file, bytes(&text("o-explain", "7011", "what is this?")))
        .expect("records file");
    let rules = consumer::rules::load_file(
        &h.settings.rules.path,
        &consumer::startup::rules_context(&h.settings),
    )
    .expect("rules");
    let source = consumer::operator::explain::Source::File(file);

    let mut dry = Vec::new();
    consumer::operator::explain::explain(&h.settings, &rules, &source, &mut dry)
        .expect("explained");
    let dry = String::from_utf8(dry).expect("utf-8");
    assert!(requests_to(&model, COMPLETIONS).await.is_empty(), "{dry}");
    assert!(
        dry.contains(&format!(
            "[default #1] ask `model` (chat model `test-model`: POST {}/v1/chat/completions)",
            model.uri()
        )),
        "{dry}"
    );
    assert!(dry.contains(r#""content":"what is this?""#), "{dry}");
    assert!(dry.contains("fallback: none"), "{dry}");

    let mut called = Vec::new();
    consumer::operator::explain::explain_calling(&h.settings, &rules, &source, true, &mut called)
        .expect("explained");
    let called = String::from_utf8(called).expect("utf-8");
    assert!(
        called.contains(r#"answer (not sent): {"source":"backend","replies":[{"type":"text","content":"Shown, not sent."}],"handoff":false"#),
        "{called}"
    );
    assert_eq!(requests_to(&model, COMPLETIONS).await.len(), 1);
}
