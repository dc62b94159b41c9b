//! The task repository: each operation is one SQL statement with the owner in its `WHERE`
//! clause, issued in one network round trip.

use std::collections::HashMap;

use tokio_postgres::types::{ToSql, Type};
use uuid::Uuid;

use crate::db::{Database, Effect};
use crate::error::ApiError;
use crate::listing::{ListQuery, SortField, SortOrder};
use crate::owner::Owner;
use crate::precondition::{create_fingerprint, IdempotencyKey};
use crate::procedures::{Guards, Returns};
use crate::record::Record;
use crate::task::{Completion, NewTask, Task, TaskChanges, TaskId};
use crate::validation::{FieldError, Source};

/// One page of a listing and the number of all matching tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskPage {
    pub tasks: Vec<Task>,
    pub total: i64,
}

/// Reads and writes tasks, always on behalf of one [`Owner`].
#[derive(Clone)]
pub struct TaskRepo {
    db: Database,
    /// Whether statements run in the owner's row-level security context (always, except
    /// in the benchmark that measures what that context costs).
    scoped: bool,
}

/// The owner, as the statements compare `user_id` with it: the user id of the row-level
/// security context, which every statement's function sets before the statement, written
/// exactly as the policy on `tasks` reads it. Postgres then sees one condition where a
/// second spelling (a parameter) would make two: it would derive that the parameter equals
/// the setting and check that once per call in a node of its own above the scan, about
/// 8,000 instructions of the get's 125,000 (callgrind, BENCHMARKS.md).
///
/// Every statement still takes the owner as a parameter, in the same place as before (`$1`
/// for a listing, `$2` otherwise): the creates store it, and a bare statement, without the
/// context, compares with it instead.
///
/// The columns of a domain type (`user_id`, `title`, `description`, `key`) are compared as
/// `::pg_catalog.text`: the built-in `text` operators, which Postgres finds first (in
/// `pg_catalog`), match exactly. Without the cast, an operator taking the domain exactly,
/// planted in a schema on the search path by anyone who may create there (`public`, before
/// PostgreSQL 15), would win and run inside every request. The cast is a relabelling: the
/// plan, and the one condition shared with the policy, are the same. The type is named with
/// its schema, as every type name the statements and their functions spell out is: a
/// pooler in transaction mode hands server connections on as they are, and a temporary
/// type that another client left on one (`pg_temp` is searched first for types, as for
/// tables) would otherwise take the name over (`pooler.rs`).
macro_rules! owner {
    () => {
        "current_setting('app.user_id', true)"
    };
}

/// [`owner!`], for [`TaskRepo::without_rls_context_for_benchmarks`] (which puts a parameter
/// in its place) and the tests.
pub const OWNER: &str = owner!();

/// A task's columns, as every statement returns them. The text columns are domains (their
/// length checks, migration V4) and are returned as text: each statement's function
/// returns its row as a `record` whose fields carry their types' OIDs, and the client
/// knows the built-in types' only ([`crate::record`]).
macro_rules! columns {
    () => {
        columns!("")
    };
    ($table:literal) => {
        concat!(
            $table,
            "id, ",
            $table,
            "user_id::pg_catalog.text AS user_id, ",
            $table,
            "title::pg_catalog.text AS title, ",
            $table,
            "description::pg_catalog.text AS description, ",
            $table,
            "completed, ",
            $table,
            "created_at, ",
            $table,
            "updated_at, ",
            $table,
            "version"
        )
    };
}

/// Every write bumps the version and moves `updated_at` forward, even within one clock tick.
macro_rules! touch {
    () => {
        "version = version + 1, updated_at = greatest(now(), updated_at + interval '1 microsecond')"
    };
}

/// The listing statement: the page, the total and nothing else, in one statement. The
/// `LEFT JOIN` yields one row with a NULL task when the page is empty, so the total is
/// always known. `$matched` is how the owner's matching rows are read: `""` reads them once
/// into the CTE, which the count and the sorted page then share; `"NOT MATERIALIZED "` has
/// the count and the page each read their own (see [`list_statement`]). `$filter` is
/// `filters!()` or, for a statement only ever called without filters, `""`.
macro_rules! list_sql {
    ($matched:literal, $filter:expr, $order:literal) => {
        concat!(
            "WITH matched AS ",
            $matched,
            "(SELECT ",
            columns!(),
            " FROM public.tasks WHERE user_id::pg_catalog.text = ",
            owner!(),
            $filter,
            ")",
            " SELECT c.total, p.* FROM (SELECT count(*) AS total FROM matched) c",
            " LEFT JOIN LATERAL (SELECT * FROM matched ORDER BY ",
            $order,
            " LIMIT $4 OFFSET $5) p ON true"
        )
    };
}

