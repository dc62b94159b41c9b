//! The pooled Postgres client: TLS through rustls, and connect, pool-wait and statement
//! timeouts that each end in a 503 rather than a hang.
//!
//! Every statement goes through [`Database::query`], which keeps no session state, so the
//! functions work behind Neon's PgBouncer pooler in transaction mode.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use secrecy::ExposeSecret;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{ConfigError, DatabaseConfig};
use crate::error::ApiError;

/// A pool of connections, created once per cold start.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    tls: MakeRustlsConnect,
    statement_timeout: Duration,
    /// Opens a request's transaction: role, statement timeout.
    begin: String,
}

/// The role requests run as; created by the migrations, without BYPASSRLS.
pub const APP_ROLE: &str = "todo_app";

/// `value` as a dollar-quoted SQL string literal, with a tag that does not occur in it.
/// Dollar quoting has no escapes at all, so no setting (`standard_conforming_strings`) or
/// character in the value can end the literal early. Used for the user id, so that the
/// transaction's opening statements travel as one simple-query message.
fn dollar_quoted(value: &str) -> String {
    let mut tag = String::from("$u$");
    // The literal ends at the first occurrence of the tag after the opening one, which
    // must be the closing tag itself (also when the value's end and the tag overlap).
    while format!("{value}{tag}").find(&tag) != Some(value.len()) {
        tag.insert(tag.len() - 1, 'x');
    }
    format!("{tag}{value}{tag}")
}

/// How much longer than the server-side statement timeout the client waits before it
/// gives up on its own (the server normally cancels first and answers with an error).
const CLIENT_TIMEOUT_MARGIN: Duration = Duration::from_millis(500);

/// libpq options that tokio-postgres does not know and that only concern TLS, which rustls
/// handles (certificates are always verified, SNI is always sent).
const LIBPQ_TLS_ONLY_OPTIONS: &[&str] = &["sslsni", "sslcompression", "gssencmode", "sslcrl"];

/// Parses a Postgres URL as libpq users write it (including Neon's
/// `?sslmode=require&channel_binding=require`) into a tokio-postgres config.
///
/// `verify-ca` and `verify-full` become `require`: rustls always verifies the certificate
/// chain and host name, which is what they ask for.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, ConfigError> {
    let invalid = |reason: String| ConfigError::Invalid {
        name: "DATABASE_URL",
        reason,
    };
    let (normalized, _) = normalize_url(url);
    tokio_postgres::Config::from_str(&normalized)
        .map_err(|err| invalid(format!("not a usable Postgres URL ({err})")))
}

/// Returns the URL tokio-postgres can parse and the `sslrootcert` it named, if any.
fn normalize_url(url: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_owned(), None);
    };
    let mut root_cert = None;
    let mut kept = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" if value == "verify-full" || value == "verify-ca" => {
                kept.push("sslmode=require".to_owned());
            }
            "sslrootcert" => {
                if value != "system" {
                    root_cert = Some(
                        percent_encoding::percent_decode_str(value)
                            .decode_utf8_lossy()
                            .into_owned(),
                    );
                }
            }
            key if LIBPQ_TLS_ONLY_OPTIONS.contains(&key) => {}
            _ => kept.push(pair.to_owned()),
        }
    }
    if kept.is_empty() {
        (base.to_owned(), root_cert)
    } else {
        (format!("{base}?{}", kept.join("&")), root_cert)
    }
}

fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            // Other rustls users in the process (the JWKS client) use the same provider.
            let _ = rustls::crypto::CryptoProvider::install_default((*provider).clone());
            provider
        })
        .clone()
}

/// Makes sure rustls has a process-wide crypto provider (ring).
pub fn install_crypto_provider() {
    crypto_provider();
}

