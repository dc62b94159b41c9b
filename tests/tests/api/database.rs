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

/// A server that refuses the connection with an error of its own is unavailable too, whatever
/// the code (Neon's proxy answers XX000 when it cannot wake the compute; here, Postgres
/// answers 3D000 for a database it does not have): 503, never a 500.
#[tokio::test]
async fn a_connection_refused_with_an_error_is_503() {
    let url = tests::with_database(database_url(), "no_such_database");
    let state = state_with(env(&[("DATABASE_URL", url.as_str())]));
    let user = user_id();
    for event in [
        ApiEvent::get(&tasks_path(&user)).as_user(&user),
        ApiEvent::get("/health"),
    ] {
        let response = event.send(&state).await;
        response.assert_status(503);
        assert_eq!(response.header("retry-after"), Some("2"));
        assert!(
            !response.text().contains("no_such_database"),
            "{}",
            response.text()
        );
    }
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

/// A server that takes no writes (a hot standby while it is promoted, a read replica's URL,
/// or `default_transaction_read_only` left on by a role, a database or another client of a
/// pooler) refuses every write with 25006 before it changes anything: 503 with Retry-After
/// and nothing written, never a 500, while reads go on being served.
#[tokio::test(flavor = "current_thread")]
async fn a_server_that_takes_no_writes_is_503_for_writes() {
    let url = tests::new_database("read_only").await;
    tests::migrate_with(&url, None);
    let user = user_id();
    let writable = state_with(env(&[("DATABASE_URL", url.as_str())]));
    let task = crate::create_titled(&writable, &user, "before").await;
    let id = crate::id_of(&task);
    let admin = shared::db::connect_once(&url, None, Duration::from_secs(10))
        .await
        .unwrap();
    let name = url.rsplit_once('/').unwrap().1.split('?').next().unwrap();
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET default_transaction_read_only = on"
        ))
        .await
        .unwrap();
    // New connections start read-only.
    let state = state_with(env(&[("DATABASE_URL", url.as_str())]));
    let task_path = crate::task_path(&user, &id);
    for event in [
        ApiEvent::post(&tasks_path(&user))
            .as_user(&user)
            .json(&json!({"title": "refused"})),
        ApiEvent::post(&tasks_path(&user))
            .as_user(&user)
            .header("idempotency-key", "read-only")
            .json(&json!({"title": "refused"})),
        ApiEvent::put(&task_path)
            .as_user(&user)
            .json(&json!({"title": "refused"})),
        ApiEvent::patch(&format!("{task_path}/complete")).as_user(&user),
        ApiEvent::delete(&task_path).as_user(&user),
    ] {
        let logs = crate::idle::Logs::default();
        let response = {
            let _capture = logs.capture();
            event.send(&state).await
        };
        response.assert_status(503);
        assert_eq!(response.header("retry-after"), Some("2"));
        assert!(response.json()["detail"].is_string(), "{}", response.text());
        // Its one log line says why, as a 503 that lasts is a misconfiguration.
        let lines = logs.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let database = lines[0]["database"].as_str().unwrap_or_default();
        assert!(database.contains("takes no writes"), "{lines:?}");
    }
    crate::get(&state, &user, &id).await.assert_status(200);
    let rows: Vec<(String, bool)> = admin
        .query("SELECT title::text, completed FROM tasks", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(rows, [("before".to_owned(), false)]);
}

/// Two `migrate` runs at once on an empty database (two deploys, or a deploy and a
/// developer): every migration is applied exactly once, by one of them, and a third run
/// finds nothing to do.
#[tokio::test]
async fn migrations_are_idempotent_and_safe_concurrently() {
    let url = tests::new_database("concurrent").await;
    let connect = || shared::db::connect_once(&url, None, Duration::from_secs(10));
    let mut first = connect().await.unwrap();
    let mut second = connect().await.unwrap();
    let (a, b) = tokio::join!(
        migrations::apply(&mut first),
        migrations::apply(&mut second)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    let mut applied = [a.clone(), b.clone()].concat();
    applied.sort();
    let unique = applied.len();
    applied.dedup();
    assert_eq!(unique, applied.len(), "applied twice: {a:?} and {b:?}");
    assert!(!applied.is_empty(), "nothing to apply on an empty database");
    let recorded: i64 = first
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded as usize, applied.len());
    assert_eq!(
        migrations::apply(&mut first).await.unwrap(),
        Vec::<String>::new()
    );
    drop((first, second));
    tests::drop_database(&url).await;
}

