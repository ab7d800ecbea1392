//! The flat field record both wire formats share, and its mapping to and from [`Message`].
//!
//! Reading: a format module fills [`Fields`] with one [`Value`] per top-level field;
//! [`Fields::into_message`] interprets them. Writing: [`write_message`] walks a [`Message`] in
//! WeChat's field order and hands each field to a format's [`Sink`].

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::{MsgId, OpenId};
use crate::message::{
    Message, MessageBody, EVENT_USER_ENTER_TEMPSESSION, MSG_TYPE_EVENT, MSG_TYPE_IMAGE,
    MSG_TYPE_MINIPROGRAMPAGE, MSG_TYPE_TEXT,
};

use super::CodecError;

const TO_USER_NAME: &str = "ToUserName";
const FROM_USER_NAME: &str = "FromUserName";
const CREATE_TIME: &str = "CreateTime";
const MSG_TYPE: &str = "MsgType";
const EVENT: &str = "Event";
const MSG_ID: &str = "MsgId";
const CONTENT: &str = "Content";
const PIC_URL: &str = "PicUrl";
const MEDIA_ID: &str = "MediaId";
const TITLE: &str = "Title";
const APP_ID: &str = "AppId";
const PAGE_PATH: &str = "PagePath";
const THUMB_URL: &str = "ThumbUrl";
const THUMB_MEDIA_ID: &str = "ThumbMediaId";
const SESSION_FROM: &str = "SessionFrom";

/// Fields that have their own members in [`Message`] and so never appear in `Other.fields`.
const COMMON_FIELDS: [&str; 6] = [
    TO_USER_NAME,
    FROM_USER_NAME,
    CREATE_TIME,
    MSG_TYPE,
    EVENT,
    MSG_ID,
];

/// One top-level field as it appeared on the wire.
#[derive(Debug)]
pub(crate) enum Value {
    /// XML character data (CDATA or escaped text) or a JSON string, decoded.
    Text(String),
    /// A JSON number, exactly as written (never converted through a float).
    Number(String),
    /// Nested XML, or a JSON object, array or boolean, as its raw source text.
    Raw(String),
}

impl Value {
    fn into_text(self) -> String {
        match self {
            Value::Text(s) | Value::Number(s) | Value::Raw(s) => s,
        }
    }
}

/// The top-level fields of one payload.
#[derive(Debug, Default)]
pub(crate) struct Fields {
    values: BTreeMap<String, Value>,
    /// Names seen more than once; the first value is the one kept.
    repeated: BTreeSet<String>,
}

impl Fields {
    pub(crate) fn insert(&mut self, name: String, value: Value) {
        use std::collections::btree_map::Entry;
        match self.values.entry(name) {
            Entry::Vacant(slot) => {
                slot.insert(value);
            }
            Entry::Occupied(slot) => {
                self.repeated.insert(slot.key().clone());
            }
        }
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Removes a field the caller interprets; a repeated one is ambiguous and so an error.
    fn take(&mut self, name: &'static str) -> Result<Option<Value>, CodecError> {
        if self.repeated.contains(name) {
            return Err(CodecError::DuplicateField(name));
        }
        Ok(self.values.remove(name))
    }

    /// Removes a field as text, whatever its wire shape.
    pub(crate) fn take_text(&mut self, name: &'static str) -> Result<Option<String>, CodecError> {
        Ok(self.take(name)?.map(Value::into_text))
    }

    fn require_text(&mut self, name: &'static str) -> Result<String, CodecError> {
        self.take_text(name)?.ok_or(CodecError::MissingField(name))
    }

    fn require_integer(&mut self, name: &'static str) -> Result<i64, CodecError> {
        let invalid = CodecError::InvalidField {
            field: name,
            expected: "an integer",
        };
        match self.take(name)? {
            Some(Value::Text(s) | Value::Number(s)) => s.trim().parse().map_err(|_| invalid),
            Some(Value::Raw(_)) => Err(invalid),
            None => Err(CodecError::MissingField(name)),
        }
    }

    /// `MsgId`: an integer as a number, any text as a string; an empty one counts as absent.
    fn take_msg_id(&mut self) -> Result<Option<MsgId>, CodecError> {
        let invalid = CodecError::InvalidField {
            field: MSG_ID,
            expected: "an integer or a string",
        };
        match self.take(MSG_ID)? {
            Some(Value::Text(s)) => {
                let id = s.trim();
                Ok((!id.is_empty()).then(|| MsgId::new(id)))
            }
            Some(Value::Number(n)) => {
                let digits = n.strip_prefix('-').unwrap_or(&n);
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    Ok(Some(MsgId::new(n)))
                } else {
                    Err(invalid)
                }
            }
            Some(Value::Raw(_)) => Err(invalid),
            None => Ok(None),
        }
    }

    fn has_all(&self, names: &[&str]) -> bool {
        names.iter().all(|name| self.contains(name))
    }

    fn into_strings(self) -> BTreeMap<String, String> {
        self.values
            .into_iter()
            .map(|(name, value)| (name, value.into_text()))
            .collect()
    }

    /// Interprets the record as a message.
    pub(crate) fn into_message(mut self) -> Result<Message, CodecError> {
        let to_user_name = self.require_text(TO_USER_NAME)?;
        let from_user_name = OpenId::new(self.require_text(FROM_USER_NAME)?);
        let create_time = self.require_integer(CREATE_TIME)?;
        let msg_type = self.require_text(MSG_TYPE)?;
        let event = self.take_text(EVENT)?;
        let msg_id = self.take_msg_id()?;
        let body = self.into_body(msg_type, event, msg_id)?;
        Ok(Message {
            to_user_name,
            from_user_name,
            create_time,
            body,
        })
    }

