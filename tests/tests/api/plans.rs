//! How Postgres plans the statements' functions, counted with `debug_print_plan` (Postgres
//! sends every plan it makes to a client that asks for `LOG` messages).

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use shared::listing::{SortField, SortOrder};
use shared::record::Record;
use shared::{procedures, repo};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, NoTls};

/// A connection to `url` that prints every plan Postgres makes into the returned list (and
/// the task that collects them).
async fn printing_plans(
    url: &str,
) -> (
    tokio_postgres::Client,
    Arc<Mutex<Vec<String>>>,
    tokio::task::JoinHandle<()>,
) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    let plans = Arc::new(Mutex::new(Vec::new()));
    let printed = plans.clone();
    let messages = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notice(notice)) if notice.message() == "plan:" => {
                    let plan = notice.detail().unwrap_or_default().to_owned();
                    printed.lock().unwrap().push(plan);
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute("SET debug_print_plan = on; SET client_min_messages = log")
        .await
        .unwrap();
    (client, plans, messages)
}

/// A request deadline two minutes ahead, as the functions take it.
fn deadline() -> SystemTime {
    SystemTime::now() + std::time::Duration::from_secs(120)
}

/// The plans Postgres makes during each of 16 calls of the listing's function on a warm
/// connection, as it prints them, in a database of its own filled by `seed` (with `$1`, the
/// lister, who gets 20 tasks).
async fn plans_of_the_listing(seed: &str) -> Vec<Vec<String>> {
    // A database of its own: its statistics must not change under the other tests.
    let url = tests::new_database("plans").await;
    tests::migrate_with(&url, None);

    let (client, plans, messages) = printing_plans(&url).await;

    let lister = tests::user_id();
    client.execute(seed, &[&lister]).await.unwrap();
    client
        .execute(
            "INSERT INTO tasks (id, user_id, title) \
             SELECT gen_random_uuid(), $1::text, 'task' FROM generate_series(1, 20)",
            &[&lister],
        )
        .await
        .unwrap();
    // Analyzed, and vacuumed as autovacuum would have: the visibility map lets the count
    // read the index alone.
    client.batch_execute("VACUUM ANALYZE tasks").await.unwrap();

    let types = [Type::TEXT, Type::BOOL, Type::TEXT, Type::INT8, Type::INT8];
    let procedure = procedures::for_statement(
        repo::list_statement(SortField::CreatedAt, SortOrder::Desc, false),
        &types,
    );
    let call = client
        .prepare_typed(&procedure.call, procedure.call_types())
        .await
        .unwrap();
    let deadline = deadline();
    let mut per_call = Vec::new();
    for _ in 0..16 {
        let rows = client
            .query(
                &call,
                &[
                    &lister,
                    &None::<bool>,
                    &None::<String>,
                    &20_i64,
                    &0_i64,
                    &lister,
                    &deadline,
                    &"5000ms",
                    // The test logs in as the superuser: the function switches to todo_app.
                    &procedure.call_name(true),
                ],
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 20, "the lister's 20 tasks");
        per_call.push(std::mem::take(&mut *plans.lock().unwrap()));
    }
    assert!(
        per_call.iter().any(|plans| !plans.is_empty()),
        "debug_print_plan showed no plan at all: the test proves nothing"
    );

    drop(client);
    messages.abort();
    tests::drop_database(&url).await;
    per_call
}

/// When a few users hold most of the table, Postgres's plan for an average user looks worse
/// than the plan for any one small user, and left to choose, Postgres plans the listing
/// anew at every call (two to three times the Postgres CPU of a list request in the
/// benchmark).
/// The functions plan each statement once per connection.
#[tokio::test]
async fn on_a_skewed_table_the_listing_is_planned_once_per_connection() {
    // Three users with 4,000 tasks each, 200 with 10.
    let per_call = plans_of_the_listing(
        "WITH unused AS (SELECT $1::text) \
         INSERT INTO tasks (id, user_id, title) \
         SELECT gen_random_uuid(), 'heavy-' || (n % 3), 'task' FROM generate_series(1, 12000) n \
         UNION ALL \
         SELECT gen_random_uuid(), 'light-' || (n % 200), 'task' FROM generate_series(1, 2000) n",
    )
    .await;
    // The first calls plan (the call itself is planned for its first five executions);
    // after them, nothing should, but for an autovacuum ANALYZE landing among them.
    let planned_late: usize = per_call[8..].iter().map(Vec::len).sum();
    assert!(
        planned_late <= 1,
        "the listing was planned {planned_late} times in 8 calls on a warm connection"
    );
}

/// With only a handful of users, the plan for an average user reads the whole table; the
/// functions never scan it sequentially, so a small user's list stays cheap next to a
/// user with 30,000 tasks. And the unfiltered listing by creation time reads its page
/// through the owner's index in the index's order, sorting nothing: what a page costs does
/// not grow with the owner's tasks (the count still reads them all).
#[tokio::test]
async fn with_two_users_a_small_list_does_not_scan_the_table_nor_sort() {
    let per_call = plans_of_the_listing(
        "INSERT INTO tasks (id, user_id, title) \
         SELECT gen_random_uuid(), 'heavy-' || $1, 'task' FROM generate_series(1, 30000)",
    )
    .await;
    for plan in per_call.iter().flatten() {
        assert!(!plan.contains("{SEQSCAN"), "a sequential scan: {plan}");
        assert!(!plan.contains("{SORT"), "a sort: {plan}");
        assert!(!plan.contains("{BITMAPHEAPSCAN"), "a bitmap scan: {plan}");
    }
    // Without filters in its statement (only ever called without any), the count needs no
    // column but the owner's, and reads the index alone.
    let statement = per_call
        .iter()
        .flatten()
        .find(|plan| plan.contains("{LIMIT"))
        .expect("the statement's plan");
    assert!(
        statement.contains("{INDEXONLYSCAN"),
        "the count reads the table: {statement}"
    );
}

