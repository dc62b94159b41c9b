//! No event can make a function panic: whatever API Gateway hands over (raw `<>"` and bad
//! escapes in the query, odd paths, missing fields, bodies that are not base64 or not
//! UTF-8), every function answers with JSON and an `X-Request-Id`, and keeps serving.

use serde_json::{json, Value};
use shared::routes::ROUTES;
use tests::events::send_event;
use tests::{state, user_id, ApiEvent};

use crate::tasks_path;

/// A well-formed event for `method path`, to be spoiled by the cases below.
fn base(method: &str, path: &str) -> Value {
    ApiEvent::new(method, path).to_json()
}

/// Events that cannot be a request: 400 from every function.
fn unusable() -> Vec<(&'static str, Value)> {
    let mut cases = vec![
        ("not an object", json!(["GET", "/health"])),
        ("null", Value::Null),
        ("a string", json!("GET /health")),
        ("empty object", json!({})),
    ];
    let mut no_context = base("GET", "/health");
    no_context.as_object_mut().unwrap().remove("requestContext");
    cases.push(("no requestContext", no_context));
    let mut no_http = base("GET", "/health");
    no_http["requestContext"]
        .as_object_mut()
        .unwrap()
        .remove("http");
    cases.push(("no requestContext.http", no_http));
    let mut bad_method = base("GET", "/health");
    bad_method["requestContext"]["http"]["method"] = json!("G E T");
    cases.push(("invalid method", bad_method));
    let mut bad_base64 = base("POST", "/health");
    bad_base64["body"] = json!("%%% not base64 %%%");
    bad_base64["isBase64Encoded"] = json!(true);
    cases.push(("invalid base64 body", bad_base64));
    let mut numeric_body = base("POST", "/health");
    numeric_body["body"] = json!(42);
    cases.push(("a body that is not a string", numeric_body));
    cases
}

/// Events a client can cause through API Gateway: the request they describe is answered
/// (here without a token: 401 from every task function).
fn odd(user: &str) -> Vec<(&'static str, Value)> {
    let tasks = tasks_path(user);
    let mut cases = Vec::new();
    for (name, query) in [
        ("raw < > in the query", "search=<a>"),
        ("raw quote in the query", "search=\"x\""),
        ("invalid escapes", "limit=%zz&search=%&x=%4"),
        ("control and non-ASCII bytes", "search=\u{1}é\u{7f}"),
    ] {
        let mut event = base("GET", &tasks);
        event["rawQueryString"] = json!(query);
        cases.push((name, event));
    }
    for (name, path) in [
        ("empty rawPath", ""),
        ("spaces and brackets in rawPath", "/api/a b/<tasks>"),
        ("dot segments", "/api/../../etc/passwd"),
        ("a lone percent", "/api/%/tasks/%"),
        ("no leading slash", "api/x/tasks"),
    ] {
        let mut event = base("GET", &tasks);
        event["rawPath"] = json!(path);
        cases.push((name, event));
    }
    let mut bad_headers = base("GET", &tasks);
    bad_headers["headers"] =
        json!({"bad name": "x", "host": "exa mple", "x-value": "a\nb", "x-num": 1});
    cases.push(("unusable headers and host", bad_headers));
    let mut non_utf8 = base("POST", &tasks);
    non_utf8["headers"] = json!({"content-type": "application/json"});
    non_utf8["body"] = json!("//79");
    non_utf8["isBase64Encoded"] = json!(true);
    cases.push(("a body that is not UTF-8", non_utf8));
    cases
}

