//! The rules file: line-numbered errors, every condition, ordering, continue and default, and the
//! shipped example. Pure: no service is needed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use consumer::rules::{parse_rules, RuleSet, RulesContext};

use crate::helpers::{card, enter, image, text, text_at, APP};

fn ctx() -> RulesContext {
    RulesContext {
        apps: Some(BTreeSet::from([APP.to_owned()])),
        handoff_available: true,
        ask_backends: None,
    }
}

fn compile(source: &str) -> RuleSet {
    parse_rules(source, Path::new("rules.toml"), &ctx()).expect("rules compile")
}

fn error(source: &str) -> String {
    parse_rules(source, Path::new("config/rules.toml"), &ctx())
        .expect_err("rules must be refused")
        .to_string()
}

fn names(rules: &RuleSet, env: &common::envelope::EnvelopeV1) -> Vec<String> {
    rules
        .evaluate(env)
        .iter()
        .map(|m| m.rule.name.clone())
        .collect()
}

#[test]
fn syntax_and_shape_errors_name_line_and_column() {
    let unknown_key = "[[rule]]\nname = \"a\"\n[rule.when]\nkewyord = [\"x\"]\n[[rule.actions]]\ntype = \"drop\"\n";
    let e = error(unknown_key);
    assert!(
        e.starts_with("config/rules.toml:4:1: unknown field `kewyord`"),
        "{e}"
    );

    let unknown_action =
        "[[rule]]\nname = \"a\"\n[[rule.actions]]\ntype = \"txt\"\ncontent = \"hi\"\n";
    let e = error(unknown_action);
    assert!(
        e.starts_with("config/rules.toml:4:8: unknown variant `txt`"),
        "{e}"
    );

    let not_toml = "[[rule]]\nname = \"a\n";
    assert!(
        error(not_toml).starts_with("config/rules.toml:2:"),
        "{}",
        error(not_toml)
    );
}

#[test]
fn semantic_errors_point_at_the_rule() {
    let bad_regex = "\n[[rule]]\nname = \"a\"\n[rule.when]\nregex = \"(unclosed\"\n[[rule.actions]]\ntype = \"drop\"\n";
    let e = error(bad_regex);
    assert!(
        e.starts_with("config/rules.toml:5:9: rule `a`: bad regex"),
        "{e}"
    );

    let placeholder =
        "[[rule]]\nname = \"greet\"\n[[rule.actions]]\ntype = \"text\"\ncontent = \"hi {nmae}\"\n";
    let e = error(placeholder);
    assert!(
        e.starts_with(
            "config/rules.toml:2:8: rule `greet`, action 1: unknown placeholder `{nmae}`"
        ),
        "{e}"
    );

    let unknown_app =
        "[[rule]]\nname = \"a\"\n[rule.when]\napp = \"shpo\"\n[[rule.actions]]\ntype = \"drop\"\n";
    assert!(
        error(unknown_app).contains("4:7: rule `a`: app `shpo` is not configured"),
        "{}",
        error(unknown_app)
    );

    let window =
        "[[rule]]\nname = \"a\"\n[rule.when]\ntime = \"9-18\"\n[[rule.actions]]\ntype = \"drop\"\n";
    assert!(
        error(window).contains("4:8: rule `a`: time window `9-18`"),
        "{}",
        error(window)
    );

    let twice = "[[rule]]\nname = \"a\"\n[[rule.actions]]\ntype = \"drop\"\n[[rule]]\nname = \"a\"\n[[rule.actions]]\ntype = \"drop\"\n";
    assert!(
        error(twice).starts_with("config/rules.toml:6:8: rule name `a` is used twice"),
        "{}",
        error(twice)
    );

    let image =
        "[[rule]]\nname = \"a\"\n[[rule.actions]]\ntype = \"image\"\nfile = \"missing.jpg\"\n";
    assert!(
        error(image).contains("rule `a`, action 1: file `"),
        "{}",
        error(image)
    );

    let forward = "[[rule]]\nname = \"a\"\n[[rule.actions]]\ntype = \"forward\"\n";
    assert!(
        error(forward).contains("forward needs exactly one of `url` or `topic`"),
        "{}",
        error(forward)
    );

    let no_actions = "[[rule]]\nname = \"a\"\n";
    assert!(
        error(no_actions).contains("has no actions"),
        "{}",
        error(no_actions)
    );
}

