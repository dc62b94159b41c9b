//! The fallback routes: a request that no operation's route takes reaches the health
//! function (API Gateway routes it through `<method> /{proxy+}`), which answers 404, or 405
//! with `Allow`, with `detail` and `X-Request-Id` as every other error, instead of API
//! Gateway's own `{"message":"Not Found"}`. And behind a custom domain's API mapping with a
//! key, where the raw path starts with the key, the health route still answers and the URLs
//! the API hands out keep the key.

use serde_json::{json, Value};
use shared::routes::Operation;
use tests::events::send_event;
use tests::{state, user_id, ApiEvent};

use crate::{task_path, tasks_path};

#[tokio::test]
async fn a_request_no_route_takes_gets_404_or_405_with_detail() {
    let state = state();
    let user = user_id();
    let task = task_path(&user, &uuid::Uuid::new_v4().to_string());
    let cases = [
        ("PUT", tasks_path(&user), Some("GET, HEAD, POST, OPTIONS")),
        (
            "POST",
            task.clone(),
            Some("GET, HEAD, PUT, DELETE, OPTIONS"),
        ),
        ("GET", format!("{task}/complete"), Some("PATCH, OPTIONS")),
        ("DELETE", "/health".to_owned(), Some("GET, HEAD, OPTIONS")),
        ("GET", "/".to_owned(), None),
        ("GET", "/wp-login.php".to_owned(), None),
        ("POST", format!("/api/{user}/task"), None),
        ("PATCH", format!("{task}/completed"), None),
    ];
    for (method, path, allow) in cases {
        let event = ApiEvent::new(method, &path).as_user(&user);
        let route_key = event.to_json()["routeKey"].as_str().unwrap().to_owned();
        assert!(
            route_key == format!("{method} /{{proxy+}}") || route_key == format!("{method} /"),
            "{method} {path} takes {route_key}"
        );
        let response = event.send_to(&state, Operation::Health).await;
        let (status, detail) = match allow {
            Some(_) => (405, "Method Not Allowed"),
            None => (404, "Not Found"),
        };
        assert_eq!(
            response.status,
            status,
            "{method} {path}: {}",
            response.text()
        );
        assert_eq!(response.detail(), detail, "{method} {path}");
        assert_eq!(response.header("allow"), allow, "{method} {path}");
        assert!(response.header("x-request-id").is_some(), "{method} {path}");
    }
}

/// `HEAD` is the `GET`'s answer without the body (RFC 9110, 9.3.2), on every route that
/// takes `GET`: the same status and headers, the length of the body left out. It was a 405
/// (uptime checks send `HEAD /health`). A path that takes no `GET` still answers 405 or 404.
#[tokio::test]
async fn head_is_the_gets_answer_without_its_body() {
    let state = state();
    let user = user_id();
    let task = crate::create_titled(&state, &user, "headed").await;
    let path = task_path(&user, &crate::id_of(&task));
    let cases = [
        (tasks_path(&user), Operation::ListTasks),
        (path.clone(), Operation::GetTask),
        ("/health".to_owned(), Operation::Health),
    ];
    for (path, operation) in cases {
        let get = ApiEvent::get(&path).as_user(&user).send(&state).await;
        get.assert_status(200);
        let event = ApiEvent::new("HEAD", &path).as_user(&user);
        assert_eq!(
            event.to_json()["routeKey"],
            format!("HEAD {}", operation.route().path),
            "the template's HEAD route"
        );
        let head = event.send_to(&state, operation).await;
        assert_eq!(head.status, 200, "HEAD {path}: {}", head.text());
        assert!(head.body.is_empty(), "HEAD {path}: {}", head.text());
        let length = get.body.len().to_string();
        assert_eq!(head.header("content-length"), Some(length.as_str()));
        for name in ["content-type", "etag", "x-total-count"] {
            assert_eq!(head.header(name), get.header(name), "HEAD {path}: {name}");
        }
    }
    let unauthenticated = ApiEvent::new("HEAD", &path).send(&state).await;
    assert_eq!(unauthenticated.status, 401);
    assert!(unauthenticated.body.is_empty());
    assert_eq!(unauthenticated.header("www-authenticate"), Some("Bearer"));
    let missing = task_path(&user, &uuid::Uuid::new_v4().to_string());
    let missing = ApiEvent::new("HEAD", &missing)
        .as_user(&user)
        .send(&state)
        .await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.is_empty());
    let complete = ApiEvent::new("HEAD", &format!("{path}/complete"))
        .as_user(&user)
        .send_to(&state, Operation::Health)
        .await;
    assert_eq!(complete.status, 405);
    assert_eq!(complete.header("allow"), Some("PATCH, OPTIONS"));
    let unknown = ApiEvent::new("HEAD", "/wp-login.php")
        .send_to(&state, Operation::Health)
        .await;
    assert_eq!(unknown.status, 404);
    assert!(unknown.body.is_empty());
}

