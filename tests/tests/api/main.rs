//! Integration tests: the contract, route by route, against a real Postgres.

mod bola;
mod concurrency;
mod crud;
mod database;
mod fallback;
mod faults;
mod hostile_events;
mod idle;
mod jwt;
mod listing;
mod outcomes;
mod plans;
mod pooler;
mod pruning;
mod round_trips;
mod routes_agree;
mod status_matrix;
mod tls;
mod validation;

use serde_json::{json, Value};
use tests::{ApiEvent, ApiResponse};

pub fn tasks_path(user: &str) -> String {
    format!("/api/{user}/tasks")
}

pub fn task_path(user: &str, id: &str) -> String {
    format!("/api/{user}/tasks/{id}")
}

/// Creates a task for `user` through the API and returns it.
pub async fn create(state: &shared::AppState, user: &str, body: Value) -> Value {
    let response = ApiEvent::post(&tasks_path(user))
        .as_user(user)
        .json(&body)
        .send(state)
        .await;
    response.assert_status(201);
    response.json()
}

pub async fn create_titled(state: &shared::AppState, user: &str, title: &str) -> Value {
    create(state, user, json!({ "title": title })).await
}

pub fn id_of(task: &Value) -> String {
    task["id"].as_str().expect("task id").to_owned()
}

/// Every operation once through `state`, each answered as a success: a create, a get and a
/// list (of that one task), an update, a toggle, a keyed create, the first task's delete
/// and `/health`. So the writes are two inserts, two updates and a delete; `user` is left
/// with the keyed create's task.
/// Makes `todo_login` on `admin`'s cluster, if it is not there: a login role that is itself
/// subject to row-level security (`NOBYPASSRLS`), granted `todo_app`.
pub async fn make_todo_login(admin: &tokio_postgres::Client) {
    admin
        .batch_execute(
            "DO $$ BEGIN
                 IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'todo_login') THEN
                     CREATE ROLE todo_login LOGIN NOBYPASSRLS;
                 END IF;
             END $$;
             GRANT todo_app TO todo_login;",
        )
        .await
        .unwrap();
}

pub async fn every_operation(state: &shared::AppState, user: &str) {
    let id = id_of(&create_titled(state, user, "every operation").await);
    get(state, user, &id).await.assert_status(200);
    let page = ApiEvent::get(&tasks_path(user))
        .as_user(user)
        .send(state)
        .await;
    page.assert_status(200);
    assert_eq!(page.json().as_array().map(Vec::len), Some(1));
    ApiEvent::put(&task_path(user, &id))
        .as_user(user)
        .json(&json!({"title": "renamed"}))
        .send(state)
        .await
        .assert_status(200);
    ApiEvent::patch(&format!("{}/complete", task_path(user, &id)))
        .as_user(user)
        .send(state)
        .await
        .assert_status(200);
    ApiEvent::post(&tasks_path(user))
        .as_user(user)
        .header("idempotency-key", "every-operation")
        .json(&json!({"title": "keyed"}))
        .send(state)
        .await
        .assert_status(201);
    ApiEvent::delete(&task_path(user, &id))
        .as_user(user)
        .send(state)
        .await
        .assert_status(204);
    ApiEvent::get("/health")
        .send(state)
        .await
        .assert_status(200);
}

pub async fn get(state: &shared::AppState, user: &str, id: &str) -> ApiResponse {
    ApiEvent::get(&task_path(user, id))
        .as_user(user)
        .send(state)
        .await
}
