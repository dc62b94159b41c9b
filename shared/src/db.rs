//! The pooled Postgres client (TLS from [`crate::tls`]), with connect, pool-wait and statement
//! timeouts that each end in a 503 rather than a hang.
//!
//! Every statement goes through [`Database::query_as`] (task data, in a transaction of its
//! own) or [`Database::query_unscoped`] (`/health`), which keep no session state, so the
//! functions work behind Neon's PgBouncer pooler in transaction mode.

use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context as _};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use futures_util::FutureExt as _;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::DatabaseConfig;
use crate::error::ApiError;
use crate::tls;

/// A pool of connections, created once per cold start.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    tls: MakeRustlsConnect,
    statement_timeout: Duration,
    prepared: bool,
    /// Whether requests switch to `todo_app` ([`ROLE_SWITCH`]) or not ([`ROLE_AS_LOGIN`]);
    /// until the first request has found out ([`ROLE_UNKNOWN`]), they do.
    role: Arc<AtomicU8>,
}

/// The role's name, for the SQL built with `concat!` and for [`APP_ROLE`].
macro_rules! app_role {
    () => {
        "todo_app"
    };
}

/// The role requests run as; created by the migrations, without BYPASSRLS.
pub const APP_ROLE: &str = app_role!();

/// Sets a request's context inside its transaction, in one statement: the role (without
/// BYPASSRLS), the user the row-level security policies compare with, and the statement
/// timeout that enforces the request's deadline. `$1` user id, `$2` the deadline in Unix
/// milliseconds, `$3` the statement timeout in milliseconds (the most the statement may
/// get, whatever the clocks say). A transaction that reaches the server after its deadline
/// (queued in a pooler) sets an invalid timeout, which aborts it before the statement runs.
macro_rules! context {
    ($role:expr) => {
        concat!(
            "SELECT ",
            $role,
            "set_config('app.user_id', $1, true), ",
            "set_config('statement_timeout', CASE WHEN left_ms > 0 THEN least(left_ms, $3)::text ",
            "ELSE 'deadline-passed' END, true) ",
            "FROM (SELECT $2 - (extract(epoch FROM clock_timestamp()) * 1000)::bigint AS left_ms) AS d"
        )
    };
}

/// The context for a login role that bypasses row-level security (a superuser, or Neon's
/// default role): the transaction switches to `todo_app` first.
pub const CONTEXT: &str = context!(concat!("set_config('role', '", app_role!(), "', true), "));

/// The context for a login role that row-level security already applies to (neither
/// superuser nor BYPASSRLS, with the table privileges): no role switch, which saves the
/// database about a tenth of a simple read's cost.
pub const CONTEXT_AS_LOGIN_ROLE: &str = context!("");

const ROLE_UNKNOWN: u8 = 0;
const ROLE_SWITCH: u8 = 1;
const ROLE_AS_LOGIN: u8 = 2;

/// Whether the login role is itself subject to row-level security and may use the tables.
const LOGIN_ROLE_IS_SUBJECT_TO_RLS: &str = "SELECT NOT (rolsuper OR rolbypassrls) \
     AND has_table_privilege('tasks', 'SELECT, INSERT, UPDATE, DELETE') \
     AND has_table_privilege('idempotency_keys', 'SELECT, INSERT, UPDATE, DELETE') \
     FROM pg_roles WHERE rolname = current_user";

const CONTEXT_TYPES: [Type; 3] = [Type::TEXT, Type::INT8, Type::INT8];

/// How long after a transaction's deadline the client still waits for the server's answer.
/// The server enforces the deadline itself (see [`Database::query_as`]) and normally
/// answers at the deadline; this covers the network and a clock difference between this
/// machine and the database's.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// How long the client waits for the answer after sending a cancel request, before it
/// gives up on the connection.
const CANCEL_GRACE: Duration = Duration::from_millis(1000);

/// The value [`CONTEXT`] gives `statement_timeout` when a transaction reaches the server
/// after its deadline: Postgres refuses it. Recognised in [`begin_error`].
const DEADLINE_PASSED: &str = "deadline-passed";

/// Opens one connection outside the pool (for the `migrate` command and tooling), with the
/// same URL handling and TLS as the functions.
pub async fn connect_once(
    url: &str,
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> anyhow::Result<tokio_postgres::Client> {
    let url = crate::config::parse_url(url)
        .map_err(|_| anyhow!("DATABASE_URL is not a usable Postgres URL"))?;
    let mut pg = url.postgres;
    pg.connect_timeout(connect_timeout);
    let ca_file = ca_file.map(Path::to_path_buf).or(url.root_cert);
    let (client, connection) = pg
        .connect(tls::connector(ca_file.as_deref())?)
        .await
        .context("cannot connect to Postgres")?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "database connection closed");
        }
    });
    Ok(client)
}

