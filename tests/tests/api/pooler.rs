//! The production topology: the functions reach Postgres through PgBouncer in transaction
//! mode (Neon's pooler), with fewer server connections than clients.

use std::sync::OnceLock;

use serde_json::json;
use tests::cluster::Cluster;
use tests::pgbouncer::{PgBouncer, PoolerOptions};
use tests::{env, state_with, user_id, ApiEvent};

use crate::{create_titled, id_of, task_path, tasks_path};

/// A cluster and a pooler of their own, since the fault tests restart both.
pub fn topology() -> &'static (Cluster, PgBouncer) {
    static TOPOLOGY: OnceLock<(Cluster, PgBouncer)> = OnceLock::new();
    TOPOLOGY.get_or_init(|| {
        let cluster = Cluster::start();
        // Migrations also work through the pooler (see below); here they go direct.
        tests::migrate_with(&cluster.url(), None);
        let pooler = PgBouncer::start(&cluster, PoolerOptions::default());
        (cluster, pooler)
    })
}

#[tokio::test(flavor = "current_thread")]
async fn every_operation_works_through_pgbouncer_in_transaction_mode() {
    let url = topology().1.url();
    let state = state_with(env(&[("DATABASE_URL", &url), ("DB_POOL_SIZE", "8")]));
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "pooled").await);
    ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .send(&state)
        .await
        .assert_status(200);
    ApiEvent::put(&task_path(&user, &id))
        .as_user(&user)
        .json(&json!({"title": "renamed"}))
        .send(&state)
        .await
        .assert_status(200);
    ApiEvent::patch(&format!("{}/complete", task_path(&user, &id)))
        .as_user(&user)
        .send(&state)
        .await
        .assert_status(200);
    ApiEvent::post(&tasks_path(&user))
        .as_user(&user)
        .header("idempotency-key", "k1")
        .json(&json!({"title": "keyed"}))
        .send(&state)
        .await
        .assert_status(201);
    ApiEvent::delete(&task_path(&user, &id))
        .as_user(&user)
        .send(&state)
        .await
        .assert_status(204);
    ApiEvent::get("/health")
        .send(&state)
        .await
        .assert_status(200);
}

/// The README used to send users' `DATABASE_URL` (Neon's `-pooler` host) to `migrate`:
/// migrations must be safe through PgBouncer in transaction mode, run from several places
/// at once, and leave no lock behind that would make a later run hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_safe_through_pgbouncer_in_transaction_mode() {
    use std::time::Duration;
    let cluster = Cluster::start();
    let pooler = PgBouncer::start(
        &cluster,
        PoolerOptions {
            pool_size: 2,
            ..PoolerOptions::default()
        },
    );
    let connect = |url: String| async move {
        shared::db::connect_once(&url, None, Duration::from_secs(10))
            .await
            .expect("connect")
    };
    let runs = (0..4).map(|_| {
        let url = pooler.url();
        tokio::spawn(async move {
            let mut client = connect(url).await;
            migrations::apply(&mut client)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    });
    let results = tokio::time::timeout(Duration::from_secs(30), join_all(runs))
        .await
        .unwrap_or_else(|_| panic!("concurrent migrations hung:\n{}", pooler.log()));
    let applied: usize = results
        .into_iter()
        .map(|r| r.expect("task").expect("migration through the pooler"))
        .map(|names| names.len())
        .sum();
    let direct = connect(cluster.url()).await;
    let versions: i64 = direct
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        applied as i64, versions,
        "each migration applied exactly once"
    );
    let locks: i64 = direct
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        locks, 0,
        "no advisory lock is left on a pooled server connection"
    );
    // Later runs, from every pooled server connection, are up to date and do not hang.
    for _ in 0..4 {
        let mut client = connect(pooler.url()).await;
        let again = tokio::time::timeout(Duration::from_secs(10), migrations::apply(&mut client))
            .await
            .expect("a later migration hung")
            .expect("a later migration");
        assert!(again.is_empty());
    }
}

async fn join_all<T>(
    handles: impl Iterator<Item = tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await);
    }
    results
}
