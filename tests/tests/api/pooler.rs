//! The production topology: the functions reach Postgres through PgBouncer in transaction
//! mode (Neon's pooler), with fewer server connections than clients.

use std::sync::OnceLock;

use serde_json::json;
use tests::cluster::{Cluster, Options};
use tests::pgbouncer::{PgBouncer, PoolerOptions};
use tests::{env, state_with, user_id, ApiEvent};

use crate::{create_titled, every_operation, id_of, task_path, tasks_path};

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
    // PgBouncer 1.18 has no protocol-level prepared statements: unnamed statements only.
    let state = state_with(env(&[
        ("DATABASE_URL", &url),
        ("DB_POOL_SIZE", "8"),
        ("DB_PREPARED_STATEMENTS", "false"),
    ]));
    every_operation(&state, &user_id()).await;
}

/// A cluster and a pooler that keeps prepared statements as Neon's does (PgBouncer ≥ 1.21,
/// `max_prepared_statements`), with two server connections for many clients.
pub fn prepared_topology() -> &'static (Cluster, PgBouncer) {
    static TOPOLOGY: OnceLock<(Cluster, PgBouncer)> = OnceLock::new();
    TOPOLOGY.get_or_init(|| {
        let cluster = Cluster::start();
        tests::migrate_with(&cluster.url(), None);
        let pooler = PgBouncer::start(
            &cluster,
            PoolerOptions {
                pool_size: 2,
                prepared_statements: true,
                ..PoolerOptions::default()
            },
        );
        (cluster, pooler)
    })
}

/// The default, `DB_PREPARED_STATEMENTS=true`, through the pooler Neon runs: every call is
/// a named statement prepared once per client connection, and 16 client connections share
/// two server connections, so a statement prepared through one server connection runs on
/// the other (the pooler prepares it there). Through Debian's PgBouncer 1.18 the same run
/// fails: 26000, prepared statement "s0" does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_work_through_a_pgbouncer_that_keeps_them() {
    let url = prepared_topology().1.url();
    let state = Arc::new(state_with(env(&[
        ("DATABASE_URL", &url),
        ("DB_POOL_SIZE", "16"),
        ("DB_PREPARED_STATEMENTS", "true"),
    ])));
    let users = (0..16).map(|_| {
        let state = state.clone();
        tokio::spawn(async move {
            let user = user_id();
            let mut answers = Vec::new();
            for round in 0..3 {
                let id = id_of(&create_titled(&state, &user, &format!("named {round}")).await);
                let events = [
                    ApiEvent::get(&tasks_path(&user)).as_user(&user),
                    ApiEvent::get(&task_path(&user, &id)).as_user(&user),
                    ApiEvent::put(&task_path(&user, &id))
                        .as_user(&user)
                        .json(&json!({"title": "renamed"})),
                    ApiEvent::patch(&format!("{}/complete", task_path(&user, &id))).as_user(&user),
                    ApiEvent::post(&tasks_path(&user))
                        .as_user(&user)
                        .header("idempotency-key", &format!("k{round}"))
                        .json(&json!({"title": "keyed"})),
                    ApiEvent::delete(&task_path(&user, &id)).as_user(&user),
                ];
                for event in events {
                    let response = event.send(&state).await;
                    answers.push((response.status, response.text()));
                }
            }
            let page = ApiEvent::get(&tasks_path(&user))
                .as_user(&user)
                .send(&state)
                .await;
            page.assert_status(200);
            assert_eq!(
                page.json().as_array().map(Vec::len),
                Some(3),
                "the keyed creates"
            );
            answers
        })
    });
    for answers in join_all(users).await {
        for (status, body) in answers.unwrap() {
            assert!(
                [200, 201, 204].contains(&status),
                "{status} {body}\npgbouncer log tail:\n{}",
                prepared_topology().1.log()
            );
        }
    }
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