/// Functions of different statements that return sets of the same, new columns share one
/// row type:
/// installed at the same moment from several sessions, the type is created once and no
/// install fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn statement_functions_installed_at_once_share_their_new_row_type() {
    use shared::procedures::{Guards, Procedure, Returns, RowType};
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
            let procedure = Procedure::returning(
                &format!("SELECT $1::text || '{n}' AS {column}"),
                &[Type::TEXT],
                Guards::READ,
                Returns::Rows,
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

/// The length rules hold in the database itself, for whoever writes there, as the columns'
/// domains (migration V4). Not as table checks: Postgres parses those anew from their text
/// at every INSERT and UPDATE, about 97,000 instructions of a toggle's 220,000.
#[tokio::test]
async fn the_database_holds_the_length_rules_without_table_checks() {
    use tokio_postgres::error::SqlState;

    database_url();
    let client = db().await;
    let checks: Vec<String> = client
        .query(
            "SELECT conrelid::regclass::text || '.' || conname FROM pg_constraint \
             WHERE contype = 'c' AND conrelid IN ('tasks'::regclass, 'idempotency_keys'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        checks,
        Vec::<String>::new(),
        "table checks, parsed at every write"
    );

    let insert = "INSERT INTO tasks (id, user_id, title, description) \
                  VALUES (gen_random_uuid(), $1::text, $2::text, $3::text) RETURNING id";
    let owner = user_id();
    let at_most = client
        .query_one(insert, &[&owner, &"é".repeat(255), &"d".repeat(1000)])
        .await
        .expect("the longest title and description");
    let id: uuid::Uuid = at_most.get(0);
    let long_owner = "u".repeat(256);
    let refused: [(&str, &str, Option<String>); 5] = [
        ("an empty title", "", None),
        ("a title of 256 characters", &"t".repeat(256), None),
        ("a description of 1,001", "t", Some("d".repeat(1001))),
        ("an empty owner", "t", None),
        ("an owner of 256", "t", None),
    ];
    for (case, title, description) in refused {
        let user = match case {
            "an empty owner" => "",
            "an owner of 256" => long_owner.as_str(),
            _ => owner.as_str(),
        };
        let err = client
            .query_one(insert, &[&user, &title, &description])
            .await
            .expect_err(case);
        assert_eq!(
            err.code(),
            Some(&SqlState::CHECK_VIOLATION),
            "{case}: {err}"
        );
    }
    let err = client
        .execute("UPDATE tasks SET title = '' WHERE id = $1", &[&id])
        .await
        .expect_err("an update to an empty title");
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err}");
    for key in [String::new(), "k".repeat(256)] {
        let err = client
            .execute(
                "INSERT INTO idempotency_keys (user_id, key, request_hash, task_id) \
                 VALUES ($1, $2::text, '\\x00', gen_random_uuid())",
                &[&owner, &key],
            )
            .await
            .expect_err("a key of 0 or 256 characters");
        assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION), "{err}");
    }
}

