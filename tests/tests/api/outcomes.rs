//! A write's answer is its outcome: a write whose commit answer was lost is reported as
//! unknown (504), never as "not done"; creates settle it by repeating; a guarded write
//! that races a delete is a 404.

use std::time::Duration;

use serde_json::json;
use tests::cluster::{Cluster, Options};
use tests::pgbouncer::{PgBouncer, PoolerOptions};
use tests::proxy::{CommitCutter, Forgetter};
use tests::{database_url, env, state, state_with, task_count, user_id, ApiEvent};

use crate::{create_titled, every_operation, id_of, task_path, tasks_path};

/// A state whose database connections go through a proxy that can lose commit answers.
pub async fn cutting_state() -> (CommitCutter, shared::AppState) {
    let (_, upstream) = tests::through_port(database_url(), 0);
    let cutter = CommitCutter::start(upstream).await;
    let (url, _) = tests::through_port(database_url(), cutter.port);
    let state = state_with(env(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_POOL_SIZE", "2"),
    ]));
    (cutter, state)
}

/// The task's title as stored, read on a direct connection of the test's own.
async fn stored_title(admin: &tokio_postgres::Client, id: &str) -> String {
    admin
        .query_one(
            "SELECT title FROM tasks WHERE id = $1",
            &[&id.parse::<uuid::Uuid>().unwrap()],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_write_whose_commit_answer_was_lost_is_a_504_and_it_did_happen() {
    let (cutter, cut_state) = cutting_state().await;
    let user = user_id();
    let id = id_of(&create_titled(&state(), &user, "before").await);
    cutter.cut_next(1);
    let response = ApiEvent::put(&task_path(&user, &id))
        .as_user(&user)
        .json(&json!({"title": "after"}))
        .send(&cut_state)
        .await;
    response.assert_status(504);
    assert_eq!(cutter.cuts_left(), 0);
    assert!(response.text().contains("may or may not"));
    assert!(response.header("x-request-id").is_some());
    // It was applied: a 503 here would have been a lie.
    let stored = crate::get(&state(), &user, &id).await.json();
    assert_eq!(stored["title"], "after");
}

/// Behind PgBouncer, a commit's lost answer reaches the client as the pooler's own error
/// for the server connection it lost ("server conn crashed?", FATAL 08P01), before any
/// CommandComplete, where a direct connection just closes: still unknown, a 504, never a
/// 503, since the write did happen.
#[tokio::test]
async fn behind_pgbouncer_a_write_whose_commit_answer_was_lost_is_a_504_and_it_did_happen() {
    let cluster = Cluster::start();
    tests::migrate_with(&cluster.url(), None);
    let cutter = CommitCutter::start(format!("127.0.0.1:{}", cluster.port)).await;
    let pooler = PgBouncer::start(
        &cluster,
        PoolerOptions {
            server_port: Some(cutter.port),
            pool_size: 1,
            ..PoolerOptions::default()
        },
    );
    let url = pooler.url();
    let state = state_with(env(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_POOL_SIZE", "1"),
        ("DB_PREPARED_STATEMENTS", "false"),
    ]));
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "before").await);
    cutter.cut_next(1);
    let response = ApiEvent::put(&task_path(&user, &id))
        .as_user(&user)
        .json(&json!({"title": "after"}))
        .send(&state)
        .await;
    assert_eq!(cutter.cuts_left(), 0);
    assert!(
        pooler.log().contains("server conn crashed?"),
        "{}",
        pooler.log()
    );
    response.assert_status(504);
    assert!(response.text().contains("may or may not"));
    let stored = crate::get(&state, &user, &id).await.json();
    assert_eq!(stored["title"], "after");
}