/// `migrate`'s own reads of the catalog name it with its schema: through a pooler in
/// transaction mode, a temporary table called like a catalog (`pg_temp` is searched even
/// before `pg_catalog`) that another client left on the server connection would otherwise
/// answer them. Here the planted tables lack the columns read, so a read that reached one
/// failed the run.
#[tokio::test(flavor = "current_thread")]
async fn migrations_read_the_catalog_whatever_another_client_left() {
    use std::time::Duration;
    let cluster = Cluster::start();
    tests::migrate_with(&cluster.url(), None);
    let (pooler, _other, _state) = after_another_client(
        &cluster,
        "CREATE TEMPORARY TABLE pg_namespace (planted int); \
         CREATE TEMPORARY TABLE pg_proc (planted int); \
         CREATE TEMPORARY TABLE pg_type (planted int)",
    )
    .await;
    let mut client = shared::db::connect_once(&pooler.url(), None, Duration::from_secs(10))
        .await
        .unwrap();
    let applied = migrations::apply(&mut client)
        .await
        .map_err(|e| format!("{e:#}"))
        .expect("a migration run through the pooler");
    assert!(applied.is_empty(), "{applied:?}");
}

/// `migrate` describes each statement it installs a function for with a named statement,
/// which tokio-postgres names `s0`, `s1`, … in each process. Through a pooler that keeps no
/// prepared statements (PgBouncer 1.18), a name another client prepared stays on its
/// server connection (a function's first, before it turns to unnamed statements), and
/// `migrate` failed with "prepared statement "s…" already exists".
#[tokio::test(flavor = "current_thread")]
async fn migrate_installs_its_functions_whatever_statement_names_another_client_left() {
    use std::time::Duration;
    let cluster = Cluster::start();
    tests::migrate_with(&cluster.url(), None);
    let connect = |url: String| async move {
        shared::db::connect_once(&url, None, Duration::from_secs(10))
            .await
            .expect("connect")
    };
    connect(cluster.url())
        .await
        .batch_execute(crate::database::DROP_STATEMENT_FUNCTIONS)
        .await
        .unwrap();
    let planted = the_next_statement_names(&connect(cluster.url()).await).await;
    let (pooler, _other, _state) = after_another_client(&cluster, &planted).await;
    let mut client = connect(pooler.url()).await;
    migrations::apply(&mut client)
        .await
        .map_err(|e| format!("{e:#}"))
        .expect("a migration run through the pooler");
    let functions: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
             WHERE n.nspname = 'todo_api'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(functions as usize, shared::procedures::all().count());
}

/// SQL that prepares, in a session, the next 200 statement names this process will give
/// (tokio-postgres names them `s0`, `s1`, … from one counter per process), found from the
/// name a statement `client` prepares now gets (on a direct connection, or through a pooler
/// with one server connection).
async fn the_next_statement_names(client: &tokio_postgres::Client) -> String {
    let _prepared = client.prepare("SELECT 1").await.unwrap();
    let name: String = client
        .query_typed(
            "SELECT name FROM pg_catalog.pg_prepared_statements ORDER BY prepare_time DESC",
            &[],
        )
        .await
        .unwrap()[0]
        .get(0);
    let next: usize = name.trim_start_matches('s').parse::<usize>().unwrap() + 1;
    (next..next + 200)
        .map(|n| format!("PREPARE s{n} AS SELECT 1; "))
        .collect()
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

// ---------------------------------------------------------------------------------------
// Faults through the pooler: every answer must be the outcome.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tests::ApiResponse;

const USERS: usize = 24;
const STATEMENT_TIMEOUT_MS: u64 = 1000;
const CONNECT_TIMEOUT_MS: u64 = 1000;
const POOL_TIMEOUT_MS: u64 = 1000;
/// Connections idle this long are checked before use (`DB_IDLE_CHECK_AFTER_MS`): short, so
/// that the faults meet checks too.
const IDLE_CHECK_AFTER_MS: u64 = 300;
/// The README's bound on any request that reaches the database: pool wait + 1 s (an idle
/// connection's check) + connect + statement timeout + 1.5 s (the deadline margin and the
/// cancel's grace).
const BOUND: Duration = Duration::from_millis(
    POOL_TIMEOUT_MS + 1000 + CONNECT_TIMEOUT_MS + STATEMENT_TIMEOUT_MS + 1500,
);

/// What the model knows of a task.
#[derive(Debug, Clone, PartialEq)]
enum Known {
    /// Acknowledged with this title and flag.
    Is(String, bool),
    /// Acknowledged deleted.
    Gone,
    /// A write to it was answered 504: either of two states (`None`: no row).
    Either(Option<(String, bool)>, Option<(String, bool)>),
}

#[derive(Default)]
struct Tally {
    statuses: HashMap<u16, usize>,
    writes: usize,
    problems: Vec<String>,
    slowest: Duration,
}

struct Model {
    user: String,
    tasks: HashMap<String, Known>,
    /// Titles of plain creates answered 504: no row or one row with that title.
    maybe_created: Vec<String>,
    /// The answers each create got, for failure messages.
    answers: HashMap<String, Vec<u16>>,
}

/// A small deterministic generator, so each user's run is reproducible.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn observe(tally: &mut Tally, what: &str, response: &ApiResponse, elapsed: Duration) {
    *tally.statuses.entry(response.status).or_default() += 1;
    tally.writes += 1;
    tally.slowest = tally.slowest.max(elapsed);
    if elapsed > BOUND {
        tally
            .problems
            .push(format!("{what} took {elapsed:?} > {BOUND:?}"));
    }
    match response.status {
        200 | 201 | 204 | 504 => {}
        503 if response.header("retry-after").is_some() => {}
        status => tally
            .problems
            .push(format!("{what}: unexpected {status}: {}", response.text())),
    }
    if response.status >= 400 && response.header("x-request-id").is_none() {
        tally.problems.push(format!("{what}: no X-Request-Id"));
    }
}

