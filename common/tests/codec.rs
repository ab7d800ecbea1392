//! Reading WeChat payloads: the documented kinds, and tolerance of everything else.

use common::codec::{self, CodecError, Format};
use common::{Message, MessageBody, MsgId};

fn xml(doc: &str) -> Result<Message, CodecError> {
    codec::parse(Format::Xml, doc.as_bytes())
}

fn json(doc: &str) -> Result<Message, CodecError> {
    codec::parse(Format::Json, doc.as_bytes())
}

fn other_fields(message: &Message) -> &std::collections::BTreeMap<String, String> {
    match &message.body {
        MessageBody::Other { fields, .. } => fields,
        body => panic!("expected Other, got {body:?}"),
    }
}

#[test]
fn documented_text_message_in_both_formats() {
    let from_xml = xml("<xml>
  <ToUserName><![CDATA[gh_97417a04a28d]]></ToUserName>
  <FromUserName><![CDATA[o9AgO5Kd5ggOC-bXrbNODIiE3bGY]]></FromUserName>
  <CreateTime>1482048670</CreateTime>
  <MsgType><![CDATA[text]]></MsgType>
  <Content><![CDATA[this is a test]]></Content>
  <MsgId>1234567890123456</MsgId>
</xml>")
    .expect("documented XML");
    let from_json = json(
        r#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5Kd5ggOC-bXrbNODIiE3bGY",
            "CreateTime":1482048670,"MsgType":"text","Content":"this is a test","MsgId":1234567890123456}"#,
    )
    .expect("documented JSON");
    assert_eq!(from_xml, from_json);
    assert_eq!(from_xml.to_user_name, "gh_97417a04a28d");
    assert_eq!(
        from_xml.from_user_name.as_str(),
        "o9AgO5Kd5ggOC-bXrbNODIiE3bGY"
    );
    assert_eq!(from_xml.create_time, 1482048670);
    assert_eq!(
        from_xml.body,
        MessageBody::Text {
            msg_id: MsgId::new("1234567890123456"),
            content: "this is a test".into(),
        }
    );
}

#[test]
fn documented_image_and_card() {
    let image = json(
        r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":1482048670,"MsgType":"image",
            "PicUrl":"this is a url","MediaId":"media_id","MsgId":1234567890123456}"#,
    )
    .expect("image");
    assert_eq!(
        image.body,
        MessageBody::Image {
            msg_id: MsgId::new("1234567890123456"),
            pic_url: "this is a url".into(),
            media_id: "media_id".into(),
        }
    );

    let card = json(
        r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":1482048670,"MsgType":"miniprogrampage",
            "MsgId":1234567890123456,"Title":"title","AppId":"appid","PagePath":"path",
            "ThumbUrl":"","ThumbMediaId":""}"#,
    )
    .expect("card");
    assert_eq!(
        card.body,
        MessageBody::MiniProgramPage {
            msg_id: MsgId::new("1234567890123456"),
            title: "title".into(),
            app_id: "appid".into(),
            page_path: "path".into(),
            thumb_url: String::new(),
            thumb_media_id: String::new(),
        }
    );

    let card_without_cover = xml(
        "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName>\
         <CreateTime>1</CreateTime><MsgType>miniprogrampage</MsgType><MsgId>5</MsgId>\
         <Title>t</Title><AppId>a</AppId><PagePath>p</PagePath></xml>",
    )
    .expect("card without cover fields");
    assert!(matches!(
        card_without_cover.body,
        MessageBody::MiniProgramPage { ref thumb_url, .. } if thumb_url.is_empty()
    ));
}

#[test]
fn enter_session_event() {
    let enter = xml("<xml><ToUserName><![CDATA[gh]]></ToUserName>\
         <FromUserName><![CDATA[o]]></FromUserName><CreateTime>1482048670</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[user_enter_tempsession]]></Event>\
         <SessionFrom><![CDATA[wxapp]]></SessionFrom></xml>")
    .expect("enter session");
    assert_eq!(
        enter.body,
        MessageBody::EnterSession {
            session_from: "wxapp".into()
        }
    );
    assert_eq!(enter.msg_id(), None);
    assert!(!enter.is_user_message());
}

