//! Reading requests: the bearer token, the request id, and the JSON body with its size
//! (413), media type (415) and shape (422) checks.

use http::{header, HeaderMap, HeaderValue};
use lambda_http::{Request, RequestExt};
use serde_json::{json, Map, Value};

use crate::error::{ApiError, AuthError};
use crate::validation::{FieldError, Source};

/// Largest request body accepted, in bytes (after base64 decoding).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Marks a request whose body was longer than [`MAX_BODY_BYTES`] and so was not read
/// (`todo-server` stops reading there); the body extractor answers 413 for it.
#[derive(Debug, Clone, Copy)]
pub struct BodyTooLarge;

/// The bearer token of the `Authorization` header; the scheme is matched case-insensitively.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(AuthError::Missing)?
        .to_str()
        .map_err(|_| AuthError::Malformed)?
        .trim();
    let (scheme, token) = value.split_once(' ').ok_or(AuthError::Malformed)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// The request id: the Lambda request id when there is one, otherwise a fresh UUID.
pub fn request_id(req: &Request) -> String {
    match req.lambda_context_ref() {
        Some(ctx) if !ctx.request_id.is_empty() => ctx.request_id.clone(),
        _ => uuid::Uuid::new_v4().to_string(),
    }
}

/// Reads the body as a JSON object, enforcing size (413), media type (415) and shape (422).
/// `Ok(None)` means there was no body at all.
pub fn json_object_body(req: &Request) -> Result<Option<Map<String, Value>>, ApiError> {
    let bytes: &[u8] = req.body().as_ref();
    if bytes.len() > MAX_BODY_BYTES || req.extensions().get::<BodyTooLarge>().is_some() {
        return Err(ApiError::PayloadTooLarge);
    }
    if bytes.is_empty() {
        return Ok(None);
    }
    // A body that is there is labelled as JSON, or not at all, before anything else: white
    // space sent as `text/plain` is a 415, not "no body" (which a PATCH takes as a toggle).
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        if !is_json_media_type(content_type) {
            return Err(ApiError::UnsupportedMediaType);
        }
    }
    // A compressed body (nothing here decodes one) would otherwise be read as malformed JSON.
    if req
        .headers()
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|value| !is_identity_coding(value))
    {
        return Err(ApiError::UnsupportedContentEncoding);
    }
    // JSON's white space only (RFC 8259): `u8::is_ascii_whitespace` also takes a form feed,
    // and a body of one would have been no body, so a PATCH would have toggled.
    if bytes
        .iter()
        .all(|b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
    {
        return Ok(None);
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|err| json_invalid(bytes, &err))?;
    match value {
        Value::Object(map) => Ok(Some(map)),
        other => Err(FieldError::new(
            Source::Body,
            "",
            "model_attributes_type",
            "Input should be a valid dictionary or object to extract fields from",
            other,
        )
        .into()),
    }
}

fn is_json_media_type(value: &HeaderValue) -> bool {
    let Ok(value) = value.to_str() else {
        return false;
    };
    let media_type = value.split(';').next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/json")
}

/// `Content-Encoding: identity` (or empty), possibly in a list: the body as sent.
fn is_identity_coding(value: &HeaderValue) -> bool {
    value.to_str().is_ok_and(|codings| {
        codings
            .split(',')
            .map(str::trim)
            .all(|coding| coding.is_empty() || coding.eq_ignore_ascii_case("identity"))
    })
}

fn json_invalid(bytes: &[u8], err: &serde_json::Error) -> ApiError {
    // pydantic reports the character position of the error; serde gives the line and the
    // column in bytes, which are counted here as characters too. At the end of the input
    // serde's column is the last byte's, where pydantic's position is past it.
    let chars = |line: &[u8]| String::from_utf8_lossy(line).chars().count();
    let mut lines = bytes.split_inclusive(|&b| b == b'\n');
    let position: usize = if err.classify() == serde_json::error::Category::Eof {
        chars(bytes)
    } else {
        lines
            .by_ref()
            .take(err.line().saturating_sub(1))
            .map(chars)
            .sum::<usize>()
            + lines.next().map_or(0, |line| {
                chars(&line[..err.column().saturating_sub(1).min(line.len())])
            })
    };
    let message = err.to_string();
    let reason = message
        .split(" at line ")
        .next()
        .unwrap_or("invalid JSON")
        .to_owned();
    ApiError::Validation(vec![FieldError {
        kind: "json_invalid",
        loc: vec![json!("body"), json!(position)],
        msg: "JSON decode error".into(),
        input: json!({}),
        ctx: Some(Box::new(json!({ "error": reason }))),
    }])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(
            bearer_token(&headers(&[("authorization", "bEaReR abc.def.ghi")])),
            Ok("abc.def.ghi")
        );
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_malformed() {
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Basic abc")])),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            bearer_token(&headers(&[("authorization", "Bearer ")])),
            Err(AuthError::Malformed)
        );
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::Missing));
    }

    #[test]
    fn json_media_type_allows_parameters() {
        assert!(is_json_media_type(&HeaderValue::from_static(
            "Application/JSON; charset=utf-8"
        )));
        assert!(!is_json_media_type(&HeaderValue::from_static("text/plain")));
    }
}