async fn one_user(state: Arc<shared::AppState>, index: usize, until: Instant) -> (Model, Tally) {
    let mut model = Model {
        user: user_id(),
        tasks: HashMap::new(),
        maybe_created: Vec::new(),
        answers: HashMap::new(),
    };
    let mut tally = Tally::default();
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let user = model.user.clone();
    let mut n = 0;
    while Instant::now() < until && n < 2000 {
        n += 1;
        let live: Vec<String> = model
            .tasks
            .iter()
            .filter(|(_, k)| matches!(k, Known::Is(..)))
            .map(|(id, _)| id.clone())
            .collect();
        let choice = if live.len() < 3 { 0 } else { rng.below(5) };
        let started = Instant::now();
        match choice {
            0 | 1 => {
                let title = format!("u{index}-c{n}");
                let keyed = choice == 1;
                let mut answers = Vec::new();
                loop {
                    let mut event = ApiEvent::post(&tasks_path(&user))
                        .as_user(&user)
                        .json(&json!({ "title": title }));
                    if keyed {
                        event = event.header("idempotency-key", &format!("key-{n}"));
                    }
                    let sent = Instant::now();
                    let response = event.send(&state).await;
                    observe(&mut tally, "create", &response, sent.elapsed());
                    answers.push(response.status);
                    match response.status {
                        201 => {
                            let id = id_of(&response.json());
                            model.tasks.insert(id, Known::Is(title.clone(), false));
                            break;
                        }
                        // A keyed create is the safe retry: same key until it is settled.
                        503 | 504 if keyed && answers.len() < 20 && Instant::now() < until => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        // One unknown answer, and no later success to settle it: either.
                        _ if answers.contains(&504) => {
                            model.maybe_created.push(title.clone());
                            break;
                        }
                        _ => break,
                    }
                }
                model.answers.insert(title, answers);
            }
            _ => {
                let id = live[rng.below(live.len() as u64) as usize].clone();
                let Some(Known::Is(title, completed)) = model.tasks.get(&id).cloned() else {
                    unreachable!()
                };
                let before = Some((title.clone(), completed));
                let (event, after) = match choice {
                    2 => {
                        let renamed = format!("u{index}-r{n}");
                        (
                            ApiEvent::put(&task_path(&user, &id))
                                .as_user(&user)
                                .json(&json!({ "title": renamed })),
                            Some((renamed, completed)),
                        )
                    }
                    3 => (
                        ApiEvent::patch(&format!("{}/complete", task_path(&user, &id)))
                            .as_user(&user),
                        Some((title.clone(), !completed)),
                    ),
                    _ => (
                        ApiEvent::delete(&task_path(&user, &id)).as_user(&user),
                        None,
                    ),
                };
                let response = event.send(&state).await;
                observe(&mut tally, "write", &response, started.elapsed());
                let next = match response.status {
                    200 | 204 => match after {
                        Some((title, completed)) => Known::Is(title, completed),
                        None => Known::Gone,
                    },
                    504 => Known::Either(before, after),
                    _ => Known::Is(title, completed),
                };
                model.tasks.insert(id, next);
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (model, tally)
}

/// Connections of the API (through the pooler) and the pooler's own, for termination.
async fn terminate_backends(admin: &tokio_postgres::Client) -> u64 {
    admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .map(|row| row.get::<_, i64>(0) as u64)
        .expect("terminating the backends")
}

/// How the API sends its statements in a fault run, through a pooler that supports it.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Statements {
    /// `DB_PREPARED_STATEMENTS=false`, through Debian's PgBouncer 1.18.
    Unnamed,
    /// The default, named and prepared once per connection, through a PgBouncer that keeps
    /// them (≥ 1.21), as Neon's does.
    Prepared,
}

/// A durable cluster and a pooler of their own: the fault test crashes and restarts both,
/// and then checks every acknowledged commit, so it shares them with no other test.
fn fault_topology(statements: Statements) -> &'static (Cluster, PgBouncer) {
    static UNNAMED: OnceLock<(Cluster, PgBouncer)> = OnceLock::new();
    static PREPARED: OnceLock<(Cluster, PgBouncer)> = OnceLock::new();
    let topology = match statements {
        Statements::Unnamed => &UNNAMED,
        Statements::Prepared => &PREPARED,
    };
    topology.get_or_init(|| {
        let cluster = Cluster::start_with(Options {
            durable: true,
            ..Options::default()
        });
        tests::migrate_with(&cluster.url(), None);
        let pooler = PgBouncer::start(
            &cluster,
            PoolerOptions {
                prepared_statements: statements == Statements::Prepared,
                ..PoolerOptions::default()
            },
        );
        (cluster, pooler)
    })
}

/// Holds `LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE` from a direct connection for `how_long`:
/// every statement on the table waits, and the pooler's few server connections fill up.
async fn lock_tasks_for(cluster: &Cluster, how_long: Duration) {
    let mut admin = direct(cluster).await;
    let lock = admin.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    tokio::time::sleep(how_long).await;
    lock.commit().await.unwrap();
}

async fn direct(cluster: &Cluster) -> tokio_postgres::Client {
    shared::db::connect_once(&cluster.url(), None, Duration::from_secs(10))
        .await
        .expect("direct connection")
}

/// One fault run at a time: two at once on two cores would blur the latency bound.
static FAULT_RUNS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_every_error_answer_left_no_trace_under_faults() {
    faults_leave_no_trace(Statements::Unnamed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prepared_statements_through_pgbouncer_every_error_answer_left_no_trace() {
    faults_leave_no_trace(Statements::Prepared).await;
}

async fn faults_leave_no_trace(statements: Statements) {
    let _one_at_a_time = FAULT_RUNS.lock().await;
    let (cluster, pooler) = fault_topology(statements);
    let url = format!("{}&application_name=fault_run", pooler.url());
    let prepared = if statements == Statements::Prepared {
        "true"
    } else {
        "false"
    };
    let state = Arc::new(state_with(env(&[
        ("DATABASE_URL", url.as_str()),
        ("DB_POOL_SIZE", "16"),
        ("DB_PREPARED_STATEMENTS", prepared),
        ("DB_STATEMENT_TIMEOUT_MS", &STATEMENT_TIMEOUT_MS.to_string()),
        ("DB_CONNECT_TIMEOUT_MS", &CONNECT_TIMEOUT_MS.to_string()),
        ("DB_POOL_TIMEOUT_MS", &POOL_TIMEOUT_MS.to_string()),
        ("DB_IDLE_CHECK_AFTER_MS", &IDLE_CHECK_AFTER_MS.to_string()),
    ])));
    let started = Instant::now();
    let until = started + Duration::from_secs(13);
    let users: Vec<_> = (0..USERS)
        .map(|i| tokio::spawn(one_user(state.clone(), i, until)))
        .collect();

    // The faults, one after another while the users write.
    let mut faults = Vec::new();
    tokio::time::sleep(Duration::from_secs(1)).await;
    lock_tasks_for(cluster, Duration::from_millis(2500)).await;
    faults.push("table locked 2.5 s (2.5 × the statement timeout)".to_owned());
    tokio::time::sleep(Duration::from_millis(700)).await;
    let terminated = terminate_backends(&direct(cluster).await).await;
    // The users keep the pooler's server connections open: a fault that met none did not happen.
    assert!(
        terminated >= 1,
        "no backend to terminate: the fault did nothing"
    );
    faults.push(format!("{terminated} backends terminated"));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tokio::task::spawn_blocking(move || fault_topology(statements).1.restart())
        .await
        .unwrap();
    faults.push("PgBouncer killed (SIGKILL) and restarted".to_owned());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    tokio::task::spawn_blocking(move || fault_topology(statements).0.crash_restart())
        .await
        .unwrap();
    faults.push("Postgres crashed and restarted (pg_ctl restart -m immediate)".to_owned());
    // Then a lock while the pooler queues (few server connections, many clients).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    lock_tasks_for(cluster, Duration::from_millis(3000)).await;
    faults.push("table locked 3 s again".to_owned());

    let mut models = Vec::new();
    let mut tally = Tally::default();
    for user in users {
        let (model, one) = user.await.unwrap();
        for (status, count) in one.statuses {
            *tally.statuses.entry(status).or_default() += count;
        }
        tally.writes += one.writes;
        tally.problems.extend(one.problems);
        tally.slowest = tally.slowest.max(one.slowest);
        models.push(model);
    }
    // Anything still in flight on the server has decided by now.
    tokio::time::sleep(Duration::from_millis(STATEMENT_TIMEOUT_MS + 2500)).await;

    let admin = direct(cluster).await;
    let mut rows_checked = 0;
    let mut ambiguous = 0;
    for model in &models {
        let rows = admin
            .query(
                "SELECT id::text, title, completed FROM tasks WHERE user_id = $1",
                &[&model.user],
            )
            .await
            .unwrap();
        let mut stored: HashMap<String, (String, bool)> = rows
            .iter()
            .map(|r| (r.get(0), (r.get(1), r.get(2))))
            .collect();
        rows_checked += stored.len();
        for (id, known) in &model.tasks {
            let actual = stored.remove(id);
            let fine = match known {
                Known::Is(title, completed) => {
                    actual.as_ref() == Some(&(title.clone(), *completed))
                }
                Known::Gone => actual.is_none(),
                Known::Either(a, b) => {
                    ambiguous += 1;
                    actual == *a || actual == *b
                }
            };
            if !fine {
                tally.problems.push(format!(
                    "task {id} of {}: expected {known:?}, stored {actual:?}",
                    model.user
                ));
            }
        }
        // What is left must be a create answered 504, at most once each.
        for title in &model.maybe_created {
            ambiguous += 1;
            let matching: Vec<String> = stored
                .iter()
                .filter(|(_, (t, _))| t == title)
                .map(|(id, _)| id.clone())
                .collect();
            if matching.len() > 1 {
                tally
                    .problems
                    .push(format!("create {title} stored {} times", matching.len()));
            }
            for id in matching {
                stored.remove(&id);
            }
        }
        for (id, row) in stored {
            tally.problems.push(format!(
                "task {id} of {} was never acknowledged: {row:?}; its create was answered {:?}",
                model.user,
                model.answers.get(&row.0)
            ));
        }
    }
    let mut statuses: Vec<_> = tally.statuses.iter().collect();
    statuses.sort();
    eprintln!(
        "fault run through PgBouncer (transaction mode, 4 server connections, {USERS} users, \
         pool 16, {statements:?} statements): {} writes in {:?}; faults: {}; answers by \
         status: {statuses:?}; slowest \
         {:?} (bound {BOUND:?}); afterwards {rows_checked} rows checked against the \
         acknowledged state, {ambiguous} writes answered 504 accepted either way; \
         problems: {}",
        tally.writes,
        started.elapsed(),
        faults.join(", "),
        tally.slowest,
        tally.problems.len()
    );
    assert!(
        tally.problems.is_empty(),
        "{} problems, first ones:\n{}\npgbouncer log tail:\n{}",
        tally.problems.len(),
        tally.problems[..tally.problems.len().min(20)].join("\n"),
        pooler
            .log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        tally.statuses.get(&503).copied().unwrap_or(0) > 0,
        "the faults should have produced 503s"
    );
    // The calls cancelled past their deadline must not take the pooler down: PgBouncer
    // before 1.20 exited when a cancel's connection closed before its answer (#801).
    let fatal: Vec<_> = pooler
        .log()
        .lines()
        // Its own: "FATAL @src/objects.c:1060 in function …" (not a server's, relayed).
        .filter(|line| line.contains(" FATAL @"))
        .map(str::to_owned)
        .collect();
    assert!(fatal.is_empty(), "PgBouncer died: {fatal:?}");
}

/// Another client's session left on a pooler's one server connection: PgBouncer in
/// transaction mode with a pool of one on `cluster`, another client that ran `planted` in
/// its session there, and the API's state through the same pooler, which opens no
/// connection until it is used (unnamed statements, as
/// PgBouncer 1.18 keeps none). The pooler and the other client live as long as the test.
async fn after_another_client(
    cluster: &Cluster,
    planted: &str,
) -> (PgBouncer, tokio_postgres::Client, shared::AppState) {
    after_another_client_as(cluster, "postgres", planted).await
}

/// [`after_another_client`] with `login` for both clients (a pooler keeps a pool of server
/// connections per user): `postgres`, or `todo_login`, which the test has made.
async fn after_another_client_as(
    cluster: &Cluster,
    login: &str,
    planted: &str,
) -> (PgBouncer, tokio_postgres::Client, shared::AppState) {
    let pooler = PgBouncer::start(
        cluster,
        PoolerOptions {
            pool_size: 1,
            ..PoolerOptions::default()
        },
    );
    let url = pooler
        .url()
        .replacen("://postgres@", &format!("://{login}@"), 1);
    let other = shared::db::connect_once(&url, None, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    other.batch_execute(planted).await.unwrap();
    let state = state_with(env(&[
        ("DATABASE_URL", &url),
        ("DB_POOL_SIZE", "1"),
        ("DB_PREPARED_STATEMENTS", "false"),
    ]));
    (pooler, other, state)
}

/// A pooler in transaction mode hands its server connections from client to client as they
/// are: a temporary table another client made stays on its server connection. The
/// statements name their tables with the schema, so one called `tasks` (searched before any
/// schema) takes nothing over: without it, every call on that connection failed (500).
#[tokio::test(flavor = "current_thread")]
async fn another_clients_temporary_tables_take_no_statement_over() {
    let (_pooler, other, state) = after_another_client(
        &topology().0,
        "CREATE TEMPORARY TABLE tasks (LIKE public.tasks INCLUDING ALL); \
         CREATE TEMPORARY TABLE idempotency_keys (LIKE public.idempotency_keys INCLUDING ALL)",
    )
    .await;
    every_operation(&state, &user_id()).await;
    // The other client's session is still there, on the same (only) server connection.
    let theirs: i64 = other
        .query_one("SELECT count(*) FROM pg_temp.tasks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(theirs, 0);
}

/// `pg_dump` sends `SET row_security = off` before its transaction, and every dump file
/// starts with it. Through a pooler in transaction mode it stays on the server connection,
/// and Postgres then refuses any statement that a policy would filter ("query would be
/// affected by row-level security policy"), so every call on that connection failed
/// (500) until the pooler retired it. Both logins: one that bypasses RLS and switches to
/// `todo_app`, and one that is itself subject to it.
#[tokio::test(flavor = "current_thread")]
async fn another_clients_row_security_off_fails_no_call() {
    let cluster = &topology().0;
    let admin = shared::db::connect_once(&cluster.url(), None, Duration::from_secs(10))
        .await
        .unwrap();
    crate::make_todo_login(&admin).await;
    for login in ["postgres", "todo_login"] {
        let (_pooler, other, state) =
            after_another_client_as(cluster, login, "SET row_security = off").await;
        every_operation(&state, &user_id()).await;
        assert_eq!(state.tasks.database().switches_role(), login == "postgres");
        // The server connection's setting is back to the server's default, so the next
        // call on it runs at once.
        let now: String = other
            .query_one("SHOW row_security", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(now, "on", "{login}");
        // A read and writes that meet the setting, each applied once.
        let user = user_id();
        let id = id_of(&create_titled(&state, &user, "planted").await);
        other.batch_execute("SET row_security = off").await.unwrap();
        crate::get(&state, &user, &id).await.assert_status(200);
        for completed in [true, false] {
            other.batch_execute("SET row_security = off").await.unwrap();
            let toggled = ApiEvent::patch(&format!("{}/complete", task_path(&user, &id)))
                .as_user(&user)
                .send(&state)
                .await;
            toggled.assert_status(200);
            assert_eq!(toggled.json()["completed"], completed, "{login}");
        }
    }
}

/// The repeat with `row_security` on runs in a transaction of its own, where a preparation
/// that failed would fail the call with it. With the default `DB_PREPARED_STATEMENTS=true`
/// behind a pooler that keeps no prepared statements (PgBouncer 1.18), the statement names
/// another client left refuse the preparation ("already exists"): the repeat then answered
/// 500. It runs unnamed.
#[tokio::test(flavor = "current_thread")]
async fn the_row_security_repeat_prepares_nothing() {
    let cluster = &topology().0;
    let pooler = PgBouncer::start(
        cluster,
        PoolerOptions {
            pool_size: 1,
            ..PoolerOptions::default()
        },
    );
    let other = shared::db::connect_once(&pooler.url(), None, Duration::from_secs(10))
        .await
        .unwrap();
    let planted = the_next_statement_names(&other).await;
    other
        .batch_execute(&format!("SET row_security = off; {planted}"))
        .await
        .unwrap();
    let state = state_with(env(&[
        ("DATABASE_URL", &pooler.url()),
        ("DB_POOL_SIZE", "1"),
    ]));
    let user = user_id();
    let id = id_of(&create_titled(&state, &user, "named").await);
    for _ in 0..3 {
        other.batch_execute("SET row_security = off").await.unwrap();
        crate::get(&state, &user, &id).await.assert_status(200);
    }
}

/// The reasons to repeat a call can follow each other: a read whose connection was lost
/// is repeated on a fresh connection, which (here by the database's default) has
/// `row_security` off, and that call is repeated once more with it on. With one repeat
/// only, the read answered 500.
#[tokio::test]
async fn a_read_repeated_for_a_lost_connection_can_then_meet_row_security_off() {
    let url = tests::new_database("row_security_off").await;
    tests::migrate_with(&url, None);
    let name = url
        .rsplit('/')
        .next()
        .unwrap()
        .split('?')
        .next()
        .unwrap()
        .to_owned();
    tests::db()
        .await
        .batch_execute(&format!("ALTER DATABASE {name} SET row_security = off"))
        .await
        .unwrap();
    let (_, upstream) = tests::through_port(&url, 0);
    let cutter = tests::proxy::CommitCutter::start(upstream).await;
    let (through, _) = tests::through_port(&url, cutter.port);
    let state = state_with(env(&[
        ("DATABASE_URL", through.as_str()),
        ("DB_POOL_SIZE", "1"),
    ]));
    let user = user_id();
    // A fresh connection has the setting off: the create is repeated with it on.
    let id = id_of(&create_titled(&state, &user, "by default off").await);
    cutter.cut_next(1);
    let read = crate::get(&state, &user, &id).await;
    assert_eq!(cutter.cuts_left(), 0, "the first read's answer was lost");
    read.assert_status(200);
    drop(state);
    tests::drop_database(&url).await;
}

/// The same for the catalog: `pg_temp` is searched first even before `pg_catalog`, so a
/// temporary table called `pg_roles` that another client left on a server connection would
/// answer the question whether the login role is subject to row-level security. Here it
/// says "subject" for a superuser login, which bypasses RLS: the functions would then
/// not switch to `todo_app`, and every statement would run as the superuser, outside the
/// policies. A trigger (on a cluster of the test's own) records the role each write ran
/// as: `todo_app`, with the catalog named by its schema; `postgres` without.
#[tokio::test(flavor = "current_thread")]
async fn another_clients_temporary_catalog_tables_do_not_answer_the_role_check() {
    let cluster = Cluster::start();
    let admin = recording_write_roles(&cluster).await;
    let (_pooler, _other, state) = after_another_client(
        &cluster,
        "CREATE TEMPORARY TABLE pg_roles AS \
         SELECT false AS rolsuper, false AS rolbypassrls, current_user::name AS rolname",
    )
    .await;
    every_operation(&state, &user_id()).await;
    assert_eq!(write_roles(&admin).await, ["postgres as todo_app"]);
}

/// The role another client set for its session stays on the server connection too. The
/// check asks about the role the connection logged in as, not the one in force: asked
/// about `todo_app` (which the other client set), it said "subject to row-level security"
/// for a superuser login, for the life of the instance. Once the other client had reset
/// its role, every statement ran as the superuser, outside the policies.
#[tokio::test(flavor = "current_thread")]
async fn another_clients_role_does_not_answer_the_role_check() {
    let cluster = Cluster::start();
    let admin = recording_write_roles(&cluster).await;
    for (set, reset) in [
        ("SET ROLE todo_app", "RESET ROLE"),
        (
            "SET SESSION AUTHORIZATION todo_app",
            "RESET SESSION AUTHORIZATION",
        ),
    ] {
        let (_pooler, other, state) = after_another_client(&cluster, set).await;
        every_operation(&state, &user_id()).await;
        other.batch_execute(reset).await.unwrap();
        every_operation(&state, &user_id()).await;
        let roles = write_roles(&admin).await;
        assert!(
            roles.iter().all(|r| r.ends_with(" as todo_app")),
            "{set}: {roles:?}"
        );
    }
    assert_eq!(
        write_roles(&admin).await,
        ["postgres as todo_app", "todo_app as todo_app"]
    );
}

/// A cluster of the test's own, migrated, where a trigger records the role each write to
/// `tasks` ran as (`session_user as current_user`); returns a superuser connection to it.
async fn recording_write_roles(cluster: &Cluster) -> tokio_postgres::Client {
    tests::migrate_with(&cluster.url(), None);
    let admin = shared::db::connect_once(&cluster.url(), None, std::time::Duration::from_secs(10))
        .await
        .unwrap();
    admin
        .batch_execute(
            "CREATE TABLE write_roles (role text); \
             GRANT INSERT ON write_roles TO PUBLIC; \
             CREATE FUNCTION note_write_role() RETURNS trigger LANGUAGE plpgsql \
             SET search_path = public AS $f$ BEGIN \
             INSERT INTO write_roles VALUES (session_user || ' as ' || current_user); \
             RETURN NULL; END $f$; \
             CREATE TRIGGER note_write_role AFTER INSERT OR UPDATE OR DELETE ON tasks \
             FOR EACH ROW EXECUTE FUNCTION note_write_role()",
        )
        .await
        .unwrap();
    admin
}

/// The roles the writes ran as ([`recording_write_roles`]), each once.
async fn write_roles(admin: &tokio_postgres::Client) -> Vec<String> {
    admin
        .query("SELECT DISTINCT role FROM write_roles ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The same for types: `pg_temp` is searched first for type names too, so a temporary type
/// another client made, called like a built-in one, would take over every type name the
/// statements and their functions spell out. Each one here refuses every value (or, for
/// `record`, has one field), so that a name it takes over fails the call: without the
/// schema on those names, every call on that connection failed (500).
#[tokio::test(flavor = "current_thread")]
async fn another_clients_temporary_types_take_no_name_over() {
    let mut planted = String::from("CREATE TYPE pg_temp.record AS (a int); ");
    for ty in ["text", "uuid", "timestamptz", "int8", "bool", "bytea"] {
        planted += &format!("CREATE DOMAIN pg_temp.{ty} AS pg_catalog.{ty} CHECK (false); ");
    }
    let (_pooler, other, state) = after_another_client(&topology().0, &planted).await;
    every_operation(&state, &user_id()).await;
    // The other client's session is still there, on the same (only) server connection.
    let theirs: i64 = other
        .query_one(
            "SELECT count(*) FROM pg_type WHERE typnamespace = pg_my_temp_schema()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(theirs >= 7, "{theirs}");
}
