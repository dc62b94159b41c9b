//! Optimistic concurrency and safe retries: ETags from task versions, `If-Match`, and
//! `Idempotency-Key`.

use http::HeaderMap;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::task::{NewTask, Task};
use crate::validation::{FieldError, Source};

/// The task's entity tag: its version, which every write increments.
pub fn etag(task: &Task) -> String {
    format!("\"{}\"", task.version)
}

/// What an `If-Match` header allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfMatch {
    /// `*`: any current version (the task must exist).
    Any,
    /// Only these versions. Weak or foreign tags never match (RFC 9110 strong comparison),
    /// so a list of only those can never succeed.
    Versions(Vec<i64>),
}

impl IfMatch {
    /// `None` when the request has no `If-Match`.
    pub fn from_headers(headers: &HeaderMap) -> Option<IfMatch> {
        let values: Vec<&str> = headers
            .get_all(http::header::IF_MATCH)
            .iter()
            .map(|v| v.to_str().unwrap_or(""))
            .collect();
        if values.is_empty() {
            return None;
        }
        let tags = values.iter().flat_map(|v| v.split(',')).map(str::trim);
        let mut versions = Vec::new();
        for tag in tags {
            if tag == "*" {
                return Some(IfMatch::Any);
            }
            // Strong comparison is character by character: `"03"` or `"+3"` is not the
            // tag `"3"` this API sent, so only a version's own spelling counts.
            if let Some(version) = tag
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .and_then(|t| t.parse::<i64>().ok().filter(|v| v.to_string() == t))
            {
                versions.push(version);
            }
        }
        Some(IfMatch::Versions(versions))
    }

    /// The versions a write may apply to; `None` means any.
    pub fn allowed_versions(condition: Option<&IfMatch>) -> Option<Vec<i64>> {
        match condition {
            None | Some(IfMatch::Any) => None,
            Some(IfMatch::Versions(versions)) => Some(versions.clone()),
        }
    }
}

/// A client's `Idempotency-Key`: 1–255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

impl IdempotencyKey {
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, FieldError> {
        let Some(value) = headers.get(IDEMPOTENCY_KEY_HEADER) else {
            return Ok(None);
        };
        let invalid = |input: Value| {
            FieldError::new(
                Source::Header,
                "Idempotency-Key",
                "string_pattern_mismatch",
                "Idempotency-Key must be 1 to 255 visible ASCII characters",
                input,
            )
        };
        let text = value
            .to_str()
            .map_err(|_| invalid(Value::from(String::from_utf8_lossy(value.as_bytes()))))?
            .trim();
        if text.is_empty() || text.len() > 255 || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(Value::from(text)));
        }
        Ok(Some(IdempotencyKey(text.to_owned())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What identifies "the same request" for a retried create: the validated fields, so
/// that formatting, key order and ignored fields do not matter.
pub fn create_fingerprint(task: &NewTask) -> Vec<u8> {
    let canonical = serde_json::json!([
        task.title.as_str(),
        task.description.as_deref(),
        task.completed
    ]);
    Sha256::digest(canonical.to_string().as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(name, HeaderValue::from_static(value));
        map
    }

    #[test]
    fn if_match_parses_lists_star_and_ignores_weak_tags() {
        assert_eq!(IfMatch::from_headers(&HeaderMap::new()), None);
        assert_eq!(
            IfMatch::from_headers(&headers("if-match", "\"3\", W/\"4\", \"x\"")),
            Some(IfMatch::Versions(vec![3]))
        );
        assert_eq!(
            IfMatch::from_headers(&headers(
                "if-match",
                "\"03\", \"+3\", \" 3\", \"-0\", \"5\""
            )),
            Some(IfMatch::Versions(vec![5])),
            "only a version's own spelling is its tag"
        );
        assert_eq!(
            IfMatch::from_headers(&headers("if-match", "*")),
            Some(IfMatch::Any)
        );
        assert_eq!(
            IfMatch::allowed_versions(Some(&IfMatch::Versions(vec![]))),
            Some(vec![])
        );
    }

    #[test]
    fn idempotency_keys_are_bounded_visible_ascii() {
        assert!(
            IdempotencyKey::from_headers(&headers("idempotency-key", "abc-123"))
                .unwrap()
                .is_some()
        );
        assert!(IdempotencyKey::from_headers(&headers("idempotency-key", "a b")).is_err());
        assert!(IdempotencyKey::from_headers(&HeaderMap::new())
            .unwrap()
            .is_none());
    }
}
