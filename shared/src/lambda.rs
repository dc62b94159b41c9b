//! The Lambda boundary: API Gateway HTTP API (payload v2.0) events in, responses out.
//!
//! The event is taken as plain JSON and turned into a request here, leniently, instead of
//! by lambda_http's conversion, which panics on what a client can send through API Gateway
//! (a raw `<`, `>` or `"` in the query string, an odd `Host`, a body that is not base64)
//! and refuses events with missing fields before any of our code runs. Whatever arrives,
//! the answer is a response: a JSON 400 with `detail` and `X-Request-Id` for an event that
//! cannot be a request, the handler's answer otherwise.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;

use base64::Engine as _;
use http::{header, HeaderName, HeaderValue, Method};
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayV2httpRequestContext, ApiGatewayV2httpResponse,
};
use lambda_http::lambda_runtime::{self, Context, LambdaEvent};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt};
use serde_json::Value;

use crate::error::ApiError;
use crate::response::HttpResponse;

/// Serves one function: every invocation's event goes through [`respond`]. Up to
/// `AWS_LAMBDA_MAX_CONCURRENCY` invocations run at once (Lambda Managed Instances), each on
/// a task of its own; when it is unset or 1, one at a time, as on classic Lambda.
pub async fn run<F, Fut>(handler: F) -> Result<(), lambda_runtime::Error>
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = HttpResponse> + Send + 'static,
{
    lambda_runtime::run_concurrent(lambda_runtime::service_fn(
        move |event: LambdaEvent<Value>| {
            let handler = handler.clone();
            async move {
                let (payload, context) = event.into_parts();
                Ok::<_, Infallible>(respond(&handler, payload, context).await)
            }
        },
    ))
    .await
}

/// Answers one event, whatever it holds.
pub async fn respond<F, Fut>(
    handler: &F,
    event: Value,
    context: Context,
) -> ApiGatewayV2httpResponse
where
    F: Fn(Request) -> Fut,
    Fut: Future<Output = HttpResponse>,
{
    let request_id = context.request_id.clone();
    let response = match request_from_event(event) {
        Ok(request) => handler(request.with_lambda_context(context)).await,
        Err(reason) => {
            tracing::info!(request_id, status = 400, reason, "event refused");
            ApiError::MalformedEvent(reason).into_response()
        }
    };
    gateway_response(response, &request_id)
}

/// Characters kept as they are in a path; every other byte is percent-encoded (RFC 3986
/// `pchar` and `/`). A `%` is kept only where it starts a valid escape.
fn is_path_char(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&byte)
}

fn is_query_char(byte: u8) -> bool {
    is_path_char(byte) || byte == b'?'
}