/// The rustls client configuration: the public web PKI roots plus an optional extra CA.
pub fn tls_config(extra_ca: Option<&Path>) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        use rustls_pki_types::pem::PemObject;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("cannot read CA file {}", path.display()))?;
        for cert in certs {
            let cert = cert.with_context(|| format!("bad PEM in CA file {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("unusable CA certificate in {}", path.display()))?;
        }
    }
    Ok(
        rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// Opens one connection outside the pool (for the `migrate` command and tooling), with the
/// same URL handling and TLS as the functions.
pub async fn connect_once(
    url: &str,
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> anyhow::Result<tokio_postgres::Client> {
    let (url, url_ca) = normalize_url(url);
    let mut pg = tokio_postgres::Config::from_str(&url)
        .map_err(|_| anyhow!("DATABASE_URL is not a usable Postgres URL"))?;
    pg.connect_timeout(connect_timeout);
    let ca_file = ca_file
        .map(Path::to_path_buf)
        .or_else(|| url_ca.map(Into::into));
    let tls = MakeRustlsConnect::new(tls_config(ca_file.as_deref())?);
    let (client, connection) = pg
        .connect(tls)
        .await
        .context("cannot connect to Postgres")?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(error = %err, "database connection closed");
        }
    });
    Ok(client)
}

