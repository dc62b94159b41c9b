//! Structured JSON logs: one line per request, never a token, a secret or a password.

use std::cell::Cell;
use std::future::Future;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The crates of this workspace that log: the only ones `RUST_LOG` may make log below
/// `info`. (Targets match as prefixes; no dependency's name starts with one of these.)
const OWN_CRATES: [&str; 2] = ["shared", "todo_server"];

/// Installs the JSON log subscriber ([`json_logs`], to standard output). Level from
/// `RUST_LOG`, else `AWS_LAMBDA_LOG_LEVEL`, else `info`; the dependencies never below `info`
/// ([`dependency_cap`]). Safe to call more than once.
pub fn init() {
    let level = std::env::var("RUST_LOG")
        .ok()
        .or_else(|| std::env::var("AWS_LAMBDA_LOG_LEVEL").ok())
        .unwrap_or_else(|| "info".into());
    let _ = json_logs(&level, std::io::stdout).try_init();
}

/// The functions' log subscriber: one JSON object per line, at `level` (an `EnvFilter`
/// directive; `info` when it is not one), written to `writer`.
pub fn json_logs<W>(level: &str, writer: W) -> impl tracing::Subscriber + Send + Sync
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter =
        EnvFilter::try_new(level.to_lowercase()).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .finish()
        .with(dependency_cap())
}

tokio::task_local! {
    /// What the layers below a request noticed during it, for its log line ([`note`]).
    static NOTE: Cell<Option<&'static str>>;
}

/// Runs a request's `work`, and returns with its output what [`note`] was told meanwhile.
pub async fn noting<T>(work: impl Future<Output = T>) -> (T, Option<&'static str>) {
    NOTE.scope(Cell::new(None), async {
        let output = work.await;
        (output, NOTE.with(Cell::get))
    })
    .await
}

/// Puts `what` into the log line of the request under way (the last one told wins), where
/// it would otherwise be a line of its own; outside a request ([`noting`]), nothing.
pub fn note(what: &'static str) {
    let _ = NOTE.try_with(|note| note.set(Some(what)));
}

/// Every dependency stops at `info`, whatever `RUST_LOG` asks for: below it, the Lambda
/// runtime logs each raw event, `Authorization` header included (`trace`), tokio-postgres
/// every statement's parameters (`debug`), and the AWS SDK its signed requests. A common
/// debugging step (`RUST_LOG=trace`) must not put a token or a credential in the logs.
///
/// The pool's warnings of a connection closed or failed (`deadpool.postgres`) are left out
/// too: they are lines of their own, in the middle of a request; what they say is in the
/// request's line instead (`database`, [`note`]), or in its error.
fn dependency_cap() -> Targets {
    OWN_CRATES.iter().fold(
        Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("deadpool", LevelFilter::ERROR),
        |targets, own| targets.with_target(*own, LevelFilter::TRACE),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[tokio::test]
    async fn a_note_reaches_its_own_request_only() {
        note("outside any request");
        let (output, noted) = noting(async {
            note("first");
            tokio::task::yield_now().await;
            note("second");
            7
        })
        .await;
        assert_eq!((output, noted), (7, Some("second")));
        assert_eq!(noting(async {}).await.1, None);
    }

    #[test]
    fn only_this_workspace_logs_below_info() {
        let cap = dependency_cap();
        for dependency in [
            "lambda_runtime::layers::api_response",
            "tokio_postgres::query",
            "aws_smithy_runtime::client::orchestrator",
            "aws_sigv4::http_request::sign",
            "hyper_util::client",
        ] {
            assert!(cap.would_enable(dependency, &Level::INFO), "{dependency}");
            assert!(!cap.would_enable(dependency, &Level::DEBUG), "{dependency}");
            assert!(!cap.would_enable(dependency, &Level::TRACE), "{dependency}");
        }
        assert!(!cap.would_enable("deadpool.postgres", &Level::WARN));
        assert!(cap.would_enable("deadpool.postgres", &Level::ERROR));
        for own in ["shared::auth", "shared", "todo_server"] {
            assert!(cap.would_enable(own, &Level::TRACE), "{own}");
        }
    }
}