#[tokio::test]
async fn every_function_answers_every_hostile_event_with_json_and_a_request_id() {
    let state = state();
    let user = user_id();
    for route in &ROUTES {
        for (name, event) in unusable() {
            let response = send_event(&state, route.operation, event).await;
            assert_eq!(
                response.status,
                400,
                "{} / {name}: {}",
                route.function,
                response.text()
            );
            assert!(response.detail().is_string(), "{name}");
            assert!(response.header("x-request-id").is_some(), "{name}");
            crate::status_matrix::assert_no_internals(&response.text());
        }
        for (name, event) in odd(&user) {
            let method = event["requestContext"]["http"]["method"].clone();
            let response = send_event(&state, route.operation, event).await;
            // The health function answers every path but its own 404 (it serves the
            // fallback routes), with `detail`; a task function, an event of another
            // route's method 405 (API Gateway would not send it there).
            let expected = if route.function == "health" {
                404
            } else if method.as_str() != Some(route.method) {
                405
            } else {
                401
            };
            assert_eq!(
                response.status,
                expected,
                "{} / {name}: {}",
                route.function,
                response.text()
            );
            assert!(response.header("x-request-id").is_some(), "{name}");
            assert!(response.detail().is_string(), "{name}");
        }
    }
}

#[tokio::test]
async fn a_raw_angle_bracket_in_the_query_is_searched_for_literally() {
    let state = state();
    let user = user_id();
    crate::create_titled(&state, &user, "<a> tag").await;
    crate::create_titled(&state, &user, "plain").await;
    let mut event = ApiEvent::get(&tasks_path(&user)).as_user(&user).to_json();
    event["rawQueryString"] = json!("search=<a>");
    let response = send_event(&state, shared::routes::Operation::ListTasks, event).await;
    response.assert_status(200);
    assert_eq!(response.titles(), ["<a> tag"]);
}

/// A precondition or an idempotency key that a client sent with bytes HTTP cannot carry as
/// text: never dropped (the write would then run unconditionally, or twice). Past ASCII it
/// reaches its parser (a tag that can match nothing: 412; a key: 422); a control character
/// refuses the event.
#[tokio::test]
async fn an_unreadable_if_match_or_idempotency_key_is_never_dropped() {
    let state = state();
    let user = user_id();
    let id = crate::id_of(&crate::create_titled(&state, &user, "guarded").await);
    let path = crate::task_path(&user, &id);
    let put = |if_match: &str| {
        ApiEvent::put(&path)
            .as_user(&user)
            .header("if-match", if_match)
            .json(&json!({"title": "unconditional"}))
    };
    put("\"1\"é").send(&state).await.assert_status(412);
    let refused = put("\"1\"\u{7f}").send(&state).await;
    refused.assert_status(400);
    assert!(refused.detail().is_string());
    let create = |key: &str| {
        ApiEvent::post(&tasks_path(&user))
            .as_user(&user)
            .header("idempotency-key", key)
            .json(&json!({"title": "keyed"}))
    };
    create("clé").send(&state).await.assert_status(422);
    create("key\u{1}").send(&state).await.assert_status(400);
    let task = crate::get(&state, &user, &id).await.json();
    assert_eq!(task["title"], "guarded", "no write ran");
    assert_eq!(tests::task_count(&user).await, 1, "no create ran");
}

/// Each function serves its own route only: an event of another method, as a route changed
/// outside the template would send it, is a 405 before anything runs.
#[tokio::test]
async fn a_function_refuses_an_event_of_another_routes_method() {
    let state = state();
    let user = user_id();
    let id = crate::id_of(&crate::create_titled(&state, &user, "kept").await);
    let path = crate::task_path(&user, &id);
    let misrouted = ApiEvent::get(&path)
        .as_user(&user)
        .send_to(&state, shared::routes::Operation::DeleteTask)
        .await;
    misrouted.assert_status(405);
    assert_eq!(misrouted.header("allow"), Some("DELETE, OPTIONS"));
    assert!(misrouted.detail().is_string());
    crate::get(&state, &user, &id).await.assert_status(200);
    for route in &ROUTES {
        let other = if route.method == "GET" {
            "PATCH"
        } else {
            "GET"
        };
        let response = ApiEvent::new(other, &path)
            .as_user(&user)
            .send_to(&state, route.operation)
            .await;
        if route.function == "health" {
            continue; // it serves the fallback routes: its answers are their own test's
        }
        response.assert_status(405);
    }
    crate::get(&state, &user, &id).await.assert_status(200);
}