/// The get of the release before migration V4, exactly as template 5 created it: its row
/// type says text where V4 makes the columns domains.
const GET_BEFORE_THE_LENGTH_DOMAINS: &str = r#"
CREATE TYPE todo_api.r_b29b3e00627a69ce3f55 AS ("id" uuid, "user_id" text, "title" text, "description" text, "completed" boolean, "created_at" timestamp with time zone, "updated_at" timestamp with time zone, "version" bigint);
CREATE FUNCTION todo_api.q_eea97f31934d060f0654(p1 uuid, p2 text, ctx_user text, ctx_deadline_ms bigint, ctx_lock_budget_ms bigint, ctx_switch_role boolean)
RETURNS SETOF todo_api.r_b29b3e00627a69ce3f55
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
AS $procedure$
#variable_conflict use_column
DECLARE
    ctx_set text;
BEGIN
    IF ctx_switch_role THEN
        ctx_set := set_config('role', 'todo_app', true);
    END IF;
    ctx_set := set_config('app.user_id', ctx_user, true);
    RETURN QUERY SELECT id, user_id, title, description, completed, created_at, updated_at, version FROM tasks WHERE id = $1 AND user_id = $2;
END
$procedure$;
"#;

/// Migration V4 changes the text columns to the length domains while the release before it
/// may still be serving (or be rolled back to, without its `migrate`). Its functions keep
/// answering, on its connections from before the migration and on new ones.
#[tokio::test]
async fn the_release_before_the_length_domains_keeps_working_after_them() {
    let url = tests::new_database("domains").await;
    let connect = || shared::db::connect_once(&url, None, Duration::from_secs(10));
    let mut migrator = connect().await.unwrap();
    migrations::apply_up_to(&mut migrator, 3).await.unwrap();
    migrator
        .batch_execute(GET_BEFORE_THE_LENGTH_DOMAINS)
        .await
        .unwrap();
    let (id, owner) = (uuid::Uuid::new_v4(), user_id());
    migrator
        .execute(
            "INSERT INTO tasks (id, user_id, title) VALUES ($1, $2, 'before V4')",
            &[&id, &owner],
        )
        .await
        .unwrap();
    let get =
        "SELECT title FROM todo_api.q_eea97f31934d060f0654($1, $2, $2, 99999999999999, 5000, true)";
    let earlier = connect().await.unwrap();
    let title = |rows: Vec<tokio_postgres::Row>| -> Vec<String> {
        rows.iter().map(|row| row.get(0)).collect()
    };
    let before = earlier.query(get, &[&id, &owner]).await.unwrap();
    assert_eq!(title(before), ["before V4"]);

    let applied = migrations::apply(&mut migrator).await.unwrap();
    assert!(
        applied.iter().any(|name| name.contains("V4")),
        "{applied:?}"
    );
    // The type change dropped the owner column's statistics; V4 gathers them again.
    let analyzed: i64 = migrator
        .query_one(
            "SELECT count(*) FROM pg_stats WHERE tablename = 'tasks' AND attname = 'user_id'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(analyzed, 1, "no statistics on tasks.user_id after V4");
    for (client, which) in [
        (&earlier, "its connection from before"),
        (&connect().await.unwrap(), "a new connection"),
    ] {
        let after = client
            .query(get, &[&id, &owner])
            .await
            .unwrap_or_else(|err| panic!("the earlier release's get on {which}: {err}"));
        assert_eq!(title(after), ["before V4"], "{which}");
    }
    drop((migrator, earlier));
    tests::drop_database(&url).await;
}

/// A migration that needs a table a transaction is using gives up after
/// `migrations::LOCK_TIMEOUT_MS`, applies nothing, and says why; once the table is free,
/// the next run applies it. Without the timeout it would wait for as long as that
/// transaction lasts, every request to the table queued behind it.
#[tokio::test]
async fn a_migration_waits_a_bounded_time_for_a_table_in_use() {
    let url = tests::new_database("lockwait").await;
    let connect = || shared::db::connect_once(&url, None, Duration::from_secs(10));
    let mut migrator = connect().await.unwrap();
    migrations::apply_up_to(&mut migrator, 3).await.unwrap();
    // A request's transaction that has read the table and is still open.
    let mut user = connect().await.unwrap();
    let open = user.transaction().await.unwrap();
    open.batch_execute("SELECT count(*) FROM tasks")
        .await
        .unwrap();

    let started = std::time::Instant::now();
    let failed = tokio::time::timeout(Duration::from_secs(30), migrations::apply(&mut migrator))
        .await
        .expect("the migration waited for the table as long as it was in use")
        .expect_err("the migration could not have had the table");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(migrations::LOCK_TIMEOUT_MS.into())
            && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    let message = format!("{failed:#}");
    assert!(message.contains("run migrate again"), "{message}");
    assert_eq!(
        latest_version(&migrator).await,
        3,
        "nothing of V4 was applied"
    );

    open.rollback().await.unwrap();
    let applied = migrations::apply(&mut migrator).await.unwrap();
    assert!(!applied.is_empty(), "{applied:?}");
    assert!(latest_version(&migrator).await >= 4);
    drop((migrator, user));
    tests::drop_database(&url).await;
}

async fn latest_version(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT max(version) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0)
}