/// The listing's filters: by completion (`$2`) and by a search in the title and the
/// description (`$3`), each off when NULL.
macro_rules! filters {
    () => {
        concat!(
            " AND ($2::boolean IS NULL OR completed = $2)",
            " AND ($3::pg_catalog.text IS NULL OR title::pg_catalog.text ILIKE $3 ESCAPE '\\' OR description::pg_catalog.text ILIKE $3 ESCAPE '\\')"
        )
    };
}

/// The listing statement for a sort field and order, and whether the listing is filtered
/// (by completion or a search).
///
/// An unfiltered listing by creation time reads its page through the owner's index
/// `(user_id, created_at, id)`, in the index's order, and stops after `offset + limit`
/// rows; the count reads the owner's rows on its own ([`Guards::LIST_IN_INDEX_ORDER`]
/// keeps both on that index). Called only without filters, its statement has none, so the
/// count needs no column but the owner's and reads the index alone wherever the table's
/// pages are all visible (vacuumed): 354,915 → 307,554 instructions per call for an owner
/// of 20 tasks, 2,126,765 → 1,334,322 for 1,000. The other listings read the matching rows
/// once, for the count and a sort: there the page needs every row anyway (no index has
/// that order), and a selective filter would otherwise be evaluated on every row twice. Instructions per call
/// of the function (callgrind, BENCHMARKS.md), unfiltered by creation, the first page of 20:
/// 381,598 → 365,425 for an owner of 20 tasks, 852,631 → 524,136 for 100, 5,894,331 →
/// 2,259,499 for 1,000; the same form filtered by a search costs about twice the shared
/// read, and sorted by title 10–36% more.
pub fn list_statement(sort: SortField, order: SortOrder, filtered: bool) -> &'static str {
    use SortField::*;
    use SortOrder::*;
    match (sort, order, filtered) {
        (CreatedAt, Asc, false) => list_sql!("NOT MATERIALIZED ", "", "created_at ASC, id ASC"),
        (CreatedAt, Desc, false) => {
            list_sql!("NOT MATERIALIZED ", "", "created_at DESC, id DESC")
        }
        (CreatedAt, Asc, true) => list_sql!("", filters!(), "created_at ASC, id ASC"),
        (CreatedAt, Desc, true) => list_sql!("", filters!(), "created_at DESC, id DESC"),
        (UpdatedAt, Asc, _) => list_sql!("", filters!(), "updated_at ASC, id ASC"),
        (UpdatedAt, Desc, _) => list_sql!("", filters!(), "updated_at DESC, id DESC"),
        (Title, Asc, _) => list_sql!("", filters!(), "title ASC, id ASC"),
        (Title, Desc, _) => list_sql!("", filters!(), "title DESC, id DESC"),
    }
}

// The statements are `static`, not `const`: each is then one string at one address, by
// which `procedures::for_statement` finds its function without hashing the text.

/// Creates a task. The id is chosen before the first attempt, so if the connection dies
/// after the insert committed and the statement is repeated, the repeat returns the row
/// the first attempt wrote instead of creating a second task.
pub static INSERT: &str = concat!(
    "INSERT INTO public.tasks (id, user_id, title, description, completed) VALUES ($1, $2, $3, $4, $5) ",
    "ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id RETURNING ",
    columns!()
);

/// Reads one task of one owner.
pub static SELECT_ONE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM public.tasks WHERE id = $1 AND user_id::pg_catalog.text = ",
    owner!()
);

/// A partial update.
pub static UPDATE: &str = concat!(
    "UPDATE public.tasks SET title = coalesce($3, title),",
    " description = CASE WHEN $4 THEN $5 ELSE description END,",
    " completed = coalesce($6, completed), ",
    touch!(),
    " WHERE id = $1 AND user_id::pg_catalog.text = ",
    owner!(),
    " RETURNING ",
    columns!()
);

