//! Every route × every status code the route table (and the contract) gives it.

use serde_json::json;
use shared::routes::{Operation, Route, ROUTES};
use tests::{env, state, state_with, user_id, ApiEvent, ApiResponse};

use crate::{create_titled, id_of};

/// A state whose database is unreachable: nothing listens on the port.
pub fn unreachable_state() -> shared::AppState {
    let port = tests::cluster::free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/none?sslmode=disable");
    state_with(env(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "1000"),
        ("DB_POOL_TIMEOUT_MS", "1000"),
    ]))
}

fn path(route: &Route, user: &str, id: &str) -> String {
    route.path.replace("{user_id}", user).replace("{id}", id)
}

fn valid_body(operation: Operation) -> Option<serde_json::Value> {
    match operation {
        Operation::CreateTask => Some(json!({"title": "t"})),
        Operation::UpdateTask => Some(json!({"title": "u"})),
        Operation::CompleteTask => Some(json!({"completed": true})),
        _ => None,
    }
}

async fn scenario(route: &Route, status: u16) -> ApiResponse {
    let state = state();
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "existing").await);
    let operation = route.operation;
    let mut event = ApiEvent::new(route.method, &path(route, &user, &id)).as_user(&user);
    if let Some(body) = valid_body(operation) {
        event = event.json(&body);
    }
    match status {
        200 | 201 | 204 => event.send(&state).await,
        401 => {
            ApiEvent::new(route.method, &path(route, &user, &id))
                .send(&state)
                .await
        }
        403 => event.clone().as_user(&user_id()).send(&state).await,
        404 => {
            let missing = uuid::Uuid::new_v4().to_string();
            let mut event =
                ApiEvent::new(route.method, &path(route, &user, &missing)).as_user(&user);
            if let Some(body) = valid_body(operation) {
                event = event.json(&body);
            }
            event.send(&state).await
        }
        412 => event.header("if-match", "\"999\"").send(&state).await,
        413 => {
            let big = json!({"title": "t", "padding": "x".repeat(70 * 1024)});
            event.json(&big).send(&state).await
        }
        415 => {
            event
                .header("content-type", "text/plain")
                .raw_body("title=t")
                .send(&state)
                .await
        }
        422 => match operation {
            Operation::ListTasks => event.query("limit=0").send(&state).await,
            Operation::CreateTask => event.json(&json!({})).send(&state).await,
            Operation::UpdateTask => event.json(&json!({})).send(&state).await,
            Operation::CompleteTask => event.json(&json!({"completed": "yes"})).send(&state).await,
            Operation::GetTask | Operation::DeleteTask => {
                ApiEvent::new(route.method, &path(route, &user, "not-a-uuid"))
                    .as_user(&user)
                    .send(&state)
                    .await
            }
            other => panic!("no 422 scenario for {other:?}"),
        },
        503 => event.send(&unreachable_state()).await,
        504 => {
            let (cutter, cut_state) = crate::outcomes::cutting_state().await;
            cutter.cut_next(usize::MAX);
            event.send(&cut_state).await
        }
        other => panic!("no scenario for status {other} on {}", route.function),
    }
}

/// Error bodies never carry SQL, driver messages, stack traces or configuration.
#[track_caller]
pub fn assert_no_internals(body: &str) {
    let lower = body.to_lowercase();
    for marker in [
        "select ",
        "insert ",
        "update tasks",
        "delete from",
        "sqlstate",
        "db error",
        "tokio",
        "postgres",
        "panicked",
        "backtrace",
        "src/",
        ".rs:",
        "127.0.0.1",
        "connection refused",
        "secret",
    ] {
        assert!(
            !lower.contains(marker),
            "error body shows {marker:?}: {body}"
        );
    }
}

#[tokio::test]
async fn every_route_answers_every_status_it_documents() {
    for route in &ROUTES {
        for &status in route.statuses {
            let response = scenario(route, status).await;
            assert_eq!(
                response.status,
                status,
                "{} {} should answer {status}; got {}: {}",
                route.method,
                route.path,
                response.status,
                response.text()
            );
            assert!(response.header("x-request-id").is_some());
            if status >= 400 {
                let body = response.json();
                assert!(body.get("detail").is_some(), "no detail: {body}");
                assert_no_internals(&response.text());
            }
            match status {
                401 => assert!(response
                    .header("www-authenticate")
                    .unwrap()
                    .starts_with("Bearer")),
                503 => assert!(response.header("retry-after").is_some()),
                _ => {}
            }
        }
    }
}
