//! The routing rules of every scenario, and the replies they call for — computed here
//! independently of the consumer's rule engine. Each reply names the message it answers, so the
//! audit can tell every expected reply apart and check that it arrived exactly once.

use common::envelope::EnvelopeV1;
use common::message::MessageBody;
use serde_json::{json, Value};

/// The rules file every scenario's consumers run.
pub const RULES: &str = r#"
[[rule]]
name = "welcome"
[rule.when]
event = "user_enter_tempsession"
[[rule.actions]]
type = "text"
content = "welcome {openid} at {create_time}"

[[rule]]
name = "image"
[rule.when]
msg_type = "image"
[[rule.actions]]
type = "typing"
command = "Typing"
[[rule.actions]]
type = "text"
content = "image {msg_id} received"

[[rule]]
name = "card"
[rule.when]
msg_type = "miniprogrampage"
[[rule.actions]]
type = "text"
content = "card {msg_id}: {title}"
[[rule.actions]]
type = "miniprogrampage"
title = "{title}"
pagepath = "{page_path}"
thumb_media_id = "e2e-thumb"

[[rule]]
name = "other-events"
[rule.when]
msg_type = "event"
[[rule.actions]]
type = "drop"

[default]
[[default.actions]]
type = "text"
content = "echo {msg_id}: {content}"
"#;

/// A reply the rules call for: (rule, action index, body).
pub fn expected_replies(env: &EnvelopeV1) -> Vec<(&'static str, usize, Value)> {
    let msg = &env.message;
    let touser = msg.from_user_name.as_str();
    let text = |content: String| json!({"touser": touser, "msgtype": "text", "text": {"content": content}});
    match &msg.body {
        MessageBody::Text { msg_id, content } => {
            vec![("default", 0, text(format!("echo {msg_id}: {content}")))]
        }
        // Action 0 is the typing indicator, not a reply.
        MessageBody::Image { msg_id, .. } => {
            vec![("image", 1, text(format!("image {msg_id} received")))]
        }
        MessageBody::MiniProgramPage {
            msg_id,
            title,
            page_path,
            ..
        } => vec![
            ("card", 0, text(format!("card {msg_id}: {title}"))),
            (
                "card",
                1,
                json!({"touser": touser, "msgtype": "miniprogrampage", "miniprogrampage": {
                    "title": title, "pagepath": page_path, "thumb_media_id": "e2e-thumb"}}),
            ),
        ],
        MessageBody::EnterSession { .. } => vec![(
            "welcome",
            0,
            text(format!("welcome {touser} at {}", msg.create_time)),
        )],
        MessageBody::Other { .. } => Vec::new(),
    }
}