/// Sets or toggles the flag.
pub static COMPLETE: &str = concat!(
    "UPDATE public.tasks SET completed = coalesce($3, NOT completed), ",
    touch!(),
    " WHERE id = $1 AND user_id::pg_catalog.text = ",
    owner!(),
    " RETURNING ",
    columns!()
);

/// Deletes one task of one owner.
pub static DELETE: &str = concat!(
    "DELETE FROM public.tasks WHERE id = $1 AND user_id::pg_catalog.text = ",
    owner!(),
    " RETURNING ",
    columns!()
);

/// A write guarded by `If-Match`: `$1` id, `$2` owner (unread), and the allowed versions
/// in the last parameter. One statement tells apart "no such task" (`found` = 0) from "changed
/// since" (`found` = 1, no row written). `target` locks the row first (`FOR UPDATE`), so it
/// sees the row as the last committed write left it: a task deleted by a racing request
/// is not found (404), and the version compared is the one the write then applies to, so
/// of two racing writers with the same tag only one can win.
macro_rules! guarded {
    ($write:expr, $versions:literal) => {
        concat!(
            "WITH target AS (SELECT id, version AS locked_version FROM public.tasks WHERE id = $1 AND user_id::pg_catalog.text = ",
            owner!(),
            " FOR UPDATE), ",
            "written AS (",
            $write,
            " AND target.locked_version = ANY(",
            $versions,
            "::bigint[]) RETURNING ",
            columns!("t."),
            ") ",
            "SELECT (SELECT count(*) FROM target) AS found, w.* FROM (SELECT 1) AS one LEFT JOIN written w ON true"
        )
    };
}

static UPDATE_IF_MATCH: &str = guarded!(
    concat!(
        "UPDATE public.tasks t SET title = coalesce($3, t.title),",
        " description = CASE WHEN $4 THEN $5 ELSE t.description END,",
        " completed = coalesce($6, t.completed), ",
        touch!(),
        " FROM target WHERE t.id = target.id AND t.user_id::pg_catalog.text = ",
        owner!()
    ),
    "$7"
);

static COMPLETE_IF_MATCH: &str = guarded!(
    concat!(
        "UPDATE public.tasks t SET completed = coalesce($3, NOT t.completed), ",
        touch!(),
        " FROM target WHERE t.id = target.id AND t.user_id::pg_catalog.text = ",
        owner!()
    ),
    "$4"
);

static DELETE_IF_MATCH: &str = guarded!(
    concat!(
        "DELETE FROM public.tasks t USING target WHERE t.id = target.id AND t.user_id::pg_catalog.text = ",
        owner!()
    ),
    "$3"
);

/// How long an `Idempotency-Key` counts, as SQL: a key older than this is taken over by
/// the next create with it, and purged by any keyed create.
macro_rules! key_expired {
    ($created_at:literal) => {
        concat!($created_at, " < now() - interval '24 hours'")
    };
}

/// A create with an `Idempotency-Key`, in one statement: claim the key (or find who
/// claimed it: `ON CONFLICT DO UPDATE` returns the existing row even when it was committed
/// after this statement began), insert the task only when this request claimed it, and
/// return either. The insert tolerates its own id existing: when a repeat after a lost
/// connection finds the key claimed by its own first attempt (same id), that attempt
/// committed, and its task is returned (from the snapshot, or by the next repeat when it
/// committed after this statement began). An expired key is taken over. Up to 10 expired keys of anyone are
/// removed on the way, so old keys are cleaned up without a separate job: found and locked
/// first (`ARRAY(…)`, evaluated once), then deleted by their row addresses (a TID scan),
/// whatever the table's statistics say. Written as `(user_id, key) IN (…)`, the plan
/// chosen on a table without statistics (a new deployment's) read every key and ran the
/// search for expired ones again for each: 2,578,743 instructions per keyed create with a
/// few hundred keys, growing with them, against 494,501 now (callgrind, BENCHMARKS.md).
pub static CREATE_IDEMPOTENT: &str = concat!(
    "WITH claim AS (",
    "INSERT INTO public.idempotency_keys AS k (user_id, key, request_hash, task_id) VALUES ($2, $6, $7, $1) ",
    "ON CONFLICT (user_id, key) DO UPDATE SET ",
    "request_hash = CASE WHEN ", key_expired!("k.created_at"), " THEN EXCLUDED.request_hash ELSE k.request_hash END, ",
    "task_id = CASE WHEN ", key_expired!("k.created_at"), " THEN EXCLUDED.task_id ELSE k.task_id END, ",
    "created_at = CASE WHEN ", key_expired!("k.created_at"), " THEN now() ELSE k.created_at END ",
    "RETURNING k.task_id, k.request_hash), ",
    "purge AS (DELETE FROM public.idempotency_keys WHERE ctid = ANY (ARRAY(",
    "SELECT ctid FROM public.idempotency_keys WHERE ", key_expired!("created_at"), " ",
    "AND NOT (user_id = $2 AND key::pg_catalog.text = $6) LIMIT 10 FOR UPDATE SKIP LOCKED))), ",
    "created AS (INSERT INTO public.tasks (id, user_id, title, description, completed) ",
    "SELECT $1, $2, $3, $4, $5 FROM claim WHERE claim.task_id = $1 ON CONFLICT (id) DO NOTHING RETURNING ",
    columns!(),
    ") ",
    "SELECT claim.task_id = $1 AS claimed, claim.request_hash = $7 AS same_request, t.* FROM claim ",
    "LEFT JOIN LATERAL (SELECT * FROM created UNION ALL SELECT ",
    columns!(),
    " FROM public.tasks WHERE id = claim.task_id AND user_id::pg_catalog.text = ",
    owner!(),
    ") t ON true"
);