/// An operator someone else planted for the columns' domains, in a schema on the search
/// path (`public`, where every role could create before PostgreSQL 15), is never what the
/// statements call. Taking a domain exactly, it would otherwise win over the built-in
/// `text` one, and run inside every request, as the request's role, which can reset to the
/// login role.
#[tokio::test]
async fn operators_planted_for_the_domains_are_never_called() {
    let (url, admin) = migrated_database("hijack").await;
    let intruder = format!("intruder_{}", user_id());
    let mut plant = format!(
        "CREATE ROLE {intruder}; GRANT CREATE ON SCHEMA public TO {intruder}; SET ROLE {intruder};"
    );
    for (op, left) in [
        ("=", "task_owner"),
        ("~~*", "task_title"),
        ("~~*", "task_description"),
        ("=", "idempotency_key"),
    ] {
        let function = format!("planted_{}_{left}", if op == "=" { "eq" } else { "ilike" });
        plant += &format!(
            "CREATE FUNCTION public.{function}({left}, text) RETURNS boolean LANGUAGE plpgsql \
             AS $f$ BEGIN RAISE EXCEPTION 'a planted operator ran'; END $f$; \
             CREATE OPERATOR public.{op} (LEFTARG = {left}, RIGHTARG = text, FUNCTION = public.{function});"
        );
    }
    plant += "RESET ROLE;";
    admin.batch_execute(&plant).await.unwrap();

    let state = state_with(env(&[("DATABASE_URL", url.as_str())]));
    let user = user_id();
    // An expired key of the same user, which the keyed create's purge then compares.
    admin
        .batch_execute(&format!(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, task_id, created_at) \
             VALUES ('{user}', 'expired-key', '\\x00', gen_random_uuid(), now() - interval '25 hours')"
        ))
        .await
        .unwrap();
    let created = ApiEvent::post(&tasks_path(&user))
        .as_user(&user)
        .header("idempotency-key", "planted-key")
        .json(&json!({"title": "plain", "description": "only-here"}))
        .send(&state)
        .await;
    created.assert_status(201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let task = format!("{}/{id}", tasks_path(&user));
    // A word of the description only: the title's match does not stop the search there.
    let found = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .query("search=only-here")
        .send(&state)
        .await;
    found.assert_status(200);
    assert_eq!(found.titles(), ["plain"]);
    let expired: i64 = admin
        .query_one(
            "SELECT count(*) FROM idempotency_keys WHERE key = 'expired-key'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        expired, 0,
        "the purge compared, and removed, the expired key"
    );
    ApiEvent::get(&task)
        .as_user(&user)
        .send(&state)
        .await
        .assert_status(200);
    ApiEvent::put(&task)
        .as_user(&user)
        .header("if-match", "\"1\"")
        .json(&json!({"title": "still plain"}))
        .send(&state)
        .await
        .assert_status(200);
    ApiEvent::patch(&format!("{task}/complete"))
        .as_user(&user)
        .send(&state)
        .await
        .assert_status(200);
    ApiEvent::delete(&task)
        .as_user(&user)
        .send(&state)
        .await
        .assert_status(204);
    drop((state, admin));
    tests::drop_database(&url).await;
    db().await
        .batch_execute(&format!("DROP ROLE {intruder}"))
        .await
        .unwrap();
}

