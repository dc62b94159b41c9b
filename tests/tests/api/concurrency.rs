//! Beyond the FastAPI version: ETags and If-Match (no lost updates), idempotent creates
//! (safe retries), and row-level security (isolation enforced by Postgres itself).

use serde_json::json;
use shared::db::Effect;
use shared::routes::Operation;
use tests::{db, state, task_count, user_id, ApiEvent, ApiResponse};
use tokio_postgres::types::Type;

use crate::{create_titled, id_of, task_path, tasks_path};

async fn put_if_match(
    state: &shared::AppState,
    user: &str,
    id: &str,
    tag: &str,
    title: &str,
) -> ApiResponse {
    ApiEvent::put(&task_path(user, id))
        .as_user(user)
        .header("if-match", tag)
        .json(&json!({ "title": title }))
        .send(state)
        .await
}

#[tokio::test]
async fn the_etag_changes_on_every_write() {
    let state = state();
    let user = user_id();
    let created = ApiEvent::post(&tasks_path(&user))
        .as_user(&user)
        .json(&json!({"title": "v1"}))
        .send(&state)
        .await;
    let id = id_of(&created.json());
    let mut tags = vec![created.header("etag").unwrap().to_owned()];
    let updated = put_if_match(&state, &user, &id, &tags[0], "v2").await;
    updated.assert_status(200);
    tags.push(updated.header("etag").unwrap().to_owned());
    let completed = ApiEvent::patch(&format!("{}/complete", task_path(&user, &id)))
        .as_user(&user)
        .send(&state)
        .await;
    tags.push(completed.header("etag").unwrap().to_owned());
    let fetched = crate::get(&state, &user, &id).await;
    assert_eq!(fetched.header("etag"), Some(tags[2].as_str()));
    let mut unique = tags.clone();
    unique.dedup();
    assert_eq!(unique.len(), 3, "{tags:?}");
    assert!(tags.iter().all(|t| t.starts_with('"') && t.ends_with('"')));
}