#[test]
fn integers_as_numeric_strings() {
    let message = json(
        r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":"1610969440","MsgType":"text",
            "Content":"x","MsgId":"1864323726461255680"}"#,
    )
    .expect("numeric strings");
    assert_eq!(message.create_time, 1610969440);
    assert_eq!(
        message.msg_id().map(MsgId::as_str),
        Some("1864323726461255680")
    );

    let padded = xml(
        "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName>\
         <CreateTime>\n 1482048670 \n</CreateTime><MsgType>text</MsgType><Content>x</Content>\
         <MsgId> 4363689963896700987 </MsgId></xml>",
    )
    .expect("blank-padded integers");
    assert_eq!(padded.create_time, 1482048670);
    assert_eq!(
        padded.msg_id().map(MsgId::as_str),
        Some("4363689963896700987")
    );
}

#[test]
fn cloud_function_string_msg_id() {
    let message = json(
        r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":1555684067,"MsgType":"text",
            "Content":"x","MsgId":"49d72d67b16d115e7ac0b5a06ee9e2d8_1555684067"}"#,
    )
    .expect("string id");
    assert_eq!(
        message.msg_id().map(MsgId::as_str),
        Some("49d72d67b16d115e7ac0b5a06ee9e2d8_1555684067")
    );
    assert!(codec::to_json(&message)
        .contains(r#""MsgId":"49d72d67b16d115e7ac0b5a06ee9e2d8_1555684067""#));
}

#[test]
fn unknown_fields_do_not_disturb_typed_messages() {
    let message = json(
        r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":1,"MsgType":"text","Content":"x",
            "MsgId":2,"Brand":{"new":"field"},"Flag":true,"Nothing":null,"Extra":[1,2]}"#,
    )
    .expect("unknown fields");
    assert_eq!(message.text(), Some("x"));
}

#[test]
fn debug_demo_event() {
    let message = xml("<xml><ToUserName><![CDATA[gh]]></ToUserName>\
         <FromUserName><![CDATA[o]]></FromUserName><CreateTime>1714112445</CreateTime>\
         <MsgType><![CDATA[event]]></MsgType><Event><![CDATA[debug_demo]]></Event>\
         <debug_str><![CDATA[hello world]]></debug_str></xml>")
    .expect("debug_demo");
    assert_eq!(message.event(), Some("debug_demo"));
    assert_eq!(
        other_fields(&message).get("debug_str").map(String::as_str),
        Some("hello world")
    );
}

#[test]
fn subscribe_popup_list_as_object_or_array_is_kept_raw() {
    let one = json(
        r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":"1610969440","MsgType":"event",
            "Event":"subscribe_msg_popup_event",
            "List":{"TemplateId":"hD-ixGOhYmUfjOnI8MCzQMPshzGVeux_2vzyvQu7O68","SubscribeStatusString":"accept","PopupScene":"0"}}"#,
    )
    .expect("List as object");
    assert_eq!(
        other_fields(&one).get("List").map(String::as_str),
        Some(
            r#"{"TemplateId":"hD-ixGOhYmUfjOnI8MCzQMPshzGVeux_2vzyvQu7O68","SubscribeStatusString":"accept","PopupScene":"0"}"#
        )
    );

    let many = json(
        r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":1610969440,"MsgType":"event",
            "Event":"subscribe_msg_popup_event",
            "List":[{"TemplateId":"a","SubscribeStatusString":"accept"},{"TemplateId":"b","SubscribeStatusString":"reject"}]}"#,
    )
    .expect("List as array");
    assert_eq!(
        other_fields(&many).get("List").map(String::as_str),
        Some(
            r#"[{"TemplateId":"a","SubscribeStatusString":"accept"},{"TemplateId":"b","SubscribeStatusString":"reject"}]"#
        )
    );

    let nested_xml = xml(
        "<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName>\
         <CreateTime>1610969440</CreateTime><MsgType>event</MsgType>\
         <Event>subscribe_msg_popup_event</Event>\
         <SubscribeMsgPopupEvent><List><TemplateId>a</TemplateId></List>\
         <List><TemplateId>b</TemplateId></List></SubscribeMsgPopupEvent></xml>",
    )
    .expect("nested XML");
    assert_eq!(
        other_fields(&nested_xml)
            .get("SubscribeMsgPopupEvent")
            .map(String::as_str),
        Some("<List><TemplateId>a</TemplateId></List><List><TemplateId>b</TemplateId></List>")
    );
}

#[test]
fn unknown_msg_type_is_other_and_keeps_its_id() {
    let message = json(
        r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":1,"MsgType":"video","MediaId":"m","MsgId":77}"#,
    )
    .expect("unknown type");
    assert_eq!(message.msg_type(), "video");
    assert_eq!(message.msg_id().map(MsgId::as_str), Some("77"));
    assert!(message.is_user_message());
    assert_eq!(
        other_fields(&message).get("MediaId").map(String::as_str),
        Some("m")
    );
}

