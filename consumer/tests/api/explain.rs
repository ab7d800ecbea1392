//! `consumer explain`: the matching rules and the exact requests, for a file and for a topic
//! range — and nothing sent, nothing committed.

use consumer::operator::explain::{explain, Source};
use consumer::rules::load_file;
use consumer::startup::rules_context;
use wiremock::matchers::any;
use wiremock::{Mock, ResponseTemplate};

use crate::helpers::*;

const RULES: &str = r#"
[[rule]]
name = "welcome"
[rule.when]
event = "user_enter_tempsession"
[[rule.actions]]
type = "typing"
[[rule.actions]]
type = "text"
content = "Welcome ({session_from})"

[default]
[[default.actions]]
type = "text"
content = "You said {content}"
"#;

async fn nothing_may_be_called(h: &Harness) {
    Mock::given(any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&h.wechat)
        .await;
}

#[tokio::test]
async fn explains_a_file_of_records() {
    let h = Harness::new(RULES).await;
    nothing_may_be_called(&h).await;
    let file = h.dir.join("records.jsonl");
    let lines = [
        String::from_utf8(bytes(&enter("o-1", "vip"))).expect("utf8"),
        "{not an envelope".to_owned(),
        String::new(),
        String::from_utf8(bytes(&text("o-2", "77", "hello"))).expect("utf8"),
    ];
    std::fs::write(&file, lines.join("\n")).expect("records file");
    let rules = load_file(&h.settings.rules.path, &rules_context(&h.settings)).expect("rules");
    let mut out = Vec::new();

    let seen =
        explain(&h.settings, &rules, &Source::File(file.clone()), &mut out).expect("explained");

    let out = String::from_utf8(out).expect("utf8");
    assert_eq!(seen, 3, "{out}");
    let base = h.wechat.uri();
    assert!(out.contains("matched: welcome"), "{out}");
    assert!(
        out.contains(&format!(
            "[welcome #1] POST {base}/cgi-bin/message/custom/typing?access_token=ACCESS_TOKEN"
        )),
        "{out}"
    );
    assert!(
        out.contains(r#"{"touser":"o-1","command":"Typing"}"#),
        "{out}"
    );
    assert!(
        out.contains(r#"{"touser":"o-1","msgtype":"text","text":{"content":"Welcome (vip)"}}"#),
        "{out}"
    );
    assert!(out.contains(":2: poison (malformed)"), "{out}");
    assert!(out.contains("matched: default"), "{out}");
    assert!(
        out.contains(&format!(
            "[default #1] POST {base}/cgi-bin/message/custom/send?access_token=ACCESS_TOKEN"
        )),
        "{out}"
    );
    assert!(
        out.contains(r#"{"touser":"o-2","msgtype":"text","text":{"content":"You said hello"}}"#),
        "{out}"
    );
    assert!(out.contains("idempotency key demo:msg:77:h:"), "{out}");
    h.wechat.verify().await;
}

#[tokio::test]
async fn explains_an_offset_range_without_joining_the_group() {
    let mut h = Harness::new(RULES).await;
    h.settings.kafka.topics.inbound_partitions = 1;
    h.create_topics().await;
    nothing_may_be_called(&h).await;
    let envs: Vec<_> = (0..4)
        .map(|n| text("o-r", &format!("{n}"), &format!("m{n}")))
        .collect();
    produce_envelopes(&h.settings.kafka.inbound_topic, &envs).await;
    let rules = load_file(&h.settings.rules.path, &rules_context(&h.settings)).expect("rules");
    let source = Source::Topic {
        topic: h.settings.kafka.inbound_topic.clone(),
        partition: 0,
        from: 1,
        to: Some(3),
    };
    let mut out = Vec::new();

    let settings = h.settings.clone();
    let (seen, out) = tokio::task::spawn_blocking(move || {
        let seen = explain(&settings, &rules, &source, &mut out).expect("explained");
        (seen, String::from_utf8(out).expect("utf8"))
    })
    .await
    .expect("explain task");

    assert_eq!(seen, 2, "{out}");
    assert!(
        out.contains("@1:") && out.contains("@2:") && !out.contains("@0:") && !out.contains("@3:"),
        "{out}"
    );
    assert!(
        out.contains("You said m1") && out.contains("You said m2"),
        "{out}"
    );
    assert_eq!(
        total(
            &committed(
                &format!("{}-explain", h.settings.kafka.group_id),
                &h.settings.kafka.inbound_topic,
                1
            )
            .await
        ),
        0,
        "explain commits nothing"
    );
    assert_eq!(
        total(
            &committed(
                &h.settings.kafka.group_id,
                &h.settings.kafka.inbound_topic,
                1
            )
            .await
        ),
        0
    );
    h.wechat.verify().await;
}

fn total(offsets: &[i64]) -> i64 {
    offsets.iter().map(|o| (*o).max(0)).sum()
}
