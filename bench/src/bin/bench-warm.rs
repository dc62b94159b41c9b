//! `bench-warm`: the warm cost of each operation, measured in process.
//!
//! For every operation, each round times three things back to back, so that they share the
//! machine's noise: (1) the function's handler fed an API Gateway v2 event (JSON parsing,
//! token check, validation, the statement's function with the row-level security context,
//! response), (2) the same handler with the RLS context switched off (the bare statement),
//! and (3) the raw round trip of the same SQL statement issued directly with tokio-postgres.
//! The rounds cycle through the six orders of the three, so that each goes first, and each
//! follows each of the others, equally often; and the process and its three
//! backends run on one CPU (`BENCH_CPU`, default 0; `none` to leave them: see
//! `pin_to_one_cpu`).
//!
//! Usage: DATABASE_URL=… [BENCH_APP_DATABASE_URL=…] [BENCH_BARE_DATABASE_URL=…]
//!        [BENCH_OPS=get,list] [BENCH_ONLY=handler|bare|raw] [BENCH_AA=1] [BENCH_LAYER=repo]
//!        bench-warm [iterations]   (default 2000, after 200 warm-up rounds; every operation
//!                                  unless BENCH_OPS names some; all three of each round
//!                                  unless BENCH_ONLY names one, to profile it: the others'
//!                                  columns are then meaningless; BENCH_AA=1 has the
//!                                  handler run the bare statements as well, to check
//!                                  that the comparison itself favours neither side;
//!                                  BENCH_LAYER=repo times the repository's call alone,
//!                                  `TaskRepo::get` / `list`, in place of the two handlers,
//!                                  and measures get and list only: where the RLS cost is)
//!        bench-warm list-sql <user>   prints the listing statement with literal parameters,
//!                                     for pgbench
//!        bench-warm seed              fills the table with a population of users (see
//!                                     `seed_population`), unless it has one
//!        bench-warm plan-options     prints the listing function's planner settings as
//!                                     `PGOPTIONS`, for the bare statements under pgbench
//!        bench-warm pgbench-scripts <dir> <list user> <writer> <writer's task ids, a,b,…>
//!                                     writes, for list, get, create, keyed create and
//!                                     toggle, a pgbench
//!                                     script of the bare statement (`<op>-bare.sql`) and
//!                                     one of exactly what the API sends for it
//!                                     (`<op>-api.sql`: the call of the statement's
//!                                     function, with the context), from the code's own SQL

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bench::{event, percentile, token, us};
use serde_json::json;
use shared::config::Config;
use shared::db::Database;
use shared::handlers;
use shared::listing::{SortField, SortOrder};
use shared::repo::{self, TaskRepo};
use shared::AppState;
use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

const SECRET: &str = "benchmark-secret-0123456789abcdefghijklmnopqrstuvwxyz";
const WARMUP: usize = 200;

/// The orders a round times the handler (0), the bare handler (1) and the raw statement (2)
/// in, one per round in turn.
const ORDERS: [[usize; 3]; 6] = [
    [0, 1, 2],
    [0, 2, 1],
    [1, 0, 2],
    [1, 2, 0],
    [2, 0, 1],
    [2, 1, 0],
];

struct Samples {
    handler: Vec<Duration>,
    bare: Vec<Duration>,
    raw: Vec<Duration>,
}

/// Users and tasks of the population that every benchmark's table holds besides its own rows.
const POPULATION_USERS: u32 = 2000;
const TASKS_PER_USER: u32 = 20;

/// Fills the table with [`POPULATION_USERS`] users of [`TASKS_PER_USER`] tasks each (once:
/// a table that has them already is left alone), then refreshes the planner's statistics.
async fn seed_population(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let seeded: i64 = client
        .query_one(
            "SELECT count(*) FROM tasks WHERE user_id::text LIKE 'population-%'",
            &[],
        )
        .await?
        .get(0);
    if seeded == 0 {
        client
            .execute(
                "INSERT INTO tasks (id, user_id, title) \
                 SELECT gen_random_uuid(), 'population-' || (n % $1::bigint), 'task ' || n \
                 FROM generate_series(1, $1::bigint * $2::bigint) AS n",
                &[&i64::from(POPULATION_USERS), &i64::from(TASKS_PER_USER)],
            )
            .await?;
    }
    client.batch_execute("ANALYZE tasks").await?;
    Ok(())
}

