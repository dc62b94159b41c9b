//! The whole path a Lambda invocation takes: arbitrary JSON as the API Gateway event,
//! through the functions' adapter (`shared::lambda::respond`) into each operation's
//! handler, to the response. Must never panic: with `panic = "abort"`, a panic kills the
//! Lambda instance. The database is unreachable (a closed port), so the few inputs that
//! get past authentication fail fast with a 503.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use shared::routes::ROUTES;
use shared::AppState;

fn state() -> &'static AppState {
    static STATE: OnceLock<AppState> = OnceLock::new();
    STATE.get_or_init(|| {
        let config = shared::config::Config::from_lookup(|name| match name {
            "DATABASE_URL" => Some("postgres://fuzz@127.0.0.1:1/none?sslmode=disable".into()),
            "BETTER_AUTH_SECRET" => Some("fuzz-secret-0123456789abcdefghijklmnopqrstuvwxyz".into()),
            "DB_CONNECT_TIMEOUT_MS" | "DB_POOL_TIMEOUT_MS" => Some("50".into()),
            _ => None,
        })
        .expect("fuzz configuration");
        AppState::new(&config).expect("fuzz state")
    })
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, json)) = data.split_first() else {
        return;
    };
    let Ok(event) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    let state = state();
    let mut context = lambda_http::Context::default();
    context.request_id = "fuzz".into();
    runtime().block_on(async {
        let operation = ROUTES[usize::from(selector) % ROUTES.len()].operation;
        let handler = |req| shared::handlers::handle(state, operation, req);
        let response = shared::lambda::respond(&handler, event, context).await;
        assert!(response.status_code < 500 || response.status_code == 503);
    });
});
