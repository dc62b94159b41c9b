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
        // Migrations take a session-level lock: they run on the direct connection.
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
