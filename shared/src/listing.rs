//! The query parameters of `GET /api/{user_id}/tasks` and the `Link` to the next page.

use serde_json::{json, Value};

use crate::validation::{check_text, FieldError, FieldErrors, Source};

pub const DEFAULT_LIMIT: i64 = 100;
pub const MAX_LIMIT: i64 = 500;
/// Longest search string accepted, in characters.
pub const SEARCH_MAX_CHARS: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortField {
    CreatedAt,
    UpdatedAt,
    Title,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortOrder {
    Asc,
    Desc,
}

/// A validated listing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// `Some(true)` for completed tasks only, `Some(false)` for pending ones.
    pub completed: Option<bool>,
    /// The raw search text; see [`ListQuery::search_pattern`].
    pub search: Option<String>,
    pub sort: SortField,
    pub order: SortOrder,
    pub limit: i64,
    pub offset: i64,
}

fn first<'a>(pairs: &'a [(String, String)], name: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn choice<T: Copy>(
    errors: &mut FieldErrors,
    name: &str,
    raw: &str,
    options: &[(&str, T)],
) -> Option<T> {
    if let Some((_, value)) = options.iter().find(|(text, _)| *text == raw) {
        return Some(*value);
    }
    let names: Vec<String> = options.iter().map(|(t, _)| format!("'{t}'")).collect();
    let expected = match names.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => names.join(""),
    };
    errors.push(
        FieldError::new(
            Source::Query,
            name,
            "enum",
            format!("Input should be {expected}"),
            Value::from(raw),
        )
        .with_ctx(json!({ "expected": expected })),
    );
    None
}

fn integer(
    errors: &mut FieldErrors,
    name: &str,
    raw: &str,
    min: i64,
    max: Option<i64>,
) -> Option<i64> {
    let Ok(value) = raw.trim().parse::<i64>() else {
        errors.push(FieldError::new(
            Source::Query,
            name,
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
            Value::from(raw),
        ));
        return None;
    };
    if value < min {
        errors.push(
            FieldError::new(
                Source::Query,
                name,
                "greater_than_equal",
                format!("Input should be greater than or equal to {min}"),
                Value::from(raw),
            )
            .with_ctx(json!({ "ge": min })),
        );
        return None;
    }
    if let Some(max) = max.filter(|max| value > *max) {
        errors.push(
            FieldError::new(
                Source::Query,
                name,
                "less_than_equal",
                format!("Input should be less than or equal to {max}"),
                Value::from(raw),
            )
            .with_ctx(json!({ "le": max })),
        );
        return None;
    }
    Some(value)
}

