//! Request parsing on arbitrary input: body (JSON, media type, size), path id, query
//! string, If-Match and Idempotency-Key, through the same parsers the handlers use.
//! Must never panic: with `panic = "abort"`, a panic would kill the Lambda instance.

#![no_main]

use libfuzzer_sys::fuzz_target;
use shared::listing::ListQuery;
use shared::precondition::{IdempotencyKey, IfMatch};
use shared::task::{Completion, NewTask, TaskChanges, TaskId};

fuzz_target!(|data: &[u8]| {
    // Layout: content-type \0 path id \0 query \0 header value \0 body
    let mut parts = data.splitn(5, |b| *b == 0);
    let content_type = parts.next().unwrap_or_default();
    let id = parts.next().unwrap_or_default();
    let query = parts.next().unwrap_or_default();
    let header = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();

    let mut builder = http::Request::builder().method("POST").uri("/api/u/tasks");
    if let Ok(value) = http::HeaderValue::from_bytes(content_type) {
        builder = builder.header(http::header::CONTENT_TYPE, value);
    }
    if let Ok(value) = http::HeaderValue::from_bytes(header) {
        builder = builder
            .header(http::header::IF_MATCH, value.clone())
            .header("idempotency-key", value);
    }
    let Ok(req) = builder.body(lambda_http::Body::Binary(body.to_vec())) else {
        return;
    };
    if let Ok(object) = shared::request::json_object_body(&req) {
        let _ = NewTask::from_body(object.clone());
        let _ = TaskChanges::from_body(object.clone());
        let _ = Completion::from_body(object);
    }
    let _ = IfMatch::from_headers(req.headers());
    let _ = IdempotencyKey::from_headers(req.headers());
    if let Ok(id) = std::str::from_utf8(id) {
        let _ = TaskId::parse(id);
    }
    if let Ok(query) = std::str::from_utf8(query) {
        if let Ok(list) = ListQuery::parse(Some(query)) {
            let _ = list.search_pattern();
            let _ = list.next_link("/api/u/tasks", Some(query), i64::MAX);
        }
    }
});