/// Pins this process and the three backends it talks to to one CPU (`BENCH_CPU`, default
/// 0; `none` leaves them where the scheduler puts them).
///
/// On the benchmark machine (two virtual CPUs) a round trip to a backend that runs on the
/// other CPU costs ~40 µs more than one to a backend on the same CPU (waking an idle
/// virtual CPU), and where each backend runs is the scheduler's choice, kept for the whole
/// run: unpinned, `SELECT 1` took 20 µs on one connection and 60 µs on the next, which is
/// more than what this benchmark compares. On one CPU every round trip costs the work on
/// both sides and nothing else.
async fn pin_to_one_cpu(
    state: &AppState,
    bare: &AppState,
    raw: &tokio_postgres::Client,
) -> anyhow::Result<()> {
    let cpu = std::env::var("BENCH_CPU").unwrap_or_else(|_| "0".to_owned());
    if cpu == "none" {
        println!("not pinned (BENCH_CPU=none)");
        return Ok(());
    }
    const PID: &str = "SELECT pg_backend_pid()";
    let mut backends = Vec::new();
    for app in [state, bare] {
        let rows = app
            .tasks
            .database()
            .query_unscoped(PID, &[])
            .await
            .map_err(|err| anyhow::anyhow!("{err:?}"))?;
        backends.push(rows[0].get::<_, i32>(0));
    }
    backends.push(raw.query_one(PID, &[]).await?.get::<_, i32>(0));
    let mut targets = vec![(vec!["-a"], std::process::id().to_string())];
    targets.extend(backends.iter().map(|pid| (vec![], pid.to_string())));
    for (flags, pid) in targets {
        let status = std::process::Command::new("taskset")
            .args(flags)
            .args(["-p", "-c", &cpu, &pid])
            .stdout(std::process::Stdio::null())
            .status()
            .context("taskset (util-linux) is needed to pin the benchmark to one CPU")?;
        anyhow::ensure!(status.success(), "taskset -p -c {cpu} {pid} failed");
    }
    println!("pinned to CPU {cpu} with its three backends (BENCH_CPU=none to leave them)");
    Ok(())
}

/// The repository's call of `op` alone (`BENCH_LAYER=repo`): the get of `target`, or the
/// list owner's first page.
async fn repo_call(
    tasks: &TaskRepo,
    op: &str,
    (owner, target): (&shared::owner::Owner, Uuid),
    (list_owner, page): (&shared::owner::Owner, &shared::listing::ListQuery),
) {
    match op {
        "get" => drop(
            tasks
                .get(owner, shared::task::TaskId(target))
                .await
                .expect("get"),
        ),
        "list" => drop(tasks.list(list_owner, page).await.expect("list")),
        other => unreachable!("BENCH_LAYER=repo measures get and list only, not {other}"),
    }
}

async fn time<F: Future>(f: F) -> Duration {
    let started = Instant::now();
    std::hint::black_box(f.await);
    started.elapsed()
}

/// Times a handler's invocation, which must succeed: a failing call (a function that
/// `migrate` has not installed, say) is quick, and timing it would measure nothing.
async fn time_invocation(state: &AppState, op: &str, event: &str) -> Duration {
    let started = Instant::now();
    let status = invoke(state, op, event).await;
    let elapsed = started.elapsed();
    assert!(
        (200..300).contains(&status),
        "{op}: the handler answered {status} (has `migrate` run for this build?)"
    );
    elapsed
}