impl ListQuery {
    /// Parses the raw query string. Unknown parameters are ignored; for repeated ones the
    /// first wins.
    pub fn parse(query: Option<&str>) -> Result<Self, FieldErrors> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .into_owned()
            .collect();
        let mut errors = FieldErrors::default();
        let status = first(&pairs, "status").and_then(|raw| {
            choice(
                &mut errors,
                "status",
                raw,
                &[
                    ("all", None),
                    ("pending", Some(false)),
                    ("completed", Some(true)),
                ],
            )
        });
        let completed_param = first(&pairs, "completed").and_then(|raw| {
            choice(
                &mut errors,
                "completed",
                raw,
                &[("true", true), ("false", false)],
            )
        });
        let completed = match (status.flatten(), completed_param) {
            (Some(a), Some(b)) if a != b => {
                errors.push(FieldError::new(
                    Source::Query,
                    "completed",
                    "value_error",
                    "Value error, contradicts the status parameter",
                    Value::from(b.to_string()),
                ));
                None
            }
            (a, b) => a.or(b),
        };
        let search = first(&pairs, "search")
            .filter(|s| !s.is_empty())
            .and_then(|raw| {
                errors
                    .take(check_text(
                        Source::Query,
                        "search",
                        raw,
                        0,
                        SEARCH_MAX_CHARS,
                    ))
                    .map(|()| raw.to_owned())
            });
        let sort = first(&pairs, "sort").map_or(Some(SortField::CreatedAt), |raw| {
            choice(
                &mut errors,
                "sort",
                raw,
                &[
                    ("created_at", SortField::CreatedAt),
                    ("updated_at", SortField::UpdatedAt),
                    ("title", SortField::Title),
                ],
            )
        });
        let order = first(&pairs, "order").map(|raw| {
            choice(
                &mut errors,
                "order",
                raw,
                &[("asc", SortOrder::Asc), ("desc", SortOrder::Desc)],
            )
        });
        let limit = first(&pairs, "limit").map_or(Some(DEFAULT_LIMIT), |raw| {
            integer(&mut errors, "limit", raw, 1, Some(MAX_LIMIT))
        });
        let offset = first(&pairs, "offset")
            .map_or(Some(0), |raw| integer(&mut errors, "offset", raw, 0, None));
        errors.finish(|| ())?;
        let sort = sort.expect("checked");
        let default_order = match sort {
            SortField::Title => SortOrder::Asc,
            SortField::CreatedAt | SortField::UpdatedAt => SortOrder::Desc,
        };
        Ok(ListQuery {
            completed,
            search,
            sort,
            order: order.flatten().unwrap_or(default_order),
            limit: limit.expect("checked"),
            offset: offset.expect("checked"),
        })
    }

    /// An `ILIKE` pattern in which `%`, `_` and `\` of the search text match literally.
    pub fn search_pattern(&self) -> Option<String> {
        let search = self.search.as_deref()?;
        let mut pattern = String::with_capacity(search.len() + 2);
        pattern.push('%');
        for c in search.chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        Some(pattern)
    }

    /// The `Link` header value for the next page, while tasks remain after this one.
    /// The URL is relative to the request, and keeps every other parameter as given.
    pub fn next_link(&self, path: &str, query: Option<&str>, total: i64) -> Option<String> {
        let next_offset = self.offset.checked_add(self.limit)?;
        if next_offset >= total {
            return None;
        }
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        let mut has_limit = false;
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            match key.as_ref() {
                "offset" => continue,
                "limit" => has_limit = true,
                _ => {}
            }
            serializer.append_pair(&key, &value);
        }
        if !has_limit {
            serializer.append_pair("limit", &self.limit.to_string());
        }
        serializer.append_pair("offset", &next_offset.to_string());
        Some(format!("<{path}?{}>; rel=\"next\"", serializer.finish()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let q = ListQuery::parse(None).unwrap();
        assert_eq!(q.sort, SortField::CreatedAt);
        assert_eq!(q.order, SortOrder::Desc);
        assert_eq!((q.limit, q.offset), (100, 0));
        let q = ListQuery::parse(Some("sort=title")).unwrap();
        assert_eq!(q.order, SortOrder::Asc);
    }

    #[test]
    fn both_spellings_of_the_completion_filter_work() {
        assert_eq!(
            ListQuery::parse(Some("status=pending")).unwrap().completed,
            Some(false)
        );
        assert_eq!(
            ListQuery::parse(Some("completed=true")).unwrap().completed,
            Some(true)
        );
        assert!(ListQuery::parse(Some("status=pending&completed=true")).is_err());
    }

    #[test]
    fn every_bad_parameter_is_reported() {
        let Err(FieldErrors(errors)) = ListQuery::parse(Some(
            "status=x&sort=y&order=z&limit=0&offset=-1&completed=maybe",
        )) else {
            panic!("expected validation errors");
        };
        let fields: Vec<_> = errors.iter().map(|e| e.loc[1].clone()).collect();
        assert_eq!(
            fields,
            ["status", "completed", "sort", "order", "limit", "offset"]
        );
        assert_eq!(
            errors[0].msg,
            "Input should be 'all', 'pending' or 'completed'"
        );
    }

    #[test]
    fn search_wildcards_match_literally() {
        let q = ListQuery::parse(Some("search=50%25_off%5C")).unwrap();
        assert_eq!(q.search_pattern().as_deref(), Some("%50\\%\\_off\\\\%"));
    }

    #[test]
    fn next_link_keeps_other_parameters() {
        let q = ListQuery::parse(Some("status=pending&limit=2&offset=2")).unwrap();
        assert_eq!(
            q.next_link("/api/u/tasks", Some("status=pending&limit=2&offset=2"), 5)
                .as_deref(),
            Some("</api/u/tasks?status=pending&limit=2&offset=4>; rel=\"next\"")
        );
        assert_eq!(q.next_link("/api/u/tasks", None, 4), None);
    }
}