/// What a statement does to the data, which decides what a failure may tell the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// A read: when the connection dies under it, it is run once more on a fresh one.
    Read,
    /// A write that cannot apply twice when repeated with the same parameters (a create
    /// whose id, or key, was chosen before the first attempt). When the connection dies
    /// under it, it is run once more on a fresh connection, which also settles whether
    /// the first attempt was applied.
    RepeatableWrite,
    /// Any other write: one attempt. When the connection dies after the write was sent,
    /// its outcome is unknown, and the caller is told so ([`ApiError::OutcomeUnknown`]).
    Write,
}

impl Database {
    /// Builds the pool. No connection is opened until [`Database::warm_up`] or first use.
    pub fn new(config: &DatabaseConfig) -> anyhow::Result<Self> {
        let mut pg = config.postgres.clone();
        pg.connect_timeout(config.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("todo-api");
        }
        let tls = tls::connector(config.ca_file.as_deref())?;
        let manager = Manager::from_config(
            pg,
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.pool_wait_timeout))
            // Creating a connection is bounded by the driver's connect timeout per attempt;
            // this bounds the whole handshake (TLS, authentication) as well.
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .build()
            .context("cannot build the connection pool")?;
        Ok(Database {
            pool,
            tls,
            statement_timeout: config.statement_timeout,
            prepared: config.prepared_statements,
            role: Arc::new(AtomicU8::new(ROLE_UNKNOWN)),
        })
    }

    /// Opens the first connection during the cold start, so the first request does not pay
    /// for it. A failure is only logged: requests will retry and answer 503 if it persists.
    /// (Statements are prepared by the first request that uses them, in its own flight.)
    pub async fn warm_up(&self) {
        if let Err(err) = self.pool.get().await {
            tracing::warn!(error = %PoolFailure(&err), "database warm-up failed");
        }
    }

    /// Whether requests switch to the `todo_app` role (the login role bypasses row-level
    /// security, or the warm-up has not run).
    pub fn switches_role(&self) -> bool {
        self.role.load(Ordering::Relaxed) != ROLE_AS_LOGIN
    }

    /// The context statement this database's requests use.
    fn context(&self) -> &'static str {
        if self.switches_role() {
            CONTEXT
        } else {
            CONTEXT_AS_LOGIN_ROLE
        }
    }

    /// Runs one statement on behalf of `user_id`, in a transaction of its own with
    /// `app.user_id` set (and the `todo_app` role, unless the login role is itself subject
    /// to row-level security), so that the policies hold whatever the SQL says. The
    /// transaction is four pipelined messages (`BEGIN`; the context: role, user and
    /// deadline; the statement; `COMMIT`): the whole request costs one network round trip. Nothing outlives the transaction, so the connection can be
    /// shared through Neon's pooler in transaction mode.
    ///
    /// **The answer is the outcome.** `Ok` means committed. An error means the statement
    /// did not and will not take effect, except [`ApiError::OutcomeUnknown`], which says
    /// that the connection was lost after the write was sent and the database's answer
    /// with it. The transaction carries a deadline (now + the statement timeout, as a
    /// wall-clock time) that the server enforces: one that reaches Postgres late (queued
    /// in a pooler) is refused before the statement runs, and the statement's own
    /// `statement_timeout` is the time left. So the server has decided by the deadline, and
    /// the client waits for that decision instead of abandoning a connection whose
    /// buffered `COMMIT` could still run.
    pub async fn query_as(
        &self,
        effect: Effect,
        user_id: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, ApiError> {
        let first = match self.attempt_as(user_id, sql, params, None).await {
            Ok(rows) => return Ok(rows),
            Err(failure) => failure,
        };
        let read = effect == Effect::Read;
        if !first.connection_lost || effect == Effect::Write {
            return Err(first.into_error(read));
        }
        // The connection died under the request: once more on a fresh connection, within
        // the first attempt's deadline.
        match self.attempt_as(user_id, sql, params, first.deadline).await {
            Ok(rows) => Ok(rows),
            // Only a success settles an unknown first attempt: a repeat that failed says
            // nothing about whether the first one committed.
            Err(second) if first.is_unknown() => Err(if read {
                second.into_error(read)
            } else {
                first.into_error(read)
            }),
            Err(second) => Err(second.into_error(read)),
        }
    }

    async fn attempt_as(
        &self,
        user_id: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
        deadline: Option<Instant>,
    ) -> Result<Vec<Row>, Failure> {
        let client = match deadline {
            None => self.live_connection().await,
            Some(deadline) => tokio::time::timeout_at(deadline.into(), self.live_connection())
                .await
                .unwrap_or_else(|_| {
                    Err(ApiError::Unavailable(anyhow!(
                        "no database connection before the deadline"
                    )))
                }),
        }
        .map_err(Failure::not_sent)?;
        let deadline = deadline.unwrap_or_else(|| Instant::now() + self.statement_timeout);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let wall_deadline_ms = i64::try_from(
            (SystemTime::now() + remaining)
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(i64::MAX);
        let budget_ms = i64::try_from(self.statement_timeout.as_millis()).unwrap_or(i64::MAX);
        let context: [(&(dyn ToSql + Sync), Type); 3] = [
            (&user_id, Type::TEXT),
            (&wall_deadline_ms, Type::INT8),
            (&budget_ms, Type::INT8),
        ];
        // Named statements are prepared once per connection (the first request on a
        // connection pays one round trip for it, unless `prepare` ran at cold start).
        // Prepared statements are cached per connection. On a connection that has not
        // prepared them yet, this request runs unnamed statements, and the preparation
        // travels in the same flight (Parse/Describe before the transaction), so that no
        // request ever pays a round trip for it; the next one finds them cached. The
        // first request of the instance also asks, in that flight, whether the login role
        // is itself subject to row-level security.
        let answered = {
            let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
            let context_sql = self.context();
            let mut prepare_context = std::pin::pin!(async {
                if self.prepared {
                    Some(
                        client
                            .prepare_typed_cached(context_sql, &CONTEXT_TYPES)
                            .await,
                    )
                } else {
                    None
                }
            });
            let mut prepare_statement = std::pin::pin!(async {
                if self.prepared {
                    Some(client.prepare_typed_cached(sql, &types).await)
                } else {
                    None
                }
            });
            // A cached statement is ready at the first poll; a missing one has just been sent.
            let first_context = prepare_context.as_mut().now_or_never();
            let first_statement = prepare_statement.as_mut().now_or_never();
            let cached = match (&first_context, &first_statement) {
                (Some(Some(Ok(context))), Some(Some(Ok(statement)))) => {
                    Some((context.clone(), statement.clone()))
                }
                _ => None,
            };
            let pipeline = async {
                let detect = async {
                    if self.role.load(Ordering::Relaxed) == ROLE_UNKNOWN {
                        let subject = client.query_typed(LOGIN_ROLE_IS_SUBJECT_TO_RLS, &[]).await;
                        if let Ok(Some(subject)) =
                            subject.map(|rows| rows.first().map(|row| row.get(0)))
                        {
                            let role = if subject { ROLE_AS_LOGIN } else { ROLE_SWITCH };
                            self.role.store(role, Ordering::Relaxed);
                        }
                    }
                };
                // Preparations still under way finish in this flight; a failure only means
                // that the next request tries again.
                let prepare = async {
                    if first_context.is_none() {
                        let _ = prepare_context.as_mut().await;
                    }
                    if first_statement.is_none() {
                        let _ = prepare_statement.as_mut().await;
                    }
                };
                let ctx = async {
                    match &cached {
                        Some((ctx, _)) => client.query(ctx, &values(&context)).await,
                        None => client.query_typed(context_sql, &context).await,
                    }
                };
                let statement = async {
                    match &cached {
                        Some((_, statement)) => client.query(statement, &values(params)).await,
                        None => client.query_typed(sql, params).await,
                    }
                };
                let (_, _, begin, ctx, rows, commit) = tokio::join!(
                    detect,
                    prepare,
                    client.batch_execute("BEGIN"),
                    ctx,
                    statement,
                    client.batch_execute("COMMIT"),
                );
                // The opening's first failure: BEGIN's, else the context's.
                (begin.and(ctx.map(drop)), rows, commit)
            };
            tokio::pin!(pipeline);
            match tokio::time::timeout_at((deadline + DEADLINE_MARGIN).into(), &mut pipeline).await
            {
                Ok(answer) => Some(answer),
                Err(_) => {
                    // The server should have decided by now. Ask it to stop whatever still
                    // runs, and wait for its answer rather than dropping the connection,
                    // which could leave a buffered COMMIT to run later.
                    let cancel = client.cancel_token();
                    let tls = self.tls.clone();
                    tokio::spawn(async move {
                        let _ = cancel.cancel_query(tls).await;
                    });
                    tokio::time::timeout(CANCEL_GRACE, &mut pipeline).await.ok()
                }
            }
        };
        let Some((begin, rows, commit)) = answered else {
            drop(deadpool_postgres::Object::take(client));
            return Err(Failure {
                error: anyhow!(
                    "no answer from the database {:?} after the deadline and a cancel",
                    DEADLINE_MARGIN + CANCEL_GRACE
                ),
                status: None,
                connection_lost: false,
                deadline: None,
            });
        };
        let outcome = transaction_outcome(begin, rows, commit);
        if client.is_closed() {
            drop(deadpool_postgres::Object::take(client));
        }
        outcome.map_err(|mut failure| {
            failure.deadline = Some(deadline);
            failure
        })
    }

    /// Runs one statement outside any user's context: no role change, no transaction.
    /// For `/health` and tooling; task data is only reached through [`Database::query_as`].
    pub async fn query_unscoped(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, ApiError> {
        let client = self.live_connection().await?;
        let limit = self.statement_timeout + DEADLINE_MARGIN;
        let run = async {
            if self.prepared {
                let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                let statement = client.prepare_typed_cached(sql, &types).await?;
                client.query(&statement, &values(params)).await
            } else {
                client.query_typed(sql, params).await
            }
        };
        match tokio::time::timeout(limit, run).await {
            Ok(result) => result.map_err(driver_error),
            Err(_elapsed) => {
                drop(deadpool_postgres::Object::take(client));
                Err(ApiError::Unavailable(anyhow!(
                    "statement timed out after {limit:?}"
                )))
            }
        }
    }

    /// A pooled connection that is still open. A connection the server closed while it sat
    /// idle (a Lambda freeze and thaw, a Neon compute suspend, `pg_terminate_backend`) has
    /// the server's goodbye waiting in its socket; yielding lets its connection task read
    /// it, so the check below sees it closed and the request gets a fresh connection
    /// instead of failing. Costs no round trip.
    async fn live_connection(&self) -> Result<deadpool_postgres::Object, ApiError> {
        for _ in 0..=self.pool.status().max_size {
            let client = self.pool.get().await.map_err(pool_error)?;
            for _ in 0..2 {
                tokio::task::yield_now().await;
            }
            if !client.is_closed() {
                return Ok(client);
            }
            drop(deadpool_postgres::Object::take(client));
        }
        Err(ApiError::Unavailable(anyhow!(
            "no live database connection"
        )))
    }

    /// Checks that the database answers, for `/health`.
    pub async fn ping(&self) -> Result<(), ApiError> {
        self.query_unscoped("SELECT 1", &[]).await.map(drop)
    }
}

type Answer<T> = Result<T, tokio_postgres::Error>;

/// The values of typed parameters, for a prepared statement (whose types are known).
fn values<'a>(params: &'a [(&'a (dyn ToSql + Sync), Type)]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|(value, _)| *value).collect()
}

/// What the three answers of a pipelined transaction (open, statement, commit) say about
/// its outcome. Postgres answers in order and flushes the statement's result before it
/// reads `COMMIT`, so:
/// - statement and commit succeeded: committed;
/// - the statement failed with an answer from the server (or the pooler): it wrote
///   nothing, and the transaction cannot commit;
/// - the statement succeeded and the commit failed: rolled back for an error of class 40
///   or 23 (serialization, deadlock, deferred constraint), otherwise unknown (a server
///   that dies while committing may have committed);
/// - no answer to the statement because the connection died: unknown, unless the opening
///   statements had already failed in a way that shows the transaction was aborted or the
///   server session gone.
fn transaction_outcome(
    begin: Answer<()>,
    rows: Answer<Vec<Row>>,
    commit: Answer<()>,
) -> Result<Vec<Row>, Failure> {
    match (begin, rows, commit) {
        // A failed opening with a successful statement means the statement ran outside the
        // transaction (autocommit): it is durable all the same.
        (begin, Ok(rows), Ok(())) => {
            if let Err(err) = begin {
                tracing::warn!(error = %err, "statement ran outside its transaction");
            }
            Ok(rows)
        }
        (_, Ok(_), Err(err)) => {
            let rolled_back = err
                .code()
                .is_some_and(|code| code.code().starts_with("40") || code.code().starts_with("23"));
            Err(if rolled_back {
                Failure::not_done(err)
            } else {
                Failure::unknown(err)
            })
        }
        (Err(begin), Err(statement), _) if begin.as_db_error().is_some() => {
            let session_gone = statement.as_db_error().is_none();
            if session_gone && begin.code() == Some(&SqlState::QUERY_CANCELED) {
                // Cancelled before BEGIN took effect, perhaps: the statement may have run
                // on its own.
                Err(Failure::unknown(statement))
            } else {
                Err(begin_error(begin))
            }
        }
        (_, Err(statement), _) if statement.as_db_error().is_some() => {
            Err(Failure::not_done(statement))
        }
        (_, Err(statement), _) => Err(Failure::unknown(statement)),
    }
}

/// The failure of the opening statements; nothing of the transaction took effect.
fn begin_error(err: tokio_postgres::Error) -> Failure {
    let deadline_passed = err.code() == Some(&SqlState::INVALID_PARAMETER_VALUE)
        && err
            .as_db_error()
            .is_some_and(|db| db.message().contains(DEADLINE_PASSED));
    if deadline_passed {
        Failure {
            error: anyhow!("the transaction reached the database after its deadline"),
            status: Some(ApiError::Unavailable(anyhow!("deadline passed"))),
            connection_lost: false,
            deadline: None,
        }
    } else {
        Failure::not_done(err)
    }
}

/// A failed attempt: what went wrong, whether the write may have taken effect all the
/// same, and whether the connection was lost under it (a reason to try a fresh one).
struct Failure {
    error: anyhow::Error,
    /// The error to answer with when the outcome is known; `None` for an unknown outcome.
    status: Option<ApiError>,
    connection_lost: bool,
    /// The attempt's deadline, which a repeat keeps.
    deadline: Option<Instant>,
}

impl Failure {
    /// Nothing was sent: the pool, the connection or the deadline failed first.
    fn not_sent(error: ApiError) -> Self {
        Failure {
            error: anyhow!("not sent"),
            status: Some(error),
            connection_lost: false,
            deadline: None,
        }
    }

    /// The database answered with an error: nothing took effect.
    fn not_done(err: tokio_postgres::Error) -> Self {
        let connection_lost = err.is_closed() || err.code().is_some_and(is_connection_class);
        Failure {
            error: anyhow!("database answered with an error"),
            status: Some(driver_error(err)),
            connection_lost,
            deadline: None,
        }
    }

    /// The connection was lost after the write was sent: it may or may not have committed.
    fn unknown(err: tokio_postgres::Error) -> Self {
        Failure {
            connection_lost: true,
            status: None,
            error: anyhow::Error::new(err).context("database connection lost mid-transaction"),
            deadline: None,
        }
    }

    /// Whether the write may have taken effect all the same.
    fn is_unknown(&self) -> bool {
        self.status.is_none()
    }

    fn into_error(self, read: bool) -> ApiError {
        match self.status {
            Some(status) => status,
            // For a read, an unknown outcome is only a failed read.
            None if read => ApiError::Unavailable(self.error),
            None => ApiError::OutcomeUnknown(self.error),
        }
    }
}

/// Server shutdown, crash, or a connection-level failure reported by a pooler.
fn is_connection_class(code: &SqlState) -> bool {
    code.code().starts_with("08")
        || [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
        ]
        .contains(code)
}

/// Formats a pool error without the connection string.
struct PoolFailure<'a>(&'a PoolError);

impl std::fmt::Display for PoolFailure<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            PoolError::Timeout(kind) => write!(f, "pool timeout ({kind:?})"),
            PoolError::Backend(err) => write!(f, "{err}"),
            other => write!(f, "{other}"),
        }
    }
}

fn pool_error(err: PoolError) -> ApiError {
    match err {
        PoolError::Backend(err) => driver_error(err),
        PoolError::Timeout(_) => ApiError::Unavailable(anyhow!("{}", PoolFailure(&err))),
        other => ApiError::Internal(anyhow!("connection pool: {other}")),
    }
}

/// Sorts driver errors into "try again later" (503) and bugs (500).
fn driver_error(err: tokio_postgres::Error) -> ApiError {
    let transient = match err.code() {
        None => true, // I/O, closed connection, TLS or authentication handshake
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                    SqlState::QUERY_CANCELED,
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                    SqlState::LOCK_NOT_AVAILABLE,
                ]
                .contains(code)
        }
    };
    let err = anyhow::Error::new(err).context("database");
    if transient {
        ApiError::Unavailable(err)
    } else {
        ApiError::Internal(err)
    }
}