#[test]
fn known_type_missing_its_fields_is_kept_as_other() {
    let message =
        json(r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":1,"MsgType":"text","MsgId":3}"#)
            .expect("text without Content");
    assert_eq!(message.msg_type(), "text");
    assert_eq!(message.text(), None);
    assert!(matches!(message.body, MessageBody::Other { .. }));
}

#[test]
fn escaped_xml_text_and_declaration() {
    let message = xml("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!-- push -->\n<xml>\
         <ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime>\
         <MsgType>text</MsgType><Content>a &lt;b&gt; &amp; &#x4F60;&#22909;</Content><MsgId>9</MsgId></xml>\n")
    .expect("escaped text");
    assert_eq!(message.text(), Some("a <b> & 你好"));
}

#[test]
fn missing_required_fields() {
    let complete = [
        ("ToUserName", r#""gh""#),
        ("FromUserName", r#""o""#),
        ("CreateTime", "1"),
        ("MsgType", r#""text""#),
    ];
    for (skipped, _) in complete {
        let doc = complete
            .iter()
            .filter(|(name, _)| *name != skipped)
            .map(|(name, value)| format!(r#""{name}":{value}"#))
            .collect::<Vec<_>>()
            .join(",");
        let result = json(&format!("{{{doc}}}"));
        assert!(
            matches!(result, Err(CodecError::MissingField(field)) if field == skipped),
            "without {skipped}: {result:?}"
        );
    }
    assert_eq!(xml("<xml/>"), Err(CodecError::MissingField("ToUserName")));
}

#[test]
fn wrongly_shaped_fields() {
    let base = r#""ToUserName":"gh","FromUserName":"o","MsgType":"text""#;
    for create_time in [r#""soon""#, "1.5", "{}", "[1]", "99999999999999999999"] {
        assert_eq!(
            json(&format!(r#"{{{base},"CreateTime":{create_time}}}"#)),
            Err(CodecError::InvalidField {
                field: "CreateTime",
                expected: "an integer"
            }),
            "CreateTime {create_time}"
        );
    }
    for msg_id in ["1.5", "1e20", "{}", "true"] {
        let result = json(&format!(r#"{{{base},"CreateTime":1,"MsgId":{msg_id}}}"#));
        assert!(
            matches!(result, Err(CodecError::InvalidField { field: "MsgId", .. })),
            "MsgId {msg_id}: {result:?}"
        );
    }
}

#[test]
fn repeated_interpreted_field_is_ambiguous_but_repeated_unknown_is_not() {
    assert_eq!(
        json(
            r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":1,"MsgType":"text","MsgType":"event"}"#
        ),
        Err(CodecError::DuplicateField("MsgType"))
    );
    assert_eq!(
        xml("<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime>\
             <MsgType>text</MsgType><Content>a</Content><Content>b</Content><MsgId>1</MsgId></xml>"),
        Err(CodecError::DuplicateField("Content"))
    );
    let tolerated = json(
        r#"{"ToUserName":"gh","FromUserName":"o","CreateTime":1,"MsgType":"event","Event":"x","Note":"first","Note":"second"}"#,
    )
    .expect("repeated unknown field");
    assert_eq!(
        other_fields(&tolerated).get("Note").map(String::as_str),
        Some("first")
    );
}

#[test]
fn syntax_errors_are_reported_per_format() {
    assert_eq!(
        codec::parse(Format::Json, b"\xff\xfe"),
        Err(CodecError::NotUtf8)
    );
    assert!(matches!(json("{\"ToUserName\":"), Err(CodecError::Json(_))));
    assert!(matches!(
        xml("<xml><ToUserName>gh</xml>"),
        Err(CodecError::Xml { .. })
    ));
    // The wrong format is an error, not a guess.
    assert!(matches!(json("<xml></xml>"), Err(CodecError::Json(_))));
    assert!(matches!(xml(r#"{"a":1}"#), Err(CodecError::Xml { .. })));
}

#[test]
fn error_messages_name_fields_not_values() {
    let error =
        json(r#"{"ToUserName":"gh","FromUserName":"o","MsgType":"text","CreateTime":"my secret"}"#)
            .expect_err("bad CreateTime");
    let shown = error.to_string();
    assert!(shown.contains("CreateTime"), "{shown}");
    assert!(!shown.contains("my secret"), "{shown}");
    assert_eq!(error.kind(), "invalid_field");
}
