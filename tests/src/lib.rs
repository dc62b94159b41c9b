//! The test harness: a real Postgres (a throwaway cluster, or `DATABASE_URL`), the
//! application state pointed at it, tokens, and API Gateway HTTP API (v2.0) events.

pub mod cluster;
pub mod events;
pub mod mirrors;
pub mod pgbouncer;
pub mod proxy;
pub mod tokens;

use std::collections::HashMap;
use std::sync::OnceLock;

pub use events::{ApiEvent, ApiResponse};

/// A 32-byte-plus HS256 secret used by every test state.
pub const TEST_SECRET: &str = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz";

/// The URL of a migrated database shared by the whole test run. Tests stay out of each
/// other's way by using fresh user ids, which is also what the API isolates on.
pub fn database_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| cluster::Cluster::start().url());
        migrate(&url);
        url
    })
}

/// Applies the migrations on a runtime of its own, so that it does not depend on the
/// runtime of whichever test got here first.
pub fn migrate_with(url: &str, ca_file: Option<&std::path::Path>) {
    let url = url.to_owned();
    let ca_file = ca_file.map(std::path::Path::to_path_buf);
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                let mut client = shared::db::connect_once(
                    &url,
                    ca_file.as_deref(),
                    std::time::Duration::from_secs(10),
                )
                .await
                .expect("connect to the test database");
                migrations::apply(&mut client).await.expect("migrate");
            })
    })
    .join()
    .expect("migration thread");
}

fn migrate(url: &str) {
    migrate_with(url, None);
}

/// How many tasks `user` has, read directly from the database.
pub async fn task_count(user: &str) -> i64 {
    db().await
        .query_one("SELECT count(*) FROM tasks WHERE user_id = $1", &[&user])
        .await
        .expect("count")
        .get(0)
}

/// Settings for a test state; `extra` overrides or adds variables.
pub fn env(extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut map: HashMap<String, String> = [
        ("DATABASE_URL", database_url()),
        ("BETTER_AUTH_SECRET", TEST_SECRET),
        ("JWT_JWKS", include_str!("../fixtures/jwks.json")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    for (k, v) in extra {
        map.insert((*k).to_owned(), (*v).to_owned());
    }
    map.retain(|_, v| !v.is_empty());
    map
}

/// The application state as a function builds it at cold start, from these settings.
pub fn state_with(vars: HashMap<String, String>) -> shared::AppState {
    let config = shared::config::Config::from_lookup(|name| vars.get(name).cloned())
        .expect("valid test configuration");
    shared::AppState::new(&config).expect("state")
}

/// The default test state: HS256 and an inline JWKS, against the test database.
pub fn state() -> shared::AppState {
    state_with(env(&[]))
}

/// A fresh user id in Better Auth's style (32 random alphanumerics).
pub fn user_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `url` pointing at database `name` instead.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let (server, _database) = base.rsplit_once('/').expect("a URL with a database");
    format!("{server}/{name}?{query}")
}

/// A new, empty database on the test cluster, and its URL (for tests that change what
/// other tests rely on, such as the statement functions or the statistics).
pub async fn new_database(prefix: &str) -> String {
    let name = format!("{prefix}_{}", user_id());
    db().await
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create a database");
    with_database(database_url(), &name)
}

/// Drops a database made by [`new_database`], with whatever is still connected to it.
pub async fn drop_database(url: &str) {
    let config: tokio_postgres::Config = url.parse().expect("a Postgres URL");
    let name = config.get_dbname().expect("a database name");
    db().await
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .expect("drop the database");
}

/// A plain client on the test database, for arranging rows and checking them afterwards.
pub async fn db() -> tokio_postgres::Client {
    shared::db::connect_once(database_url(), None, std::time::Duration::from_secs(10))
        .await
        .expect("connect to the test database")
}

/// `url` with its host and port replaced by 127.0.0.1:`port` (a proxy in front of it),
/// and the `host:port` it pointed at.
pub fn through_port(url: &str, port: u16) -> (String, String) {
    let config: tokio_postgres::Config = url.parse().expect("a Postgres URL");
    let host = match &config.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(host) => host.clone(),
        other => panic!("not a TCP host: {other:?}"),
    };
    let upstream = format!("{host}:{}", config.get_ports()[0]);
    (
        url.replacen(&upstream, &format!("127.0.0.1:{port}"), 1),
        upstream,
    )
}