/// A statement as [`TaskRepo::without_rls_context_for_benchmarks`] runs it: the owner one
/// more parameter, after the statement's `params`, in the place of [`OWNER`]. Rewritten once
/// for every statement of [`statements`] (found by the address of its SQL, as
/// [`crate::procedures`] finds them), so that the benchmarks' baseline does no work per call
/// that an API without the context would not do.
fn bare_statement(sql: &str, params: usize) -> std::borrow::Cow<'static, str> {
    static BARE: std::sync::LazyLock<HashMap<(usize, usize), (usize, String)>> =
        std::sync::LazyLock::new(|| {
            statements()
                .into_iter()
                .map(|(sql, types, _, _)| {
                    let bare = sql.replace(OWNER, &format!("${}", types.len() + 1));
                    ((sql.as_ptr() as usize, sql.len()), (types.len(), bare))
                })
                .collect()
        });
    match BARE.get(&(sql.as_ptr() as usize, sql.len())) {
        Some((count, bare)) if *count == params => std::borrow::Cow::Borrowed(bare.as_str()),
        _ => std::borrow::Cow::Owned(sql.replace(OWNER, &format!("${}", params + 1))),
    }
}

/// Every statement a [`TaskRepo`] runs on behalf of an owner, with its parameter types, what
/// its function sets up before it ([`Guards`]: every write refuses a late start) and whether
/// it returns one row or a set ([`Returns`]: only the listings return a set): the
/// statements `migrate` installs as functions ([`crate::procedures`]). A statement missing
/// here, or run with other types, has no function, and fails with a 500.
pub fn statements() -> Vec<(&'static str, Vec<Type>, Guards, Returns)> {
    use SortField::*;
    use SortOrder::*;
    let list = [Type::TEXT, Type::BOOL, Type::TEXT, Type::INT8, Type::INT8];
    let update = [
        Type::UUID,
        Type::TEXT,
        Type::TEXT,
        Type::BOOL,
        Type::TEXT,
        Type::BOOL,
    ];
    let complete = [Type::UUID, Type::TEXT, Type::BOOL];
    let one = [Type::UUID, Type::TEXT];
    let guarded = |params: &[Type]| [params, &[Type::INT8_ARRAY]].concat();
    // Every listing reads filtered requests through the shared CTE; unfiltered ones too,
    // but for the two by creation time, which read in the index's order.
    let mut statements: Vec<(&'static str, Vec<Type>, Guards, Returns)> = Vec::new();
    for sort in [CreatedAt, UpdatedAt, Title] {
        for order in [Asc, Desc] {
            statements.push((
                list_statement(sort, order, true),
                list.to_vec(),
                Guards::LIST,
                Returns::Rows,
            ));
        }
    }
    for order in [Asc, Desc] {
        statements.push((
            list_statement(CreatedAt, order, false),
            list.to_vec(),
            Guards::LIST_IN_INDEX_ORDER,
            Returns::Rows,
        ));
    }
    statements.extend([
        (
            INSERT,
            vec![Type::UUID, Type::TEXT, Type::TEXT, Type::TEXT, Type::BOOL],
            Guards::WRITE,
            Returns::Row,
        ),
        (
            CREATE_IDEMPOTENT,
            vec![
                Type::UUID,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::BOOL,
                Type::TEXT,
                Type::BYTEA,
            ],
            // The purge of expired keys reaches them through `created_at`'s index.
            Guards::ALL,
            Returns::Row,
        ),
        (SELECT_ONE, one.to_vec(), Guards::READ, Returns::Row),
        (UPDATE, update.to_vec(), Guards::WRITE, Returns::Row),
        (
            UPDATE_IF_MATCH,
            guarded(&update),
            Guards::WRITE,
            Returns::Row,
        ),
        (COMPLETE, complete.to_vec(), Guards::WRITE, Returns::Row),
        (
            COMPLETE_IF_MATCH,
            guarded(&complete),
            Guards::WRITE,
            Returns::Row,
        ),
        (DELETE, one.to_vec(), Guards::WRITE, Returns::Row),
        (DELETE_IF_MATCH, guarded(&one), Guards::WRITE, Returns::Row),
    ]);
    statements
}

/// How a create with an `Idempotency-Key` ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// This request created the task.
    New(Task),
    /// An earlier request with the same key and body created it; nothing new was made.
    Replayed(Task),
}