/// The health function verifies no token, so it never fetches the Better Auth secret (its
/// role may not read it): given only the secret's ARN (no AWS here: a fetch would fail the
/// start), it starts, answers `/health` and the fallback routes, and refuses any token on
/// a task route (which API Gateway never sends it). Token settings that stop the task
/// functions' cold start stop its start too, so `/health` is not green for a stack whose
/// task functions cannot start.
#[tokio::test]
async fn the_health_function_starts_without_the_secret_and_checks_the_other_token_settings() {
    const ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:todo-AbCdEf";
    let health = |settings: &'static [(&'static str, &'static str)]| {
        shared::AppState::for_health(move |name| match name {
            "DATABASE_URL" => Some(tests::database_url().to_owned()),
            _ => settings
                .iter()
                .find(|(setting, _)| *setting == name)
                .map(|(_, value)| (*value).to_owned()),
        })
    };
    let state = health(&[("BETTER_AUTH_SECRET_ARN", ARN)])
        .await
        .expect("the health function's state");
    ApiEvent::get("/health")
        .send_to(&state, Operation::Health)
        .await
        .assert_status(200);
    ApiEvent::get("/nope")
        .send_to(&state, Operation::Health)
        .await
        .assert_status(404);
    let user = user_id();
    ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .send_to(&state, Operation::ListTasks)
        .await
        .assert_status(401);
    assert!(health(&[]).await.is_err(), "no way to verify tokens");
    let bad_leeway = &[
        ("BETTER_AUTH_SECRET_ARN", ARN),
        ("JWT_LEEWAY_SECONDS", "30000"),
    ];
    assert!(health(bad_leeway).await.is_err(), "a leeway past 5 minutes");
    assert!(
        health(&[("BETTER_AUTH_SECRET", "too short")])
            .await
            .is_err(),
        "a secret given directly (locally) is checked too"
    );
}

#[tokio::test]
async fn the_fallback_answers_cross_origin_requests_with_cors() {
    let state = state();
    let response = ApiEvent::get("/nope")
        .header("origin", "http://localhost:3000")
        .send_to(&state, Operation::Health)
        .await;
    response.assert_status(404);
    assert_eq!(
        response.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
}

/// `event` as API Gateway delivers it behind a custom domain whose API mapping has the key
/// `v1` (`api.example.com/v1` → this API): it routes the path after the key, and the raw
/// path keeps the key.
fn with_key(event: ApiEvent) -> Value {
    let mut event = event.to_json();
    let path = format!("/v1{}", event["rawPath"].as_str().unwrap());
    event["rawPath"] = json!(path);
    event["requestContext"]["http"]["path"] = json!(path);
    event
}

/// Behind an API mapping's key, the routed path decides.
#[tokio::test]
async fn behind_an_api_mapping_key_the_routed_path_decides() {
    let state = state();
    let user = user_id();
    let health = send_event(
        &state,
        Operation::Health,
        with_key(ApiEvent::get("/health")),
    )
    .await;
    health.assert_status(200);
    assert_eq!(health.json()["status"], "healthy");
    let put = ApiEvent::put(&tasks_path(&user)).as_user(&user);
    let response = send_event(&state, Operation::Health, with_key(put)).await;
    response.assert_status(405);
    assert_eq!(response.header("allow"), Some("GET, HEAD, POST, OPTIONS"));
}

/// The URLs the API hands out keep the mapping's key: `Location` of a create, `Link` of a
/// page.
#[tokio::test]
async fn behind_an_api_mapping_key_locations_and_links_keep_it() {
    let state = state();
    let user = user_id();
    for title in ["one", "two"] {
        let create = ApiEvent::post(&tasks_path(&user))
            .as_user(&user)
            .json(&json!({ "title": title }));
        let created = send_event(&state, Operation::CreateTask, with_key(create)).await;
        created.assert_status(201);
        let id = created.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(
            created.header("location"),
            Some(format!("/v1/api/{user}/tasks/{id}").as_str())
        );
    }
    let list = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .query("limit=1");
    let page = send_event(&state, Operation::ListTasks, with_key(list)).await;
    page.assert_status(200);
    assert_eq!(
        page.header("link"),
        Some(format!("</v1/api/{user}/tasks?limit=1&offset=1>; rel=\"next\"").as_str())
    );
    // Without a key, as before.
    let plain = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .query("limit=1")
        .send(&state)
        .await;
    assert_eq!(
        plain.header("link"),
        Some(format!("</api/{user}/tasks?limit=1&offset=1>; rel=\"next\"").as_str())
    );
}

/// API Gateway routes a path with a trailing slash as the path without it, and the raw path
/// keeps the slash: the URLs the API hands out are the route's own, with or without a
/// mapping's key.
#[tokio::test]
async fn a_trailing_slash_is_no_segment_of_the_urls_handed_out() {
    let state = state();
    let user = user_id();
    let with_slash = format!("{}/", tasks_path(&user));
    for (keyed, prefix) in [(false, ""), (true, "/v1")] {
        let create = ApiEvent::post(&with_slash)
            .as_user(&user)
            .json(&json!({ "title": "slash" }));
        assert_eq!(
            create.to_json()["routeKey"],
            "POST /api/{user_id}/tasks",
            "routed as API Gateway routes it"
        );
        let event = if keyed {
            with_key(create)
        } else {
            create.to_json()
        };
        let created = send_event(&state, Operation::CreateTask, event).await;
        created.assert_status(201);
        let id = created.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(
            created.header("location"),
            Some(format!("{prefix}/api/{user}/tasks/{id}").as_str())
        );
    }
    let list = ApiEvent::get(&with_slash).as_user(&user).query("limit=1");
    let page = send_event(&state, Operation::ListTasks, with_key(list)).await;
    page.assert_status(200);
    assert_eq!(
        page.header("link"),
        Some(format!("</v1/api/{user}/tasks?limit=1&offset=1>; rel=\"next\"").as_str())
    );
}
