//! API Gateway HTTP API (payload v2.0) events, fed to the functions' handlers exactly as
//! Lambda delivers them.

use http::HeaderMap;
use serde_json::{json, Map, Value};
use std::collections::HashMap;

use shared::routes::{resolve, Operation, FALLBACK_METHODS};
use shared::AppState;

/// An event under construction.
#[derive(Debug, Clone)]
pub struct ApiEvent {
    method: String,
    path: String,
    query: String,
    headers: Map<String, Value>,
    body: Option<String>,
    base64: bool,
}

impl ApiEvent {
    pub fn new(method: &str, path: &str) -> Self {
        ApiEvent {
            method: method.to_owned(),
            path: path.to_owned(),
            query: String::new(),
            headers: Map::new(),
            body: None,
            base64: false,
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    pub fn post(path: &str) -> Self {
        Self::new("POST", path)
    }

    pub fn put(path: &str) -> Self {
        Self::new("PUT", path)
    }

    pub fn patch(path: &str) -> Self {
        Self::new("PATCH", path)
    }

    pub fn delete(path: &str) -> Self {
        Self::new("DELETE", path)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .insert(name.to_ascii_lowercase(), Value::from(value));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// Authenticates as `user` with a valid HS256 token.
    pub fn as_user(self, user: &str) -> Self {
        self.bearer(&crate::tokens::token(user))
    }

    pub fn query(mut self, query: &str) -> Self {
        self.query = query.to_owned();
        self
    }

    /// A JSON body with `Content-Type: application/json`, as frontends send it.
    pub fn json(self, value: &Value) -> Self {
        self.header("content-type", "application/json")
            .raw_body(&value.to_string())
    }

    pub fn raw_body(mut self, body: &str) -> Self {
        self.body = Some(body.to_owned());
        self.base64 = false;
        self
    }

    /// A body API Gateway base64-encoded (it does so for binary media types).
    pub fn base64_body(mut self, body: &[u8]) -> Self {
        use base64::Engine as _;
        self.body = Some(base64::engine::general_purpose::STANDARD.encode(body));
        self.base64 = true;
        self
    }

    /// The event as Lambda would deliver it.
    pub fn to_json(&self) -> Value {
        // API Gateway answers CORS preflights itself: they match no route key. A request of
        // no route takes a fallback route (`<method> /` or `<method> /{proxy+}`, whose
        // parameter is the path without its leading slash), if its method has one.
        let resolved = resolve(&self.method, &self.path)
            .ok()
            .filter(|_| self.method != "OPTIONS");
        let (route_key, params) = match &resolved {
            Some((route, params)) => (format!("{} {}", self.method, route.path), params.clone()),
            None if FALLBACK_METHODS.contains(&self.method.as_str()) => {
                match self.path.trim_start_matches('/') {
                    "" => (format!("{} /", self.method), HashMap::new()),
                    proxy => (
                        format!("{} /{{proxy+}}", self.method),
                        HashMap::from([("proxy".to_owned(), proxy.to_owned())]),
                    ),
                }
            }
            None => ("$default".into(), HashMap::new()),
        };
        let mut event = json!({
            "version": "2.0",
            "routeKey": route_key,
            "rawPath": self.path,
            "rawQueryString": self.query,
            "headers": self.headers,
            "requestContext": {
                "accountId": "123456789012",
                "apiId": "r3pmxmplak",
                "domainName": "r3pmxmplak.execute-api.us-east-1.amazonaws.com",
                "domainPrefix": "r3pmxmplak",
                "http": {
                    "method": self.method,
                    "path": self.path,
                    "protocol": "HTTP/1.1",
                    "sourceIp": "192.0.2.10",
                    "userAgent": "integration-test"
                },
                "requestId": "JKJaXmPLvHcESHA=",
                "routeKey": route_key,
                "stage": "$default",
                "time": "22/Nov/2026:03:14:15 +0000",
                "timeEpoch": 1795317255000i64
            },
            "isBase64Encoded": self.base64
        });
        if !params.is_empty() {
            event["pathParameters"] = json!(params);
        }
        if !self.query.is_empty() {
            let mut params = Map::new();
            for (k, v) in form_urlencoded::parse(self.query.as_bytes()) {
                params
                    .entry(k.into_owned())
                    .or_insert(Value::from(v.into_owned()));
            }
            event["queryStringParameters"] = Value::Object(params);
        }
        if let Some(body) = &self.body {
            event["body"] = Value::from(body.as_str());
        }
        event
    }

    pub fn request(&self) -> lambda_http::Request {
        lambda_http::request::from_str(&self.to_json().to_string()).expect("a valid v2 event")
    }

    /// Invokes the handler of the function the route table assigns to this method and path.
    pub async fn send(&self, state: &AppState) -> ApiResponse {
        let (route, _) = resolve(&self.method, &self.path)
            .unwrap_or_else(|_| panic!("no route for {} {}", self.method, self.path));
        self.send_to(state, route.operation).await
    }

    /// Invokes one function as Lambda would: the event as JSON through the function's
    /// adapter ([`shared::lambda::respond`]) into its handler, and the API Gateway
    /// response it produced back into status, headers and body.
    pub async fn send_to(&self, state: &AppState, operation: Operation) -> ApiResponse {
        send_event(state, operation, self.to_json()).await
    }
}

/// Feeds any event, well-formed or not, to one function as Lambda would.
pub async fn send_event(state: &AppState, operation: Operation, event: Value) -> ApiResponse {
    let mut context = lambda_http::Context::default();
    context.request_id = uuid::Uuid::new_v4().to_string();
    let handler = |req| shared::handlers::handle(state, operation, req);
    let response = shared::lambda::respond(&handler, event, context).await;
    // The body is still the typed enum here; base64 is only how it travels as JSON.
    let body = response.body.map(|b| b.to_vec()).unwrap_or_default();
    ApiResponse {
        status: u16::try_from(response.status_code).expect("a status code"),
        headers: response.headers,
        body,
    }
}

/// What a handler answered.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl ApiResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The titles of a listing, in order.
    pub fn titles(&self) -> Vec<String> {
        self.json()
            .as_array()
            .expect("a JSON array")
            .iter()
            .map(|t| t["title"].as_str().expect("a title").to_owned())
            .collect()
    }

    /// The `detail` of an error body.
    pub fn detail(&self) -> Value {
        self.json()["detail"].clone()
    }

    /// The `type`s of a 422's `detail` entries.
    pub fn error_types(&self) -> Vec<String> {
        self.detail()
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Asserts the status, printing the body when it differs.
    #[track_caller]
    pub fn assert_status(&self, status: u16) -> &Self {
        assert_eq!(
            self.status,
            status,
            "unexpected status; body: {}",
            self.text()
        );
        self
    }
}
