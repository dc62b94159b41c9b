//! Each operation costs exactly one network round trip to Postgres on a warm connection:
//! its statement, the row-level security context and the transaction around it are
//! pipelined, and any ETag, count, `Link` or ownership work rides in the same statement.
//!
//! Counted on the wire: a TCP proxy between the API and Postgres counts "flights", the
//! times the API starts sending after having received something (or for the first time).
//! One request/response exchange is one flight however many messages it carries.

use std::sync::atomic::Ordering;

use serde_json::json;
use tests::proxy::FlightCounter;
use tests::{database_url, env, state_with, user_id, ApiEvent};

use crate::{id_of, task_path, tasks_path};

/// Current-thread, as the functions run: the statements of a request are all queued before
/// the connection task writes.
#[tokio::test(flavor = "current_thread")]
async fn every_operation_is_one_round_trip_on_a_warm_connection() {
    // Prepared statements (the default), prepared at cold start; and unnamed statements,
    // as behind PgBouncer before 1.21.
    for prepared in ["true", "false"] {
        one_round_trip_each(prepared).await;
    }
}

async fn one_round_trip_each(prepared: &str) {
    let url = database_url();
    let config: tokio_postgres::Config = url.parse().unwrap();
    let upstream = format!("127.0.0.1:{}", config.get_ports()[0]);
    let proxy = FlightCounter::start(upstream).await;
    let proxied = url.replacen(
        &format!(":{}/", config.get_ports()[0]),
        &format!(":{}/", proxy.port),
        1,
    );
    let state = state_with(env(&[
        ("DATABASE_URL", proxied.as_str()),
        ("DB_PREPARED_STATEMENTS", prepared),
    ]));
    let user = user_id();
    // The cold start: connecting, authenticating and preparing take round trips of their own.
    state.tasks.warm_up().await;
    let seed = ApiEvent::post(&tasks_path(&user))
        .as_user(&user)
        .json(&json!({"title": "seed"}))
        .send(&state)
        .await;
    let id = id_of(&seed.json());
    let tag = seed.header("etag").unwrap().to_owned();
    for n in 0..25 {
        ApiEvent::post(&tasks_path(&user))
            .as_user(&user)
            .json(&json!({"title": format!("filler {n}")}))
            .send(&state)
            .await
            .assert_status(201);
    }

    let complete = format!("{}/complete", task_path(&user, &id));
    let cases: Vec<(&str, ApiEvent, u16)> = vec![
        (
            "list with count and Link",
            ApiEvent::get(&tasks_path(&user)).query("limit=20&search=fill"),
            200,
        ),
        ("get", ApiEvent::get(&task_path(&user, &id)), 200),
        (
            "create",
            ApiEvent::post(&tasks_path(&user)).json(&json!({"title": "new"})),
            201,
        ),
        (
            "create with Idempotency-Key",
            ApiEvent::post(&tasks_path(&user))
                .header("idempotency-key", "round-trip-key")
                .json(&json!({"title": "keyed"})),
            201,
        ),
        (
            "update",
            ApiEvent::put(&task_path(&user, &id)).json(&json!({"title": "renamed"})),
            200,
        ),
        (
            "update with a stale If-Match",
            ApiEvent::put(&task_path(&user, &id))
                .header("if-match", &tag)
                .json(&json!({"title": "stale"})),
            412,
        ),
        ("toggle", ApiEvent::patch(&complete), 200),
        (
            "toggle with If-Match",
            ApiEvent::patch(&complete).header("if-match", "*"),
            200,
        ),
        (
            "get a missing task",
            ApiEvent::get(&task_path(&user, &uuid::Uuid::new_v4().to_string())),
            404,
        ),
        ("delete", ApiEvent::delete(&task_path(&user, &id)), 204),
    ];
    for (name, event, status) in cases {
        let event = event.as_user(&user);
        let before = proxy.flights.load(Ordering::SeqCst);
        event.send(&state).await.assert_status(status);
        let after = proxy.flights.load(Ordering::SeqCst);
        assert_eq!(
            after - before,
            1,
            "{name} (prepared statements: {prepared}): {} round trips",
            after - before
        );
    }
}
