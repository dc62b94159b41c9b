//! Structured JSON logs: one line per request, never a token, a secret or a password.

use tracing_subscriber::EnvFilter;

/// Installs the JSON log subscriber. Level from `RUST_LOG`, else `AWS_LAMBDA_LOG_LEVEL`,
/// else `info`. Safe to call more than once.
pub fn init() {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| std::env::var("AWS_LAMBDA_LOG_LEVEL").ok())
        .and_then(|level| EnvFilter::try_new(level.to_lowercase()).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}
