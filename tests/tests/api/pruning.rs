//! `migrate --prune`: the statement functions (and row types) of releases older than the
//! one before this are dropped; this release's, the previous one's (for a rollback) and
//! the API keep working. Each test has a database of its own: pruning drops the functions
//! that other tests install.

use serde_json::json;
use shared::db::Effect;
use shared::procedures::{self, Guards, Procedure};
use tests::{env, state_with, user_id, ApiEvent};
use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::tasks_path;

async fn migrated_database(prefix: &str) -> (String, Client) {
    let url = tests::new_database(prefix).await;
    tests::migrate_with(&url, None);
    let client = shared::db::connect_once(&url, None, std::time::Duration::from_secs(10))
        .await
        .expect("connect");
    (url, client)
}

/// The function of a statement no release of the API has, installed as a release before
/// template 8 installed its functions: returning its rows as a set of a row type of its own
/// (a column of its own name).
async fn earlier_function(client: &Client, column: &str) -> (Procedure, String) {
    let procedure = Procedure::new(
        &format!("SELECT $1::text AS {column}"),
        &[Type::TEXT],
        Guards::READ,
    );
    let row = procedure.name.replace(".q_", ".r_");
    client
        .batch_execute(&format!(
            "CREATE TYPE {row} AS ({column} text); \
             CREATE FUNCTION {}(p1 text, ctx_user text, ctx_deadline_ms bigint, \
             ctx_lock_budget_ms bigint, ctx_switch_role boolean) RETURNS SETOF {row} \
             LANGUAGE plpgsql AS $f$ BEGIN RETURN QUERY {}; END $f$",
            procedure.name, procedure.sql
        ))
        .await
        .expect("install");
    (procedure, row)
}

async fn record(client: &Client, id: &str, functions: &[&str], days_ago: i32) {
    client
        .execute(
            "INSERT INTO todo_api.releases (id, functions, installed_at) \
             VALUES ($1, $2, now() - make_interval(days => $3))",
            &[&id, &functions, &days_ago],
        )
        .await
        .expect("record a release");
}

/// Whether the function `name` exists (`lookup` = `to_regproc`), or the type
/// (`to_regtype`).
async fn found(client: &Client, lookup: &str, name: &str) -> bool {
    client
        .query_one(&format!("SELECT {lookup}($1) IS NOT NULL"), &[&name])
        .await
        .unwrap()
        .get(0)
}

async fn exists(client: &Client, function: &str) -> bool {
    found(client, "to_regproc", function).await
}

async fn type_exists(client: &Client, name: &str) -> bool {
    found(client, "to_regtype", name).await
}

fn current() -> Vec<String> {
    procedures::all().map(|p| p.name.clone()).collect()
}

/// The API still creates and lists on `url`.
async fn api_works(url: &str) {
    let state = state_with(env(&[("DATABASE_URL", url)]));
    let user = user_id();
    ApiEvent::post(&tasks_path(&user))
        .as_user(&user)
        .json(&json!({"title": "after pruning"}))
        .send(&state)
        .await
        .assert_status(201);
    let listed = ApiEvent::get(&tasks_path(&user))
        .as_user(&user)
        .send(&state)
        .await;
    listed.assert_status(200);
    assert_eq!(listed.titles(), ["after pruning"]);
}

