//! `todo-server`: every route of the API in one process, for running it as a container
//! outside Lambda (and for HTTP load tests). It resolves requests with the same route table
//! and runs the same handlers as the Lambda functions, so behaviour is identical.
//!
//! Settings: those of the functions (see the README), plus `HOST` (default 127.0.0.1; use
//! 0.0.0.0 in a container), `PORT` (default 8080), and `DB_POOL_SIZE`, which defaults to 16
//! here because one process serves many requests at once; and the limits that keep slow or
//! hostile clients from holding it (it faces the internet directly): see [`Limits`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use lambda_http::RequestExt;
use shared::error::ApiError;
use shared::request::{BodyTooLarge, MAX_BODY_BYTES};
use shared::response::HttpResponse;
use shared::routes::resolve;
use shared::{handlers, telemetry, AppState};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::task::TaskTracker;

const DEFAULT_POOL_SIZE: &str = "16";
/// File descriptors kept free for what is not a client connection: the listener, the
/// database pool, the runtime, logs.
const RESERVED_FDS: u64 = 64;
/// How long to wait before accepting again after `accept` failed (e.g. no file descriptor
/// left): long enough not to spin a core or flood the log, short enough to recover at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How much a client may hold. Each is a whole number setting read once at start-up.
struct Limits {
    /// `HTTP_HEADER_TIMEOUT_MS` (10 000): time to send a request's headers, counted from
    /// when the server starts waiting for them (so also an idle keep-alive connection).
    header_read_timeout: Duration,
    /// `HTTP_BODY_TIMEOUT_MS` (10 000): time to send a request's body once its headers
    /// are in; later it is a 408 and the connection is closed.
    body_read_timeout: Duration,
    /// `MAX_CONNECTIONS` (1024, and never more than the open-file limit allows): client
    /// connections served at once. Beyond it the server stops accepting and new
    /// connections wait in the kernel's listen queue until one closes.
    max_connections: usize,
    /// `SHUTDOWN_TIMEOUT_MS` (8 000): after SIGTERM or Ctrl-C, how long in-flight requests
    /// get to finish (below the 10 s that `docker stop` waits before SIGKILL).
    shutdown_timeout: Duration,
}

impl Limits {
    fn from_env() -> anyhow::Result<Self> {
        let fd_cap = open_file_limit()
            .map(|limit| limit.saturating_sub(RESERVED_FDS).max(1) as usize)
            .unwrap_or(usize::MAX);
        Ok(Limits {
            header_read_timeout: Duration::from_millis(setting("HTTP_HEADER_TIMEOUT_MS", 10_000)?),
            body_read_timeout: Duration::from_millis(setting("HTTP_BODY_TIMEOUT_MS", 10_000)?),
            max_connections: (setting("MAX_CONNECTIONS", 1024)? as usize).min(fd_cap),
            shutdown_timeout: Duration::from_millis(setting("SHUTDOWN_TIMEOUT_MS", 8_000)?),
        })
    }
}

/// A whole-number setting greater than 0; an invalid one names the variable.
fn setting(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Err(_) => Ok(default),
        Ok(value) => match value.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("{name} is invalid: expected a whole number greater than 0"),
        },
    }
}

