//! The task model and the validating newtypes that requests are parsed into.
//!
//! Parse, don't validate: once a [`TaskTitle`] exists, nothing downstream checks its length.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::validation::{check_text, FieldError, FieldErrors, Source};

/// Longest title, in Unicode code points, after trimming.
pub const TITLE_MAX_CHARS: usize = 255;
/// Longest description, in Unicode code points.
pub const DESCRIPTION_MAX_CHARS: usize = 1000;

/// A stored task, as the API returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Task {
    pub id: Uuid,
    pub user_id: String,
    pub title: String,
    pub description: Option<String>,
    pub completed: bool,
    #[serde(serialize_with = "rfc3339_utc")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_utc")]
    pub updated_at: DateTime<Utc>,
    /// Incremented by every write; the basis of the task's `ETag`.
    #[serde(skip)]
    pub version: i64,
}

/// RFC 3339 in UTC with `Z` and always six fractional digits (microseconds, the precision
/// Postgres stores). chrono's RFC 3339 writer, not a strftime pattern: a list response
/// formats two timestamps per task, and parsing a pattern each time was the largest single
/// cost of serialising it.
fn rfc3339_utc<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// A task id from the path: must be a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskId(pub Uuid);

impl TaskId {
    pub fn parse(raw: &str) -> Result<Self, FieldError> {
        Uuid::try_parse(raw).map(TaskId).map_err(|err| {
            FieldError::new(
                Source::Path,
                "id",
                "uuid_parsing",
                format!("Input should be a valid UUID, {err}"),
                Value::from(raw),
            )
            .with_ctx(serde_json::json!({ "error": err.to_string() }))
        })
    }
}

/// A title: trimmed, 1–255 characters, no U+0000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskTitle(String);