/// Behind PgBouncer, a call that waits for a server connection which Postgres then refuses
/// at its login (here `pg_hba.conf`; on Neon also "too many connections" on a small
/// compute, or a rotated password) is refused with the server's own error, which PgBouncer
/// relays to every waiting client without the routine Postgres reports. The call never
/// reached a server: nothing was written, so a 503, not "may or may not" (504). Through a
/// PgBouncer ≥ 1.21 as Neon runs (Debian's 1.18 keeps such a client waiting instead: it
/// gets the 504 of a call still unanswered after its cancel), in both statement modes: a
/// statement not yet prepared on the connection is prepared in the same flight, and the
/// refusal then answers the preparation, the call only the closed connection.
#[tokio::test]
async fn behind_pgbouncer_a_write_refused_at_the_servers_login_is_a_503_and_did_not_happen() {
    for prepared in [true, false] {
        let cluster = Cluster::start();
        tests::migrate_with(&cluster.url(), None);
        let pooler = PgBouncer::start(
            &cluster,
            PoolerOptions {
                pool_size: 1,
                prepared_statements: true,
                ..PoolerOptions::default()
            },
        );
        let url = pooler.url();
        let state = state_with(env(&[
            ("DATABASE_URL", url.as_str()),
            ("DB_POOL_SIZE", "1"),
            (
                "DB_PREPARED_STATEMENTS",
                if prepared { "true" } else { "false" },
            ),
        ]));
        let user = user_id();
        let id = id_of(&create_titled(&state, &user, "before").await);

        // Opened before the refusal, which ends no session that has logged in.
        let (admin, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        std::fs::write(
            cluster.dir.join("data/pg_hba.conf"),
            "local all all trust\nhost all all 0.0.0.0/0 reject\nhost all all ::/0 reject\n",
        )
        .unwrap();
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
        // The pooler's server connection goes; it has to log in again for the next call.
        admin
            .batch_execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // An instance's first request: its flight also asks for the login role's kind, and
        // whichever of the three requests went first gets the refusal.
        let fresh = state_with(env(&[
            ("DATABASE_URL", url.as_str()),
            ("DB_POOL_SIZE", "1"),
            (
                "DB_PREPARED_STATEMENTS",
                if prepared { "true" } else { "false" },
            ),
        ]));
        let response = ApiEvent::put(&task_path(&user, &id))
            .as_user(&user)
            .json(&json!({"title": "from a fresh instance"}))
            .send(&fresh)
            .await;
        response.assert_status(503);

        let response = ApiEvent::put(&task_path(&user, &id))
            .as_user(&user)
            .json(&json!({"title": "after"}))
            .send(&state)
            .await;
        assert!(
            pooler.log().contains("pg_hba.conf rejects connection"),
            "{}",
            pooler.log()
        );
        response.assert_status(503);
        assert!(response.header("retry-after").is_some());
        let title = stored_title(&admin, &id).await;
        assert_eq!(title, "before", "prepared statements: {prepared}");
    }
}

/// A write whose commit waits past its deadline for a synchronous standby (Neon's computes
/// wait so for their safekeepers) is cancelled; Postgres then ends the wait with a warning
/// that the commit is local and may not be replicated, and answers success. So a write
/// answered only after its cancel is a 504, never a 2xx; and its connection, which the
/// cancel could still reach, is not used again.
#[tokio::test]
async fn a_write_answered_only_after_its_cancel_is_a_504() {
    let (cluster, admin) = durable_cluster().await;
    let url = cluster.url();
    let state = state_with(env(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_POOL_SIZE", "1"),
        ("DB_STATEMENT_TIMEOUT_MS", "1000"),
    ]));
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "before").await);
    wait_for_a_standby(&admin, true).await;
    let started = std::time::Instant::now();
    let response = ApiEvent::put(&task_path(&user, &id))
        .as_user(&user)
        .json(&json!({"title": "after"}))
        .send(&state)
        .await;
    let took = started.elapsed();
    wait_for_a_standby(&admin, false).await;
    response.assert_status(504);
    assert!(took < Duration::from_secs(4), "answered after {took:?}");
    committed_locally(&admin, &state, &user, &id).await;
}

