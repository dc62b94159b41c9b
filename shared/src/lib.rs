//! The todo API's library: everything the Lambda functions under `functions/` share.
//!
//! A request flows `handlers` → `auth` (who is calling) → `owner` (may they touch this
//! path) → `request` / `task` / `listing` / `precondition` (is the request well-formed;
//! 422s collected by `validation`) → `repo` (one SQL statement through the pooled `db`) →
//! a response built by `response`, with failures mapped by `error` and CORS added by
//! `cors`. `lambda` turns API Gateway events into requests and responses back. `config` is
//! read once per cold start (with `secrets`) into an [`AppState`]; `tls` is the one rustls
//! set-up; `routes` is the single route table that the infrastructure is checked against.
//!
//! The modules stand on floors; each uses only modules on floors below it:
//! 1. `config`, `response`, `validation`, `tls`, `telemetry` (nothing of the crate)
//! 2. `error`, `cors`, `secrets`
//! 3. `routes`, `lambda`, `request`, `task`, `listing`, `auth`, `db`
//! 4. `precondition`, `owner`
//! 5. `repo`
//! 6. [`AppState`] (here), then `handlers`

pub mod auth;
pub mod config;
pub mod cors;
pub mod db;
pub mod error;
pub mod handlers;
pub mod lambda;
pub mod listing;
pub mod owner;
pub mod precondition;
pub mod procedures;
pub mod record;
pub mod repo;
pub mod request;
pub mod response;
pub mod routes;
pub mod secrets;
pub mod task;
pub mod telemetry;
pub mod tls;
pub mod validation;

use auth::TokenVerifier;
use config::Config;
use cors::Cors;
use db::Database;
use repo::TaskRepo;

/// What a warm instance keeps between requests; built once per cold start.
pub struct AppState {
    pub verifier: TokenVerifier,
    pub tasks: TaskRepo,
    pub cors: Cors,
}

impl AppState {
    /// Builds the state from a configuration without touching the network.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        Ok(AppState {
            verifier: TokenVerifier::new(&config.auth)?,
            tasks: TaskRepo::new(Database::new(&config.database)?),
            cors: Cors::new(config.cors_allowed_origins.clone()),
        })
    }

    /// The cold start of a function: reads the environment, builds the state and opens the
    /// first database connection so the first request does not wait for it.
    pub async fn from_env() -> anyhow::Result<Self> {
        Self::from_env_with_defaults(|_| None).await
    }

    /// Like [`AppState::from_env`], with `default` supplying settings that neither Secrets
    /// Manager nor the environment gives (the one-process server's larger pool).
    pub async fn from_env_with_defaults(
        default: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Self> {
        let state = Self::from_env_lazily(default).await?;
        state.tasks.warm_up().await;
        Ok(state)
    }

    /// Like [`AppState::from_env_with_defaults`], without opening a database connection:
    /// the first request that needs one opens it.
    pub async fn from_env_lazily(default: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        Self::new(&read_config(|name| std::env::var(name).ok(), default).await?)
    }

    /// The health function's state, from `get` (the environment). It verifies no token:
    /// `/health` is public, and the fallback routes answer 404 or 405 before any token is
    /// read. So it never fetches the Better Auth secret (`BETTER_AUTH_SECRET_ARN`), which
    /// its role may not read: that secret can mint sessions, and this function serves every
    /// scanner's request. It still checks the other token settings as the task functions
    /// do, with a stand-in for the secret where its ARN is set, so that a setting that
    /// stops their cold start stops this one too, and `/health` never answers 200 for a
    /// stack whose task functions cannot start. Its verifier then refuses every token.
    pub async fn for_health(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let set = |name: &str| get(name).filter(|value| !value.trim().is_empty());
        let secret_elsewhere = set("BETTER_AUTH_SECRET_ARN").is_some();
        let mut config = read_config(
            |name| set(name).filter(|_| name != "BETTER_AUTH_SECRET_ARN"),
            |name| {
                (name == "BETTER_AUTH_SECRET" && secret_elsewhere)
                    .then(|| "s".repeat(config::MIN_SECRET_BYTES))
            },
        )
        .await?;
        TokenVerifier::new(&config.auth)?;
        config.auth = config::AuthConfig::verifying_nothing();
        Self::new(&config)
    }
}

/// The configuration from `env`, whose secrets' ARNs are read from Secrets Manager first,
/// with `default` for what neither gives.
async fn read_config(
    env: impl Fn(&str) -> Option<String> + Copy,
    default: impl Fn(&str) -> Option<String>,
) -> anyhow::Result<Config> {
    let from_secrets = secrets::resolve(env).await?;
    Ok(Config::from_lookup(|name| {
        from_secrets
            .get(name)
            .cloned()
            .or_else(|| env(name))
            .or_else(|| default(name))
    })?)
}

/// What every function's `main` does first: JSON logging, then the state, which lives as
/// long as the process (so that concurrent invocations can share it without counting
/// references).
///
/// A task function opens its first database connection here, so its first request does
/// not wait for it. The health function verifies no token ([`AppState::for_health`]), and
/// does not open one: it also answers every path no route
/// has (API Gateway's fallback routes, where scanners land), and a connection at each of
/// its cold starts would wake a suspended Neon compute for them. `/health` connects when
/// asked.
pub async fn cold_start(operation: routes::Operation) -> anyhow::Result<&'static AppState> {
    telemetry::init();
    let state = if operation == routes::Operation::Health {
        AppState::for_health(|name| std::env::var(name).ok()).await
    } else {
        AppState::from_env().await
    };
    let state = state.inspect_err(|err| {
        tracing::error!(error = format!("{err:#}"), "cold start failed");
    })?;
    Ok(Box::leak(Box::new(state)))
}
