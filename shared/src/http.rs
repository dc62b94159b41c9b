//! HTTP plumbing shared by every operation: the JSON response builder, body and header
//! extraction, request ids and CORS.

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use lambda_http::{Body, Request, RequestExt};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, AuthError};
use crate::validation::{FieldError, Source};

/// The response type every handler returns.
pub type HttpResponse = http::Response<Body>;

/// Largest request body accepted, in bytes (after base64 decoding).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The one way a JSON response is built.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> HttpResponse {
    let bytes = match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        // Only reachable with a non-string map key, which no type here has.
        Err(_) => br#"{"detail":"Internal server error"}"#.to_vec(),
    };
    let mut response = http::Response::new(Body::Binary(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Now, in the API's timestamp format: RFC 3339, UTC, `Z`, microseconds.
pub fn utc_timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

/// A response without a body (204, preflight).
pub fn empty_response(status: StatusCode) -> HttpResponse {
    let mut response = http::Response::new(Body::Empty);
    *response.status_mut() = status;
    response
}

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
    if bytes.len() > MAX_BODY_BYTES {
        return Err(ApiError::PayloadTooLarge);
    }
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
        if !is_json_media_type(content_type) {
            return Err(ApiError::UnsupportedMediaType);
        }
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

fn json_invalid(bytes: &[u8], err: &serde_json::Error) -> ApiError {
    // pydantic reports the character position of the error; serde gives line and column.
    let text = String::from_utf8_lossy(bytes);
    let position: usize = text
        .split_inclusive('\n')
        .take(err.line().saturating_sub(1))
        .map(|line| line.chars().count())
        .sum::<usize>()
        + err.column().saturating_sub(1);
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

/// CORS for the local server and `cargo lambda watch`; in AWS, API Gateway answers CORS
/// from the same `CORS_ALLOWED_ORIGINS`.
#[derive(Debug, Clone)]
pub struct Cors {
    allowed_origins: Vec<String>,
}

const CORS_ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
const CORS_ALLOW_HEADERS: &str = "authorization, content-type, if-match, idempotency-key";
const CORS_EXPOSE_HEADERS: &str =
    "etag, idempotent-replayed, link, location, x-request-id, x-total-count";

impl Cors {
    pub fn new(allowed_origins: Vec<String>) -> Self {
        Cors { allowed_origins }
    }

    fn allowed_origin(&self, headers: &HeaderMap) -> Option<HeaderValue> {
        let origin = headers.get(header::ORIGIN)?;
        let origin_str = origin.to_str().ok()?;
        if self.allowed_origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        self.allowed_origins
            .iter()
            .any(|o| o == origin_str)
            .then(|| origin.clone())
    }

    /// Whether the request is a CORS preflight that should be answered without running the
    /// operation.
    pub fn is_preflight(req: &Request) -> bool {
        req.method() == Method::OPTIONS
    }

    /// The answer to a preflight request.
    pub fn preflight(&self, req: &Request) -> HttpResponse {
        let mut response = empty_response(StatusCode::NO_CONTENT);
        if let Some(origin) = self.allowed_origin(req.headers()) {
            let headers = response.headers_mut();
            let specific = origin != "*";
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            if specific {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(CORS_ALLOW_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(CORS_ALLOW_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
        }
        response
            .headers_mut()
            .insert(header::VARY, HeaderValue::from_static("Origin"));
        response
    }

    /// Adds the CORS headers of an actual (non-preflight) response.
    pub fn decorate(&self, request_headers: &HeaderMap, response: &mut HttpResponse) {
        let headers = response.headers_mut();
        if let Some(origin) = self.allowed_origin(request_headers) {
            // Credentials are never allowed together with a wildcard origin (browsers
            // refuse the pair); the template refuses `*` for the same reason.
            if origin != "*" {
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            headers.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(CORS_EXPOSE_HEADERS),
            );
        }
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
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
    fn cors_allows_credentials_only_for_a_named_origin() {
        let request = headers(&[("origin", "http://localhost:3000")]);
        let mut named = empty_response(StatusCode::OK);
        Cors::new(vec!["http://localhost:3000".into()]).decorate(&request, &mut named);
        assert_eq!(
            named.headers()["access-control-allow-origin"],
            "http://localhost:3000"
        );
        assert_eq!(named.headers()["access-control-allow-credentials"], "true");
        let mut wildcard = empty_response(StatusCode::OK);
        Cors::new(vec!["*".into()]).decorate(&request, &mut wildcard);
        assert_eq!(wildcard.headers()["access-control-allow-origin"], "*");
        assert!(wildcard
            .headers()
            .get("access-control-allow-credentials")
            .is_none());
        let mut foreign = empty_response(StatusCode::OK);
        Cors::new(vec!["https://app.example.com".into()]).decorate(&request, &mut foreign);
        assert!(foreign
            .headers()
            .get("access-control-allow-origin")
            .is_none());
    }

    #[test]
    fn json_media_type_allows_parameters() {
        assert!(is_json_media_type(&HeaderValue::from_static(
            "Application/JSON; charset=utf-8"
        )));
        assert!(!is_json_media_type(&HeaderValue::from_static("text/plain")));
    }
}
