//! Broken object-level authorization: nobody reaches another user's tasks.

use serde_json::json;
use shared::routes::{Operation, ROUTES};
use tests::{db, state, task_count, user_id, ApiEvent};

use crate::{create, id_of};

async fn row_of(id: &str) -> Vec<String> {
    let client = db().await;
    let id: uuid::Uuid = id.parse().unwrap();
    let row = client
        .query_one(
            "SELECT user_id, title, description, completed, version, updated_at::text FROM tasks WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    vec![
        row.get::<_, String>(0),
        row.get::<_, String>(1),
        format!("{:?}", row.get::<_, Option<String>>(2)),
        row.get::<_, bool>(3).to_string(),
        row.get::<_, i64>(4).to_string(),
        row.get::<_, String>(5),
    ]
}

fn body_for(operation: Operation) -> Option<serde_json::Value> {
    match operation {
        Operation::CreateTask | Operation::UpdateTask => Some(json!({"title": "pwned"})),
        Operation::CompleteTask => Some(json!({"completed": true})),
        _ => None,
    }
}

#[tokio::test]
async fn another_users_path_is_403_on_every_route() {
    let state = state();
    let (alice, bob) = (user_id(), user_id());
    let bobs = id_of(
        &create(
            &state,
            &bob,
            json!({"title": "bob's", "description": "secret"}),
        )
        .await,
    );
    let before = row_of(&bobs).await;
    for route in ROUTES.iter().filter(|r| r.operation != Operation::Health) {
        let path = route.path.replace("{user_id}", &bob).replace("{id}", &bobs);
        let mut event = ApiEvent::new(route.method, &path).as_user(&alice);
        if let Some(body) = body_for(route.operation) {
            event = event.json(&body);
        }
        let response = event.send(&state).await;
        response.assert_status(403);
        assert!(response.detail().is_string());
        assert!(!response.text().contains("secret"));
    }
    assert_eq!(row_of(&bobs).await, before, "bob's task must be unchanged");
    assert_eq!(task_count(&bob).await, 1, "no task was created under bob");
}

#[tokio::test]
async fn another_users_task_id_under_ones_own_path_is_404() {
    let state = state();
    let (alice, bob) = (user_id(), user_id());
    create(&state, &alice, json!({"title": "alice's"})).await;
    let bobs = id_of(&create(&state, &bob, json!({"title": "bob's"})).await);
    let before = row_of(&bobs).await;
    for route in ROUTES.iter().filter(|r| r.path.contains("{id}")) {
        let path = route
            .path
            .replace("{user_id}", &alice)
            .replace("{id}", &bobs);
        let mut event = ApiEvent::new(route.method, &path).as_user(&alice);
        if let Some(body) = body_for(route.operation) {
            event = event.json(&body);
        }
        let response = event.send(&state).await;
        response.assert_status(404);
        assert_eq!(response.text(), r#"{"detail":"Task not found"}"#);
    }
    assert_eq!(row_of(&bobs).await, before, "bob's task must be unchanged");
    let listed = ApiEvent::get(&format!("/api/{alice}/tasks"))
        .as_user(&alice)
        .send(&state)
        .await;
    assert_eq!(listed.titles(), ["alice's"]);
}

#[tokio::test]
async fn checks_run_in_contract_order() {
    let state = state();
    let (alice, bob) = (user_id(), user_id());
    let bad_body = "{not json";
    // 401 before 403 and 422
    ApiEvent::post(&format!("/api/{bob}/tasks"))
        .bearer("garbage")
        .raw_body(bad_body)
        .send(&state)
        .await
        .assert_status(401);
    // 403 before 413 / 415 / 422
    ApiEvent::post(&format!("/api/{bob}/tasks"))
        .as_user(&alice)
        .header("content-type", "text/plain")
        .raw_body(&"x".repeat(70_000))
        .send(&state)
        .await
        .assert_status(403);
    // 413 before 415 and 422
    ApiEvent::post(&format!("/api/{alice}/tasks"))
        .as_user(&alice)
        .header("content-type", "text/plain")
        .raw_body(&"x".repeat(70_000))
        .send(&state)
        .await
        .assert_status(413);
    // 415 before 422
    ApiEvent::post(&format!("/api/{alice}/tasks"))
        .as_user(&alice)
        .header("content-type", "text/plain")
        .raw_body(bad_body)
        .send(&state)
        .await
        .assert_status(415);
    // 422 before 404
    let missing = uuid::Uuid::new_v4();
    ApiEvent::put(&format!("/api/{alice}/tasks/{missing}"))
        .as_user(&alice)
        .raw_body(bad_body)
        .send(&state)
        .await
        .assert_status(422);
}