/// A new database with this release's migrations and functions, and a client on it.
async fn migrated_database(prefix: &str) -> (String, tokio_postgres::Client) {
    let url = tests::new_database(prefix).await;
    tests::migrate_with(&url, None);
    let client = shared::db::connect_once(&url, None, Duration::from_secs(10))
        .await
        .unwrap();
    (url, client)
}

/// Drops every statement function, as if no `migrate` of this release had run.
pub const DROP_STATEMENT_FUNCTIONS: &str = "DO $drop$ DECLARE f regprocedure; BEGIN \
     FOR f IN SELECT p.oid::regprocedure FROM pg_proc p \
     JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'todo_api' \
     LOOP EXECUTE 'DROP FUNCTION ' || f; END LOOP; END $drop$";

/// A rollback runs the earlier release's `migrate` to install its functions again, on a
/// database a later release migrated further: it applies nothing, installs its functions,
/// and does not refuse the migration it does not know.
#[tokio::test]
async fn migrate_of_an_earlier_release_accepts_a_database_migrated_further() {
    let (url, mut client) = migrated_database("further").await;
    client
        .batch_execute(&format!(
            "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
                 VALUES (9999, 'a_later_release', now()::text, '0'); {DROP_STATEMENT_FUNCTIONS}"
        ))
        .await
        .unwrap();
    assert_eq!(
        migrations::apply(&mut client).await.unwrap(),
        Vec::<String>::new()
    );
    let functions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'todo_api'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(functions > 0, "its functions are installed again");
    // A history whose V4 is not this release's (another file under the same version):
    // refused, as refinery refuses it.
    client
        .batch_execute("UPDATE refinery_schema_history SET checksum = '1' WHERE version = 4")
        .await
        .unwrap();
    let refused = migrations::apply(&mut client).await.unwrap_err();
    assert!(format!("{refused:#}").contains("diverged"), "{refused:#}");
    drop(client);
    tests::drop_database(&url).await;
}

/// A `migrate` with nothing to do changes no catalog row that would make every session
/// plan its statements anew (a GRANT that changes nothing still rewrites the schema's row).
#[tokio::test]
async fn migrate_with_nothing_to_do_leaves_the_schema_row_alone() {
    let (url, mut client) = migrated_database("idle_migrate").await;
    let row = "SELECT xmin::text FROM pg_namespace WHERE nspname = 'todo_api'";
    let before: String = client.query_one(row, &[]).await.unwrap().get(0);
    migrations::apply(&mut client).await.unwrap();
    let after: String = client.query_one(row, &[]).await.unwrap().get(0);
    assert_eq!(before, after);
    drop(client);
    tests::drop_database(&url).await;
}

/// A release deployed without its `migrate`: its requests answer 500, and each one's single
/// log line says why (not a second line of its own).
#[tokio::test(flavor = "current_thread")]
async fn a_missing_statement_function_is_a_500_whose_one_log_line_says_to_migrate() {
    let (url, client) = migrated_database("unmigrated").await;
    client
        .batch_execute(DROP_STATEMENT_FUNCTIONS)
        .await
        .unwrap();
    let state = state_with(env(&[("DATABASE_URL", url.as_str())]));
    let user = user_id();
    let logs = crate::idle::Logs::default();
    let response = {
        let _capture = logs.capture();
        ApiEvent::get(&tasks_path(&user))
            .as_user(&user)
            .send(&state)
            .await
    };
    response.assert_status(500);
    let lines = logs.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let database = lines[0]["database"].as_str().unwrap_or_default();
    assert!(database.contains("run `migrate`"), "{lines:?}");
    drop((state, client));
    tests::drop_database(&url).await;
}