#[tokio::test]
async fn a_stale_if_match_is_412_and_changes_nothing() {
    let state = state();
    let user = user_id();
    let task = create_titled(&state, &user, "original").await;
    let id = id_of(&task);
    let first = put_if_match(&state, &user, &id, "\"1\"", "first").await;
    first.assert_status(200);
    let before = crate::get(&state, &user, &id).await.json();

    let stale = put_if_match(&state, &user, &id, "\"1\"", "second").await;
    stale.assert_status(412);
    assert_eq!(
        stale.detail(),
        "Precondition failed: the task has changed since it was read"
    );
    let complete = ApiEvent::patch(&format!("{}/complete", task_path(&user, &id)))
        .as_user(&user)
        .header("if-match", "\"1\"")
        .send(&state)
        .await;
    complete.assert_status(412);
    // A tag this API never sends (weak, unquoted, another spelling of the version) can
    // never match: the 412 says so, not that the task changed, which a client would
    // answer by reading the task again and sending the same mangled tag for ever.
    for tag in ["W/\"2\"", "2", "\"02\"", "W/\"2\", 2"] {
        let never = ApiEvent::delete(&task_path(&user, &id))
            .as_user(&user)
            .header("if-match", tag)
            .send(&state)
            .await;
        never.assert_status(412);
        let detail = never.detail();
        let detail = detail.as_str().unwrap();
        assert!(
            detail.contains("names no ETag this API sends"),
            "{tag}: {detail}"
        );
    }
    assert_eq!(
        crate::get(&state, &user, &id).await.json(),
        before,
        "unchanged"
    );

    // A missing task is 404 before any precondition is looked at.
    put_if_match(
        &state,
        &user,
        &uuid::Uuid::new_v4().to_string(),
        "\"1\"",
        "x",
    )
    .await
    .assert_status(404);
    // Any current tag in a list, or *, lets the write through.
    put_if_match(&state, &user, &id, "\"7\", \"2\"", "third")
        .await
        .assert_status(200);
    ApiEvent::delete(&task_path(&user, &id))
        .as_user(&user)
        .header("if-match", "*")
        .send(&state)
        .await
        .assert_status(204);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_racing_writers_with_the_same_tag_exactly_one_wins() {
    let setup = state();
    let user = user_id();
    for round in 0..5 {
        let id = id_of(&create_titled(&setup, &user, "contended").await);
        // Separate states: separate connections, as separate Lambda instances would have.
        let writers: Vec<_> = (0..6)
            .map(|n| {
                let (user, id) = (user.clone(), id.clone());
                tokio::spawn(async move {
                    let state = state();
                    let response =
                        put_if_match(&state, &user, &id, "\"1\"", &format!("writer {n}")).await;
                    (n, response.status)
                })
            })
            .collect();
        let mut winners = Vec::new();
        for writer in writers {
            let (n, status) = writer.await.unwrap();
            match status {
                200 => winners.push(n),
                412 => {}
                other => panic!("round {round}: unexpected status {other}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: winners {winners:?}");
        let stored = crate::get(&setup, &user, &id).await;
        assert_eq!(stored.json()["title"], format!("writer {}", winners[0]));
        assert_eq!(stored.header("etag"), Some("\"2\""));
    }
}

async fn post_with_key(
    state: &shared::AppState,
    user: &str,
    key: &str,
    body: serde_json::Value,
) -> ApiResponse {
    ApiEvent::post(&tasks_path(user))
        .as_user(user)
        .header("idempotency-key", key)
        .json(&body)
        .send(state)
        .await
}

#[tokio::test]
async fn a_retried_create_with_the_same_key_returns_the_original_task() {
    let state = state();
    let user = user_id();
    let key = uuid::Uuid::new_v4().to_string();
    let first = post_with_key(&state, &user, &key, json!({"title": "once"})).await;
    first.assert_status(201);
    assert_eq!(first.header("idempotent-replayed"), None);
    // Same fields, different formatting and ignored fields: the same request.
    let retry = post_with_key(&state, &user, &key, json!({"title": " once ", "x": 1})).await;
    retry.assert_status(201);
    assert_eq!(retry.json(), first.json());
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.header("location"), first.header("location"));
    assert_eq!(task_count(&user).await, 1);

    let other_body = post_with_key(&state, &user, &key, json!({"title": "twice"})).await;
    other_body.assert_status(422);
    assert_eq!(other_body.error_types(), ["idempotency_key_reused"]);
    assert_eq!(
        other_body.detail()[0]["loc"],
        json!(["header", "Idempotency-Key"])
    );
    assert_eq!(task_count(&user).await, 1);

    // Keys are per user.
    let someone_else = user_id();
    post_with_key(&state, &someone_else, &key, json!({"title": "once"}))
        .await
        .assert_status(201);
    assert_eq!(task_count(&someone_else).await, 1);
    // Without a key, every POST creates.
    crate::create_titled(&state, &user, "once").await;
    assert_eq!(task_count(&user).await, 2);
}

#[tokio::test]
async fn bad_idempotency_keys_are_422() {
    let state = state();
    let user = user_id();
    for key in ["", "has space", &"k".repeat(256)] {
        let response = post_with_key(&state, &user, key, json!({"title": "t"})).await;
        response.assert_status(422);
        assert_eq!(
            response.detail()[0]["loc"],
            json!(["header", "Idempotency-Key"])
        );
    }
    assert_eq!(task_count(&user).await, 0);
}

/// On a database of its own: every keyed create purges anyone's expired keys
/// (`FOR UPDATE SKIP LOCKED`), so another test's keyed create in flight at the same moment
/// holds them locked and this test's purges skip them (once in CI on the shared database,
/// 3 of the 5 were left).
#[tokio::test]
async fn keys_expire_after_24_hours_and_old_keys_are_cleaned_up() {
    let url = tests::new_database("expiry").await;
    tests::migrate_with(&url, None);
    let state = tests::state_with(tests::env(&[("DATABASE_URL", url.as_str())]));
    let user = user_id();
    let key = "expiring-key";
    let first = post_with_key(&state, &user, key, json!({"title": "day one"})).await;
    let client = shared::db::connect_once(&url, None, std::time::Duration::from_secs(10))
        .await
        .expect("connect");
    client
        .execute(
            "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    let later = post_with_key(&state, &user, key, json!({"title": "day two"})).await;
    later.assert_status(201);
    assert_ne!(later.json()["id"], first.json()["id"]);
    assert_eq!(later.header("idempotent-replayed"), None);

    // Somebody else's expired keys disappear as keyed creates happen.
    let idle = user_id();
    for n in 0..5 {
        client
            .execute(
                "INSERT INTO idempotency_keys (user_id, key, request_hash, task_id, created_at)
                 VALUES ($1, $2::text, '\\x00', gen_random_uuid(), now() - interval '30 hours')",
                &[&idle, &format!("old-{n}")],
            )
            .await
            .unwrap();
    }
    for n in 0..3 {
        post_with_key(&state, &user, &format!("fresh-{n}"), json!({"title": "t"}))
            .await
            .assert_status(201);
    }
    let left: i64 = client
        .query_one(
            "SELECT count(*) FROM idempotency_keys WHERE user_id = $1",
            &[&idle],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    drop((client, state));
    tests::drop_database(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_create_exactly_one_task() {
    for _ in 0..3 {
        let user = user_id();
        let key = uuid::Uuid::new_v4().to_string();
        let requests: Vec<_> = (0..8)
            .map(|_| {
                let (user, key) = (user.clone(), key.clone());
                tokio::spawn(async move {
                    let state = state();
                    post_with_key(&state, &user, &key, json!({"title": "only one"})).await
                })
            })
            .collect();
        let mut ids = std::collections::HashSet::new();
        for request in requests {
            let response = request.await.unwrap();
            response.assert_status(201);
            ids.insert(id_of(&response.json()));
        }
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(task_count(&user).await, 1);
    }
}

#[tokio::test]
async fn row_level_security_holds_even_when_the_sql_names_another_owner() {
    let state = state();
    let (alice, bob) = (user_id(), user_id());
    let bobs = create_titled(&state, &bob, "bob's").await;
    assert_alice_cannot_reach_bobs(&state, &alice, &bob, &bobs).await;
}

/// Statements that name Bob while running as Alice (who has no tasks) see nothing, change
/// nothing and cannot write a row for him; his task is as it was.
async fn assert_alice_cannot_reach_bobs(
    state: &shared::AppState,
    alice: &str,
    bob: &str,
    bobs: &serde_json::Value,
) {
    let database = state.tasks.database();
    // The API runs only its own statements, each through a function that `migrate`
    // installs; these are installed the same way, so that they run as the API's would.
    // Once, by whichever test gets here first: two sessions creating the same function at
    // the same moment make one of them fail (as `migrate`, which holds a lock, never does).
    static INSTALLED: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();
    INSTALLED
        .get_or_init(install_statements_of_other_code)
        .await;
    // A buggy statement that asks for Bob's rows while running as Alice sees nothing...
    let rows = database
        .query_as(
            Effect::Read,
            alice,
            "SELECT id FROM tasks WHERE user_id = $1",
            &[(&bob, Type::TEXT)],
        )
        .await
        .unwrap();
    assert!(rows.is_empty());
    let rows = database
        .query_as(Effect::Read, alice, "SELECT id FROM tasks", &[])
        .await
        .unwrap();
    assert!(rows.is_empty(), "alice has no tasks");
    // ...changes nothing...
    let changed = database
        .query_as(
            Effect::Write,
            alice,
            "UPDATE tasks SET title = 'pwned' WHERE user_id = $1 RETURNING id",
            &[(&bob, Type::TEXT)],
        )
        .await
        .unwrap();
    assert!(changed.is_empty());
    let deleted = database
        .query_as(Effect::Write, alice, "DELETE FROM tasks RETURNING id", &[])
        .await
        .unwrap();
    assert!(deleted.is_empty());
    // ...and cannot write a row for him.
    let forged = database
        .query_as(
            Effect::Write,
            alice,
            "INSERT INTO tasks (id, user_id, title) VALUES (gen_random_uuid(), $1, 'forged')",
            &[(&bob, Type::TEXT)],
        )
        .await;
    let refused = forged.expect_err("the policy's WITH CHECK refuses it");
    assert!(
        matches!(refused, shared::error::ApiError::Internal(_)),
        "{refused:?}"
    );
    let stored = crate::get(state, bob, &id_of(bobs)).await;
    assert_eq!(&stored.json(), bobs);
    assert_eq!(task_count(bob).await, 1);
}

#[tokio::test]
async fn nothing_leaks_between_requests_on_a_shared_connection() {
    // Pool size 1: every statement below uses the same connection.
    let state = state();
    let (alice, bob) = (user_id(), user_id());
    create_titled(&state, &alice, "alice's").await;
    create_titled(&state, &bob, "bob's").await;
    let database = state.tasks.database();
    let after = database
        .query_unscoped(
            "SELECT current_user::text, coalesce(current_setting('app.user_id', true), ''), \
             (SELECT count(*) FROM tasks WHERE user_id = $1)",
            &[(&alice.as_str(), Type::TEXT)],
        )
        .await
        .unwrap();
    let row = &after[0];
    assert_ne!(row.get::<_, String>(0), shared::db::APP_ROLE, "role reset");
    assert_eq!(row.get::<_, String>(1), "", "user id reset");
    // Alternating users on one connection each see only their own tasks.
    for _ in 0..3 {
        for (user, title) in [(&alice, "alice's"), (&bob, "bob's")] {
            let listed = ApiEvent::get(&tasks_path(user))
                .as_user(user)
                .send_to(&state, Operation::ListTasks)
                .await;
            assert_eq!(listed.titles(), [title]);
        }
    }
}

#[tokio::test]
async fn user_ids_with_quotes_and_dollars_reach_the_database_intact() {
    let state = state();
    for user in [
        "it's",
        "$u$; SELECT 1; --",
        "ab$u",
        "\\'; DROP TABLE tasks; --",
        "a|b^c[d]`e{f}",
    ] {
        let path = format!(
            "/api/{}/tasks",
            percent_encoding::utf8_percent_encode(user, percent_encoding::NON_ALPHANUMERIC)
        );
        let created = ApiEvent::post(&path)
            .as_user(user)
            .json(&json!({"title": "quoted"}))
            .send(&state)
            .await;
        created.assert_status(201);
        assert_eq!(created.json()["user_id"], user);
        // The Location is a URI (RFC 3986) that decodes to the task's path: a raw `\`
        // would be read by a browser as `/`.
        let location = created.header("location").unwrap();
        let uri_char = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'()*+,;=:@/%".contains(c);
        assert!(location.chars().all(uri_char), "{user}: {location}");
        let id = created.json()["id"].as_str().unwrap().to_owned();
        assert_eq!(
            percent_encoding::percent_decode_str(location).decode_utf8_lossy(),
            format!("/api/{user}/tasks/{id}")
        );
        let listed = ApiEvent::get(&path).as_user(user).send(&state).await;
        listed.assert_status(200);
        assert_eq!(listed.json().as_array().unwrap().len(), 1, "{user}");
    }
}

#[tokio::test]
async fn a_login_role_without_bypassrls_needs_no_role_switch_and_is_still_isolated() {
    crate::make_todo_login(&db().await).await;
    let url = tests::database_url().replacen("://postgres@", "://todo_login@", 1);
    assert_ne!(
        url,
        tests::database_url(),
        "the test database URL names its user"
    );
    let state = tests::state_with(tests::env(&[("DATABASE_URL", url.as_str())]));
    // The first request finds out, in its own round trip, and switches roles itself.
    assert!(state.tasks.database().switches_role());
    let (alice, bob) = (user_id(), user_id());
    let bobs = create_titled(&state, &bob, "bob's").await;
    assert!(!state.tasks.database().switches_role());
    let superuser = state_for_comparison().await;
    assert!(superuser.tasks.database().switches_role());

    assert_alice_cannot_reach_bobs(&state, &alice, &bob, &bobs).await;
}

async fn state_for_comparison() -> shared::AppState {
    let state = state();
    create_titled(&state, &user_id(), "first request").await;
    state
}

/// A call that reaches Postgres after its deadline (queued in a pooler, say) is refused by
/// its function before the statement runs: nothing changes, and the error is the one the
/// API maps to a 503 without a retry.
#[tokio::test]
async fn a_call_that_reaches_the_database_after_its_deadline_changes_nothing() {
    let state = state();
    let (user, id) = users_task(&state, "before").await;
    let admin = db().await;
    let call = |deadline| complete_directly(&admin, &user, id, deadline, "5000ms");
    // A deadline a moment ago, as a call queued in a pooler past it would carry.
    let late = call(std::time::SystemTime::now() - std::time::Duration::from_millis(1))
        .await
        .expect_err("refused");
    let db_error = late.as_db_error().unwrap();
    assert_eq!(
        db_error.code(),
        &tokio_postgres::error::SqlState::QUERY_CANCELED
    );
    assert_eq!(db_error.message(), shared::procedures::DEADLINE_PASSED);
    let stored = crate::get(&state, &user, &id.to_string()).await.json();
    assert_eq!(stored["completed"], false, "nothing changed");
    // The same call in time does change it.
    let in_time = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    assert_eq!(call(in_time).await.unwrap().len(), 1);
    let stored = crate::get(&state, &user, &id.to_string()).await.json();
    assert_eq!(stored["completed"], true);
}

/// A write's function bounds its lock waits by the lock timeout the call carries (the time
/// left when it was sent): behind a row another transaction holds, the call ends with
/// `lock_not_available` after that time, not at the client's cancel, and changes nothing.
#[tokio::test]
async fn a_write_waits_for_a_lock_no_longer_than_its_call_allows() {
    let state = state();
    let (user, id) = users_task(&state, "locked").await;
    let mut holder = db().await;
    let holding = holder.transaction().await.unwrap();
    holding
        .execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    let admin = db().await;
    let deadline = std::time::SystemTime::now() + std::time::Duration::from_secs(30);
    let started = std::time::Instant::now();
    let call = complete_directly(&admin, &user, id, deadline, "300ms");
    let refused = tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .expect("the lock wait ends at the call's lock timeout")
        .expect_err("the row stays locked");
    let waited = started.elapsed();
    assert_eq!(
        refused.code(),
        Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE),
        "{refused}"
    );
    assert!(
        waited >= std::time::Duration::from_millis(300),
        "waited {waited:?} for a lock timeout of 300 ms"
    );
    holding.rollback().await.unwrap();
    let stored = crate::get(&state, &user, &id.to_string()).await.json();
    assert_eq!(stored["completed"], false, "nothing changed");
}

/// A new user and a task of theirs.
async fn users_task(state: &shared::AppState, title: &str) -> (String, uuid::Uuid) {
    let user = user_id();
    let id = id_of(&create_titled(state, &user, title).await)
        .parse()
        .unwrap();
    (user, id)
}

/// Sets the task's flag through its statement's function, called directly with the context
/// a request would give it (the deadline and the lock timeout as given), switching to
/// `todo_app` (the test logs in as the superuser).
async fn complete_directly(
    client: &tokio_postgres::Client,
    user: &str,
    id: uuid::Uuid,
    deadline: std::time::SystemTime,
    lock_timeout: &str,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let procedure = shared::procedures::all()
        .find(|procedure| procedure.sql == shared::repo::COMPLETE)
        .unwrap();
    client
        .query_typed(
            &procedure.call,
            &[
                (&id, Type::UUID),
                (&user, Type::TEXT),
                (&Some(true), Type::BOOL),
                (&user, Type::TEXT),
                (&deadline, Type::TIMESTAMPTZ),
                (&lock_timeout, Type::TEXT),
                (&procedure.call_name(true), Type::TEXT),
            ],
        )
        .await
}

/// Installs the functions of statements the API does not have (see
/// `assert_alice_cannot_reach_bobs`).
async fn install_statements_of_other_code() {
    let admin = db().await;
    for (sql, types) in [
        ("SELECT id FROM tasks WHERE user_id = $1", &[Type::TEXT][..]),
        ("SELECT id FROM tasks", &[]),
        (
            "UPDATE tasks SET title = 'pwned' WHERE user_id = $1 RETURNING id",
            &[Type::TEXT],
        ),
        ("DELETE FROM tasks RETURNING id", &[]),
        (
            "INSERT INTO tasks (id, user_id, title) VALUES (gen_random_uuid(), $1, 'forged')",
            &[Type::TEXT],
        ),
    ] {
        let procedure = shared::procedures::for_statement(sql, types);
        migrations::install(&admin, &procedure).await.unwrap();
    }
}