/// The same wait ended by a cancel this code did not send (`pg_cancel_backend`, a
/// console's "cancel query"): Postgres answers success with the same warning, which is then
/// the only sign. The connection is closed on that warning, so the write's answer is a 504
/// (it was a 200), and the instance goes on with a fresh connection. A database whose
/// default `client_min_messages` is `error` (a common way to quiet migrations), or such a
/// session setting another client of a pooler left, would hold the warning back: a write
/// lowers it to `warning` for its own transaction.
#[tokio::test]
async fn a_write_whose_commit_wait_someone_else_cancelled_is_a_504() {
    let (cluster, admin) = durable_cluster().await;
    let url = cluster.url();
    for quiet in [false, true] {
        if quiet {
            admin
                .batch_execute("ALTER DATABASE postgres SET client_min_messages = error")
                .await
                .unwrap();
        }
        let state = state_with(env(&[
            ("DATABASE_URL", url.as_str()),
            ("DB_POOL_SIZE", "1"),
            ("DB_STATEMENT_TIMEOUT_MS", "5000"),
        ]));
        let user = user_id();
        let id = id_of(&create_titled(&state, &user, "before").await);
        wait_for_a_standby(&admin, true).await;
        let path = task_path(&user, &id);
        let event = ApiEvent::put(&path)
            .as_user(&user)
            .json(&json!({"title": "after"}));
        let put = event.send(&state);
        // Cancel the API's backend once its commit waits for the standby (bounded: 3 s).
        let cancel = async {
            for _ in 0..60 {
                let rows = admin
                    .query(
                        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity \
                         WHERE application_name = 'todo-api' AND wait_event = 'SyncRep'",
                        &[],
                    )
                    .await
                    .unwrap();
                if !rows.is_empty() {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            false
        };
        let (response, cancelled) = tokio::join!(put, cancel);
        wait_for_a_standby(&admin, false).await;
        assert!(
            cancelled,
            "the write never waited for the standby (quiet: {quiet})"
        );
        assert_eq!(response.status, 504, "quiet: {quiet}: {}", response.text());
        committed_locally(&admin, &state, &user, &id).await;
    }
}

/// A migrated cluster of the test's own with `synchronous_commit` on (without it no commit
/// waits for a standby), and a superuser connection to it.
async fn durable_cluster() -> (Cluster, tokio_postgres::Client) {
    let cluster = Cluster::start_with(Options {
        durable: true,
        ..Options::default()
    });
    tests::migrate_with(&cluster.url(), None);
    let (admin, connection) = tokio_postgres::connect(&cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    (cluster, admin)
}

/// From now on, every commit waits for a standby that never comes (`on`), or none does.
async fn wait_for_a_standby(admin: &tokio_postgres::Client, on: bool) {
    admin
        .batch_execute(if on {
            "ALTER SYSTEM SET synchronous_standby_names = 'nobody'"
        } else {
            "ALTER SYSTEM RESET synchronous_standby_names"
        })
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    if on {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The write answered 504 was committed locally all the same (so the answer could not have
/// been "not done" either), and the instance goes on serving.
async fn committed_locally(
    admin: &tokio_postgres::Client,
    state: &shared::AppState,
    user: &str,
    id: &str,
) {
    assert_eq!(stored_title(admin, id).await, "after");
    tokio::time::sleep(Duration::from_millis(300)).await;
    crate::get(state, user, id).await.assert_status(200);
}

#[tokio::test]
async fn a_create_whose_commit_answer_was_lost_is_repeated_and_created_once() {
    let (cutter, cut_state) = cutting_state().await;
    let user = user_id();
    for key in [None, Some("retry-key")] {
        cutter.cut_next(1);
        let mut event = ApiEvent::post(&tasks_path(&user))
            .as_user(&user)
            .json(&json!({"title": "once"}));
        if let Some(key) = key {
            event = event.header("idempotency-key", key);
        }
        let response = event.send(&cut_state).await;
        assert_eq!(cutter.cuts_left(), 0, "the first attempt's answer was lost");
        // The repeat finds the first attempt's row (same id, same key): created, once.
        response.assert_status(201);
        assert!(response.header("idempotent-replayed").is_none());
    }
    assert_eq!(task_count(&user).await, 2);
}

/// Holds `DELETE` of the task in an open transaction, starts `event`, then commits the
/// delete while the event's statement waits for the row.
async fn race_with_delete(id: &str, event: ApiEvent) -> tests::ApiResponse {
    let mut admin = tests::db().await;
    let tx = admin.transaction().await.unwrap();
    let task_id: uuid::Uuid = id.parse().unwrap();
    tx.execute("DELETE FROM tasks WHERE id = $1", &[&task_id])
        .await
        .unwrap();
    let state = state();
    let racer = tokio::spawn(async move { event.send(&state).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!racer.is_finished(), "the write waits for the row lock");
    tx.commit().await.unwrap();
    racer.await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_write_racing_a_delete_is_a_404_not_a_412() {
    let user = user_id();
    for method in ["PUT", "PATCH", "DELETE"] {
        let task = create_titled(&state(), &user, "doomed").await;
        let id = id_of(&task);
        let path = match method {
            "PATCH" => format!("{}/complete", task_path(&user, &id)),
            _ => task_path(&user, &id),
        };
        let mut event = ApiEvent::new(method, &path)
            .as_user(&user)
            .header("if-match", "\"1\"");
        if method == "PUT" {
            event = event.json(&json!({"title": "too late"}));
        }
        race_with_delete(&id, event).await.assert_status(404);
    }
    assert_eq!(task_count(&user).await, 0);
}

/// A private database (the trigger below must not reach other tests) whose updates of
/// `idempotency_keys` after the first `after` do `then` (PL/pgSQL), a state that reaches
/// it through a [`Forgetter`] with a statement timeout of `timeout_ms`, and an admin
/// client. The key `(user, key)` is there, expired (24 hours and more: taken over by the
/// next create with it), and locked by a transaction of its own until [`KeyedRace::release`].
struct KeyedRace {
    url: String,
    forgetter: Forgetter,
    state: std::sync::Arc<shared::AppState>,
    admin: tokio_postgres::Client,
    holder: Option<tokio::sync::oneshot::Sender<()>>,
    held: Option<tokio::task::JoinHandle<()>>,
}

impl KeyedRace {
    async fn start(user: &str, key: &str, after: i64, then: &str, timeout_ms: &str) -> Self {
        let url = tests::new_database("keyed_race").await;
        tests::migrate_with(&url, None);
        let connect = || shared::db::connect_once(&url, None, Duration::from_secs(10));
        let admin = connect().await.unwrap();
        admin
            .batch_execute(&format!(
                "CREATE SEQUENCE key_updates; \
                 CREATE FUNCTION key_update() RETURNS trigger LANGUAGE plpgsql \
                 SECURITY DEFINER SET search_path = public AS $f$ BEGIN \
                 IF nextval('key_updates') > {after} THEN {then} END IF; RETURN NEW; END $f$; \
                 CREATE TRIGGER key_update BEFORE UPDATE ON idempotency_keys \
                 FOR EACH ROW EXECUTE FUNCTION key_update()"
            ))
            .await
            .unwrap();
        admin
            .execute(
                "INSERT INTO idempotency_keys (user_id, key, request_hash, task_id, created_at) \
                 VALUES ($1::text, $2::text, '\\x00', gen_random_uuid(), \
                 now() - interval '25 hours')",
                &[&user, &key],
            )
            .await
            .unwrap();
        let mut holder_client = connect().await.unwrap();
        let (locked_tx, locked) = tokio::sync::oneshot::channel();
        let (holder, release) = tokio::sync::oneshot::channel::<()>();
        let (user, key) = (user.to_owned(), key.to_owned());
        let held = tokio::spawn(async move {
            let tx = holder_client.transaction().await.unwrap();
            tx.execute(
                "SELECT FROM idempotency_keys WHERE user_id::text = $1 AND key::text = $2 \
                 FOR UPDATE",
                &[&user, &key],
            )
            .await
            .unwrap();
            locked_tx.send(()).unwrap();
            let _ = release.await;
            tx.commit().await.unwrap();
        });
        locked.await.unwrap();
        let (_, upstream) = tests::through_port(&url, 0);
        let forgetter = Forgetter::start(upstream).await;
        let (through, _) = tests::through_port(&url, forgetter.port);
        let state = std::sync::Arc::new(state_with(env(&[
            ("DATABASE_URL", through.as_str()),
            ("DB_POOL_SIZE", "3"),
            ("DB_STATEMENT_TIMEOUT_MS", timeout_ms),
        ])));
        KeyedRace {
            url,
            forgetter,
            state,
            admin,
            holder: Some(holder),
            held: Some(held),
        }
    }

    /// Waits (5 s at most) until `n` sessions wait for a lock in the private database.
    async fn lock_waiters(&self, n: i64) {
        for _ in 0..100 {
            let waiting: i64 = self
                .admin
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{n} sessions never waited for a lock");
    }

    fn post(&self, user: &str, key: &str) -> tokio::task::JoinHandle<tests::ApiResponse> {
        let state = self.state.clone();
        let event = ApiEvent::post(&tasks_path(user))
            .as_user(user)
            .header("idempotency-key", key)
            .json(&json!({"title": "once"}));
        tokio::spawn(async move { event.send(&state).await })
    }

    /// Lets the transaction holding the key's lock commit.
    async fn release(&mut self) {
        if let Some(holder) = self.holder.take() {
            holder.send(()).unwrap();
        }
        if let Some(held) = self.held.take() {
            held.await.unwrap();
        }
    }

    /// The ids of `user`'s tasks, as stored.
    async fn task_ids(&self, user: &str) -> Vec<String> {
        self.admin
            .query(
                "SELECT id::text FROM tasks WHERE user_id::text = $1",
                &[&user],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Drops the private database (and with it the connection a hung-up relay kept open).
    async fn finish(mut self) {
        self.release().await;
        drop(self.admin);
        tests::drop_database(&self.url).await;
    }
}

/// A keyed create whose connection is lost while it waits for the key is repeated on a new
/// connection; when the first attempt then commits, the repeat finds the key claimed with
/// this request's id but (its snapshot older than that commit) not the task. The task was
/// created by this request: the answer is a 201 with it, read back, not another create
/// whose refusal would have said "not done" (here the trigger refuses any further update
/// of the key with a lock timeout's code, a 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_create_repeated_after_a_lost_connection_that_finds_its_own_claim_is_a_201() {
    let (user, key) = (user_id(), "lost-then-found");
    // 10 s for every step on a busy machine: no deadline is tested here.
    let refuse = "RAISE EXCEPTION 'no more' USING ERRCODE = '55P03';";
    let mut race = KeyedRace::start(&user, key, 2, refuse, "10000").await;
    let request = race.post(&user, key);
    race.lock_waiters(1).await;
    race.forgetter.hang_up();
    // The repeat waits behind the first attempt, which still runs on the server.
    race.lock_waiters(2).await;
    race.release().await;
    let response = request.await.unwrap();
    response.assert_status(201);
    assert!(response.header("idempotent-replayed").is_none());
    assert_eq!(
        race.task_ids(&user).await,
        [id_of(&response.json())],
        "created once"
    );
    race.finish().await;
}

/// A keyed create that found the key claimed by a concurrent duplicate it cannot see yet
/// runs its statement again, within the request's deadline (4 s here), not a new one:
/// the repeat that never ends (the trigger sleeps) is cancelled at the first deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_create_run_again_keeps_to_the_first_deadline() {
    let (user, key) = (user_id(), "one-deadline");
    let mut race = KeyedRace::start(&user, key, 2, "PERFORM pg_sleep(20);", "4000").await;
    let first = race.post(&user, key);
    race.lock_waiters(1).await;
    let started = std::time::Instant::now();
    let second = race.post(&user, key);
    race.lock_waiters(2).await;
    // 3 s of the 4 s spent waiting: the first takes the key over, the second finds it
    // claimed by the first, whose task its snapshot does not hold, and runs again.
    tokio::time::sleep(Duration::from_millis(3000).saturating_sub(started.elapsed())).await;
    race.release().await;
    first.await.unwrap().assert_status(201);
    let answer = second.await.unwrap();
    let took = started.elapsed();
    assert!(
        answer.status >= 500,
        "the repeat cannot end: {}",
        answer.status
    );
    // 4 s + the 0.5 s margin before the cancel; a deadline of its own would be 3 s later.
    assert!(
        took < Duration::from_millis(5500),
        "answered after {took:?}"
    );
    race.finish().await;
}

/// A 2xx write is durable, whatever commit setting the connection came with: a session
/// `SET synchronous_commit = off` that another client left on a server connection of a
/// pooler in transaction mode, or here a database's default, would have Postgres answer the
/// commit before its WAL is safe. Every write commits with `on` at least (a trigger
/// records the setting each write ran with).
#[tokio::test]
async fn writes_commit_durably_whatever_the_connection_says() {
    let url = tests::new_database("durable").await;
    tests::migrate_with(&url, None);
    let admin = shared::db::connect_once(&url, None, Duration::from_secs(10))
        .await
        .unwrap();
    let name = url.rsplit_once('/').unwrap().1.split('?').next().unwrap();
    admin
        .batch_execute(&format!(
            "CREATE TABLE commit_modes (op text, mode text); \
             CREATE FUNCTION note_commit_mode() RETURNS trigger LANGUAGE plpgsql \
             SECURITY DEFINER SET search_path = public AS $f$ BEGIN \
             INSERT INTO commit_modes VALUES (TG_OP, current_setting('synchronous_commit')); \
             RETURN NULL; END $f$; \
             CREATE TRIGGER note_commit_mode AFTER INSERT OR UPDATE OR DELETE ON tasks \
             FOR EACH ROW EXECUTE FUNCTION note_commit_mode(); \
             ALTER DATABASE {name} SET synchronous_commit = off"
        ))
        .await
        .unwrap();
    let state = state_with(env(&[("DATABASE_URL", url.as_str())]));
    let session: String = shared::db::connect_once(&url, None, Duration::from_secs(10))
        .await
        .unwrap()
        .query_one("SHOW synchronous_commit", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        session, "off",
        "a new session starts with the database's default"
    );

    every_operation(&state, &user_id()).await;

    let modes: Vec<(String, String)> = admin
        .query("SELECT op, mode FROM commit_modes ORDER BY op", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let on = |op: &str| (op.to_owned(), "on".to_owned());
    assert_eq!(
        modes,
        [
            on("DELETE"),
            on("INSERT"),
            on("INSERT"),
            on("UPDATE"),
            on("UPDATE")
        ]
    );
    drop(admin);
    tests::drop_database(&url).await;
}
