//! The database side: unreachable or silent databases answer 503 in time, and migrations
//! are idempotent and safe to run concurrently.

use std::time::{Duration, Instant};

use serde_json::json;
use tests::{database_url, db, env, state_with, user_id, ApiEvent};

use crate::status_matrix::unreachable_state;
use crate::tasks_path;

#[tokio::test]
async fn a_refused_connection_is_503_with_retry_after() {
    let state = unreachable_state();
    let user = user_id();
    let started = Instant::now();
    for event in [
        ApiEvent::get(&tasks_path(&user)).as_user(&user),
        ApiEvent::post(&tasks_path(&user))
            .as_user(&user)
            .json(&json!({"title": "t"})),
        ApiEvent::get("/health"),
    ] {
        let response = event.send(&state).await;
        response.assert_status(503);
        assert_eq!(response.header("retry-after"), Some("2"));
        let text = response.text();
        assert!(
            !text.contains("127.0.0.1") && !text.to_lowercase().contains("connection refused"),
            "{text}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_silent_server_is_503_within_the_connect_timeout() {
    // Accepts TCP connections and never says a word, like a black-holed host.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let url = format!("postgres://postgres@127.0.0.1:{port}/db?sslmode=disable");
    let state = state_with(env(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "500"),
        ("DB_POOL_TIMEOUT_MS", "500"),
    ]));
    let user = user_id();
    let started = Instant::now();
    let response = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .send(&state)
        .await;
    let elapsed = started.elapsed();
    response.assert_status(503);
    assert!(response.header("retry-after").is_some());
    assert!(elapsed < Duration::from_millis(2500), "took {elapsed:?}");
    holder.abort();
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_concurrently() {
    database_url();
    let mut first = db().await;
    let mut second = db().await;
    let (a, b) = tokio::join!(
        migrations::apply(&mut first),
        migrations::apply(&mut second)
    );
    assert_eq!(a.unwrap(), Vec::<String>::new());
    assert_eq!(b.unwrap(), Vec::<String>::new());
    let applied: i64 = first
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert!(applied >= 1);
}

/// Functions of different statements with the same, new columns share one row type:
/// installed at the same moment from several sessions, the type is created once and no
/// install fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statement_functions_installed_at_once_share_their_new_row_type() {
    use shared::procedures::{Guards, Procedure, RowType};
    use tokio_postgres::types::Type;

    database_url();
    let column = format!("c_{}", user_id());
    let sessions = 4;
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(sessions));
    let mut installs = tokio::task::JoinSet::new();
    for n in 0..sessions {
        let (column, barrier) = (column.clone(), barrier.clone());
        installs.spawn(async move {
            let client = db().await;
            let procedure = Procedure::new(
                &format!("SELECT $1::text || '{n}' AS {column}"),
                &[Type::TEXT],
                Guards::READ,
            );
            barrier.wait().await;
            migrations::install(&client, &procedure).await
        });
    }
    while let Some(installed) = installs.join_next().await {
        installed.expect("task").expect("install");
    }
    let row = RowType::of(&[(column, Type::TEXT)]).unwrap();
    let functions: i64 = db()
        .await
        .query_one(
            "SELECT count(*) FROM pg_proc WHERE prorettype = to_regtype($1)",
            &[&row.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(functions, 4);
}