    /// Picks the typed variant when every field it needs is present and nothing would be lost
    /// from the common fields; otherwise the push is kept whole as `Other`. Unknown extra fields
    /// of a typed message are not part of the typed view (the envelope keeps the exact payload).
    fn into_body(
        mut self,
        msg_type: String,
        event: Option<String>,
        msg_id: Option<MsgId>,
    ) -> Result<MessageBody, CodecError> {
        Ok(match (Kind::of(&msg_type, event.as_deref()), msg_id) {
            (Some(Kind::Text), Some(msg_id)) if self.has_all(&[CONTENT]) => MessageBody::Text {
                msg_id,
                content: self.require_text(CONTENT)?,
            },
            (Some(Kind::Image), Some(msg_id)) if self.has_all(&[PIC_URL, MEDIA_ID]) => {
                MessageBody::Image {
                    msg_id,
                    pic_url: self.require_text(PIC_URL)?,
                    media_id: self.require_text(MEDIA_ID)?,
                }
            }
            (Some(Kind::MiniProgramPage), Some(msg_id))
                if self.has_all(&[TITLE, APP_ID, PAGE_PATH]) =>
            {
                // The cover fields are documented as possibly empty; absent means the same.
                MessageBody::MiniProgramPage {
                    msg_id,
                    title: self.require_text(TITLE)?,
                    app_id: self.require_text(APP_ID)?,
                    page_path: self.require_text(PAGE_PATH)?,
                    thumb_url: self.take_text(THUMB_URL)?.unwrap_or_default(),
                    thumb_media_id: self.take_text(THUMB_MEDIA_ID)?.unwrap_or_default(),
                }
            }
            // `SessionFrom` is empty when the session was not opened through a button carrying one.
            (Some(Kind::EnterSession), None) => MessageBody::EnterSession {
                session_from: self.take_text(SESSION_FROM)?.unwrap_or_default(),
            },
            (_, msg_id) => MessageBody::Other {
                msg_type,
                event,
                msg_id,
                fields: self.into_strings(),
            },
        })
    }
}

/// The typed message kinds, by `MsgType` and `Event`.
#[derive(Clone, Copy)]
enum Kind {
    Text,
    Image,
    MiniProgramPage,
    EnterSession,
}

impl Kind {
    fn of(msg_type: &str, event: Option<&str>) -> Option<Kind> {
        match (msg_type, event) {
            (MSG_TYPE_TEXT, None) => Some(Kind::Text),
            (MSG_TYPE_IMAGE, None) => Some(Kind::Image),
            (MSG_TYPE_MINIPROGRAMPAGE, None) => Some(Kind::MiniProgramPage),
            (MSG_TYPE_EVENT, Some(EVENT_USER_ENTER_TEMPSESSION)) => Some(Kind::EnterSession),
            _ => None,
        }
    }
}

/// Where a format writes fields; implemented by the XML and JSON writers.
pub(crate) trait Sink {
    /// A string field (XML: CDATA; JSON: string).
    fn string(&mut self, name: &str, value: &str);
    /// An integer field (bare in both formats).
    fn integer(&mut self, name: &str, value: i64);
    /// A message id: bare when it is a canonical `u64`, a string otherwise.
    fn msg_id(&mut self, name: &str, id: &MsgId);
    /// A field of `Other.fields`, whose name came off the wire; a format that cannot represent
    /// the name leaves the field out.
    fn extra(&mut self, name: &str, value: &str);
}

/// Writes `message` in WeChat's field order (that of the official examples).
pub(crate) fn write_message<S: Sink + ?Sized>(message: &Message, sink: &mut S) {
    sink.string(TO_USER_NAME, &message.to_user_name);
    sink.string(FROM_USER_NAME, message.from_user_name.as_str());
    sink.integer(CREATE_TIME, message.create_time);
    sink.string(MSG_TYPE, message.msg_type());
    match &message.body {
        MessageBody::Text { msg_id, content } => {
            sink.string(CONTENT, content);
            sink.msg_id(MSG_ID, msg_id);
        }
        MessageBody::Image {
            msg_id,
            pic_url,
            media_id,
        } => {
            sink.string(PIC_URL, pic_url);
            sink.string(MEDIA_ID, media_id);
            sink.msg_id(MSG_ID, msg_id);
        }
        MessageBody::MiniProgramPage {
            msg_id,
            title,
            app_id,
            page_path,
            thumb_url,
            thumb_media_id,
        } => {
            sink.msg_id(MSG_ID, msg_id);
            sink.string(TITLE, title);
            sink.string(APP_ID, app_id);
            sink.string(PAGE_PATH, page_path);
            sink.string(THUMB_URL, thumb_url);
            sink.string(THUMB_MEDIA_ID, thumb_media_id);
        }
        MessageBody::EnterSession { session_from } => {
            sink.string(EVENT, EVENT_USER_ENTER_TEMPSESSION);
            sink.string(SESSION_FROM, session_from);
        }
        MessageBody::Other {
            event,
            msg_id,
            fields,
            ..
        } => {
            if let Some(event) = event {
                sink.string(EVENT, event);
            }
            // A hand-built `Other` could shadow a common field; writing it twice would make the
            // output ambiguous, so the member wins.
            for (name, value) in fields {
                if !COMMON_FIELDS.contains(&name.as_str()) {
                    sink.extra(name, value);
                }
            }
            if let Some(msg_id) = msg_id {
                sink.msg_id(MSG_ID, msg_id);
            }
        }
    }
}
