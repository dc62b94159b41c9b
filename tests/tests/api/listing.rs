//! Listing: filters, literal search, sorting, pagination and its headers.

use std::collections::HashSet;

use serde_json::{json, Value};
use tests::{state, user_id, ApiEvent, ApiResponse};

use crate::{create, create_titled, id_of, tasks_path};

async fn list(state: &shared::AppState, user: &str, query: &str) -> ApiResponse {
    let response = ApiEvent::get(&tasks_path(user))
        .as_user(user)
        .query(query)
        .send(state)
        .await;
    response
}

#[tokio::test]
async fn status_and_completed_filter_the_same_way() {
    let state = state();
    let user = user_id();
    create(&state, &user, json!({"title": "done", "completed": true})).await;
    create_titled(&state, &user, "todo").await;
    for (query, expected) in [
        ("status=completed", vec!["done"]),
        ("completed=true", vec!["done"]),
        ("status=pending", vec!["todo"]),
        ("completed=false", vec!["todo"]),
        ("status=all&sort=title", vec!["done", "todo"]),
        ("sort=title&unknown=ignored", vec!["done", "todo"]),
    ] {
        let response = list(&state, &user, query).await;
        response.assert_status(200);
        assert_eq!(response.titles(), expected, "{query}");
        assert_eq!(
            response.header("x-total-count").unwrap(),
            expected.len().to_string()
        );
    }
}

#[tokio::test]
async fn search_is_case_insensitive_and_wildcards_are_literal() {
    let state = state();
    let user = user_id();
    for (title, description) in [
        ("100% done", None),
        ("1000 done", None),
        ("a_b", None),
        ("axb", None),
        ("back\\slash", None),
        ("Groceries", Some("Buy MILK")),
    ] {
        create(
            &state,
            &user,
            json!({"title": title, "description": description}),
        )
        .await;
    }
    for (search, expected) in [
        ("%25", vec!["100% done"]),
        ("_", vec!["a_b"]),
        ("%5C", vec!["back\\slash"]),
        ("milk", vec!["Groceries"]),
        ("GROC", vec!["Groceries"]),
        ("done", vec!["100% done", "1000 done"]),
        ("nothing", vec![]),
    ] {
        let response = list(&state, &user, &format!("search={search}&sort=title")).await;
        response.assert_status(200);
        assert_eq!(response.titles(), expected, "search={search}");
    }
}

#[tokio::test]
async fn both_sort_orders_work_for_every_field() {
    let state = state();
    let user = user_id();
    let b = create_titled(&state, &user, "b").await;
    let a = create_titled(&state, &user, "a").await;
    let c = create_titled(&state, &user, "c").await;
    // Touch "b" so it is the most recently updated.
    ApiEvent::patch(&format!("{}/{}/complete", tasks_path(&user), id_of(&b)))
        .as_user(&user)
        .send(&state)
        .await
        .assert_status(200);
    let _ = (a, c);
    for (query, expected) in [
        ("", vec!["c", "a", "b"]),
        ("sort=created_at", vec!["c", "a", "b"]),
        ("sort=created_at&order=asc", vec!["b", "a", "c"]),
        ("sort=title", vec!["a", "b", "c"]),
        ("sort=title&order=desc", vec!["c", "b", "a"]),
        ("sort=updated_at", vec!["b", "c", "a"]),
        ("sort=updated_at&order=asc", vec!["a", "c", "b"]),
    ] {
        assert_eq!(
            list(&state, &user, query).await.titles(),
            expected,
            "{query}"
        );
    }
}

#[tokio::test]
async fn pagination_visits_every_task_exactly_once() {
    let state = state();
    let user = user_id();
    let mut created = HashSet::new();
    for i in 0..7 {
        // Equal titles force the tie-break on id.
        created.insert(id_of(
            &create_titled(&state, &user, if i % 2 == 0 { "same" } else { "other" }).await,
        ));
    }
    for sort in ["created_at", "title", "updated_at"] {
        let mut seen = Vec::new();
        let mut query = format!("sort={sort}&limit=3");
        let mut pages = 0;
        loop {
            let response = list(&state, &user, &query).await;
            response.assert_status(200);
            assert_eq!(response.header("x-total-count"), Some("7"));
            seen.extend(response.json().as_array().unwrap().iter().map(id_of));
            pages += 1;
            assert!(pages <= 3, "too many pages");
            let Some(link) = response.header("link") else {
                break;
            };
            let expected_prefix = format!("<{}?", tasks_path(&user));
            assert!(
                link.starts_with(&expected_prefix) && link.ends_with(">; rel=\"next\""),
                "{link}"
            );
            query = link[expected_prefix.len()..link.len() - ">; rel=\"next\"".len()].to_owned();
            assert!(query.contains(&format!("sort={sort}")), "{query}");
        }
        assert_eq!(pages, 3);
        assert_eq!(seen.len(), 7, "{sort}: {seen:?}");
        assert_eq!(
            seen.iter().cloned().collect::<HashSet<_>>(),
            created,
            "{sort}"
        );
    }
    let beyond = list(&state, &user, "offset=50").await;
    assert_eq!(beyond.text(), "[]");
    assert_eq!(beyond.header("x-total-count"), Some("7"));
    assert_eq!(beyond.header("link"), None);
}

#[tokio::test]
async fn every_bad_parameter_is_422() {
    let state = state();
    let user = user_id();
    for (query, field) in [
        ("status=done", "status"),
        ("completed=yes", "completed"),
        ("sort=priority", "sort"),
        ("order=up", "order"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
        ("search=%00", "search"),
        (&format!("search={}", "s".repeat(256)), "search"),
    ] {
        let response = list(&state, &user, query).await;
        response.assert_status(422);
        let detail: Value = response.detail();
        assert_eq!(detail[0]["loc"], json!(["query", field]), "{query}");
    }
    list(&state, &user, "limit=500&offset=0")
        .await
        .assert_status(200);
}
