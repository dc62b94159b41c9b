//! The pooled Postgres client (TLS from [`crate::tls`]), with connect, pool-wait and statement
//! timeouts that each end in a 503 rather than a hang.
//!
//! Every statement goes through [`Database::query_as`] (task data, in a transaction of its
//! own) or [`Database::query_unscoped`] (`/health`), which keep no session state, so the
//! functions work behind Neon's PgBouncer pooler in transaction mode.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context as _};
use deadpool::managed::QueueMode;
use deadpool_postgres::{
    Hook, HookError, Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime,
};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::error::{DbError, Severity, SqlState};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, Column, Connection, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

mod cancel;

use crate::config::DatabaseConfig;
use crate::error::ApiError;
use crate::procedures::{self, Returns};
use crate::record::Record;
use crate::tls;

/// A pool of connections, created once per cold start.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    tls: MakeRustlsConnect,
    /// Where cancel requests go, and how long connecting for one may take.
    cancel_target: Option<cancel::CancelTarget>,
    connect_timeout: Duration,
    statement_timeout: Duration,
    /// Named prepared statements (`DB_PREPARED_STATEMENTS`), until a call shows that the
    /// pooler in between does not keep them ([`procedures::WRONG_STATEMENT`]).
    prepared: Arc<AtomicBool>,
    /// Whether requests switch to `todo_app` ([`ROLE_SWITCH`]) or not ([`ROLE_AS_LOGIN`]);
    /// until the first request has found out ([`ROLE_UNKNOWN`]), they do.
    role: Arc<AtomicU8>,
    /// Which pooled connections are checked before use ([`IdleWatch`]).
    idle: Arc<IdleWatch>,
}

/// The role's name, for the SQL built with `concat!` and for [`APP_ROLE`].
macro_rules! app_role {
    () => {
        "todo_app"
    };
}

/// The role requests run as; created by the migrations, without BYPASSRLS.
pub const APP_ROLE: &str = app_role!();

const ROLE_UNKNOWN: u8 = 0;
const ROLE_SWITCH: u8 = 1;
const ROLE_AS_LOGIN: u8 = 2;

/// Whether the login role is itself subject to row-level security and may use the tables.
/// A pooler in transaction mode hands server connections on with what another client left
/// in its session, so the check reads neither:
/// - the role in force (`current_user`, or `session_user`, which a superuser may set):
///   another client's `SET ROLE todo_app` made a superuser login look subject to RLS, for
///   the life of the instance, and its calls then ran without the switch to `todo_app`
///   wherever that role was not left over. The role the connection logged in as is its
///   `pg_stat_activity` row's;
/// - a relation by the search path: `pg_temp` is searched first, even before `pg_catalog`,
///   and a temporary `pg_roles` would answer for the role (`pooler.rs`).
const LOGIN_ROLE_IS_SUBJECT_TO_RLS: &str = "SELECT NOT (r.rolsuper OR r.rolbypassrls) \
     AND pg_catalog.has_table_privilege(r.oid, 'public.tasks', 'SELECT, INSERT, UPDATE, DELETE') \
     AND pg_catalog.has_table_privilege(r.oid, 'public.idempotency_keys', \
     'SELECT, INSERT, UPDATE, DELETE') \
     FROM pg_catalog.pg_roles r WHERE r.oid = (SELECT a.usesysid \
     FROM pg_catalog.pg_stat_activity a WHERE a.pid = pg_catalog.pg_backend_pid())";

/// How long after a call's deadline the client still waits for the server's answer. The
/// server refuses a call that starts late and ends lock waits at the deadline (see
/// [`Database::query_as`]); this covers the network and a clock difference between this
/// machine and the database's. A call still running after it is cancelled.
const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// How long the client waits for the answer after sending a cancel request, before it
/// gives up on the connection.
const CANCEL_GRACE: Duration = Duration::from_millis(1000);

/// How long the check of a connection that sat idle ([`Database::new`]) waits for its
/// answer before the connection is replaced.
const IDLE_CHECK_TIMEOUT: Duration = Duration::from_millis(1000);

/// How many times a call is repeated at most ([`Database::query_as_within`]).
const MAX_REPEATS: usize = 2;

/// Opens one connection outside the pool (for the `migrate` command and tooling), with the
/// same URL handling and TLS as the functions.
pub async fn connect_once(
    url: &str,
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> anyhow::Result<tokio_postgres::Client> {
    // Its reasons name what to change, never the URL's values (tested in config.rs).
    let url = crate::config::parse_url(url)?;
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

/// Opens the pool's connections as deadpool-postgres does, and drives each one with
/// [`drive`] instead of its own future (which logs the server's notices and drops them).
struct ConnectWatchingCommits {
    tls: MakeRustlsConnect,
}

impl deadpool_postgres::Connect for ConnectWatchingCommits {
    fn connect(
        &self,
        pg_config: &tokio_postgres::Config,
    ) -> BoxFuture<
        '_,
        Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let tls = self.tls.clone();
        let pg_config = pg_config.clone();
        Box::pin(async move {
            let (client, connection) = pg_config.connect(tls).await?;
            Ok((client, tokio::spawn(drive(connection))))
        })
    }
}

/// Drives a pooled connection until it closes, and closes it when a commit's wait for a
/// synchronous standby is cancelled. Postgres then reports the commit as a success, with
/// only a warning that it is local and may not be replicated (on Neon, where every commit
/// waits for the safekeepers, a write that a compute restart can still lose). A cancel this
/// code sent is known to the call ([`Database::query_as`]); one that someone else sent
/// (`pg_cancel_backend`, a console's "cancel query") is known only by that warning, which
/// comes before the call's `ReadyForQuery`. Closing the connection there ends the call as
/// one whose connection was lost after its write was sent: its outcome is unknown (a 504,
/// or a repeatable write's repeat, whose own commit waits for the standby), never a 2xx.
async fn drive<S, T>(mut connection: Connection<S, T>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notice(notice))) if commit_not_replicated(&notice) => {
                // A line of its own: the call's line says only that its outcome is unknown,
                // and this says why (a write perhaps lost, which an operator should know).
                tracing::warn!(
                    "a commit's wait for its synchronous standby was cancelled: committed \
                     locally, perhaps not replicated; the connection is closed, so that its \
                     call's outcome is unknown"
                );
                return;
            }
            Some(Ok(_)) => {}
            // A connection that closed or failed is the call's error, in its request's
            // line (telemetry.rs: no line of its own in the middle of a request).
            Some(Err(_)) | None => return,
        }
    }
}