/// The soft limit on open file descriptors, which bounds the connections we can hold.
fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and has no other effect.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// mimalloc rather than glibc's allocator: the server's worker threads allocate and free
/// every request's buffers, rows and JSON, and glibc's malloc and free were ~15% of the
/// server's CPU under load. Measured (list of 20 at c = 32, four alternations): ~6 µs less
/// server CPU per request and more requests per second in each pair, for ~9 MB more
/// resident memory (20 MB against 11 MB after a burst). The Lambda functions keep the
/// system allocator: one request at a time, and their size and memory budgets.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    telemetry::init();
    // A failure to start is a JSON line too, as every other line is (and names the
    // setting, never a secret's value).
    if let Err(err) = run().await {
        tracing::error!(error = format!("{err:#}"), "todo-server failed");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let limits = Arc::new(Limits::from_env()?);
    let state = Arc::new(
        AppState::from_env_with_defaults(|name| {
            (name == "DB_POOL_SIZE").then(|| DEFAULT_POOL_SIZE.into())
        })
        .await?,
    );
    let env = |name: &str| std::env::var(name).ok();

    let host = env("HOST").unwrap_or_else(|| "127.0.0.1".into());
    let port = env("PORT").unwrap_or_else(|| "8080".into());
    let addr: SocketAddr = format!("{host}:{port}")
        .parse()
        .map_err(|_| anyhow::anyhow!("HOST/PORT do not form a socket address: {host}:{port}"))?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))?;
    tracing::info!(%addr, max_connections = limits.max_connections, "todo-server listening");

    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    // The requests' own tasks (see `serve`), which may outlive their connections.
    let requests = TaskTracker::new();
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        // At the cap, wait for a connection to close before accepting another.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => permit.expect("never closed"),
            () = &mut shutdown => break,
        };
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        // The connection's slot is free once the connection and its requests have all ended:
        // a client that hangs up and reconnects cannot pile up requests beyond the cap.
        let permit = Arc::new(permit);
        let request = Request {
            state: state.clone(),
            limits: limits.clone(),
            tasks: requests.clone(),
            permit: permit.clone(),
        };
        let service = service_fn(move |req| {
            let request = request.clone();
            async move { Ok::<_, Infallible>(serve(request, req).await) }
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    // Stop accepting (the listener closes), let in-flight requests finish and close idle
    // connections, within a bound.
    drop(listener);
    tracing::info!(connections = graceful.count(), "todo-server stopping");
    requests.close();
    let drained = async {
        graceful.shutdown().await;
        // Requests whose clients hung up have no connection left to wait for.
        requests.wait().await;
    };
    if tokio::time::timeout(limits.shutdown_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!("requests still in flight at the shutdown timeout were dropped");
    }
    tracing::info!("todo-server stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
}

/// What serving a request needs from its connection.
#[derive(Clone)]
struct Request {
    state: Arc<AppState>,
    limits: Arc<Limits>,
    tasks: TaskTracker,
    /// The connection's slot under `MAX_CONNECTIONS`, held by its requests' tasks too.
    permit: Arc<OwnedSemaphorePermit>,
}

/// Routes one request through the route table to the operation's handler.
async fn serve(request: Request, req: http::Request<Incoming>) -> Response<Full<Bytes>> {
    let Request {
        state,
        limits,
        tasks,
        permit,
    } = request;
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    // Answered and logged as the handlers answer and log (one line, request id, CORS).
    let refuse = |parts: http::request::Parts, route: &'static str, error: ApiError| {
        let request = http::Request::from_parts(parts, lambda_http::Body::Empty);
        into_hyper(handlers::refused(&state, &request, route, started, error))
    };
    let (route, params) = match resolve(parts.method.as_str(), parts.uri.path()) {
        Ok(found) => found,
        Err(unrouted) => return refuse(parts, handlers::FALLBACK_ROUTE, unrouted.into()),
    };
    // Read at most one byte past the limit, so an oversized body is refused (413) without
    // being buffered whole, and within a deadline, so a dripped body cannot hold a
    // connection (the handler, and so authentication, comes after).
    let read = Limited::new(body, MAX_BODY_BYTES + 1).collect();
    let (bytes, too_large) = match tokio::time::timeout(limits.body_read_timeout, read).await {
        Ok(Ok(collected)) => (collected.to_bytes(), false),
        Ok(Err(err)) if err.downcast_ref::<LengthLimitError>().is_some() => (Bytes::new(), true),
        // Not the size: a body cut short or badly chunked.
        Ok(Err(_)) => {
            let unreadable = ApiError::MalformedEvent("the request body could not be read");
            return refuse(parts, route.path, unreadable);
        }
        Err(_) => {
            let mut response = refuse(parts, route.path, ApiError::BodyTimeout);
            response.headers_mut().insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
            return response;
        }
    };
    let body = if bytes.is_empty() {
        lambda_http::Body::Empty
    } else {
        lambda_http::Body::Binary(bytes.to_vec())
    };
    let mut request = http::Request::from_parts(parts, body).with_path_parameters(params);
    if too_large {
        // The handler answers 413 in its order of checks (after 401 and 403).
        request.extensions_mut().insert(BodyTooLarge);
    }
    // The handler runs as a task of its own. hyper drops a request's future when its client
    // hangs up, and a handler dropped during a database call would return that connection
    // to the pool with the call still running on it: the next request, anyone's, would
    // queue behind the abandoned call, and the request would log no line. As a task it runs
    // to its end, as it does on Lambda.
    let operation = route.operation;
    let handled = tasks.spawn(async move {
        let _slot = permit;
        handlers::handle(&state, operation, request).await
    });
    match handled.await {
        Ok(response) => into_hyper(response),
        // The task is never aborted: its error is a panic, which goes on as one.
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

fn into_hyper(response: HttpResponse) -> Response<Full<Bytes>> {
    let (parts, body) = response.into_parts();
    let bytes = match body {
        lambda_http::Body::Empty => Bytes::new(),
        lambda_http::Body::Text(text) => Bytes::from(text),
        lambda_http::Body::Binary(data) => Bytes::from(data),
        _ => Bytes::new(),
    };
    Response::from_parts(parts, Full::new(bytes))
}
