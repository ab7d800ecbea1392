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