impl Database {
    /// Builds the pool. No connection is opened until [`Database::warm_up`] or first use.
    pub fn new(config: &DatabaseConfig) -> anyhow::Result<Self> {
        let (url, url_ca) = normalize_url(config.url.expose_secret());
        let mut pg = tokio_postgres::Config::from_str(&url)
            .map_err(|_| anyhow!("DATABASE_URL is not a usable Postgres URL"))?;
        pg.connect_timeout(config.connect_timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("todo-api");
        }
        let ca_file = config.ca_file.clone().or_else(|| url_ca.map(Into::into));
        let tls = MakeRustlsConnect::new(tls_config(ca_file.as_deref())?);
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
            begin: format!(
                "BEGIN; SET LOCAL ROLE {APP_ROLE}; SET LOCAL statement_timeout = {}",
                config.statement_timeout.as_millis()
            ),
        })
    }

    /// Opens the first connection during the cold start, so the first request does not pay
    /// for it. A failure is only logged: requests will retry and answer 503 if it persists.
    pub async fn warm_up(&self) {
        if let Err(err) = self.pool.get().await {
            tracing::warn!(error = %PoolFailure(&err), "database warm-up failed");
        }
    }

    /// Runs one statement on behalf of `user_id`, in a transaction of its own that runs as
    /// the `todo_app` role with `app.user_id` set, so that the row-level security policies
    /// hold whatever the SQL says. The transaction is three pipelined messages (open and
    /// set the context; the statement; commit): the whole request costs one network round
    /// trip. Nothing outlives the transaction, so the connection can be shared through
    /// Neon's pooler in transaction mode.
    pub async fn query_as(
        &self,
        user_id: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, ApiError> {
        self.attempt_as(user_id, sql, params)
            .await
            .map_err(|failure| failure.error)
    }

    /// [`Database::query_as`] for statements that are safe to run twice (reads, and writes
    /// whose effect is the same when repeated): when the connection turns out to be closed
    /// under the request, it runs once more on a fresh connection.
    pub async fn query_as_retrying(
        &self,
        user_id: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, ApiError> {
        match self.attempt_as(user_id, sql, params).await {
            Err(Failure { closed: true, .. }) => self
                .attempt_as(user_id, sql, params)
                .await
                .map_err(|failure| failure.error),
            other => other.map_err(|failure| failure.error),
        }
    }

    async fn attempt_as(
        &self,
        user_id: &str,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Failure> {
        let client = self.live_connection().await.map_err(Failure::from)?;
        let begin = format!(
            "{}; SELECT set_config('app.user_id', {}, true)",
            self.begin,
            dollar_quoted(user_id)
        );
        let outcome = tokio::time::timeout(self.client_timeout(), async {
            let (begin, rows, commit) = tokio::join!(
                client.batch_execute(&begin),
                client.query_typed(sql, params),
                client.batch_execute("COMMIT"),
            );
            begin?;
            let rows = rows?;
            commit?;
            Ok(rows)
        })
        .await;
        self.finish(client, outcome)
    }

    /// Runs one statement outside any user's context: no role change, no transaction.
    /// For `/health` and tooling; task data is only reached through [`Database::query_as`].
    pub async fn query_unscoped(
        &self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, ApiError> {
        let client = self.live_connection().await?;
        let outcome =
            tokio::time::timeout(self.client_timeout(), client.query_typed(sql, params)).await;
        self.finish(client, outcome)
            .map_err(|failure| failure.error)
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

    /// The client-side limit, a backstop to the server-side statement timeout.
    fn client_timeout(&self) -> Duration {
        self.statement_timeout + CLIENT_TIMEOUT_MARGIN
    }

    fn finish(
        &self,
        client: deadpool_postgres::Object,
        outcome: Result<Result<Vec<Row>, tokio_postgres::Error>, tokio::time::error::Elapsed>,
    ) -> Result<Vec<Row>, Failure> {
        match outcome {
            Ok(Ok(rows)) => Ok(rows),
            Ok(Err(err)) => Err(Failure {
                closed: err.is_closed(),
                error: driver_error(err),
            }),
            Err(_elapsed) => {
                // Stop the server-side work too, and never reuse a connection whose state is
                // unknown.
                let cancel = client.cancel_token();
                let tls = self.tls.clone();
                tokio::spawn(async move {
                    let _ = cancel.cancel_query(tls).await;
                });
                drop(deadpool_postgres::Object::take(client));
                Err(Failure::from(ApiError::Unavailable(anyhow!(
                    "statement timed out after {:?}",
                    self.statement_timeout
                ))))
            }
        }
    }

    /// Checks that the database answers, for `/health`.
    pub async fn ping(&self) -> Result<(), ApiError> {
        self.query_unscoped("SELECT 1", &[]).await.map(drop)
    }
}

/// A failed attempt, and whether it failed because the connection was closed under it.
struct Failure {
    error: ApiError,
    closed: bool,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Self {
        Failure {
            error,
            closed: false,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_become_require_and_libpq_only_options_are_dropped() {
        let (url, ca) = normalize_url(
            "postgres://u:p@h/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&sslsni=1&channel_binding=require",
        );
        assert_eq!(
            url,
            "postgres://u:p@h/db?sslmode=require&channel_binding=require"
        );
        assert_eq!(ca.as_deref(), Some("/tmp/ca.pem"));
    }

    #[test]
    fn neon_urls_parse_with_channel_binding() {
        let config = parse_url(
            "postgresql://alex:pw@ep-x-pooler.us-east-2.aws.neon.tech/neondb?sslmode=require&channel_binding=require",
        )
        .unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(
            config.get_channel_binding(),
            tokio_postgres::config::ChannelBinding::Require
        );
    }

    #[test]
    fn dollar_quoting_cannot_be_escaped() {
        assert_eq!(dollar_quoted("alice"), "$u$alice$u$");
        assert_eq!(dollar_quoted("it's"), "$u$it's$u$");
        for value in [
            "x$u$; DROP TABLE tasks; --",
            "ab$u",
            "$u",
            "$",
            "$ux$u$",
            "",
        ] {
            let quoted = dollar_quoted(value);
            let tag_len = quoted.len() - value.len();
            let tag = &quoted[..tag_len / 2];
            assert!(tag.starts_with('$') && tag.ends_with('$'));
            // After the opening tag, the first occurrence of the tag is the closing one.
            let rest = &quoted[tag.len()..];
            assert_eq!(rest.find(tag), Some(value.len()), "{value:?} -> {quoted}");
        }
    }

    #[test]
    fn the_tls_config_has_public_roots() {
        assert!(tls_config(None).is_ok());
        assert!(tls_config(Some(Path::new("/nonexistent/ca.pem"))).is_err());
    }
}
