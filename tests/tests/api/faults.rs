//! Faults against a real Postgres: the server stopped mid-run, every backend connection
//! terminated between two requests, a lock that makes the database slow, an exhausted
//! pool. Each ends in a success or a 503 with Retry-After within the configured timeouts;
//! nothing hangs, nothing is a 500.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::json;
use shared::routes::{Operation, ROUTES};
use tests::cluster::{Cluster, Options};
use tests::{env, state_with, user_id, ApiEvent, ApiResponse};

use crate::{create_titled, id_of, task_path, tasks_path};

/// A cluster of its own, since these tests stop it and kill its connections.
fn cluster() -> &'static (Cluster, String) {
    static CLUSTER: OnceLock<(Cluster, String)> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let cluster = Cluster::start_with(Options::default());
        let url = cluster.url();
        tests::migrate_with(&url, None);
        (cluster, url)
    })
}

/// A state on the fault cluster whose connections carry `application_name = name`.
fn fault_state(name: &str, extra: &[(&str, &str)]) -> shared::AppState {
    let url = format!("{}&application_name={name}", cluster().1);
    let mut vars = vec![
        ("DATABASE_URL", url.as_str()),
        ("DB_CONNECT_TIMEOUT_MS", "1000"),
        ("DB_POOL_TIMEOUT_MS", "1000"),
        ("DB_STATEMENT_TIMEOUT_MS", "1000"),
    ];
    vars.extend_from_slice(extra);
    state_with(env(&vars))
}

async fn admin() -> tokio_postgres::Client {
    shared::db::connect_once(&cluster().1, None, Duration::from_secs(10))
        .await
        .unwrap()
}

/// One request of every route for `user` and task `id`, the delete last.
fn every_route(user: &str, id: &str) -> Vec<ApiEvent> {
    let mut routes: Vec<_> = ROUTES.iter().collect();
    routes.sort_by_key(|route| route.operation == Operation::DeleteTask);
    routes
        .into_iter()
        .map(|route| {
            let path = route.path.replace("{user_id}", user).replace("{id}", id);
            let mut event = ApiEvent::new(route.method, &path).as_user(user);
            match route.operation {
                Operation::CreateTask => event = event.json(&json!({"title": "again"})),
                Operation::UpdateTask => event = event.json(&json!({"title": "renamed"})),
                _ => {}
            }
            event
        })
        .collect()
}

/// Holds a row lock on the task until the returned transaction ends.
async fn lock_row<'a>(
    admin: &'a mut tokio_postgres::Client,
    id: &str,
) -> tokio_postgres::Transaction<'a> {
    let lock = admin.transaction().await.unwrap();
    let task_id: uuid::Uuid = id.parse().unwrap();
    lock.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", &[&task_id])
        .await
        .unwrap();
    lock
}

#[track_caller]
fn assert_unavailable(response: &ApiResponse, elapsed: Duration, limit: Duration) {
    assert_eq!(response.status, 503, "{}", response.text());
    assert!(response.header("retry-after").is_some());
    assert!(elapsed < limit, "took {elapsed:?}, limit {limit:?}");
}

// The tests below share the fault cluster and change its state, so they run one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "current_thread")]
async fn postgres_stopped_mid_run_gives_503_then_recovers_without_a_restart() {
    let _serial = SERIAL.lock().await;
    let state = fault_state("fault_stop", &[]);
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "survivor").await);
    cluster().0.stop();
    for event in every_route(&user, &id) {
        let started = Instant::now();
        let response = event.send(&state).await;
        assert_unavailable(&response, started.elapsed(), Duration::from_secs(3));
    }
    cluster().0.restart();
    // The same state (the same warm instance) serves again.
    for event in every_route(&user, &id) {
        let response = event.send(&state).await;
        assert!(
            [200, 201, 204].contains(&response.status),
            "{}",
            response.text()
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn terminated_backends_are_replaced_before_the_next_request() {
    let _serial = SERIAL.lock().await;
    let state = fault_state("fault_terminate", &[("DB_POOL_SIZE", "2")]);
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "target").await);
    let admin = admin().await;
    for event in every_route(&user, &id) {
        // Warm: the instance holds a connection, as after a previous request.
        ApiEvent::get(&tasks_path(&user))
            .as_user(&user)
            .send(&state)
            .await
            .assert_status(200);
        let killed: i64 = admin
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = 'fault_terminate') t",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(killed >= 1);
        // Between two requests: the backends are gone before the next one arrives.
        let mut left = i64::MAX;
        for _ in 0..100 {
            left = admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'fault_terminate'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            left, 0,
            "the terminated backends were still there after 2 s"
        );
        let response = event.send(&state).await;
        assert!(
            [200, 201, 204].contains(&response.status),
            "after pg_terminate_backend: {}",
            response.text()
        );
    }
    let count: i64 = admin
        .query_one(
            "SELECT count(*) FROM tasks WHERE user_id = $1 AND title = 'again'",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "the create ran exactly once");
}

#[tokio::test(flavor = "current_thread")]
async fn a_slow_database_is_503_within_the_statement_timeout() {
    let _serial = SERIAL.lock().await;
    let state = fault_state("fault_slow", &[("DB_STATEMENT_TIMEOUT_MS", "500")]);
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "locked").await);
    let mut admin = admin().await;
    let lock = lock_row(&mut admin, &id).await;
    let started = Instant::now();
    let response = ApiEvent::put(&task_path(&user, &id))
        .as_user(&user)
        .json(&json!({"title": "blocked"}))
        .send(&state)
        .await;
    assert_unavailable(&response, started.elapsed(), Duration::from_millis(1500));
    lock.rollback().await.unwrap();
    // The instance is fine afterwards, and the blocked write did not happen.
    let fetched = crate::get(&state, &user, &id).await;
    fetched.assert_status(200);
    assert_eq!(fetched.json()["title"], "locked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_pool_is_503_within_the_pool_timeout() {
    let _serial = SERIAL.lock().await;
    let state = std::sync::Arc::new(fault_state(
        "fault_pool",
        &[
            ("DB_POOL_SIZE", "1"),
            ("DB_POOL_TIMEOUT_MS", "300"),
            ("DB_STATEMENT_TIMEOUT_MS", "3000"),
        ],
    ));
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "held").await);
    let mut admin = admin().await;
    let lock = lock_row(&mut admin, &id).await;
    // The first request holds the only connection, waiting on the lock...
    let holder = tokio::spawn({
        let (state, user, id) = (state.clone(), user.clone(), id.clone());
        async move {
            ApiEvent::put(&task_path(&user, &id))
                .as_user(&user)
                .json(&json!({"title": "waits"}))
                .send(&state)
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // ...so the second cannot get one.
    let started = Instant::now();
    let response = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .send(&state)
        .await;
    assert_unavailable(&response, started.elapsed(), Duration::from_millis(1000));
    lock.rollback().await.unwrap();
    let first = holder.await.unwrap();
    first.assert_status(200);
}
