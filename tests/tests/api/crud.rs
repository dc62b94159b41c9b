use serde_json::json;
use tests::{state, user_id, ApiEvent};

use crate::{create, create_titled, get, id_of, task_path, tasks_path};

#[tokio::test]
async fn create_returns_201_with_the_task_and_its_location() {
    let state = state();
    let user = user_id();
    let response = ApiEvent::post(&tasks_path(&user))
        .as_user(&user)
        .json(&json!({"title": "  Buy milk  ", "description": "2 litres"}))
        .send(&state)
        .await;
    response.assert_status(201);
    let task = response.json();
    assert_eq!(task["title"], "Buy milk");
    assert_eq!(task["description"], "2 litres");
    assert_eq!(task["completed"], false);
    assert_eq!(task["user_id"], user.as_str());
    assert_eq!(task["created_at"], task["updated_at"]);
    let created_at = task["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.len() == 27,
        "{created_at}"
    );
    assert_eq!(
        response.header("location").unwrap(),
        task_path(&user, &id_of(&task))
    );
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert!(response.header("x-request-id").is_some());
    // One user's data: stored by no browser or proxy.
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let list = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .send(&state)
        .await;
    list.assert_status(200);
    assert_eq!(list.header("cache-control"), Some("no-store"));
    let keys: Vec<_> = task.as_object().unwrap().keys().cloned().collect();
    assert_eq!(
        keys.len(),
        7,
        "id, user_id, title, description, completed, created_at, updated_at: {keys:?}"
    );
}

#[tokio::test]
async fn create_ignores_server_owned_fields_in_the_body() {
    let state = state();
    let user = user_id();
    let task = create(
        &state,
        &user,
        json!({
            "title": "t", "id": "00000000-0000-0000-0000-000000000001",
            "user_id": "someone-else", "created_at": "2000-01-01T00:00:00Z", "extra": 1
        }),
    )
    .await;
    assert_ne!(task["id"], "00000000-0000-0000-0000-000000000001");
    assert_eq!(task["user_id"], user.as_str());
    assert_ne!(task["created_at"], "2000-01-01T00:00:00Z");
}

#[tokio::test]
async fn get_returns_the_task_and_404_for_an_unknown_id() {
    let state = state();
    let user = user_id();
    let task = create(&state, &user, json!({"title": "a", "completed": true})).await;
    let response = get(&state, &user, &id_of(&task)).await;
    response.assert_status(200);
    assert_eq!(response.json(), task);
    let missing = get(&state, &user, &uuid::Uuid::new_v4().to_string()).await;
    missing.assert_status(404);
    assert_eq!(missing.text(), r#"{"detail":"Task not found"}"#);
}

#[tokio::test]
async fn update_is_partial_and_moves_updated_at() {
    let state = state();
    let user = user_id();
    let task = create(
        &state,
        &user,
        json!({"title": "old", "description": "keep"}),
    )
    .await;
    let id = id_of(&task);
    let response = ApiEvent::put(&task_path(&user, &id))
        .as_user(&user)
        .json(&json!({"title": " new ", "user_id": "x", "created_at": "2000-01-01T00:00:00Z"}))
        .send(&state)
        .await;
    response.assert_status(200);
    let updated = response.json();
    assert_eq!(updated["title"], "new");
    assert_eq!(updated["description"], "keep");
    assert_eq!(updated["completed"], false);
    assert_eq!(updated["user_id"], user.as_str());
    assert_eq!(updated["created_at"], task["created_at"]);
    assert!(updated["updated_at"].as_str() > task["updated_at"].as_str());

    let cleared = ApiEvent::put(&task_path(&user, &id))
        .as_user(&user)
        .json(&json!({"description": null, "completed": true}))
        .send(&state)
        .await;
    cleared.assert_status(200);
    assert_eq!(cleared.json()["description"], json!(null));
    assert_eq!(cleared.json()["completed"], true);
    assert_eq!(cleared.json()["title"], "new");
    assert_eq!(get(&state, &user, &id).await.json(), cleared.json());
}

#[tokio::test]
async fn update_of_an_unknown_task_is_404() {
    let state = state();
    let user = user_id();
    ApiEvent::put(&task_path(&user, &uuid::Uuid::new_v4().to_string()))
        .as_user(&user)
        .json(&json!({"title": "x"}))
        .send(&state)
        .await
        .assert_status(404);
}

#[tokio::test]
async fn delete_returns_204_once_then_404() {
    let state = state();
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "bye").await);
    let first = ApiEvent::delete(&task_path(&user, &id))
        .as_user(&user)
        .header("content-type", "application/json")
        .send(&state)
        .await;
    first.assert_status(204);
    assert!(first.body.is_empty());
    get(&state, &user, &id).await.assert_status(404);
    ApiEvent::delete(&task_path(&user, &id))
        .as_user(&user)
        .send(&state)
        .await
        .assert_status(404);
}

