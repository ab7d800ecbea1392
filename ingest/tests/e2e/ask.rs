//! The `ask` action end to end: the consumer processes ask the simulator's chat model
//! (`wechat-sim api` serves `/v1/chat/completions`), and every text gets the model's answer once.

use std::time::Duration;

use serde_json::Value;

use super::pipeline::Pipeline;
use super::{say, serial, Deadline};

/// The scenario rules, with a bot answering every text.
const ASK_RULES: &str = r#"
[[rule]]
name = "other-events"
[rule.when]
msg_type = "event"
[[rule.actions]]
type = "drop"

[[rule]]
name = "bot"
[rule.when]
msg_type = "text"
[[rule.actions]]
type = "ask"
backend = "assistant"
fallback_text = "fallback"

[default]
[[default.actions]]
type = "drop"
"#;

async fn get(p: &Pipeline, path: &str) -> Value {
    p.http
        .get(format!("{}{path}", p.sim_url))
        .send()
        .await
        .expect("wechat-sim api answers")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_text_gets_the_chat_models_answer_once() {
    let _serial = serial().await;
    let mut p = Pipeline::start_with(
        "ask",
        2,
        &["--latency", "5ms", "--chat-latency", "200ms"],
        ASK_RULES,
        true,
    )
    .await;
    let (summary, outcomes) = p.push(120, 40.0, 12).finish(Duration::from_secs(90)).await;
    assert_eq!(summary.acknowledged, summary.sent);
    let texts = outcomes
        .iter()
        .filter(|o| o.acked && o.kind == "text")
        .count();
    assert!(texts > 0, "the mix has texts");
    say(format!(
        "{texts} texts pushed; waiting for the bot's answers"
    ));

    let deadline = Deadline::new(Duration::from_secs(120), "every text answered by the bot");
    let answers = loop {
        let sends = get(&p, "/sim/sends").await;
        let answers: Vec<String> = sends
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["body"]["text"]["content"].as_str())
            .filter(|c| c.starts_with("Echo: ") || *c == "fallback")
            .map(str::to_owned)
            .collect();
        if answers.len() >= texts {
            break answers;
        }
        deadline.tick().await;
    };
    p.assert_running();

    assert_eq!(answers.len(), texts, "one answer per text, none twice");
    assert!(
        answers.iter().all(|a| a.starts_with("Echo: ")),
        "no fallback in a calm run"
    );
    let chat = get(&p, "/sim/chat").await;
    assert_eq!(
        chat["answered"], texts as u64,
        "the model was asked once per text"
    );
    let mut answered = 0.0;
    for index in 0..p.consumers.len() {
        answered += p
            .consumer_metric(index, "consumer_ask_total", "outcome=\"answered\"")
            .await;
    }
    assert_eq!(answered, texts as f64);
}

/// The consumer is killed (`kill -9`) after the model answered and the answer was kept, before
/// the reply went out (every WeChat call takes 1.5 s here, so the cancel of the typing indicator
/// holds the run between the two). The consumer started after it sends that answer, once, and
/// the model is not asked again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_between_answer_and_send_the_answer_is_sent_once_without_asking_again() {
    let _serial = serial().await;
    let mut p = Pipeline::start_with(
        "ask-kill",
        1,
        &["--latency", "1500ms", "--chat-latency", "0ms"],
        ASK_RULES,
        true,
    )
    .await;
    let redis = redis::Client::open(super::pipeline::redis_url()).expect("redis url");
    let mut conn = redis
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    let (summary, _) = p
        .push_mix(1, 1.0, 1, "text=1")
        .finish(Duration::from_secs(60))
        .await;
    assert_eq!(summary.acknowledged, 1);

    // The answer is kept under `<prefix>ask:{<app>:<openid>}:answer:<key>` (docs/redis-keys.md).
    let pattern = format!("{}:ask:*:answer:*", p.id);
    let deadline = Deadline::new(Duration::from_secs(60), "the model's answer kept in Redis");
    loop {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query_async(&mut conn)
            .await
            .expect("KEYS");
        if !keys.is_empty() {
            break;
        }
        deadline.tick().await;
    }
    p.kill_consumer(0).await;
    let sends = get(&p, "/sim/sends").await;
    assert_eq!(
        sends.as_array().map(Vec::len),
        Some(0),
        "killed before the send"
    );
    assert_eq!(get(&p, "/sim/chat").await["answered"], 1);
    say("consumer killed between the answer and the send; starting another");

    p.sim_faults(serde_json::json!({"latency": "5ms"})).await;
    p.start_consumer().await;
    let deadline = Deadline::new(Duration::from_secs(90), "the kept answer sent");
    let sends = loop {
        let sends = get(&p, "/sim/sends").await;
        if sends.as_array().is_some_and(|s| !s.is_empty()) {
            break sends;
        }
        deadline.tick().await;
    };
    // Whatever else might still come would be a second send: wait until the record is done.
    let deadline = Deadline::new(Duration::from_secs(60), "the record finished");
    while p
        .consumer_metric(0, "consumer_records_total", "outcome=\"replied\"")
        .await
        < 1.0
    {
        deadline.tick().await;
    }
    let sends = get(&p, "/sim/sends")
        .await
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("sends: {sends}"));
    assert_eq!(sends.len(), 1, "one send: {sends:?}");
    assert!(sends[0]["body"]["text"]["content"]
        .as_str()
        .is_some_and(|c| c.starts_with("Echo: ")));
    assert_eq!(
        get(&p, "/sim/chat").await["calls"],
        1,
        "the model was not asked again"
    );
    assert_eq!(
        p.consumer_metric(0, "consumer_ask_total", "outcome=\"reused\"")
            .await,
        1.0
    );
}