impl TaskTitle {
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        let Value::String(raw) = value else {
            return Err(FieldError::string_type(
                Source::Body,
                "title",
                value.clone(),
            ));
        };
        let trimmed = raw.trim();
        check_text(Source::Body, "title", trimmed, 1, TITLE_MAX_CHARS)?;
        Ok(TaskTitle(trimmed.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A description: `null` or up to 1000 characters, no U+0000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskDescription(Option<String>);

impl TaskDescription {
    pub fn parse(value: &Value) -> Result<Self, FieldError> {
        match value {
            Value::Null => Ok(TaskDescription(None)),
            Value::String(text) => {
                check_text(Source::Body, "description", text, 0, DESCRIPTION_MAX_CHARS)?;
                Ok(TaskDescription(Some(text.clone())))
            }
            other => Err(FieldError::string_type(
                Source::Body,
                "description",
                other.clone(),
            )),
        }
    }

    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

fn parse_bool(field: &str, value: &Value) -> Result<bool, FieldError> {
    value
        .as_bool()
        .ok_or_else(|| FieldError::bool_type(Source::Body, field, value.clone()))
}

/// The body of `POST /api/{user_id}/tasks`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTask {
    pub title: TaskTitle,
    pub description: TaskDescription,
    pub completed: bool,
}

impl NewTask {
    pub fn from_body(body: Option<Map<String, Value>>) -> Result<Self, FieldErrors> {
        let Some(body) = body else {
            return Err(FieldError::missing(Source::Body, "", Value::Null).into());
        };
        let mut errors = FieldErrors::default();
        let title = match body.get("title") {
            Some(value) => errors.take(TaskTitle::parse(value)),
            None => errors.take(Err(FieldError::missing(
                Source::Body,
                "title",
                Value::Object(body.clone()),
            ))),
        };
        let description = match body.get("description") {
            Some(value) => errors.take(TaskDescription::parse(value)),
            None => Some(TaskDescription(None)),
        };
        let completed = match body.get("completed") {
            Some(value) => errors.take(parse_bool("completed", value)),
            None => Some(false),
        };
        errors.finish(|| NewTask {
            title: title.expect("checked"),
            description: description.expect("checked"),
            completed: completed.expect("checked"),
        })
    }
}

/// The body of `PUT /api/{user_id}/tasks/{id}`: a partial update.
///
/// A `null` title or completed flag counts as absent; `"description": null` clears it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TaskChanges {
    pub title: Option<TaskTitle>,
    pub description: Option<TaskDescription>,
    pub completed: Option<bool>,
}

impl TaskChanges {
    pub fn from_body(body: Option<Map<String, Value>>) -> Result<Self, FieldErrors> {
        let body = body.unwrap_or_default();
        let mut errors = FieldErrors::default();
        let present = |name: &str| body.get(name).filter(|v| !v.is_null());
        let title = present("title").and_then(|v| errors.take(TaskTitle::parse(v)));
        let description = body
            .get("description")
            .and_then(|v| errors.take(TaskDescription::parse(v)));
        let completed = present("completed").and_then(|v| errors.take(parse_bool("completed", v)));
        if errors.is_empty() && title.is_none() && description.is_none() && completed.is_none() {
            errors.push(FieldError::new(
                Source::Body,
                "",
                "value_error",
                "Value error, at least one of title, description or completed must be given",
                Value::Object(body.clone()),
            ));
        }
        errors.finish(|| TaskChanges {
            title,
            description,
            completed,
        })
    }
}

/// What `PATCH …/complete` does to the flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completion {
    Toggle,
    Set(bool),
}

impl Completion {
    /// No body, `{}` or `"completed": null` toggles; a boolean sets.
    pub fn from_body(body: Option<Map<String, Value>>) -> Result<Self, FieldErrors> {
        match body.as_ref().and_then(|b| b.get("completed")) {
            None | Some(Value::Null) => Ok(Completion::Toggle),
            Some(value) => Ok(Completion::Set(parse_bool("completed", value)?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(value: Value) -> Option<Map<String, Value>> {
        value.as_object().cloned()
    }

    #[test]
    fn titles_are_trimmed_and_bounded_in_characters() {
        assert_eq!(
            TaskTitle::parse(&json!("  milk ")).unwrap().as_str(),
            "milk"
        );
        assert!(TaskTitle::parse(&json!("   ")).is_err());
        assert!(TaskTitle::parse(&json!("😀".repeat(255))).is_ok());
        assert_eq!(
            TaskTitle::parse(&json!("x".repeat(256))).unwrap_err().kind,
            "string_too_long"
        );
        assert_eq!(TaskTitle::parse(&json!(5)).unwrap_err().kind, "string_type");
    }

    #[test]
    fn create_reports_every_bad_field() {
        let err = NewTask::from_body(obj(json!({"description": 1, "completed": "yes"})));
        let Err(FieldErrors(errors)) = err else {
            panic!("expected a validation error");
        };
        let kinds: Vec<_> = errors.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, ["missing", "string_type", "bool_type"]);
    }

    #[test]
    fn create_defaults_to_pending_without_description() {
        let task = NewTask::from_body(obj(json!({"title": "a", "id": "ignored"}))).unwrap();
        assert!(!task.completed);
        assert_eq!(task.description.as_deref(), None);
    }

    #[test]
    fn update_needs_at_least_one_field_and_null_clears_description() {
        assert!(TaskChanges::from_body(obj(json!({"user_id": "x"}))).is_err());
        assert!(TaskChanges::from_body(None).is_err());
        let changes = TaskChanges::from_body(obj(json!({"description": null}))).unwrap();
        assert_eq!(changes.description, Some(TaskDescription(None)));
        assert_eq!(changes.title, None);
    }

    #[test]
    fn completion_toggles_without_a_flag() {
        assert_eq!(Completion::from_body(None).unwrap(), Completion::Toggle);
        assert_eq!(
            Completion::from_body(obj(json!({}))).unwrap(),
            Completion::Toggle
        );
        assert_eq!(
            Completion::from_body(obj(json!({"completed": true}))).unwrap(),
            Completion::Set(true)
        );
        assert!(Completion::from_body(obj(json!({"completed": 1}))).is_err());
    }

    #[test]
    fn task_ids_must_be_uuids() {
        let err = TaskId::parse("42").unwrap_err();
        assert_eq!(err.loc, vec![json!("path"), json!("id")]);
        assert_eq!(err.kind, "uuid_parsing");
    }

    #[test]
    fn timestamps_serialise_in_utc_with_z() {
        let at = DateTime::parse_from_rfc3339("2026-11-22T03:14:15.123456+01:00")
            .unwrap()
            .with_timezone(&Utc);
        let whole = DateTime::parse_from_rfc3339("2026-11-22T03:14:15Z")
            .unwrap()
            .with_timezone(&Utc);
        let task = Task {
            id: Uuid::nil(),
            user_id: "u".into(),
            title: "t".into(),
            description: None,
            completed: false,
            created_at: at,
            updated_at: whole,
            version: 1,
        };
        assert_eq!(
            serde_json::to_string(&task).unwrap(),
            r#"{"id":"00000000-0000-0000-0000-000000000000","user_id":"u","title":"t","description":null,"completed":false,"created_at":"2026-11-22T02:14:15.123456Z","updated_at":"2026-11-22T03:14:15.000000Z"}"#
        );
    }
}
