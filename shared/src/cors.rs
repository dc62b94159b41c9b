//! CORS, as the functions answer it locally (`scripts/dev`, `todo-server`); in AWS, API
//! Gateway answers CORS from the same `CORS_ALLOWED_ORIGINS`.

use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use lambda_http::Request;

use crate::response::{empty_response, HttpResponse};

/// CORS for the local server and `cargo lambda watch`; in AWS, API Gateway answers CORS
/// from the same `CORS_ALLOWED_ORIGINS`.
#[derive(Debug, Clone)]
pub struct Cors {
    allowed_origins: Vec<String>,
}

/// The methods a preflight allows (API Gateway's `AllowMethods`, the same list).
pub const CORS_ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
/// The request headers a preflight allows (API Gateway's `AllowHeaders`).
pub const CORS_ALLOW_HEADERS: &str = "authorization, content-type, if-match, idempotency-key";
/// The response headers browser code may read besides the CORS-safelisted ones (API
/// Gateway's `ExposeHeaders`): what the typed client reads (`ETag`, `Link`, `X-Total-Count`,
/// a 503's `Retry-After`) and what explains an answer (`Idempotent-Replayed`, `Location`,
/// `WWW-Authenticate`, `X-Request-Id`). Without `Retry-After` here a browser hides it, and
/// the client would retry a 503 at its own guess instead of when the API asked.
pub const CORS_EXPOSE_HEADERS: &str = "etag, idempotent-replayed, link, location, retry-after, \
     www-authenticate, x-request-id, x-total-count";

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

    #[test]
    fn cors_allows_credentials_only_for_a_named_origin() {
        let mut request = HeaderMap::new();
        request.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://localhost:3000"),
        );
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
}