/// Whether a notice is Postgres's warning that a commit stopped waiting for its synchronous
/// standby (`SyncRepWaitForLSN`: a cancel, or the backend's termination). Told by the
/// routine and the unlocalized severity, not by the message, which may be translated.
fn commit_not_replicated(notice: &DbError) -> bool {
    notice.parsed_severity() == Some(Severity::Warning)
        && notice.routine() == Some("SyncRepWaitForLSN")
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
        let cancel_target = cancel::CancelTarget::of(&pg);
        if pg.get_application_name().is_none() {
            pg.application_name("todo-api");
        }
        let tls = tls::connector(config.ca_file.as_deref())?;
        let idle = Arc::new(IdleWatch::new(config.idle_check_after));
        let manager = Manager::from_connect(
            pg,
            ConnectWatchingCommits { tls: tls.clone() },
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
            // The connection returned last is handed out first: a busy instance keeps using
            // warm connections (never checked), and after a pause the first one checked is
            // the one used most recently, so if even it fails, the older ones go unchecked.
            .queue_mode(QueueMode::Lifo)
            .pre_recycle(idle_check(idle.clone()))
            .build()
            .context("cannot build the connection pool")?;
        Ok(Database {
            pool,
            tls,
            cancel_target,
            connect_timeout: config.connect_timeout,
            statement_timeout: config.statement_timeout,
            prepared: Arc::new(AtomicBool::new(config.prepared_statements)),
            role: Arc::new(AtomicU8::new(ROLE_UNKNOWN)),
            idle,
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

    /// Runs one statement on behalf of `user_id` through its function
    /// ([`crate::procedures`]), which sets `app.user_id` (and the `todo_app` role, unless
    /// the login role is itself subject to row-level security) and runs the statement in
    /// one implicit transaction, so that the policies hold whatever the SQL says. One
    /// message group, one network round trip, one answer; nothing outlives the
    /// transaction, so the connection can be shared through Neon's pooler in transaction
    /// mode. The answer is the statement's rows ([`crate::procedures::Returns`]).
    ///
    /// **The answer is the outcome.** `Ok` means committed (the server's ReadyForQuery
    /// arrived, which follows the commit). An error means the statement did not and will
    /// not take effect, except [`ApiError::OutcomeUnknown`], which says that the
    /// connection was lost after the write was sent and the database's answer with it. The
    /// call carries a deadline (now + the statement timeout, as a wall-clock time) that the
    /// server enforces: a call that reaches Postgres late (queued in a pooler) is refused
    /// before the statement runs, and lock waits get the time left when it was sent. The
    /// client waits for the server's decision until the deadline (plus a margin), then
    /// cancels and waits for the answer to the cancel, instead of abandoning a connection
    /// whose call could still commit.
    ///
    /// Not an `async fn` of its own but [`Database::query_as_within`]'s future: every layer
    /// of `async fn` deepens the handlers' futures, whose layout rustc computes to a fixed
    /// query depth (a fresh build failed with "queries overflow the depth limit" at two
    /// more layers).
    pub fn query_as<'a>(
        &'a self,
        effect: Effect,
        user_id: &'a str,
        sql: &'a str,
        params: &'a [(&'a (dyn ToSql + Sync), Type)],
    ) -> impl std::future::Future<Output = Result<Vec<Record>, ApiError>> + 'a {
        self.query_as_within(effect, user_id, sql, params, None)
    }

    /// [`Database::query_as`] as one of several calls that answer one request, all within
    /// the first call's deadline: given `Some`, `deadline` holds `None` for the first call,
    /// which sets it (once it has a connection, as [`Database::query_as`] does), and the
    /// later calls get only the time that is left. So a request of several calls keeps to
    /// the time bound of one (README, *Write outcomes*).
    pub async fn query_as_within(
        &self,
        effect: Effect,
        user_id: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
        mut deadline: Option<&mut Option<Instant>>,
    ) -> Result<Vec<Record>, ApiError> {
        let given = deadline.as_deref().copied().flatten();
        let first = match self.attempt_as(user_id, sql, params, given, None).await {
            Ok((rows, used)) => {
                if let Some(deadline) = deadline {
                    *deadline = Some(used);
                }
                return Ok(rows);
            }
            Err(failure) => failure,
        };
        if let (Some(deadline), Some(used)) = (&mut deadline, first.deadline) {
            **deadline = Some(used);
        }
        let read = effect == Effect::Read;
        // The connection died under a read or a repeatable write, or the call was refused
        // before it ran for a reason a repeat removes ([`Repeat`]): again, on a fresh
        // connection, unnamed, or with `row_security` on, within the first attempt's
        // deadline. Twice at most: the reasons can follow each other (a lost connection,
        // then a server connection with `row_security` off). Any other write is repeated
        // only when nothing ran.
        let mut failure = first;
        // Only a success settles an unknown attempt of a write: a repeat that failed says
        // nothing about whether the earlier one committed.
        let mut unknown = None;
        for _ in 0..MAX_REPEATS {
            if failure.repeat.is_none() && (!failure.connection_lost || effect == Effect::Write) {
                break;
            }
            let (deadline, repeat) = (failure.deadline, failure.repeat);
            match self
                .attempt_as(user_id, sql, params, deadline, repeat)
                .await
            {
                Ok((rows, _)) => return Ok(rows),
                Err(next) => {
                    if !read && unknown.is_none() && failure.is_unknown() {
                        unknown = Some(failure);
                    }
                    failure = next;
                }
            }
        }
        Err(unknown.unwrap_or(failure).into_error(read))
    }

    async fn attempt_as(
        &self,
        user_id: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
        deadline: Option<Instant>,
        repeat: Option<Repeat>,
    ) -> Result<(Vec<Record>, Instant), Failure> {
        let procedure = procedures::for_statement_typed(sql, params.iter().map(|(_, ty)| ty));
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
        let wall_deadline = SystemTime::now() + remaining;
        // Only a write's function sets a lock timeout; a read's ignores the argument.
        let lock_timeout = if procedure.guards.deadline {
            lock_timeout(remaining)
        } else {
            String::new()
        };
        // The repeat of a call refused for `row_security = off`: in a transaction of its own,
        // whose server connection a pooler in transaction mode keeps for it, with the
        // setting back on for the session (the server's default), so that the next call on
        // that server connection runs at once.
        let row_security_on = repeat == Some(Repeat::RowSecurityOn);
        if row_security_on {
            crate::telemetry::note(
                "the server connection had row_security off (another client's SET, such as \
                 pg_dump's): turned back on",
            );
            let begun =
                tokio::time::timeout_at(deadline.into(), client.batch_execute(ROW_SECURITY_ON))
                    .await;
            if !matches!(begun, Ok(Ok(()))) {
                drop(deadpool_postgres::Object::take(client));
                return Err(Failure::not_sent(ApiError::Unavailable(anyhow!(
                    "could not turn row_security back on"
                ))));
            }
        }
        let call_name = procedure.call_name(self.switches_role());
        let mut call_params: Vec<(&(dyn ToSql + Sync), Type)> = params.to_vec();
        call_params.extend([
            (&user_id as &(dyn ToSql + Sync), Type::TEXT),
            (&wall_deadline, Type::TIMESTAMPTZ),
            (&lock_timeout, Type::TEXT),
            (&call_name, Type::TEXT),
        ]);
        // The call is a named statement prepared once per connection. On a connection that
        // has not prepared it yet, this request runs it unnamed, and the preparation travels
        // in the same flight (Parse/Describe before it), so that no request ever pays a round
        // trip for it; the next one finds it cached. The first request of the instance also
        // asks, in that flight, whether the login role is itself subject to row-level
        // security.
        //
        // Not in the repeat with `row_security` on: inside its explicit transaction, a
        // preparation or a check that failed would fail the call with it. It runs unnamed,
        // and with the role switch if the role is not known yet (always safe).
        let mut cancelled = false;
        let named: bool;
        let answered = {
            let mut prepare = std::pin::pin!(async {
                if self.prepared.load(Ordering::Relaxed) && !row_security_on {
                    Some(
                        client
                            .prepare_typed_cached(&procedure.call, procedure.call_types())
                            .await,
                    )
                } else {
                    None
                }
            });
            // A cached statement is ready at the first poll; a missing one has just been sent.
            let first = prepare.as_mut().now_or_never();
            let cached = match &first {
                Some(Some(Ok(statement))) => Some(statement.clone()),
                _ => None,
            };
            named = cached.is_some();
            let pipeline = async {
                // Each of the two answers with its error, if any, for `refused_before`.
                let detect = async {
                    if self.role.load(Ordering::Relaxed) == ROLE_UNKNOWN && !row_security_on {
                        match client.query_typed(LOGIN_ROLE_IS_SUBJECT_TO_RLS, &[]).await {
                            Ok(rows) => {
                                if let Some(subject) = rows.first().map(|row| row.get(0)) {
                                    let role = if subject { ROLE_AS_LOGIN } else { ROLE_SWITCH };
                                    self.role.store(role, Ordering::Relaxed);
                                }
                            }
                            Err(err) => return Some(err),
                        }
                    }
                    None
                };
                // A preparation still under way finishes in this flight; a failure only
                // means that the next request tries again.
                let prepare = async {
                    if first.is_none() {
                        if let Some(Err(err)) = prepare.as_mut().await {
                            return Some(err);
                        }
                    }
                    None
                };
                let call = async {
                    let stream = match &cached {
                        Some(statement) => client.query_raw(statement, values(&call_params)).await,
                        None => {
                            client
                                .query_typed_raw(&procedure.call, call_params.iter().cloned())
                                .await
                        }
                    };
                    rows_to_the_end(stream).await
                };
                let (detected, prepared, answer) = tokio::join!(detect, prepare, call);
                answer.map_err(|failed| refused_before(failed, [prepared, detected]))
            };
            tokio::pin!(pipeline);
            match tokio::time::timeout_at((deadline + DEADLINE_MARGIN).into(), &mut pipeline).await
            {
                Ok(answer) => Some(answer),
                Err(_) => {
                    // The server should have decided by now. Ask it to stop whatever still
                    // runs, and wait for its answer rather than dropping the connection.
                    cancelled = true;
                    self.send_cancel(&client);
                    tokio::time::timeout(CANCEL_GRACE, &mut pipeline).await.ok()
                }
            }
        };
        let Some(answer) = answered else {
            drop(deadpool_postgres::Object::take(client));
            return Err(Failure {
                error: anyhow!(
                    "no answer from the database {:?} after the deadline and a cancel",
                    DEADLINE_MARGIN + CANCEL_GRACE
                ),
                status: None,
                connection_lost: false,
                deadline: None,
                repeat: None,
            });
        };
        let names_not_kept =
            matches!(&answer, Err(failed) if statement_names_not_kept(&failed.error, named));
        if names_not_kept {
            self.stop_naming_statements();
        }
        let mut outcome = call_outcome(answer, names_not_kept).and_then(|rows| {
            // A commit that waited for a synchronous standby (on Neon, every commit waits
            // for the safekeepers) and was cancelled is reported as a success, with only a
            // warning that it is local and may not be replicated. So a write's success that
            // follows its cancel says nothing about its durability.
            if cancelled && procedure.guards.deadline {
                return Err(Failure {
                    error: anyhow!(
                        "the write was answered only after its cancel: committed, but perhaps \
                         not durably"
                    ),
                    status: None,
                    connection_lost: false,
                    deadline: None,
                    repeat: None,
                });
            }
            // A row that cannot be read is a fault of this code (its types), found by the
            // tests; the call's outcome stands, and the answer is a 500.
            statement_rows(procedure.returns, &rows).map_err(|err| Failure {
                error: anyhow!("cannot read the statement's row"),
                status: Some(ApiError::Internal(err)),
                connection_lost: false,
                deadline: None,
                repeat: None,
            })
        });
        // A cancel still on its way must not reach the next call on this connection.
        let mut discard = client.is_closed() || cancelled;
        if row_security_on {
            // Its own transaction ends with its own COMMIT, whose outcome is the write's. A
            // transaction not committed ends with its connection: rolled back.
            let commit = match outcome {
                Ok(_) if !discard => Some(self.commit(&client, deadline).await),
                _ => None,
            };
            discard |= !matches!(commit, Some(Ok(())));
            if procedure.guards.deadline {
                outcome = match (commit, outcome) {
                    (Some(Ok(())), outcome) => outcome,
                    (Some(Err(failure)), _) => Err(failure),
                    // No COMMIT was sent: whatever the call's answer, nothing committed.
                    (None, Err(failure)) if !failure.is_unknown() => Err(failure),
                    (None, _) => Err(Failure {
                        error: anyhow!("the write's transaction ended before its COMMIT"),
                        status: Some(ApiError::Unavailable(anyhow!("not committed"))),
                        connection_lost: false,
                        deadline: None,
                        repeat: None,
                    }),
                };
            }
        }
        if discard {
            drop(deadpool_postgres::Object::take(client));
        }
        outcome.map(|rows| (rows, deadline)).map_err(|mut failure| {
            failure.deadline = Some(deadline);
            failure
        })
    }

    /// Asks the server, on a connection of its own, to stop what `client`'s connection runs
    /// (sent in a task of its own, within [`CANCEL_GRACE`]).
    fn send_cancel(&self, client: &deadpool_postgres::Object) {
        tokio::spawn(cancel::cancel(
            client.cancel_token(),
            self.tls.clone(),
            self.cancel_target.clone(),
            self.connect_timeout,
            CANCEL_GRACE,
        ));
    }

    /// Commits the explicit transaction of [`Repeat::RowSecurityOn`], by `deadline` (and its
    /// margin). Without an answer by then, it cancels, as a call does, and waits for the
    /// COMMIT to end before its outcome, unknown, is answered.
    async fn commit(
        &self,
        client: &deadpool_postgres::Object,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let commit = client.batch_execute("COMMIT");
        tokio::pin!(commit);
        let answer =
            match tokio::time::timeout_at((deadline + DEADLINE_MARGIN).into(), &mut commit).await {
                Ok(answer) => answer,
                Err(_) => {
                    self.send_cancel(client);
                    let _ = tokio::time::timeout(CANCEL_GRACE, &mut commit).await;
                    return Err(Failure {
                        error: anyhow!("no answer to the write's COMMIT by its deadline"),
                        status: None,
                        connection_lost: false,
                        deadline: None,
                        repeat: None,
                    });
                }
            };
        answer.map_err(|error| {
            let failed = CallError {
                error,
                completed: true,
            };
            call_outcome(Err(failed), false).expect_err("an error stays one")
        })
    }

    /// After a named statement reached no statement or another one
    /// ([`statement_names_not_kept`]): unnamed statements from now on, said once.
    fn stop_naming_statements(&self) {
        if self.prepared.swap(false, Ordering::Relaxed) {
            tracing::error!(
                "a named statement reached no statement or another one: the pooler does not \
                 keep prepared statements (PgBouncer before 1.21, or max_prepared_statements \
                 = 0); unnamed statements from now on. Set DB_PREPARED_STATEMENTS=false there."
            );
        }
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
            if self.prepared.load(Ordering::Relaxed) {
                let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                let statement = client.prepare_typed_cached(sql, &types).await?;
                match client.query(&statement, &values(params)).await {
                    // Nothing ran: once more, unnamed.
                    Err(err) if statement_names_not_kept(&err, true) => {
                        self.stop_naming_statements();
                    }
                    answer => return answer,
                }
            }
            client.query_typed(sql, params).await
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
    /// instead of failing, without a round trip. A connection idle long enough to have been
    /// forgotten without a goodbye is checked with one by the pool's hook ([`IdleWatch`]).
    async fn live_connection(&self) -> Result<deadpool_postgres::Object, ApiError> {
        self.idle.request(SystemTime::now(), Instant::now());
        for _ in 0..=self.pool.status().max_size {
            let client = self.pool.get().await.map_err(pool_error)?;
            for _ in 0..2 {
                tokio::task::yield_now().await;
            }
            if !client.is_closed() {
                return Ok(client);
            }
            crate::telemetry::note(CLOSED_REPLACED);
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

/// Decides which pooled connections are checked before a request uses them: those idle for
/// `after` or longer get one round trip (a Sync, answered by ReadyForQuery) and are replaced
/// if it fails or takes over [`IDLE_CHECK_TIMEOUT`] ([`idle_check`]).
///
/// An idle connection can have been forgotten on the way without this end hearing of it,
/// typically while a Lambda instance was frozen between invocations: a NAT gateway times it
/// out (AWS's after 350 s) and answers its next packet with a reset; Neon suspends an idle
/// compute; a path loses its state and answers nothing. A closed connection whose goodbye
/// arrived is found without a round trip ([`Database::live_connection`]); these are not, and
/// the request sent on one would be the one to find out: a write's outcome would be unknown
/// (504), and a read would wait for its deadline. Connections in use more often than `after`
/// are not checked, so a busy instance keeps one round trip per request.
///
/// Idle time is the pool's own (monotonic) measure, and also wall-clock time: the monotonic
/// clock need not advance while an instance is frozen. A request that comes `after` or more
/// of wall-clock time since the one before it marks every connection used before it as idle
/// that long. And whatever forgot one idle connection has forgotten the others idle since
/// then: the pool hands out the connection used last first, and after a failed check the
/// idle ones used before it are dropped unchecked, so that a request pays for one failed
/// check, not one per pooled connection.
#[derive(Debug)]
struct IdleWatch {
    after: Duration,
    state: std::sync::Mutex<IdleState>,
}

#[derive(Debug, Default)]
struct IdleState {
    /// The wall-clock time of the latest request for a connection.
    last_request: Option<SystemTime>,
    /// When a request came `after` or more of wall-clock time after the one before it.
    quiet_until: Option<Instant>,
    /// When the latest check that failed was started.
    failed_at: Option<Instant>,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Use,
    Check,
    Drop,
}

impl IdleWatch {
    /// Made at the cold start, which counts as the first request: the connection the
    /// warm-up opens is idle from then on.
    fn new(after: Duration) -> Self {
        IdleWatch {
            after,
            state: std::sync::Mutex::new(IdleState {
                last_request: Some(SystemTime::now()),
                ..IdleState::default()
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, IdleState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request asks for a connection at `wall` (wall clock), `now` (monotonic).
    fn request(&self, wall: SystemTime, now: Instant) {
        let mut state = self.state();
        let quiet = state
            .last_request
            .and_then(|last| wall.duration_since(last).ok());
        if quiet.is_some_and(|quiet| quiet >= self.after) {
            state.quiet_until = Some(now);
        }
        state.last_request = Some(wall);
    }

    /// What to do, at `now`, with a pooled connection last handed out at `last_used`
    /// (monotonic).
    fn verdict(&self, last_used: Instant, now: Instant) -> Verdict {
        let state = self.state();
        let used_before = |moment: Option<Instant>| moment.is_some_and(|m| last_used <= m);
        if now.saturating_duration_since(last_used) < self.after && !used_before(state.quiet_until)
        {
            Verdict::Use
        } else if used_before(state.failed_at) {
            Verdict::Drop
        } else {
            Verdict::Check
        }
    }

    /// A check that started at `started` failed.
    fn check_failed(&self, started: Instant) {
        self.state().failed_at = Some(started);
    }
}

/// The pool's hook that applies [`IdleWatch`]'s verdict to a connection it is about to
/// hand out; an error makes the pool drop it and take or open another. A replaced
/// connection is noted in the request's log line ([`crate::telemetry::note`]).
fn idle_check(watch: Arc<IdleWatch>) -> Hook {
    Hook::async_fn(move |client, metrics| {
        let watch = watch.clone();
        let last_used = metrics.recycled.unwrap_or(metrics.created);
        Box::pin(async move {
            if client.is_closed() {
                crate::telemetry::note(CLOSED_REPLACED);
                return Err(HookError::message(CLOSED_REPLACED));
            }
            let started = Instant::now();
            match watch.verdict(last_used, started) {
                Verdict::Use => return Ok(()),
                Verdict::Drop => {
                    crate::telemetry::note(IDLE_DROPPED);
                    return Err(HookError::message(IDLE_DROPPED));
                }
                Verdict::Check => {}
            }
            let failure =
                match tokio::time::timeout(IDLE_CHECK_TIMEOUT, client.check_connection()).await {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err(err)) => HookError::Backend(err),
                    Err(_) => HookError::message(IDLE_FAILED),
                };
            watch.check_failed(started);
            crate::telemetry::note(IDLE_FAILED);
            Err(failure)
        })
    })
}

const CLOSED_REPLACED: &str = "a connection closed while idle was replaced";
const IDLE_FAILED: &str = "an idle connection failed its check and was replaced";
const IDLE_DROPPED: &str = "an idle connection was replaced unchecked after a failed check";

/// The statement's rows, from its function's answer: the rows of a set, or the one row of
/// one `record` (none when the statement found none; also none for a `void` function, of a
/// statement without result columns).
fn statement_rows(returns: Returns, rows: &[Row]) -> anyhow::Result<Vec<Record>> {
    if returns == Returns::Rows {
        return rows.iter().map(Record::from_row).collect();
    }
    let [row] = rows else {
        return Err(anyhow!("a function answered with {} rows", rows.len()));
    };
    if row.columns().first().map(Column::type_) == Some(&Type::VOID) {
        return Ok(Vec::new());
    }
    let record: Option<Record> = row.try_get(0).context("reading the function's record")?;
    Ok(record
        .into_iter()
        .filter(|record| !record.is_no_row())
        .collect())
}

/// The `lock_timeout` a call carries: the time left, in whole milliseconds, at least 1 (`0`
/// would mean no limit).
fn lock_timeout(remaining: Duration) -> String {
    format!("{}ms", remaining.as_millis().max(1))
}

/// The values of typed parameters, for a prepared statement (whose types are known).
fn values<'a>(params: &'a [(&'a (dyn ToSql + Sync), Type)]) -> Vec<&'a (dyn ToSql + Sync)> {
    params.iter().map(|(value, _)| *value).collect()
}

/// A call's rows, or its error and whether the statement had completed (its
/// CommandComplete arrived) before the error: then the error came with the commit, or
/// after it.
struct CallError {
    error: tokio_postgres::Error,
    completed: bool,
}

/// The call's error, unless a request sent before it in the same flight was refused by a
/// pooler that never forwarded it ([`never_forwarded`]) and the call then met only the
/// closed connection: the pooler answers a client it refuses once, at its first request,
/// and closes it, so nothing sent after that request reached a server either. The call's
/// outcome is then the refusal's.
///
/// Which request went first varies (the preparation is sent at its first poll, before the
/// role's check), and the pooler's one refusal answers whichever did; the others meet the
/// closed connection too. So any of them may carry it.
fn refused_before(failed: CallError, earlier: [Option<tokio_postgres::Error>; 2]) -> CallError {
    if failed.completed || failed.error.as_db_error().is_some() {
        return failed;
    }
    let refusal = earlier.into_iter().flatten().find(|error| {
        error
            .as_db_error()
            .is_some_and(|db| !raised_by_postgres(db) && never_forwarded(db))
    });
    match refusal {
        Some(error) => CallError {
            error,
            completed: false,
        },
        None => failed,
    }
}

/// Reads a call's answer to the end: its ReadyForQuery, which the server sends after the
/// implicit transaction has committed (or failed).
async fn rows_to_the_end(
    stream: Result<tokio_postgres::RowStream, tokio_postgres::Error>,
) -> Result<Vec<Row>, CallError> {
    let stream = stream.map_err(|error| CallError {
        error,
        completed: false,
    })?;
    let mut stream = std::pin::pin!(stream);
    let mut rows = Vec::new();
    while let Some(row) = stream.next().await {
        match row {
            Ok(row) => rows.push(row),
            Err(error) => {
                return Err(CallError {
                    error,
                    completed: stream.rows_affected().is_some(),
                })
            }
        }
    }
    Ok(rows)
}

/// Whether a statement failed because its name did not reach that statement: Bind found
/// none of that name, or another function's, which refused the call before anything else
/// ([`procedures::WRONG_STATEMENT`]), or (for a `named` statement, prepared earlier) a
/// statement of another shape, which Postgres refused at Bind (the number or the formats of
/// its parameters differ; `exec_bind_message` is where Postgres checks them). Either way
/// nothing ran.
fn statement_names_not_kept(error: &tokio_postgres::Error, named: bool) -> bool {
    error.code() == Some(&SqlState::INVALID_SQL_STATEMENT_NAME)
        || (named
            && error
                .as_db_error()
                .is_some_and(|db| db.routine() == Some("exec_bind_message")))
}

/// What a call's answer says about its outcome:
/// - rows (ReadyForQuery included): committed;
/// - an error that Postgres raised before the statement completed: the statement failed,
///   and its transaction with it: nothing took effect (the deadline's refusal is told apart,
///   and so is a name that reached no statement or another function's: a 503);
/// - an error that a pooler raised before the statement completed: unknown, unless it
///   refused a call it never forwarded ([`never_forwarded`]): it may stand for a server lost
///   after committing;
/// - an error after the statement completed: the commit failed, rolled back where the
///   error says so ([`rolled_back_at_commit`]), otherwise unknown (a server that shuts
///   down while committing may have committed);
/// - no answer because the connection died: unknown.
///
/// `names_not_kept` is [`statement_names_not_kept`] of the answer's error, found once by the
/// caller.
fn call_outcome(
    answer: Result<Vec<Row>, CallError>,
    names_not_kept: bool,
) -> Result<Vec<Row>, Failure> {
    let CallError { error, completed } = match answer {
        Ok(rows) => return Ok(rows),
        Err(failed) => failed,
    };
    if names_not_kept {
        return Err(Failure {
            error: anyhow::Error::new(error).context("a named statement was not the call's"),
            status: Some(ApiError::Unavailable(anyhow!("statement names not kept"))),
            connection_lost: false,
            deadline: None,
            repeat: Some(Repeat::Unnamed),
        });
    }
    let Some(db) = error.as_db_error() else {
        return Err(Failure::unknown(error));
    };
    if row_security_off(db) {
        return Err(Failure {
            repeat: Some(Repeat::RowSecurityOn),
            ..Failure::not_done(error)
        });
    }
    if *db.code() == SqlState::QUERY_CANCELED && db.message() == procedures::DEADLINE_PASSED {
        return Err(Failure {
            error: anyhow!("the call reached the database after its deadline"),
            status: Some(ApiError::Unavailable(anyhow!("deadline passed"))),
            connection_lost: false,
            deadline: None,
            repeat: None,
        });
    }
    if *db.code() == SqlState::UNDEFINED_FUNCTION {
        // In the request's own line (its `database` field), not a line of its own.
        crate::telemetry::note("a statement's function is missing: run `migrate` for this release");
    }
    if *db.code() == SqlState::READ_ONLY_SQL_TRANSACTION {
        // A 503 that lasts is a misconfiguration, not an outage: say which.
        crate::telemetry::note(
            "the server takes no writes: a standby, a read replica's URL, or \
             default_transaction_read_only",
        );
    }
    if !completed && !raised_by_postgres(db) {
        if never_forwarded(db) {
            return Err(Failure::refused(error));
        }
        // A pooler answering for the server connection it lost under the call (PgBouncer's
        // "server conn crashed?"): the server may have committed first, its answer lost
        // with it, as when a direct connection just closes.
        return Err(Failure::unknown(error));
    }
    if completed && !rolled_back_at_commit(db.code()) {
        Err(Failure::unknown(error))
    } else {
        Err(Failure::not_done(error))
    }
}

/// Whether Postgres refused a statement because `row_security` is off and a policy would
/// apply to it ("query would be affected by row-level security policy", raised before the
/// statement runs, in any language). The setting is the session's, so behind a pooler in
/// transaction mode it may be another client's: `pg_dump` sends `SET row_security = off`,
/// and every dump file starts with it.
fn row_security_off(db: &DbError) -> bool {
    *db.code() == SqlState::INSUFFICIENT_PRIVILEGE && db.routine() == Some("check_enable_rls")
}

/// Begins the transaction of [`Repeat::RowSecurityOn`].
const ROW_SECURITY_ON: &str = "BEGIN; SELECT pg_catalog.set_config('row_security', 'on', false)";

/// Whether an error that came with the commit says that it rolled back: serialization
/// failures and deadlocks (class 40) and deferred constraints (class 23), but not 40003,
/// "statement completion unknown".
fn rolled_back_at_commit(code: &SqlState) -> bool {
    (code.code().starts_with("40") && *code != SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN)
        || code.code().starts_with("23")
}

/// Whether Postgres itself raised an error: it reports the source file, line and routine of
/// every error it raises, and an error it raises before the statement completed aborts the
/// transaction. A pooler (PgBouncer) or proxy that answers for a server sends only the
/// severity, the code and a message.
fn raised_by_postgres(db: &DbError) -> bool {
    db.routine().is_some()
}

/// PgBouncer's refusals of a call that it never forwarded to a server: the client was still
/// waiting for one (`query_wait_timeout`, and `query_timeout` while waiting, where a
/// forwarded call's is "query timeout"), or none could be had. That includes a server's
/// refusal of PgBouncer's login, which PgBouncer relays, code and message, to every client
/// waiting for a server: codes Postgres raises only before a session starts (class 28,
/// `too_many_connections`, an unknown database, "cannot connect now"). Any other error of
/// a pooler may stand for a server lost under the call.
fn never_forwarded(db: &DbError) -> bool {
    const WAITING: [&str; 7] = [
        "query_wait_timeout",
        "server login has been failing",
        "server login failed",
        "pgbouncer cannot connect to server",
        "server shutting down",
        "pooler is shutting down",
        "no more connections allowed",
    ];
    let message = db.message();
    // PgBouncer relays a server's login refusal as FATAL, and then closes the connection.
    let at_login = db.severity() == "FATAL"
        && (db.code().code().starts_with("28")
            || [
                SqlState::TOO_MANY_CONNECTIONS,
                SqlState::INVALID_CATALOG_NAME,
                SqlState::CANNOT_CONNECT_NOW,
            ]
            .contains(db.code()));
    at_login
        || message == "query_timeout"
        || WAITING.iter().any(|refusal| message.starts_with(refusal))
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
    /// Nothing ran, for a reason a repeat removes, so a repeat is safe for any statement
    /// and should succeed.
    repeat: Option<Repeat>,
}

/// Why a call refused before it ran is repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// The call's named statement was not its own ([`statement_names_not_kept`]): the
    /// process has switched to unnamed statements.
    Unnamed,
    /// The server connection has `row_security` off ([`row_security_off`]): the repeat turns
    /// it back on first, in the same transaction.
    RowSecurityOn,
}

impl Failure {
    /// Nothing was sent: the pool, the connection or the deadline failed first.
    fn not_sent(error: ApiError) -> Self {
        Failure {
            error: anyhow!("not sent"),
            status: Some(error),
            connection_lost: false,
            deadline: None,
            repeat: None,
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
            repeat: None,
        }
    }

    /// A pooler refused the call before any server had it ([`never_forwarded`]): nothing
    /// took effect, and the database is unavailable, whatever code the pooler relayed (a
    /// server's refusal of its login: 28P01 after a password change is a 503 here as it is
    /// on a direct connection that cannot log in).
    fn refused(err: tokio_postgres::Error) -> Self {
        let connection_lost = err.is_closed() || err.code().is_some_and(is_connection_class);
        Failure {
            error: anyhow!("the pooler refused the call before a server had it"),
            status: Some(ApiError::Unavailable(
                anyhow::Error::new(err).context("database pooler"),
            )),
            connection_lost,
            deadline: None,
            repeat: None,
        }
    }

    /// The connection was lost after the write was sent: it may or may not have committed.
    fn unknown(err: tokio_postgres::Error) -> Self {
        Failure {
            connection_lost: true,
            status: None,
            error: anyhow::Error::new(err).context("database connection lost mid-transaction"),
            deadline: None,
            repeat: None,
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
            // With its causes: tokio-postgres's own text is only "db error" or "error
            // connecting to server" (none of them holds the connection string).
            PoolError::Backend(err) => crate::error::write_with_causes(f, err),
            other => write!(f, "{other}"),
        }
    }
}

fn pool_error(err: PoolError) -> ApiError {
    match err {
        // No connection, so nothing was sent; whatever refused it (Neon's proxy answers
        // XX000 when it cannot wake the compute), the database is unavailable.
        PoolError::Backend(err) => {
            ApiError::Unavailable(anyhow::Error::new(err).context("database connection"))
        }
        PoolError::Timeout(_) => ApiError::Unavailable(anyhow!("{}", PoolFailure(&err))),
        other => ApiError::Internal(anyhow!("connection pool: {other}")),
    }
}

/// Sorts driver errors into "try again later" (503) and bugs (500).
fn driver_error(err: tokio_postgres::Error) -> ApiError {
    let transient = is_transient(err.code());
    let err = anyhow::Error::new(err).context("database");
    if transient {
        ApiError::Unavailable(err)
    } else {
        ApiError::Internal(err)
    }
}

/// Whether an error says "try again later": no code (I/O, a closed connection, TLS), the
/// connection's classes (08), the server's resources (53: disk, memory, connections), an
/// operator or a timeout (57: shutdown, cancel), the system (58: I/O) and internal errors
/// (XX: Neon's proxy and storage report theirs so), the conflicts of concurrent
/// transactions (serialization, deadlock, a lock not had in time), and a server that takes
/// no writes (25006: a standby while it is promoted, a replica's URL, or
/// `default_transaction_read_only` left on; refused before anything changed).
fn is_transient(code: Option<&SqlState>) -> bool {
    let Some(code) = code else { return true };
    ["08", "53", "57", "58", "XX"].contains(&&code.code()[..2])
        || [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::READ_ONLY_SQL_TRANSACTION,
        ]
        .contains(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AFTER: Duration = Duration::from_secs(30);

    /// `migrate` connects with [`connect_once`]: it says what is wrong with the URL, as the
    /// functions do at start-up, and never the password.
    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_url_says_why_without_its_password() {
        for (url, why) in [
            (
                "postgres://u:hunter2@db.example.com/x?sslmode=prefer",
                "sslmode=prefer",
            ),
            (
                "postgres://u:hunter2@db.example.com/x?sslcrl=crl.pem",
                "sslcrl",
            ),
            (
                "postgres://u:hunter2@db.example.com/x?nosuchoption=1",
                "not a usable",
            ),
        ] {
            let Err(err) = connect_once(url, None, Duration::from_secs(1)).await else {
                panic!("{url} was taken");
            };
            let err = format!("{err:#}");
            assert!(err.contains("DATABASE_URL") && err.contains(why), "{err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn a_connection_used_within_the_threshold_is_used_unchecked() {
        let watch = IdleWatch::new(AFTER);
        let (wall, used) = (SystemTime::now(), Instant::now());
        watch.request(wall, used);
        let later = used + Duration::from_secs(29);
        watch.request(wall + Duration::from_secs(29), later);
        assert_eq!(watch.verdict(used, later), Verdict::Use);
        assert_eq!(watch.verdict(used, used + AFTER), Verdict::Check);
    }

    /// A request at `used`, then one ten minutes later by the wall clock, 1 ms later by the
    /// monotonic one (which may stand still while an instance is frozen), at `thawed`.
    struct Thawed {
        watch: IdleWatch,
        wall: SystemTime,
        used: Instant,
        thawed: Instant,
    }

    fn frozen_for_ten_minutes() -> Thawed {
        let watch = IdleWatch::new(AFTER);
        let (wall, used) = (SystemTime::now(), Instant::now());
        watch.request(wall, used);
        let thawed = used + Duration::from_millis(1);
        watch.request(wall + Duration::from_secs(600), thawed);
        Thawed {
            watch,
            wall,
            used,
            thawed,
        }
    }

    #[test]
    fn a_pause_on_the_wall_clock_alone_marks_the_connections_used_before_it() {
        let Thawed {
            watch,
            wall,
            used,
            thawed,
        } = frozen_for_ten_minutes();
        assert_eq!(watch.verdict(used, thawed), Verdict::Check);
        // A connection opened after it (by this request, say) is not.
        let opened = thawed + Duration::from_millis(2);
        let next = opened + Duration::from_millis(3);
        watch.request(wall + Duration::from_secs(600), next);
        assert_eq!(watch.verdict(opened, next), Verdict::Use);
    }

    /// The connection the warm-up opens at the cold start, before any request.
    #[test]
    fn the_cold_start_counts_as_the_first_request() {
        let opened = Instant::now();
        let watch = IdleWatch::new(AFTER);
        let thawed = opened + Duration::from_millis(1);
        watch.request(SystemTime::now() + Duration::from_secs(600), thawed);
        assert_eq!(watch.verdict(opened, thawed), Verdict::Check);
    }

    #[test]
    fn after_a_failed_check_the_idle_connections_used_before_it_are_dropped() {
        let Thawed {
            watch,
            used,
            thawed,
            ..
        } = frozen_for_ten_minutes();
        watch.check_failed(thawed);
        let after_it = thawed + Duration::from_secs(1);
        assert_eq!(watch.verdict(used, after_it), Verdict::Drop);
        // One opened while the check ran, or after it, is not.
        let opened = thawed + Duration::from_millis(500);
        assert_eq!(watch.verdict(opened, after_it), Verdict::Use);
    }

    #[test]
    fn only_what_says_so_rolled_back_at_commit() {
        assert!(rolled_back_at_commit(&SqlState::T_R_SERIALIZATION_FAILURE));
        assert!(rolled_back_at_commit(&SqlState::T_R_DEADLOCK_DETECTED));
        assert!(rolled_back_at_commit(&SqlState::UNIQUE_VIOLATION));
        assert!(!rolled_back_at_commit(
            &SqlState::T_R_STATEMENT_COMPLETION_UNKNOWN
        ));
        assert!(!rolled_back_at_commit(&SqlState::ADMIN_SHUTDOWN));
        assert!(!rolled_back_at_commit(&SqlState::IO_ERROR));
    }

    #[test]
    fn database_trouble_is_transient_and_faults_of_the_statement_are_not() {
        for code in [
            None,
            Some(SqlState::CONNECTION_FAILURE),
            Some(SqlState::PROTOCOL_VIOLATION),
            Some(SqlState::TOO_MANY_CONNECTIONS),
            Some(SqlState::DISK_FULL),
            Some(SqlState::OUT_OF_MEMORY),
            Some(SqlState::QUERY_CANCELED),
            Some(SqlState::ADMIN_SHUTDOWN),
            Some(SqlState::CANNOT_CONNECT_NOW),
            Some(SqlState::IO_ERROR),
            Some(SqlState::INTERNAL_ERROR),
            Some(SqlState::T_R_SERIALIZATION_FAILURE),
            Some(SqlState::T_R_DEADLOCK_DETECTED),
            Some(SqlState::LOCK_NOT_AVAILABLE),
            Some(SqlState::READ_ONLY_SQL_TRANSACTION),
        ] {
            assert!(is_transient(code.as_ref()), "{code:?}");
        }
        for code in [
            SqlState::UNDEFINED_FUNCTION,
            SqlState::UNDEFINED_COLUMN,
            SqlState::INVALID_TEXT_REPRESENTATION,
            SqlState::NOT_NULL_VIOLATION,
            SqlState::INSUFFICIENT_PRIVILEGE,
        ] {
            assert!(!is_transient(Some(&code)), "{code:?}");
        }
    }

    /// A lock timeout is never `0ms`, which Postgres reads as no limit at all.
    #[test]
    fn the_lock_timeout_is_the_time_left_and_never_none() {
        assert_eq!(lock_timeout(Duration::from_micros(4_985_600)), "4985ms");
        assert_eq!(lock_timeout(Duration::from_micros(400)), "1ms");
        assert_eq!(lock_timeout(Duration::ZERO), "1ms");
    }
}
