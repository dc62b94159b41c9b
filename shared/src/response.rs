//! Building responses: the one JSON response builder, the empty response, and the body of
//! `/health` (the 200 and the 503 share its shape).

use http::{header, HeaderValue, StatusCode};
use lambda_http::Body;
use serde::Serialize;
use serde_json::{json, Value};

/// The response type every handler returns.
pub type HttpResponse = http::Response<Body>;

/// The one way a JSON response is built. `Cache-Control: no-store`: every answer is one
/// user's tasks (or about them), so no browser or proxy keeps a copy on disk; the API
/// answers no conditional GET that a stored copy could serve.
pub fn json_response<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> HttpResponse {
    let bytes = match serde_json::to_vec(value) {
        Ok(bytes) => bytes,
        // Only reachable with a non-string map key, which no type here has.
        Err(_) => br#"{"detail":"Internal server error"}"#.to_vec(),
    };
    let mut response = http::Response::new(Body::Binary(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// A response without a body (204, preflight).
pub fn empty_response(status: StatusCode) -> HttpResponse {
    let mut response = http::Response::new(Body::Empty);
    *response.status_mut() = status;
    response
}

/// The body of `/health`: `{"status", "timestamp", "database"}`, healthy or not.
pub fn health_body(database_reachable: bool) -> Value {
    let (status, database) = if database_reachable {
        ("healthy", "ok")
    } else {
        ("unhealthy", "unreachable")
    };
    json!({"status": status, "timestamp": utc_timestamp(), "database": database})
}

/// Now, in the API's timestamp format: RFC 3339, UTC, `Z`, microseconds.
fn utc_timestamp() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}