#[test]
fn first_match_stops_unless_continue_then_default() {
    let rules = compile(
        r#"
[[rule]]
name = "first"
continue = true
[rule.when]
keywords = ["price"]
[[rule.actions]]
type = "drop"

[[rule]]
name = "second"
[rule.when]
keywords = ["price", "cost"]
[[rule.actions]]
type = "drop"

[[rule]]
name = "never"
[rule.when]
keywords = ["price"]
[[rule.actions]]
type = "drop"

[default]
[[default.actions]]
type = "text"
content = "default"
"#,
    );
    assert_eq!(
        names(&rules, &text("o1", "1", "What PRICE?")),
        ["first", "second"]
    );
    assert_eq!(names(&rules, &text("o1", "2", "the cost")), ["second"]);
    assert_eq!(names(&rules, &text("o1", "3", "hello")), ["default"]);
}

#[test]
fn every_condition_must_hold() {
    let rules = compile(
        r#"
utc_offset = "+08:00"
[[rule]]
name = "exact"
[rule.when]
app = ["demo"]
msg_type = "text"
text = "hi"
openids = ["o-vip"]
[[rule.actions]]
type = "drop"

[[rule]]
name = "order"
[rule.when]
regex = "^order (?P<no>\\d+)$"
[[rule.actions]]
type = "text"
content = "order {no} / {1} for {openid}"

[[rule]]
name = "vip-entry"
[rule.when]
event = "user_enter_tempsession"
session_from = ["vip", "gold"]
[[rule.actions]]
type = "drop"

[[rule]]
name = "card"
[rule.when]
card_appid = "wxcard"
card_page_path = "pages/item/item"
card_title = "Shoes"
[[rule.actions]]
type = "drop"

[[rule]]
name = "office"
[rule.when]
msg_type = "text"
time = "09:00-18:00"
[[rule.actions]]
type = "drop"
"#,
    );
    assert_eq!(names(&rules, &text("o-vip", "1", " hi ")), ["exact"]);
    assert!(!names(&rules, &text("o-other", "2", "hi")).contains(&"exact".to_owned()));
    assert_eq!(names(&rules, &enter("o1", "gold")), ["vip-entry"]);
    assert!(names(&rules, &enter("o1", "wxapp")).is_empty());
    assert_eq!(
        names(
            &rules,
            &card("o1", "3", "Shoes", "wxcard", "pages/item/item?id=9")
        ),
        ["card"]
    );
    assert!(names(
        &rules,
        &card("o1", "4", "Hats", "wxcard", "pages/item/item")
    )
    .is_empty());
    assert!(
        names(&rules, &image("o1", "5")).is_empty(),
        "text conditions never hold for images"
    );

    // 2024-04-26 02:00 UTC is 10:00 in China: inside office hours; 12:00 UTC (20:00) is not.
    let morning = 1_714_096_800;
    assert_eq!(
        names(&rules, &text_at("o1", "6", "yo", morning)),
        ["office"]
    );
    assert!(names(&rules, &text_at("o1", "7", "yo", morning + 10 * 3600)).is_empty());

    let env = text("o9", "8", "order 42");
    let matched = rules.evaluate(&env);
    assert_eq!(matched[0].rule.name, "order");
    let planned = consumer::actions::plan(&env, &matched);
    let consumer::actions::Step::Send { request, .. } = &planned[0].step else {
        panic!("a send was planned");
    };
    assert_eq!(
        serde_json::to_value(request).expect("json"),
        serde_json::json!({"touser": "o9", "msgtype": "text", "text": {"content": "order 42 / 42 for o9"}})
    );
    assert!(
        planned[0].idempotency_key.starts_with("demo:msg:8:h:"),
        "keyed by what it sends: {}",
        planned[0].idempotency_key
    );
    assert_eq!(planned[0].legacy_key, "demo:msg:8:order:0");
}

#[test]
fn the_shipped_example_compiles_and_routes() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/rules.toml");
    let rules = consumer::rules::load_file(&path, &ctx()).expect("config/rules.toml compiles");
    assert_eq!(names(&rules, &enter("o1", "wxapp")), ["welcome"]);
    // 03:00 UTC = 11:00 in China: office hours, so the catch-all default answers.
    assert_eq!(
        names(&rules, &text_at("o1", "1", "人工", 1_714_100_400)),
        ["human"]
    );
    assert_eq!(
        names(&rules, &text_at("o1", "2", "hello", 1_714_100_400)),
        ["default"]
    );
    assert_eq!(
        names(&rules, &text_at("o1", "3", "hello", 1_714_143_600)),
        ["after-hours"]
    );
}