/// The statements compare `user_id` with the row-level security context spelled as the
/// policy spells it (`repo::OWNER`). Compared with a parameter instead, Postgres derives
/// that the parameter equals the setting and checks it in a node of its own above the
/// scan (a `Result` with a one-time filter, `resconstantqual`): about 8,000 instructions
/// of a get's 125,000.
#[tokio::test]
async fn no_statement_checks_its_owner_in_a_node_of_its_own() {
    let (client, plans, messages) = printing_plans(tests::database_url()).await;
    let owner = tests::user_id();
    let id = uuid::Uuid::new_v4();
    client
        .execute(
            "INSERT INTO tasks (id, user_id, title) VALUES ($1, $2::text, 'task')",
            &[&id, &owner],
        )
        .await
        .unwrap();
    let none_bool = None::<bool>;
    let none_text = None::<String>;
    let (title, no, limit, offset) = (Some("renamed"), false, 20_i64, 0_i64);
    let with_id: [&(dyn ToSql + Sync); 2] = [&id, &owner];
    let listing: [&(dyn ToSql + Sync); 5] = [&owner, &none_bool, &none_text, &limit, &offset];
    let mut calls: Vec<(&str, Vec<&(dyn ToSql + Sync)>)> = vec![
        (repo::SELECT_ONE, with_id.to_vec()),
        (
            repo::UPDATE,
            vec![&id, &owner, &title, &no, &none_text, &none_bool],
        ),
        (repo::COMPLETE, vec![&id, &owner, &none_bool]),
    ];
    for sort in [SortField::CreatedAt, SortField::UpdatedAt, SortField::Title] {
        for filtered in [false, true] {
            calls.push((
                repo::list_statement(sort, SortOrder::Desc, filtered),
                listing.to_vec(),
            ));
        }
    }
    calls.push((repo::DELETE, with_id.to_vec()));

    let deadline = deadline();
    let lock_timeout = "5000ms";
    for (sql, params) in calls {
        let procedure = procedures::all()
            .find(|procedure| procedure.sql == sql)
            .expect("a statement of the repository");
        // The test logs in as the superuser: the function switches to todo_app.
        let call_name = procedure.call_name(true);
        let mut arguments = params;
        arguments.extend([
            &owner as &(dyn ToSql + Sync),
            &deadline,
            &lock_timeout,
            &call_name,
        ]);
        let rows = client.query(&procedure.call, &arguments).await.unwrap();
        let found = match procedure.returns {
            procedures::Returns::Rows => !rows.is_empty(),
            procedures::Returns::Row => rows[0]
                .get::<_, Option<Record>>(0)
                .is_some_and(|row| !row.is_no_row()),
        };
        assert!(found, "{sql}: the owner's task was not found");
        let printed = std::mem::take(&mut *plans.lock().unwrap());
        assert!(
            !printed.is_empty(),
            "{sql}: no plan printed, the test proves nothing"
        );
        for plan in printed {
            assert!(
                !plan.contains(":resconstantqual ("),
                "{sql}: the owner checked in a node of its own: {plan}"
            );
        }
    }
    drop(client);
    messages.abort();
}

/// A keyed create purges up to 10 expired keys by their row addresses, found first: its
/// cost does not depend on how many keys the table holds, nor on its statistics. (Planned
/// on a table without statistics, as a new deployment's is, the purge written as
/// `(user_id, key) IN (…)` read every key and searched for expired ones again for each.)
#[tokio::test]
async fn a_keyed_create_purges_expired_keys_by_their_addresses() {
    let url = tests::new_database("purge").await;
    tests::migrate_with(&url, None);
    let (client, plans, messages) = printing_plans(&url).await;
    let procedure = procedures::all()
        .find(|procedure| {
            procedure
                .sql
                .contains("INSERT INTO public.idempotency_keys")
        })
        .expect("the keyed create's statement");
    let owner = tests::user_id();
    let (title, description, completed) = ("task", None::<String>, false);
    let (deadline, lock_timeout) = (deadline(), "5000ms");
    let call_name = procedure.call_name(true);
    for n in 0..3 {
        let (id, key, hash) = (uuid::Uuid::new_v4(), format!("key-{n}"), vec![n as u8]);
        let arguments: [&(dyn ToSql + Sync); 11] = [
            &id,
            &owner,
            &title,
            &description,
            &completed,
            &key,
            &hash,
            &owner,
            &deadline,
            &lock_timeout,
            &call_name,
        ];
        let rows = client.query(&procedure.call, &arguments).await.unwrap();
        let row: Record = rows[0].get(0);
        assert!(row.try_get::<bool>(0).unwrap(), "claimed: the created task");
    }
    let printed = std::mem::take(&mut *plans.lock().unwrap());
    let statement = printed
        .iter()
        .find(|plan| plan.contains(":relname idempotency_keys") || plan.contains("{MODIFYTABLE"))
        .expect("the statement's plan");
    assert!(
        printed.iter().any(|plan| plan.contains("{TIDSCAN")),
        "the purge does not delete by row address: {statement}"
    );
    drop(client);
    messages.abort();
    tests::drop_database(&url).await;
}
