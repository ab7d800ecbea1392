//! Checking request bodies the way WeChat does (docs/wechat-protocol.md §6.2, §6.4, §6.6), with its errcodes.

use serde_json::Value;

/// A refusal: WeChat's errcode and errmsg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub errcode: i64,
    pub errmsg: &'static str,
}

const fn refusal(errcode: i64, errmsg: &'static str) -> Refusal {
    Refusal { errcode, errmsg }
}

pub const EMPTY_POST: Refusal = refusal(44002, "empty post data");
pub const DATA_FORMAT: Refusal = refusal(47001, "data format error");
pub const INVALID_OPENID: Refusal = refusal(40003, "invalid openid");
pub const INVALID_MSGTYPE: Refusal = refusal(40008, "invalid message type");
pub const INVALID_COMMAND: Refusal = refusal(45072, "command invalid");
pub const TOKEN_MISSING: Refusal = refusal(41001, "access_token missing");
pub const INVALID_MEDIA_TYPE: Refusal = refusal(40004, "invalid media type");
pub const MEDIA_MISSING: Refusal = refusal(41005, "media data missing");
pub const INVALID_IMAGE_SIZE: Refusal = refusal(40009, "invalid image size");

/// Largest temporary image accepted (the documentation's smaller figure).
pub const MAX_IMAGE_BYTES: usize = 2 * 1024 * 1024;

/// Parses a JSON request body.
pub fn json_body(body: &[u8]) -> Result<Value, Refusal> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(EMPTY_POST);
    }
    let value: Value = serde_json::from_slice(body).map_err(|_| DATA_FORMAT)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(DATA_FORMAT)
    }
}

/// Checks a `custom/send` body: a user, a known msgtype, and that type's required fields.
pub fn check_send(body: &Value) -> Result<(), Refusal> {
    check_touser(body)?;
    let required: &[&str] = match body["msgtype"].as_str() {
        Some("text") => &["content"],
        Some("image") => &["media_id"],
        Some("link") => &["title", "description", "url", "thumb_url"],
        Some("miniprogrampage") => &["title", "pagepath", "thumb_media_id"],
        _ => return Err(INVALID_MSGTYPE),
    };
    let msgtype = body["msgtype"].as_str().unwrap_or_default();
    let object = &body[msgtype];
    if !object.is_object() {
        return Err(DATA_FORMAT);
    }
    for field in required {
        match object[*field].as_str() {
            Some(value) if !value.is_empty() || *field == "description" => {}
            _ => return Err(DATA_FORMAT),
        }
    }
    Ok(())
}

/// Checks a `custom/typing` body.
pub fn check_typing(body: &Value) -> Result<(), Refusal> {
    check_touser(body)?;
    match body["command"].as_str() {
        Some("Typing" | "CancelTyping") => Ok(()),
        _ => Err(INVALID_COMMAND),
    }
}

fn check_touser(body: &Value) -> Result<(), Refusal> {
    match body["touser"].as_str() {
        Some(user) if !user.is_empty() => Ok(()),
        _ => Err(INVALID_OPENID),
    }
}

/// Checks a `media/upload` request: `type=image` and a multipart part `media` with a file name,
/// no larger than [`MAX_IMAGE_BYTES`].
pub fn check_upload(
    media_type: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(), Refusal> {
    if media_type != Some("image") {
        return Err(INVALID_MEDIA_TYPE);
    }
    let boundary = content_type
        .and_then(|ct| {
            let (kind, params) = ct.split_once(';')?;
            if !kind.trim().eq_ignore_ascii_case("multipart/form-data") {
                return None;
            }
            params.split(';').find_map(|p| {
                let (name, value) = p.split_once('=')?;
                (name.trim().eq_ignore_ascii_case("boundary"))
                    .then(|| value.trim().trim_matches('"').to_owned())
            })
        })
        .ok_or(MEDIA_MISSING)?;
    let size = media_part_size(body, &boundary).ok_or(MEDIA_MISSING)?;
    if size == 0 || size > MAX_IMAGE_BYTES {
        return Err(INVALID_IMAGE_SIZE);
    }
    Ok(())
}

/// The size of the part named `media` that carries a file name, if there is one.
fn media_part_size(body: &[u8], boundary: &str) -> Option<usize> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut rest = body;
    while let Some(at) = find(rest, delimiter) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            return None;
        }
        let headers_end = find(rest, b"\r\n\r\n")?;
        let headers = String::from_utf8_lossy(&rest[..headers_end]).to_ascii_lowercase();
        let content = &rest[headers_end + 4..];
        let end = find(content, delimiter)?;
        let is_media = headers.contains("name=\"media\"") && headers.contains("filename=");
        if is_media {
            // The part's content ends with the CRLF before the next delimiter.
            return Some(end.saturating_sub(2));
        }
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn send_bodies_are_checked_like_wechat() {
        let ok = json!({"touser":"u","msgtype":"text","text":{"content":"hi"}});
        assert_eq!(check_send(&ok), Ok(()));
        let card = json!({"touser":"u","msgtype":"miniprogrampage",
            "miniprogrampage":{"title":"t","pagepath":"p","thumb_media_id":"m"}});
        assert_eq!(check_send(&card), Ok(()));
        let no_user = json!({"msgtype":"text","text":{"content":"hi"}});
        assert_eq!(check_send(&no_user), Err(INVALID_OPENID));
        let bad_type = json!({"touser":"u","msgtype":"video","video":{}});
        assert_eq!(check_send(&bad_type), Err(INVALID_MSGTYPE));
        let missing = json!({"touser":"u","msgtype":"image","image":{}});
        assert_eq!(check_send(&missing), Err(DATA_FORMAT));
        assert_eq!(json_body(b" "), Err(EMPTY_POST));
        assert_eq!(json_body(b"{nope"), Err(DATA_FORMAT));
    }

    #[test]
    fn typing_commands_are_checked() {
        assert_eq!(
            check_typing(&json!({"touser":"u","command":"Typing"})),
            Ok(())
        );
        assert_eq!(
            check_typing(&json!({"touser":"u","command":"typing"})),
            Err(INVALID_COMMAND)
        );
    }

    #[test]
    fn uploads_need_an_image_part() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"media\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\nJPEGDATA\r\n--XyZ--\r\n";
        let ct = Some("multipart/form-data; boundary=XyZ");
        assert_eq!(check_upload(Some("image"), ct, body), Ok(()));
        assert_eq!(media_part_size(body, "XyZ"), Some(8));
        assert_eq!(
            check_upload(Some("voice"), ct, body),
            Err(INVALID_MEDIA_TYPE)
        );
        let other = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\n\r\nX\r\n--XyZ--\r\n";
        assert_eq!(check_upload(Some("image"), ct, other), Err(MEDIA_MISSING));
        assert_eq!(
            check_upload(Some("image"), Some("application/json"), body),
            Err(MEDIA_MISSING)
        );
    }
}