/// `raw` with every byte outside `keep` percent-encoded, and every `%` that does not start
/// a valid escape encoded as `%25`, so that it always parses as a URI component.
fn encode_component(raw: &str, keep: fn(u8) -> bool) -> String {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (i, &byte) in bytes.iter().enumerate() {
        let valid_escape = byte == b'%'
            && bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
            && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
        if keep(byte) || valid_escape {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The request an API Gateway v2 event describes, or why it describes none.
fn request_from_event(event: Value) -> Result<Request, &'static str> {
    let Value::Object(event) = event else {
        return Err("the event is not a JSON object");
    };
    let context = event.get("requestContext");
    let http_context = context.and_then(|c| c.get("http"));
    let method = http_context
        .and_then(|h| h.get("method"))
        .and_then(Value::as_str)
        .ok_or("the event names no HTTP method")?;
    let method = Method::from_bytes(method.as_bytes()).map_err(|_| "invalid HTTP method")?;
    let raw_path = event
        .get("rawPath")
        .and_then(Value::as_str)
        .or_else(|| {
            http_context
                .and_then(|h| h.get("path"))
                .and_then(Value::as_str)
        })
        .unwrap_or("/");
    let mut uri = String::from("/");
    uri.push_str(&encode_component(
        raw_path.trim_start_matches('/'),
        is_path_char,
    ));
    let query = event
        .get("rawQueryString")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !query.is_empty() {
        uri.push('?');
        uri.push_str(&encode_component(query, is_query_char));
    }
    let uri: http::Uri = uri.parse().map_err(|_| "unusable path")?;

    let base64 = match event.get("isBase64Encoded") {
        Some(Value::Bool(flag)) => *flag,
        Some(Value::String(flag)) => flag.eq_ignore_ascii_case("true"),
        _ => false,
    };
    let body = match event.get("body") {
        None | Some(Value::Null) => Body::Empty,
        Some(Value::String(text)) if base64 => Body::Binary(
            base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|_| "the body is not valid base64")?,
        ),
        Some(Value::String(text)) => Body::Text(text.clone()),
        Some(_) => return Err("the body is not a string"),
    };

    let mut request = http::Request::new(body);
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    if let Some(Value::Object(headers)) = event.get("headers") {
        let target = request.headers_mut();
        for (name, value) in headers {
            // A header that HTTP cannot carry is left out, as a proxy would drop it. Bytes
            // past ASCII are kept (the header's parser decides), and a precondition or an
            // idempotency key that cannot be carried refuses the event: dropped, the write
            // would run unconditionally, or twice.
            let (Ok(name), Some(text)) = (HeaderName::from_bytes(name.as_bytes()), value.as_str())
            else {
                continue;
            };
            match HeaderValue::from_bytes(text.as_bytes()) {
                Ok(value) => target.append(name, value),
                // (`precondition::IDEMPOTENCY_KEY_HEADER`, a floor above this module.)
                Err(_) if name == header::IF_MATCH || name.as_str() == "idempotency-key" => {
                    return Err("an If-Match or Idempotency-Key header holds a control character");
                }
                Err(_) => continue,
            };
        }
    }
    let mut request = request;
    if let Some(Value::Object(params)) = event.get("pathParameters") {
        let params: HashMap<String, String> = params
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
            .collect();
        request = request.with_path_parameters(params);
    }
    if let Some(context) = context
        .and_then(|c| serde_json::from_value::<ApiGatewayV2httpRequestContext>(c.clone()).ok())
    {
        request = request.with_request_context(RequestContext::ApiGatewayV2(context));
    }
    Ok(request)
}

/// The response in API Gateway's v2 shape (as lambda_http writes it), with the request id.
fn gateway_response(response: HttpResponse, request_id: &str) -> ApiGatewayV2httpResponse {
    let (parts, body) = response.into_parts();
    let mut headers = parts.headers;
    if !headers.contains_key("x-request-id") {
        if let Ok(value) = HeaderValue::from_str(request_id) {
            headers.insert("x-request-id", value);
        }
    }
    let cookies = headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    headers.remove(header::SET_COOKIE);
    let mut out = ApiGatewayV2httpResponse::default();
    out.status_code = i64::from(parts.status.as_u16());
    // Every body here is JSON: sent as text, as lambda_http does for JSON, not base64.
    (out.is_base64_encoded, out.body) = match body {
        Body::Empty => (false, None),
        text @ Body::Text(_) => (false, Some(text)),
        Body::Binary(bytes) => match String::from_utf8(bytes) {
            Ok(text) => (false, Some(Body::Text(text))),
            Err(err) => (true, Some(Body::Binary(err.into_bytes()))),
        },
        _ => (false, None),
    };
    out.headers = headers;
    out.cookies = cookies;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn anything_a_client_can_put_in_a_query_becomes_a_valid_uri() {
        let encoded = encode_component("search=<a> \"b\"&x=%zz&y=%41%", is_query_char);
        assert_eq!(encoded, "search=%3Ca%3E%20%22b%22&x=%25zz&y=%41%25");
        assert!(format!("/p?{encoded}").parse::<http::Uri>().is_ok());
    }

    #[test]
    fn an_event_without_a_method_is_refused_not_a_panic() {
        assert!(request_from_event(json!({"rawPath": "/health"})).is_err());
        assert!(request_from_event(json!([1, 2])).is_err());
        let request = request_from_event(json!({
            "rawPath": "/api/u/tasks",
            "rawQueryString": "search=<a>",
            "requestContext": {"http": {"method": "GET"}},
            "headers": {"bad header": "x", "x-ok": "fine", "x-bad-value": "a\nb"},
        }))
        .unwrap();
        assert_eq!(request.uri().query(), Some("search=%3Ca%3E"));
        assert_eq!(request.headers().len(), 1);
    }
}