fn task_from_row(row: &Record, offset: usize) -> anyhow::Result<Task> {
    Ok(Task {
        id: row.try_get(offset)?,
        user_id: row.try_get(offset + 1)?,
        title: row.try_get(offset + 2)?,
        description: row.try_get(offset + 3)?,
        completed: row.try_get(offset + 4)?,
        created_at: row.try_get(offset + 5)?,
        updated_at: row.try_get(offset + 6)?,
        version: row.try_get(offset + 7)?,
    })
}

fn decode_error(err: anyhow::Error) -> ApiError {
    ApiError::Internal(err.context("decoding a task row"))
}

fn one_task(rows: Vec<Record>) -> Result<Task, ApiError> {
    let row = rows.first().ok_or(ApiError::NotFound)?;
    task_from_row(row, 0).map_err(decode_error)
}

fn idempotency_key_reused(key: &IdempotencyKey, message: &str) -> ApiError {
    ApiError::Validation(vec![FieldError::new(
        Source::Header,
        "Idempotency-Key",
        "idempotency_key_reused",
        message,
        serde_json::Value::from(key.as_str()),
    )])
}

/// Reads the result of a [`guarded!`] statement.
fn guarded_outcome(rows: Vec<Record>, versions: &[i64]) -> Result<Task, ApiError> {
    let row = rows
        .first()
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("guarded write returned no row")))?;
    let found: i64 = row.try_get(0).map_err(decode_error)?;
    if found == 0 {
        return Err(ApiError::NotFound);
    }
    if row
        .try_get::<Option<Uuid>>(1)
        .map_err(decode_error)?
        .is_none()
    {
        return Err(ApiError::PreconditionFailed {
            unmatchable: versions.is_empty(),
        });
    }
    task_from_row(row, 1).map_err(decode_error)
}

impl TaskRepo {
    pub fn new(db: Database) -> Self {
        TaskRepo { db, scoped: true }
    }

