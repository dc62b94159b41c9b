//! The one error type of the API and its mapping to HTTP responses.

use http::{HeaderValue, StatusCode};
use serde_json::json;

use crate::response::{health_body, json_response, HttpResponse};
use crate::validation::{FieldError, FieldErrors};

/// Seconds a client should wait before retrying after a 503.
pub const RETRY_AFTER_SECONDS: u32 = 2;

/// Why a request carries no usable identity. The message is safe to show to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("Not authenticated")]
    Missing,
    #[error("Invalid authorization header")]
    Malformed,
    #[error("Token has expired")]
    Expired,
    #[error("Token is not yet valid")]
    NotYetValid,
    /// Why, for the request's log line only; the client is told only "Invalid token".
    #[error("Invalid token")]
    Invalid(&'static str),
    #[error("Invalid token subject")]
    InvalidSubject,
}

/// Everything a request can end in other than success.
#[derive(thiserror::Error)]
pub enum ApiError {
    #[error("unauthorized: {0}")]
    Unauthorized(AuthError),
    #[error("forbidden: path user id differs from the token's")]
    Forbidden,
    #[error("task not found")]
    NotFound,
    /// An API Gateway event that cannot be a request (no method, a body that is not base64).
    #[error("malformed event: {0}")]
    MalformedEvent(&'static str),
    /// `todo-server` and the fallback routes (the health function): no route has this path.
    #[error("no such path")]
    NoSuchPath,
    /// `todo-server` and the fallback routes: the path exists under other methods, listed in
    /// `Allow`.
    #[error("method not allowed")]
    MethodNotAllowed { allowed: Vec<&'static str> },
    /// `todo-server`: the body did not arrive within the body timeout.
    #[error("request body not received in time")]
    BodyTimeout,
    #[error("request body too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// A body sent with a `Content-Encoding` (such as `gzip`): only `identity` is read.
    #[error("unsupported content encoding")]
    UnsupportedContentEncoding,
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// `If-Match` does not name the task's current version. `unmatchable`: it names no
    /// tag this API sends (only weak, unquoted or foreign ones), so no version ever matches.
    #[error("precondition failed")]
    PreconditionFailed { unmatchable: bool },
    /// The write may or may not have been applied: the database connection was lost after
    /// the write was sent, with its answer. Never used for a write known not to have run.
    #[error("write outcome unknown")]
    OutcomeUnknown(#[source] anyhow::Error),
    #[error("dependency unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// `/health` when the database does not answer: a 503 in the health body's shape.
    #[error("database unreachable")]
    Unhealthy(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl std::fmt::Debug for ApiError {
    /// Prints the whole cause chain, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write_with_causes(f, self)
    }
}

/// `error`, then each of its causes after a `: `.
pub(crate) fn write_with_causes(
    f: &mut std::fmt::Formatter<'_>,
    error: &dyn std::error::Error,
) -> std::fmt::Result {
    write!(f, "{error}")?;
    let mut source = error.source();
    while let Some(cause) = source {
        write!(f, ": {cause}")?;
        source = cause.source();
    }
    Ok(())
}

impl From<AuthError> for ApiError {
    fn from(err: AuthError) -> Self {
        ApiError::Unauthorized(err)
    }
}

impl From<FieldError> for ApiError {
    fn from(err: FieldError) -> Self {
        ApiError::Validation(vec![err])
    }
}

impl From<FieldErrors> for ApiError {
    fn from(errors: FieldErrors) -> Self {
        ApiError::Validation(errors.0)
    }
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden => StatusCode::FORBIDDEN,
            ApiError::NotFound | ApiError::NoSuchPath => StatusCode::NOT_FOUND,
            ApiError::MalformedEvent(_) => StatusCode::BAD_REQUEST,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType | ApiError::UnsupportedContentEncoding => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            ApiError::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::PreconditionFailed { .. } => StatusCode::PRECONDITION_FAILED,
            ApiError::OutcomeUnknown(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Unavailable(_) | ApiError::Unhealthy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The response the caller sees: never a driver message, SQL or a secret.
    pub fn into_response(self) -> HttpResponse {
        let status = self.status();
        let mut response = match &self {
            ApiError::Validation(errors) => json_response(status, &json!({ "detail": errors })),
            ApiError::Unhealthy(_) => {
                let mut body = health_body(false);
                body["detail"] = json!(self.detail());
                json_response(status, &body)
            }
            _ => json_response(status, &json!({ "detail": self.detail() })),
        };
        let headers = response.headers_mut();
        match self {
            ApiError::Unauthorized(AuthError::Missing) => {
                headers.insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    "www-authenticate",
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            ApiError::Unavailable(_) | ApiError::Unhealthy(_) => {
                headers.insert("retry-after", HeaderValue::from(RETRY_AFTER_SECONDS));
            }
            ApiError::UnsupportedContentEncoding => {
                // RFC 9110, 15.5.16: the codings the server accepts.
                headers.insert(
                    http::header::ACCEPT_ENCODING,
                    HeaderValue::from_static("identity"),
                );
            }
            ApiError::MethodNotAllowed { allowed } => {
                if let Ok(value) = HeaderValue::from_str(&allowed.join(", ")) {
                    headers.insert(http::header::ALLOW, value);
                }
            }
            _ => {}
        }
        response
    }

    fn detail(&self) -> String {
        match self {
            ApiError::Unauthorized(reason) => reason.to_string(),
            ApiError::Forbidden => "Not authorized to access this user's tasks".into(),
            ApiError::NotFound => "Task not found".into(),
            ApiError::MalformedEvent(reason) => format!("Malformed request: {reason}"),
            ApiError::NoSuchPath => "Not Found".into(),
            ApiError::MethodNotAllowed { .. } => "Method Not Allowed".into(),
            ApiError::BodyTimeout => "Request body not received in time".into(),
            ApiError::PayloadTooLarge => "Request body too large (limit 64 KiB)".into(),
            ApiError::UnsupportedMediaType => {
                "Unsupported media type: send the body as application/json".into()
            }
            ApiError::UnsupportedContentEncoding => {
                "Unsupported Content-Encoding: send the body uncompressed".into()
            }
            ApiError::Validation(_) => "Validation error".into(),
            ApiError::PreconditionFailed { unmatchable: false } => {
                "Precondition failed: the task has changed since it was read".into()
            }
            ApiError::PreconditionFailed { unmatchable: true } => "Precondition failed: \
                 If-Match names no ETag this API sends (an ETag is a version in quotes, such \
                 as \"3\", sent as received; a weak W/ tag never matches)"
                .into(),
            ApiError::OutcomeUnknown(_) => "The database connection was lost before this write \
                 was confirmed: it may or may not have been applied. Repeat it with If-Match (a \
                 create: with the same Idempotency-Key)"
                .into(),
            ApiError::Unavailable(_) => "Service temporarily unavailable, retry shortly".into(),
            ApiError::Unhealthy(_) => "Database unavailable".into(),
            ApiError::Internal(_) => "Internal server error".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(response: &HttpResponse) -> String {
        String::from_utf8(response.body().to_vec()).unwrap()
    }

    #[test]
    fn internal_errors_never_show_their_cause() {
        let err = ApiError::Internal(anyhow::anyhow!("relation \"tasks\" does not exist"));
        assert!(format!("{err:?}").contains("relation"));
        let response = err.into_response();
        assert_eq!(response.status(), 500);
        assert_eq!(body(&response), r#"{"detail":"Internal server error"}"#);
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let response = ApiError::Unavailable(anyhow::anyhow!("connect timeout")).into_response();
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()["retry-after"], "2");
        assert!(!body(&response).contains("timeout"));
    }

    #[test]
    fn an_unknown_outcome_is_a_504_that_says_so() {
        let response =
            ApiError::OutcomeUnknown(anyhow::anyhow!("connection reset")).into_response();
        assert_eq!(response.status(), 504);
        assert!(body(&response).contains("may or may not have been applied"));
        assert!(!body(&response).contains("reset"));
    }

    #[test]
    fn unauthorized_carries_a_bearer_challenge() {
        let missing = ApiError::from(AuthError::Missing).into_response();
        assert_eq!(missing.headers()["www-authenticate"], "Bearer");
        let expired = ApiError::from(AuthError::Expired).into_response();
        assert_eq!(
            expired.headers()["www-authenticate"],
            "Bearer error=\"invalid_token\""
        );
        assert_eq!(body(&expired), r#"{"detail":"Token has expired"}"#);
    }
}
