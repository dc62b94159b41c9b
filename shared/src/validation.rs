//! FastAPI/pydantic-shaped validation errors, so existing clients can show them unchanged,
//! and the one way a request's 422 is collected: [`FieldErrors`].

use serde::Serialize;
use serde_json::{json, Value};

/// Where an invalid value came from, as the first element of pydantic's `loc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Body,
    Path,
    Query,
    Header,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Body => "body",
            Source::Path => "path",
            Source::Query => "query",
            Source::Header => "header",
        }
    }
}

/// One entry of a 422 response's `detail` array.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub loc: Vec<Value>,
    pub msg: String,
    pub input: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ctx: Option<Box<Value>>,
}

impl FieldError {
    /// An error located at `source` / `field` (or at `source` alone when `field` is empty).
    pub fn new(
        source: Source,
        field: &str,
        kind: &'static str,
        msg: impl Into<String>,
        input: Value,
    ) -> Self {
        let mut loc = vec![Value::from(source.as_str())];
        if !field.is_empty() {
            loc.push(Value::from(field));
        }
        FieldError {
            kind,
            loc,
            msg: msg.into(),
            input,
            ctx: None,
        }
    }

    pub fn with_ctx(mut self, ctx: Value) -> Self {
        self.ctx = Some(Box::new(ctx));
        self
    }

    pub fn missing(source: Source, field: &str, input: Value) -> Self {
        Self::new(source, field, "missing", "Field required", input)
    }

    pub fn string_type(source: Source, field: &str, input: Value) -> Self {
        Self::new(
            source,
            field,
            "string_type",
            "Input should be a valid string",
            input,
        )
    }

    pub fn bool_type(source: Source, field: &str, input: Value) -> Self {
        Self::new(
            source,
            field,
            "bool_type",
            "Input should be a valid boolean",
            input,
        )
    }

    pub fn too_short(source: Source, field: &str, input: Value, min: usize) -> Self {
        let plural = if min == 1 { "" } else { "s" };
        Self::new(
            source,
            field,
            "string_too_short",
            format!("String should have at least {min} character{plural}"),
            input,
        )
        .with_ctx(json!({ "min_length": min }))
    }

    pub fn too_long(source: Source, field: &str, input: Value, max: usize) -> Self {
        Self::new(
            source,
            field,
            "string_too_long",
            format!("String should have at most {max} characters"),
            input,
        )
        .with_ctx(json!({ "max_length": max }))
    }

    /// Postgres cannot store U+0000 in text, so it is refused at the boundary.
    pub fn nul_character(source: Source, field: &str, input: Value) -> Self {
        Self::new(
            source,
            field,
            "string_pattern_mismatch",
            "String should not contain the NUL character (U+0000)",
            input,
        )
        .with_ctx(json!({ "pattern": "^[^\\x00]*$" }))
    }
}

/// Every problem found in a request, reported at once as pydantic does: the `detail` of a
/// 422. Each check's result goes through [`FieldErrors::take`]; [`FieldErrors::finish`]
/// then answers with the value, or with all the errors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldErrors(pub Vec<FieldError>);

impl FieldErrors {
    /// The value of a check that passed; a failed check's errors are kept and `None` returned.
    pub fn take<T>(&mut self, result: Result<T, impl Into<FieldErrors>>) -> Option<T> {
        result.map_err(|err| self.0.extend(err.into().0)).ok()
    }

    pub fn push(&mut self, err: FieldError) {
        self.0.push(err);
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `value()` when no check failed, otherwise every error.
    pub fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, FieldErrors> {
        if self.0.is_empty() {
            Ok(value())
        } else {
            Err(self)
        }
    }
}

impl From<FieldError> for FieldErrors {
    fn from(err: FieldError) -> Self {
        FieldErrors(vec![err])
    }
}

/// Two independent checks: both values, or the errors of both (the first's first).
pub fn both<A, B>(
    a: Result<A, impl Into<FieldErrors>>,
    b: Result<B, impl Into<FieldErrors>>,
) -> Result<(A, B), FieldErrors> {
    let mut errors = FieldErrors::default();
    let a = errors.take(a);
    let b = errors.take(b);
    match (a, b) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(errors),
    }
}

/// Checks a string's length in Unicode code points (as Postgres counts them) and refuses U+0000.
pub fn check_text(
    source: Source,
    field: &str,
    value: &str,
    min: usize,
    max: usize,
) -> Result<(), FieldError> {
    if value.contains('\0') {
        return Err(FieldError::nul_character(source, field, Value::from(value)));
    }
    let chars = value.chars().count();
    if chars < min {
        return Err(FieldError::too_short(
            source,
            field,
            Value::from(value),
            min,
        ));
    }
    if chars > max {
        return Err(FieldError::too_long(source, field, Value::from(value), max));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_are_counted_in_code_points_not_bytes() {
        let emoji = "😀".repeat(255);
        assert!(check_text(Source::Body, "title", &emoji, 1, 255).is_ok());
        let too_many = "é".repeat(256);
        let err = check_text(Source::Body, "title", &too_many, 1, 255).unwrap_err();
        assert_eq!(err.kind, "string_too_long");
        assert_eq!(err.loc, vec![json!("body"), json!("title")]);
    }

    #[test]
    fn nul_is_refused_even_when_length_is_fine() {
        let err = check_text(Source::Query, "search", "a\0b", 0, 10).unwrap_err();
        assert_eq!(err.kind, "string_pattern_mismatch");
    }

    #[test]
    fn both_reports_the_errors_of_both_checks_in_order() {
        let title = FieldError::missing(Source::Body, "title", json!({}));
        let id = FieldError::missing(Source::Path, "id", json!(null));
        let err = both::<(), ()>(Err(id.clone()), Err(FieldErrors::from(title.clone())));
        assert_eq!(err, Err(FieldErrors(vec![id.clone(), title])));
        assert_eq!(
            both(Ok::<_, FieldError>(1), Ok::<_, FieldError>(2)),
            Ok((1, 2))
        );
        assert_eq!(
            both::<_, ()>(Ok::<_, FieldError>(1), Err(id.clone())),
            Err(FieldErrors(vec![id]))
        );
    }

    #[test]
    fn serialises_like_pydantic() {
        let err = FieldError::too_short(Source::Body, "title", json!(""), 1);
        assert_eq!(
            serde_json::to_string(&err).unwrap(),
            r#"{"type":"string_too_short","loc":["body","title"],"msg":"String should have at least 1 character","input":"","ctx":{"min_length":1}}"#
        );
    }
}