    /// A repository whose statements run bare, without the transaction, role and user id
    /// of the row-level security context: only for measuring what that context costs
    /// (the benchmarks). With a role that does not bypass RLS it would see no rows at all.
    #[doc(hidden)]
    pub fn without_rls_context_for_benchmarks(db: Database) -> Self {
        TaskRepo { db, scoped: false }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Opens the first connection (cold start).
    pub async fn warm_up(&self) {
        self.db.warm_up().await;
    }

    /// Every statement runs in the owner's row-level security context.
    ///
    /// [`TaskRepo::run_within`]'s future, not an `async fn` of its own (see
    /// [`Database::query_as`]).
    fn run<'a>(
        &'a self,
        effect: Effect,
        owner: &'a Owner,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl std::future::Future<Output = Result<Vec<Record>, ApiError>> + 'a {
        self.run_within(effect, owner, sql, params, None)
    }

    /// [`TaskRepo::run`] as one of several calls of a request, within the first one's
    /// deadline ([`Database::query_as_within`]).
    async fn run_within(
        &self,
        effect: Effect,
        owner: &Owner,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
        deadline: Option<&mut Option<std::time::Instant>>,
    ) -> Result<Vec<Record>, ApiError> {
        if self.scoped {
            self.db
                .query_as_within(effect, owner.as_str(), sql, params, deadline)
                .await
        } else {
            // No context to read the owner from: it is one more parameter.
            let sql = bare_statement(sql, params.len());
            let owner = owner.as_str();
            let mut params = params.to_vec();
            params.push((&owner, Type::TEXT));
            let rows = self.db.query_unscoped(&sql, &params).await?;
            rows.iter()
                .map(Record::from_row)
                .collect::<anyhow::Result<_>>()
                .map_err(decode_error)
        }
    }

    /// Runs a write that returns the task: `plain` without `If-Match`; with it, the
    /// [`guarded!`] form, given the allowed versions as its last parameter (404 vs 412).
    async fn write(
        &self,
        owner: &Owner,
        (plain, guarded): (&str, &str),
        params: &[(&(dyn ToSql + Sync), Type)],
        versions: Option<&[i64]>,
    ) -> Result<Task, ApiError> {
        let Some(versions) = versions else {
            return one_task(self.run(Effect::Write, owner, plain, params).await?);
        };
        let mut guarded_params = params.to_vec();
        guarded_params.push((&versions, Type::INT8_ARRAY));
        guarded_outcome(
            self.run(Effect::Write, owner, guarded, &guarded_params)
                .await?,
            versions,
        )
    }

    pub async fn list(&self, owner: &Owner, query: &ListQuery) -> Result<TaskPage, ApiError> {
        let search = query.search_pattern();
        let rows = self
            .run(
                Effect::Read,
                owner,
                list_statement(
                    query.sort,
                    query.order,
                    query.completed.is_some() || search.is_some(),
                ),
                &[
                    (&owner.as_str(), Type::TEXT),
                    (&query.completed, Type::BOOL),
                    (&search, Type::TEXT),
                    (&query.limit, Type::INT8),
                    (&query.offset, Type::INT8),
                ],
            )
            .await?;
        let mut total = 0;
        let mut tasks = Vec::with_capacity(rows.len());
        for row in &rows {
            total = row.try_get(0).map_err(decode_error)?;
            if row
                .try_get::<Option<Uuid>>(1)
                .map_err(decode_error)?
                .is_some()
            {
                tasks.push(task_from_row(row, 1).map_err(decode_error)?);
            }
        }
        Ok(TaskPage { tasks, total })
    }

    pub async fn create(&self, owner: &Owner, task: &NewTask) -> Result<Task, ApiError> {
        let id = Uuid::now_v7();
        let rows = self
            .run(
                // The id is chosen before the first attempt, so a repeat returns the row
                // the first attempt wrote instead of creating a second task.
                Effect::RepeatableWrite,
                owner,
                INSERT,
                &[
                    (&id, Type::UUID),
                    (&owner.as_str(), Type::TEXT),
                    (&task.title.as_str(), Type::TEXT),
                    (&task.description.as_deref(), Type::TEXT),
                    (&task.completed, Type::BOOL),
                ],
            )
            .await?;
        one_task(rows)
    }

    pub async fn get(&self, owner: &Owner, id: TaskId) -> Result<Task, ApiError> {
        let rows = self
            .run(
                Effect::Read,
                owner,
                SELECT_ONE,
                &[(&id.0, Type::UUID), (&owner.as_str(), Type::TEXT)],
            )
            .await?;
        one_task(rows)
    }

    /// Applies a partial update; with `versions`, only to a task at one of them (412).
    pub async fn update(
        &self,
        owner: &Owner,
        id: TaskId,
        changes: &TaskChanges,
        versions: Option<&[i64]>,
    ) -> Result<Task, ApiError> {
        let title = changes.title.as_ref().map(|t| t.as_str());
        let set_description = changes.description.is_some();
        let description = changes.description.as_ref().and_then(|d| d.as_deref());
        let owner_id = owner.as_str();
        let params: [(&(dyn ToSql + Sync), Type); _] = [
            (&id.0, Type::UUID),
            (&owner_id, Type::TEXT),
            (&title, Type::TEXT),
            (&set_description, Type::BOOL),
            (&description, Type::TEXT),
            (&changes.completed, Type::BOOL),
        ];
        self.write(owner, (UPDATE, UPDATE_IF_MATCH), &params, versions)
            .await
    }

    /// Sets or toggles the flag; with `versions`, only at one of them (412).
    pub async fn complete(
        &self,
        owner: &Owner,
        id: TaskId,
        completion: Completion,
        versions: Option<&[i64]>,
    ) -> Result<Task, ApiError> {
        let completed = match completion {
            Completion::Toggle => None,
            Completion::Set(value) => Some(value),
        };
        let owner_id = owner.as_str();
        let params: [(&(dyn ToSql + Sync), Type); _] = [
            (&id.0, Type::UUID),
            (&owner_id, Type::TEXT),
            (&completed, Type::BOOL),
        ];
        self.write(owner, (COMPLETE, COMPLETE_IF_MATCH), &params, versions)
            .await
    }

    /// Deletes; with `versions`, only a task at one of them (412).
    pub async fn delete(
        &self,
        owner: &Owner,
        id: TaskId,
        versions: Option<&[i64]>,
    ) -> Result<(), ApiError> {
        let owner_id = owner.as_str();
        let params: [(&(dyn ToSql + Sync), Type); _] =
            [(&id.0, Type::UUID), (&owner_id, Type::TEXT)];
        self.write(owner, (DELETE, DELETE_IF_MATCH), &params, versions)
            .await
            .map(drop)
    }

    /// Creates a task once per `Idempotency-Key`: a retry with the same key and body gets
    /// the task the first request created, from any instance; another body is a 422.
    pub async fn create_idempotent(
        &self,
        owner: &Owner,
        task: &NewTask,
        key: &IdempotencyKey,
    ) -> Result<Created, ApiError> {
        let id = Uuid::now_v7();
        let fingerprint = create_fingerprint(task);
        let params: [(&(dyn ToSql + Sync), Type); 7] = [
            (&id, Type::UUID),
            (&owner.as_str(), Type::TEXT),
            (&task.title.as_str(), Type::TEXT),
            (&task.description.as_deref(), Type::TEXT),
            (&task.completed, Type::BOOL),
            (&key.as_str(), Type::TEXT),
            (&fingerprint, Type::BYTEA),
        ];
        // A concurrent duplicate can find the key claimed by a transaction that committed
        // after this statement's snapshot was taken, so that its task is not yet visible;
        // the same statement again sees it. It is safe to repeat: the key decides. All of it
        // within the first call's deadline.
        let mut deadline = None;
        for _ in 0..3 {
            let rows = self
                .run_within(
                    Effect::RepeatableWrite,
                    owner,
                    CREATE_IDEMPOTENT,
                    &params,
                    Some(&mut deadline),
                )
                .await?;
            let row = rows.first().ok_or_else(|| {
                ApiError::Internal(anyhow::anyhow!("idempotent create returned no row"))
            })?;
            let claimed: bool = row.try_get(0).map_err(decode_error)?;
            let same_request: bool = row.try_get(1).map_err(decode_error)?;
            if !same_request {
                return Err(idempotency_key_reused(
                    key,
                    "Idempotency-Key was already used with a different request body",
                ));
            }
            if row
                .try_get::<Option<Uuid>>(2)
                .map_err(decode_error)?
                .is_some()
            {
                let task = task_from_row(row, 2).map_err(decode_error)?;
                return Ok(if claimed {
                    Created::New(task)
                } else {
                    Created::Replayed(task)
                });
            }
            if claimed {
                // This request's own first attempt committed the task (the repeat after a
                // lost connection found the key claimed with this request's id), after this
                // statement's snapshot: created. What follows can only fail to read it back,
                // which must not be answered as a create that did not happen.
                let read = self
                    .run_within(
                        Effect::Read,
                        owner,
                        SELECT_ONE,
                        &[(&id, Type::UUID), (&owner.as_str(), Type::TEXT)],
                        Some(&mut deadline),
                    )
                    .await
                    .and_then(one_task);
                return match read {
                    Ok(task) => Ok(Created::New(task)),
                    Err(err) => Err(ApiError::OutcomeUnknown(
                        anyhow::Error::new(err).context("created, but not read back"),
                    )),
                };
            }
            tokio::task::yield_now().await;
        }
        Err(idempotency_key_reused(
            key,
            "Idempotency-Key belongs to a task that no longer exists",
        ))
    }
}