#[tokio::test]
async fn complete_toggles_without_a_body_and_sets_with_one() {
    let state = state();
    let user = user_id();
    let task = create_titled(&state, &user, "flip").await;
    let path = format!("{}/complete", task_path(&user, &id_of(&task)));
    let toggle = || ApiEvent::patch(&path).as_user(&user);
    let on = toggle().send(&state).await;
    on.assert_status(200);
    assert_eq!(on.json()["completed"], true);
    assert!(on.json()["updated_at"].as_str() > task["updated_at"].as_str());
    let off = toggle().json(&json!({})).send(&state).await;
    assert_eq!(off.json()["completed"], false);
    let set = toggle()
        .json(&json!({"completed": false}))
        .send(&state)
        .await;
    set.assert_status(200);
    assert_eq!(set.json()["completed"], false);
    let set = toggle()
        .json(&json!({"completed": true}))
        .send(&state)
        .await;
    assert_eq!(set.json()["completed"], true);
    let again = toggle()
        .json(&json!({"completed": true}))
        .send(&state)
        .await;
    assert_eq!(again.json()["completed"], true);
}

#[tokio::test]
async fn complete_of_an_unknown_task_is_404() {
    let state = state();
    let user = user_id();
    let path = format!(
        "{}/complete",
        task_path(&user, &uuid::Uuid::new_v4().to_string())
    );
    ApiEvent::patch(&path)
        .as_user(&user)
        .send(&state)
        .await
        .assert_status(404);
}

#[tokio::test]
async fn list_returns_a_bare_array_with_a_total() {
    let state = state();
    let user = user_id();
    let empty = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .send(&state)
        .await;
    empty.assert_status(200);
    assert_eq!(empty.text(), "[]");
    assert_eq!(empty.header("x-total-count"), Some("0"));
    create_titled(&state, &user, "one").await;
    create_titled(&state, &user, "two").await;
    let listed = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .send(&state)
        .await;
    listed.assert_status(200);
    assert_eq!(listed.json().as_array().unwrap().len(), 2);
    assert_eq!(listed.header("x-total-count"), Some("2"));
    assert_eq!(listed.header("link"), None);
}

#[tokio::test]
async fn health_reports_the_database() {
    let state = state();
    let response = ApiEvent::get("/health").send(&state).await;
    response.assert_status(200);
    let body = response.json();
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["database"], "ok");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test]
async fn preflight_and_responses_carry_cors_for_allowed_origins() {
    let state = state();
    let user = user_id();
    let preflight = ApiEvent::new("OPTIONS", &tasks_path(&user))
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .send_to(&state, shared::routes::Operation::CreateTask)
        .await;
    preflight.assert_status(204);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert!(preflight
        .header("access-control-allow-headers")
        .unwrap()
        .contains("authorization"));
    let listed = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .header("origin", "http://localhost:3000")
        .send(&state)
        .await;
    assert_eq!(
        listed.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let foreign = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .header("origin", "https://evil.example")
        .send(&state)
        .await;
    assert_eq!(foreign.header("access-control-allow-origin"), None);
}