async fn invoke(state: &AppState, op: &str, event: &str) -> u16 {
    let req = lambda_http::request::from_str(event).expect("event");
    let response = match op {
        "list" => handlers::list_tasks(state, req).await,
        "get" => handlers::get_task(state, req).await,
        "create" | "keyed" => handlers::create_task(state, req).await,
        "update" => handlers::update_task(state, req).await,
        "toggle" => handlers::complete_task(state, req).await,
        "delete" => handlers::delete_task(state, req).await,
        other => panic!("unknown operation {other}"),
    };
    response.status().as_u16()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    if std::env::args().nth(1).as_deref() == Some("list-sql") {
        let user = std::env::args()
            .nth(2)
            .context("usage: bench-warm list-sql <user>")?;
        let sql = repo::list_statement(SortField::CreatedAt, SortOrder::Desc, false)
            .replace(repo::OWNER, "$1")
            .replace("$1", &format!("'{}'", user.replace('\'', "''")))
            .replace("$2", "NULL::boolean")
            .replace("$3", "NULL::text")
            .replace("$4", "20")
            .replace("$5", "0");
        println!("{sql};");
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("seed") {
        let url = std::env::var("DATABASE_URL").context("DATABASE_URL must be set")?;
        let client = shared::db::connect_once(&url, None, Duration::from_secs(10)).await?;
        seed_population(&client).await?;
        println!(
            "population: {POPULATION_USERS} users with {TASKS_PER_USER} tasks each beside the benchmark's own"
        );
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("plan-options") {
        println!("{}", plan_options());
        return Ok(());
    }
    if std::env::args().nth(1).as_deref() == Some("pgbench-scripts") {
        let args: Vec<String> = std::env::args().skip(2).collect();
        let [dir, lister, writer, id] = &args[..] else {
            anyhow::bail!("usage: bench-warm pgbench-scripts <dir> <list user> <writer> <task id>");
        };
        return write_pgbench_scripts(std::path::Path::new(dir), lister, writer, id);
    }
    // The bare and raw statements log in as `BENCH_BARE_DATABASE_URL` when set (a role that
    // bypasses row-level security without being a superuser, whose privileges Postgres
    // checks as it checks the handler's), else `DATABASE_URL`; and they are planned as the
    // functions plan them (the listing's guards: a generic plan, no sequential scan, the
    // index's order). So they differ from the handler's call by the RLS context only.
    let url = std::env::var("BENCH_BARE_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .context("DATABASE_URL must be set")?;
    let url = with_plan_settings(&url);
    let iterations: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("iterations"))
        .unwrap_or(2000);
    let config = Config::from_lookup(|name| match name {
        "DATABASE_URL" => Some(url.clone()),
        "BETTER_AUTH_SECRET" => Some(SECRET.into()),
        _ => None,
    })?;
    // The handler runs as the API would log in: `BENCH_APP_DATABASE_URL` when set (a login
    // role subject to row-level security, so no role switch), else `DATABASE_URL`.
    let app_url = std::env::var("BENCH_APP_DATABASE_URL").unwrap_or_else(|_| url.clone());
    let mut state = AppState::new(&Config::from_lookup(|name| match name {
        "DATABASE_URL" => Some(app_url.clone()),
        "BETTER_AUTH_SECRET" => Some(SECRET.into()),
        _ => None,
    })?)?;
    // `BENCH_AA=1`: the handler runs the bare statements too, an A/A check of the
    // benchmark itself (its "RLS +%" should then be about 0).
    if std::env::var("BENCH_AA").is_ok() {
        state.tasks =
            TaskRepo::without_rls_context_for_benchmarks(Database::new(&config.database)?);
    }
    let mut bare = AppState::new(&config)?;
    bare.tasks = TaskRepo::without_rls_context_for_benchmarks(Database::new(&config.database)?);
    let raw = shared::db::connect_once(&url, None, Duration::from_secs(10)).await?;
    state.tasks.warm_up().await;
    bare.tasks.warm_up().await;
    pin_to_one_cpu(&state, &bare, &raw).await?;

    let rounds = WARMUP + iterations;
    let user = Uuid::new_v4().simple().to_string();
    let tok = token(SECRET, &user);
    let tasks_path = format!("/api/{user}/tasks");
    let params = |id: Option<&Uuid>| match id {
        Some(id) => json!({"user_id": user, "id": id.to_string()}),
        None => json!({"user_id": user}),
    };

    // A table of many users, as in production: with only the two users below, the
    // planner's statistics would say that a user has half the table, and Postgres would
    // plan the listing anew at every execution instead of reusing its generic plan.
    seed_population(&raw).await?;

    // The list user has exactly 20 tasks; writes go to other rows of the same user.
    let list_user = Uuid::new_v4().simple().to_string();
    for n in 0..20 {
        raw.execute(
            "INSERT INTO tasks (id, user_id, title) VALUES ($1, $2::text, $3::text)",
            &[&Uuid::now_v7(), &list_user, &format!("task {n}")],
        )
        .await?;
    }
    let target = Uuid::now_v7();
    raw.execute(
        "INSERT INTO tasks (id, user_id, title) VALUES ($1, $2::text, 'target')",
        &[&target, &user],
    )
    .await?;
    let mut doomed = Vec::new();
    for _ in 0..3 * rounds {
        let id = Uuid::now_v7();
        raw.execute(
            "INSERT INTO tasks (id, user_id, title) VALUES ($1, $2::text, 'doomed')",
            &[&id, &user],
        )
        .await?;
        doomed.push(id);
    }
    let mut doomed = doomed.into_iter();

    let list_tok = token(SECRET, &list_user);
    let list_event = event(
        "GET",
        &format!("/api/{list_user}/tasks"),
        "limit=20",
        &list_tok,
        None,
        json!({"user_id": list_user}),
    )
    .to_string();
    let task_path = format!("{tasks_path}/{target}");
    let get_event = event("GET", &task_path, "", &tok, None, params(Some(&target))).to_string();
    let create_body = json!({"title": "benchmark"});
    let create = event(
        "POST",
        &tasks_path,
        "",
        &tok,
        Some(&create_body),
        params(None),
    );
    let create_event = create.to_string();
    // The same create with an `Idempotency-Key` of its own, as the TypeScript client sends
    // every create.
    let mut keys = 0u64;
    let mut new_key = || {
        keys += 1;
        format!("bench-{keys}")
    };
    let keyed_event = |key: String| {
        let mut keyed = create.clone();
        keyed["headers"]["idempotency-key"] = json!(key);
        keyed.to_string()
    };
    let update_body = json!({"title": "renamed"});
    let update_event = event(
        "PUT",
        &task_path,
        "",
        &tok,
        Some(&update_body),
        params(Some(&target)),
    )
    .to_string();
    let toggle_event = event(
        "PATCH",
        &format!("{task_path}/complete"),
        "",
        &tok,
        None,
        params(Some(&target)),
    )
    .to_string();

    // `BENCH_LAYER=repo`: the repository's call alone in place of the two handlers (no event,
    // token or response), for get and list, to tell the RLS cost in the database call from
    // any in the rest of the handler.
    let repo_layer = match std::env::var("BENCH_LAYER").as_deref() {
        Ok("repo") => true,
        Ok(other) => anyhow::bail!("BENCH_LAYER: repo, not {other}"),
        Err(_) => false,
    };
    let owner_of = |id: &str| {
        shared::owner::Owner::authorize(shared::auth::UserId::parse(id).expect("user id"), id)
            .expect("owner")
    };
    let (owner, list_owner) = (owner_of(&user), owner_of(&list_user));
    let page = shared::listing::ListQuery::parse(Some("limit=20")).expect("query");
    if repo_layer {
        println!("(BENCH_LAYER=repo: the fn and noRLS columns time the repository's call alone)");
    }
    println!("warm cost per invocation, {iterations} rounds after {WARMUP} warm-up rounds");
    println!(
        "{:<8} {:>10} {:>10} {:>10} {:>10} {:>8} {:>8} {:>11} {:>8}",
        "op", "fn p50", "fn p99", "raw p50", "raw p99", "p50 x", "p99 x", "noRLS p50", "RLS +%"
    );
    // `BENCH_OPS` (comma-separated) measures only some, to profile one operation.
    let only = std::env::var("BENCH_OPS").ok();
    // `BENCH_ONLY` (handler, bare or raw) runs only that one of the three, to profile it.
    let only_one = std::env::var("BENCH_ONLY")
        .ok()
        .map(|one| match one.as_str() {
            "handler" => 0,
            "bare" => 1,
            "raw" => 2,
            other => panic!("BENCH_ONLY: handler, bare or raw, not {other}"),
        });
    for op in [
        "list", "get", "create", "keyed", "update", "toggle", "delete",
    ] {
        if only
            .as_deref()
            .is_some_and(|ops| !ops.split(',').any(|o| o == op))
            || (repo_layer && !["get", "list"].contains(&op))
        {
            continue;
        }
        let mut s = Samples {
            handler: Vec::with_capacity(rounds),
            bare: Vec::with_capacity(rounds),
            raw: Vec::with_capacity(rounds),
        };
        for round in 0..rounds {
            // Delete needs a task of its own for each of the three.
            let delete = (op == "delete").then(|| {
                let mut id = || doomed.next().unwrap();
                let (a, b, c) = (id(), id(), id());
                let ev = |id: &Uuid| {
                    event(
                        "DELETE",
                        &format!("{tasks_path}/{id}"),
                        "",
                        &tok,
                        None,
                        params(Some(id)),
                    )
                    .to_string()
                };
                (ev(&a), ev(&b), c)
            });
            // So does a keyed create: a key of its own for each of the three.
            let keyed = (op == "keyed")
                .then(|| (keyed_event(new_key()), keyed_event(new_key()), new_key()));
            let (handler_event, bare_event) = match (&delete, &keyed, op) {
                (Some((a, b, _)), _, _) | (None, Some((a, b, _)), _) => (a, b),
                (None, None, "list") => (&list_event, &list_event),
                (None, None, "get") => (&get_event, &get_event),
                (None, None, "create") => (&create_event, &create_event),
                (None, None, "update") => (&update_event, &update_event),
                (None, None, _) => (&toggle_event, &toggle_event),
            };
            // The six orders in turn: each of the three goes first, and runs right after each
            // of the others, equally often. None always pays for being first after the
            // previous round, and none always gains from running right after another that
            // warmed the same code (the handler and the bare handler share most of theirs).
            let mut times = [Duration::ZERO; 3];
            for which in ORDERS[round % ORDERS.len()] {
                if only_one.is_some_and(|one| one != which) {
                    continue;
                }
                times[which] = match which {
                    0 if repo_layer => {
                        time(repo_call(
                            &state.tasks,
                            op,
                            (&owner, target),
                            (&list_owner, &page),
                        ))
                        .await
                    }
                    1 if repo_layer => {
                        time(repo_call(
                            &bare.tasks,
                            op,
                            (&owner, target),
                            (&list_owner, &page),
                        ))
                        .await
                    }
                    0 => time_invocation(&state, op, handler_event).await,
                    1 => time_invocation(&bare, op, bare_event).await,
                    _ => match &delete {
                        Some((_, _, id)) => {
                            time(raw_sql(
                                &raw,
                                repo::DELETE,
                                "$2",
                                &[(id, Type::UUID), (&user, Type::TEXT)],
                            ))
                            .await
                        }
                        None => {
                            let key = keyed.as_ref().map_or("", |(_, _, key)| key.as_str());
                            time(raw_statement(&raw, op, &user, &list_user, &target, key)).await
                        }
                    },
                };
            }
            let [handler, bare_time, raw_time] = times;
            if round >= WARMUP {
                s.handler.push(handler);
                s.bare.push(bare_time);
                s.raw.push(raw_time);
            }
        }
        let (h50, h99) = (
            percentile(&mut s.handler, 50.0),
            percentile(&mut s.handler, 99.0),
        );
        let (r50, r99) = (percentile(&mut s.raw, 50.0), percentile(&mut s.raw, 99.0));
        let b50 = percentile(&mut s.bare, 50.0);
        println!(
            "{:<8} {:>8.0}us {:>8.0}us {:>8.0}us {:>8.0}us {:>8.2} {:>8.2} {:>9.0}us {:>7.1}%",
            op,
            us(h50),
            us(h99),
            us(r50),
            us(r99),
            h50.as_secs_f64() / r50.as_secs_f64(),
            h99.as_secs_f64() / r99.as_secs_f64(),
            us(b50),
            (h50.as_secs_f64() / b50.as_secs_f64() - 1.0) * 100.0
        );
    }
    Ok(())
}

/// `sql` with `$n` replaced by `values[n - 1]` (SQL literals).
fn with_literals(sql: &str, values: &[&str]) -> String {
    let mut sql = sql.to_owned();
    // From the highest number down, so that `$1` never eats the start of `$10`.
    for (n, value) in values.iter().enumerate().rev() {
        sql = sql.replace(&format!("${}", n + 1), value);
    }
    sql
}

/// A new number per transaction, for the keyed create's id and key (pgbench).
const KEYED_PRELUDE: &str = "\\set n random(1, 999999999999)\n";

/// The list reads `lister`'s tasks; get, create and toggle work on `writer`'s, so that
/// the creates do not grow the list.
fn write_pgbench_scripts(
    dir: &std::path::Path,
    lister: &str,
    writer: &str,
    ids: &str,
) -> anyhow::Result<()> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
    let lister = quote(lister);
    let user = quote(writer);
    let ids: Vec<String> = ids.split(',').map(|id| format!("'{id}'::uuid")).collect();
    let id = ids[0].clone();
    let list = repo::list_statement(SortField::CreatedAt, SortOrder::Desc, false);
    let scripts = [
        (
            "list".to_owned(),
            list,
            vec![
                lister.as_str(),
                "NULL::boolean",
                "NULL::text",
                "20::bigint",
                "0::bigint",
            ],
        ),
        ("get".to_owned(), repo::SELECT_ONE, vec![id.as_str(), &user]),
        (
            "create".to_owned(),
            repo::INSERT,
            vec![
                "gen_random_uuid()",
                user.as_str(),
                "'benchmark'",
                "NULL::text",
                "false",
            ],
        ),
        // The id and the key from one random number per transaction (`KEYED_PRELUDE`): the
        // bare statement names the id four times, and each must be the same id.
        (
            "keyed".to_owned(),
            repo::CREATE_IDEMPOTENT,
            vec![
                "md5(:n::text)::uuid",
                user.as_str(),
                "'benchmark'",
                "NULL::text",
                "false",
                "('k' || :n)",
                "'\\x00'::bytea",
            ],
        ),
    ];
    // Toggles spread over the writer's tasks, one script each (pgbench picks one at random
    // per transaction), rather than all queueing for one row's lock.
    let toggles = ids.iter().enumerate().map(|(n, id)| {
        (
            format!("toggle-{n}"),
            repo::COMPLETE,
            vec![id.as_str(), &user, "NULL::boolean"],
        )
    });
    for (op, sql, values) in scripts.into_iter().chain(toggles) {
        let owner = if op == "list" { &lister } else { &user };
        let statement = with_literals(&sql.replace(repo::OWNER, owner), &values);
        let procedure = shared::procedures::all()
            .find(|procedure| procedure.sql == sql)
            .context("a benchmarked statement without a function")?;
        // `toggle-3` → `toggle-bare-3.sql`, `toggle-api-3.sql`.
        let (op, n) = match op.split_once('-') {
            Some((op, n)) => (op.to_owned(), format!("-{n}")),
            None => (op, String::new()),
        };
        let prelude = if op == "keyed" { KEYED_PRELUDE } else { "" };
        std::fs::write(
            dir.join(format!("{op}-bare{n}.sql")),
            format!("{prelude}{statement};\n"),
        )?;
        // What the API sends: the statement's function, with the context (a deadline far
        // ahead, the default 5 s budget) and the role switch for a superuser login only.
        for (suffix, switch_role) in [("api", true), ("api-login", false)] {
            let call_name = format!("'{}'", procedure.call_name(switch_role));
            let mut arguments = values.clone();
            arguments.extend([
                owner.as_str(),
                "'infinity'::timestamptz",
                "'5000ms'",
                call_name.as_str(),
            ]);
            std::fs::write(
                dir.join(format!("{op}-{suffix}{n}.sql")),
                format!("{prelude}{};\n", with_literals(&procedure.call, &arguments)),
            )?;
        }
    }
    Ok(())
}

/// A raw round trip of `sql` as a prepared statement (prepared once per statement), the
/// way the API sends it by default, with the parameter `owner` (`$1`, `$2`) where the
/// statement reads the owner from the row-level security context ([`repo::OWNER`]).
async fn raw_sql(
    client: &tokio_postgres::Client,
    sql: &str,
    owner: &str,
    params: &[(&(dyn ToSql + Sync), Type)],
) -> usize {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static PREPARED: Mutex<Option<HashMap<String, tokio_postgres::Statement>>> = Mutex::new(None);
    let cached = PREPARED
        .lock()
        .unwrap()
        .get_or_insert_with(HashMap::new)
        .get(sql)
        .cloned();
    let statement = match cached {
        Some(statement) => statement,
        None => {
            let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
            let statement = client
                .prepare_typed(&sql.replace(repo::OWNER, owner), &types)
                .await
                .expect("prepare the raw statement");
            PREPARED
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .insert(sql.to_owned(), statement.clone());
            statement
        }
    };
    let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
    client
        .query(&statement, &values)
        .await
        .expect("raw statement")
        .len()
}

/// The statement the handler of `op` runs, with the same parameters (`key`: the keyed
/// create's).
async fn raw_statement(
    client: &tokio_postgres::Client,
    op: &str,
    user: &str,
    list_user: &str,
    target: &Uuid,
    key: &str,
) -> usize {
    match op {
        "list" => {
            raw_sql(
                client,
                repo::list_statement(SortField::CreatedAt, SortOrder::Desc, false),
                "$1",
                &[
                    (&list_user, Type::TEXT),
                    (&None::<bool>, Type::BOOL),
                    (&None::<String>, Type::TEXT),
                    (&20i64, Type::INT8),
                    (&0i64, Type::INT8),
                ],
            )
            .await
        }
        "get" => {
            raw_sql(
                client,
                repo::SELECT_ONE,
                "$2",
                &[(target, Type::UUID), (&user, Type::TEXT)],
            )
            .await
        }
        "create" | "keyed" => {
            let id = Uuid::now_v7();
            let create: [(&(dyn ToSql + Sync), Type); 5] = [
                (&id, Type::UUID),
                (&user, Type::TEXT),
                (&"benchmark", Type::TEXT),
                (&None::<String>, Type::TEXT),
                (&false, Type::BOOL),
            ];
            if op == "create" {
                return raw_sql(client, repo::INSERT, "$2", &create).await;
            }
            let hash = key.as_bytes();
            let keyed = [
                (&key as &(dyn ToSql + Sync), Type::TEXT),
                (&hash, Type::BYTEA),
            ];
            raw_sql(
                client,
                repo::CREATE_IDEMPOTENT,
                "$2",
                &[&create[..], &keyed].concat(),
            )
            .await
        }
        "update" => {
            raw_sql(
                client,
                repo::UPDATE,
                "$2",
                &[
                    (target, Type::UUID),
                    (&user, Type::TEXT),
                    (&Some("renamed"), Type::TEXT),
                    (&false, Type::BOOL),
                    (&None::<String>, Type::TEXT),
                    (&None::<bool>, Type::BOOL),
                ],
            )
            .await
        }
        _ => {
            raw_sql(
                client,
                repo::COMPLETE,
                "$2",
                &[
                    (target, Type::UUID),
                    (&user, Type::TEXT),
                    (&None::<bool>, Type::BOOL),
                ],
            )
            .await
        }
    }
}

/// The listing function's planner settings as `options` for a session (`-c name=value …`);
/// they change nothing for the statements that reach one row by its key.
fn plan_options() -> String {
    let list = repo::list_statement(SortField::CreatedAt, SortOrder::Desc, false);
    let procedure = shared::procedures::all()
        .find(|procedure| procedure.sql == list)
        .expect("the listing is one of the repository's statements");
    let options: Vec<String> = procedure
        .guards
        .plan_settings()
        .map(|(name, value)| format!("-c {name}={value}"))
        .collect();
    options.join(" ")
}

/// `url` with [`plan_options`] for its sessions.
fn with_plan_settings(url: &str) -> String {
    let options = plan_options().replace(' ', "%20").replace('=', "%3D");
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options={options}")
}
