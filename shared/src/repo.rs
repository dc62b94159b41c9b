//! The task repository: each operation is one SQL statement with the owner in its `WHERE`
//! clause, issued in one network round trip.

use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use uuid::Uuid;

use crate::db::Database;
use crate::error::ApiError;
use crate::listing::{ListQuery, SortField, SortOrder};
use crate::owner::Owner;
use crate::task::{Completion, NewTask, Task, TaskChanges, TaskId};

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
}

macro_rules! columns {
    () => {
        "id, user_id, title, description, completed, created_at, updated_at, version"
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
/// always known.
macro_rules! list_sql {
    ($order:literal) => {
        concat!(
            "WITH matched AS (SELECT ",
            columns!(),
            " FROM tasks WHERE user_id = $1",
            " AND ($2::boolean IS NULL OR completed = $2)",
            " AND ($3::text IS NULL OR title ILIKE $3 ESCAPE '\\' OR description ILIKE $3 ESCAPE '\\'))",
            " SELECT c.total, p.* FROM (SELECT count(*) AS total FROM matched) c",
            " LEFT JOIN LATERAL (SELECT * FROM matched ORDER BY ",
            $order,
            " LIMIT $4 OFFSET $5) p ON true"
        )
    };
}

fn list_statement(sort: SortField, order: SortOrder) -> &'static str {
    use SortField::*;
    use SortOrder::*;
    match (sort, order) {
        (CreatedAt, Asc) => list_sql!("created_at ASC, id ASC"),
        (CreatedAt, Desc) => list_sql!("created_at DESC, id DESC"),
        (UpdatedAt, Asc) => list_sql!("updated_at ASC, id ASC"),
        (UpdatedAt, Desc) => list_sql!("updated_at DESC, id DESC"),
        (Title, Asc) => list_sql!("title ASC, id ASC"),
        (Title, Desc) => list_sql!("title DESC, id DESC"),
    }
}

const INSERT: &str = concat!(
    "INSERT INTO tasks (id, user_id, title, description, completed) VALUES ($1, $2, $3, $4, $5) RETURNING ",
    columns!()
);

const SELECT_ONE: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM tasks WHERE id = $1 AND user_id = $2"
);

const UPDATE: &str = concat!(
    "UPDATE tasks SET title = coalesce($3, title),",
    " description = CASE WHEN $4 THEN $5 ELSE description END,",
    " completed = coalesce($6, completed), ",
    touch!(),
    " WHERE id = $1 AND user_id = $2 RETURNING ",
    columns!()
);

const COMPLETE: &str = concat!(
    "UPDATE tasks SET completed = coalesce($3, NOT completed), ",
    touch!(),
    " WHERE id = $1 AND user_id = $2 RETURNING ",
    columns!()
);

const DELETE: &str = "DELETE FROM tasks WHERE id = $1 AND user_id = $2 RETURNING id";

fn task_from_row(row: &Row, offset: usize) -> Result<Task, tokio_postgres::Error> {
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

fn decode_error(err: tokio_postgres::Error) -> ApiError {
    ApiError::Internal(anyhow::Error::new(err).context("decoding a task row"))
}

fn one_task(rows: Vec<Row>) -> Result<Task, ApiError> {
    let row = rows.first().ok_or(ApiError::NotFound)?;
    task_from_row(row, 0).map_err(decode_error)
}

impl TaskRepo {
    pub fn new(db: Database) -> Self {
        TaskRepo { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    async fn run(
        &self,
        _owner: &Owner,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, ApiError> {
        self.db.query(sql, params).await
    }

    pub async fn list(&self, owner: &Owner, query: &ListQuery) -> Result<TaskPage, ApiError> {
        let search = query.search_pattern();
        let rows = self
            .run(
                owner,
                list_statement(query.sort, query.order),
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
                .try_get::<_, Option<Uuid>>(1)
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
                owner,
                SELECT_ONE,
                &[(&id.0, Type::UUID), (&owner.as_str(), Type::TEXT)],
            )
            .await?;
        one_task(rows)
    }

    pub async fn update(
        &self,
        owner: &Owner,
        id: TaskId,
        changes: &TaskChanges,
    ) -> Result<Task, ApiError> {
        let title = changes.title.as_ref().map(|t| t.as_str());
        let set_description = changes.description.is_some();
        let description = changes.description.as_ref().and_then(|d| d.as_deref());
        let rows = self
            .run(
                owner,
                UPDATE,
                &[
                    (&id.0, Type::UUID),
                    (&owner.as_str(), Type::TEXT),
                    (&title, Type::TEXT),
                    (&set_description, Type::BOOL),
                    (&description, Type::TEXT),
                    (&changes.completed, Type::BOOL),
                ],
            )
            .await?;
        one_task(rows)
    }

    pub async fn complete(
        &self,
        owner: &Owner,
        id: TaskId,
        completion: Completion,
    ) -> Result<Task, ApiError> {
        let completed = match completion {
            Completion::Toggle => None,
            Completion::Set(value) => Some(value),
        };
        let rows = self
            .run(
                owner,
                COMPLETE,
                &[
                    (&id.0, Type::UUID),
                    (&owner.as_str(), Type::TEXT),
                    (&completed, Type::BOOL),
                ],
            )
            .await?;
        one_task(rows)
    }

    pub async fn delete(&self, owner: &Owner, id: TaskId) -> Result<(), ApiError> {
        let rows = self
            .run(
                owner,
                DELETE,
                &[(&id.0, Type::UUID), (&owner.as_str(), Type::TEXT)],
            )
            .await?;
        if rows.is_empty() {
            Err(ApiError::NotFound)
        } else {
            Ok(())
        }
    }
}