#[tokio::test]
async fn prune_drops_what_neither_this_release_nor_the_one_before_calls() {
    let (url, mut client) = migrated_database("prune").await;
    let (oldest, oldest_type) = earlier_function(&client, "oldest_column").await;
    let (previous, previous_type) = earlier_function(&client, "previous_column").await;
    let current = current();
    // The oldest release also called one of this release's functions: that one stays.
    record(
        &client,
        "oldest",
        &[oldest.name.as_str(), current[0].as_str()],
        2,
    )
    .await;
    record(&client, "previous", &[previous.name.as_str()], 1).await;

    let (applied, pruned) = migrations::prune(&mut client).await.expect("prune");
    assert_eq!(applied, Vec::<String>::new());
    assert_eq!(pruned.releases, ["oldest"]);
    assert_eq!(pruned.functions, std::slice::from_ref(&oldest.name));
    assert_eq!(pruned.types, std::slice::from_ref(&oldest_type));
    assert!(!exists(&client, &oldest.name).await);
    assert!(!type_exists(&client, &oldest_type).await);
    assert!(exists(&client, &previous.name).await, "kept for a rollback");
    assert!(type_exists(&client, &previous_type).await);
    for name in &current {
        assert!(exists(&client, name).await, "{name}");
    }
    let releases: i64 = client
        .query_one("SELECT count(*) FROM todo_api.releases", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(releases, 2);
    api_works(&url).await;
    // An instance of the pruned release still running would fail its calls with a 500,
    // having done nothing.
    let state = state_with(env(&[("DATABASE_URL", url.as_str())]));
    let user = user_id();
    let pruned_call = state
        .tasks
        .database()
        .query_as(Effect::Write, &user, &oldest.sql, &[(&user, Type::TEXT)])
        .await
        .expect_err("the function of a pruned release is gone");
    assert_eq!(pruned_call.status(), 500);

    // Nothing more to drop: pruning again changes nothing.
    let (_, again) = migrations::prune(&mut client).await.expect("prune again");
    assert_eq!(again, migrations::Pruned::default());
    assert!(exists(&client, &previous.name).await);
    drop(client);
    tests::drop_database(&url).await;
}

/// A database migrated before releases were recorded has functions and no release: they
/// are recorded as the release before this one, so the first prune keeps them (a rollback
/// to that release works) and a later one drops them.
#[tokio::test]
async fn functions_from_before_the_records_count_as_the_previous_release() {
    let (url, mut client) = migrated_database("prune_unrecorded").await;
    let (unrecorded, unrecorded_type) = earlier_function(&client, "unrecorded_column").await;
    client
        .batch_execute("DELETE FROM todo_api.releases")
        .await
        .unwrap();

    let (_, pruned) = migrations::prune(&mut client).await.expect("prune");
    assert_eq!(pruned, migrations::Pruned::default());
    assert!(exists(&client, &unrecorded.name).await);
    let recorded: Vec<String> = client
        .query_one(
            "SELECT functions FROM todo_api.releases WHERE id = 'before-release-records'",
            &[],
        )
        .await
        .expect("the functions found are recorded as a release")
        .get(0);
    assert!(recorded.contains(&unrecorded.name), "{recorded:?}");

    // A release in between makes the unrecorded one two releases old.
    client
        .execute(
            "UPDATE todo_api.releases SET installed_at = now() - interval '2 days' \
             WHERE id = 'before-release-records'",
            &[],
        )
        .await
        .unwrap();
    let current = current();
    let current: Vec<&str> = current.iter().map(String::as_str).collect();
    record(&client, "in-between", &current, 1).await;
    let (_, pruned) = migrations::prune(&mut client).await.expect("prune");
    assert_eq!(pruned.releases, ["before-release-records"]);
    assert_eq!(pruned.functions, std::slice::from_ref(&unrecorded.name));
    assert_eq!(pruned.types, [unrecorded_type]);
    api_works(&url).await;
    drop(client);
    tests::drop_database(&url).await;
}

/// A release migrated but never deployed (its `sam deploy` failed, or `scripts/dev` ran
/// against this database) is recorded as the release before this one, so `--prune` would
/// drop the functions of the one that served before. `--keep 3` keeps them.
#[tokio::test]
async fn prune_keeping_three_keeps_the_release_before_one_never_deployed() {
    let (url, mut client) = migrated_database("prune_keep").await;
    let (served, served_type) = earlier_function(&client, "served_column").await;
    let (abandoned, _) = earlier_function(&client, "abandoned_column").await;
    let (oldest, _) = earlier_function(&client, "oldest_column").await;
    record(&client, "oldest", &[oldest.name.as_str()], 3).await;
    record(&client, "served", &[served.name.as_str()], 2).await;
    record(&client, "abandoned", &[abandoned.name.as_str()], 1).await;

    let refused = migrations::prune_keeping(&mut client, 1)
        .await
        .expect_err("this release alone leaves nothing for a rollback");
    assert!(format!("{refused:#}").contains("at least 2"), "{refused:#}");
    assert!(exists(&client, &oldest.name).await, "nothing dropped");

    let (_, pruned) = migrations::prune_keeping(&mut client, 3)
        .await
        .expect("prune");
    assert_eq!(pruned.releases, ["oldest"]);
    assert_eq!(pruned.functions, std::slice::from_ref(&oldest.name));
    assert!(exists(&client, &served.name).await, "kept for a rollback");
    assert!(type_exists(&client, &served_type).await);
    assert!(exists(&client, &abandoned.name).await);
    api_works(&url).await;
    drop(client);
    tests::drop_database(&url).await;
}
