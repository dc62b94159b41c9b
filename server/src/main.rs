//! `todo-server`: every route of the API in one process, for running it as a container
//! outside Lambda (and for HTTP load tests). It resolves requests with the same route table
//! and runs the same handlers as the Lambda functions, so behaviour is identical.
//!
//! Settings: those of the functions (see the README), plus `HOST` (default 127.0.0.1; use
//! 0.0.0.0 in a container), `PORT` (default 8080), and `DB_POOL_SIZE`, which defaults to 16
//! here because one process serves many requests at once.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use lambda_http::RequestExt;
use serde_json::json;
use shared::http::{json_response, HttpResponse, MAX_BODY_BYTES};
use shared::routes::{resolve, ROUTES};
use shared::{handlers, telemetry, AppState};
use tokio::net::TcpListener;

const DEFAULT_POOL_SIZE: &str = "16";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    telemetry::init();
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
    tracing::info!(%addr, "todo-server listening");

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "accept failed");
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(serve(&state, req).await) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
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

/// Routes one request through the route table to the operation's handler.
async fn serve(state: &AppState, req: http::Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let resolved = if method == "OPTIONS" {
        // A CORS preflight: any route of that path answers it.
        ROUTES
            .iter()
            .find_map(|route| route.match_path(&path).map(|params| (route, params)))
            .ok_or(false)
    } else {
        resolve(&method, &path)
    };
    let (route, params) = match resolved {
        Ok(found) => found,
        Err(true) => return into_hyper(not_routed(StatusCode::METHOD_NOT_ALLOWED, &path)),
        Err(false) => return into_hyper(not_routed(StatusCode::NOT_FOUND, &path)),
    };
    let (parts, body) = req.into_parts();
    // Read at most one byte past the limit, so an oversized body is refused (413) without
    // being buffered whole.
    let bytes = match Limited::new(body, MAX_BODY_BYTES + 1).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::from(vec![0u8; MAX_BODY_BYTES + 1]),
    };
    let body = if bytes.is_empty() {
        lambda_http::Body::Empty
    } else {
        lambda_http::Body::Binary(bytes.to_vec())
    };
    let request = http::Request::from_parts(parts, body).with_path_parameters(params);
    into_hyper(handlers::handle(state, route.operation, request).await)
}

/// 404 for an unknown path; 405 with `Allow` for a known path and another method.
fn not_routed(status: StatusCode, path: &str) -> HttpResponse {
    let detail = if status == StatusCode::NOT_FOUND {
        "Not Found"
    } else {
        "Method Not Allowed"
    };
    let mut response = json_response(status, &json!({ "detail": detail }));
    let headers = response.headers_mut();
    if status == StatusCode::METHOD_NOT_ALLOWED {
        let mut allowed: Vec<&str> = ROUTES
            .iter()
            .filter(|route| route.match_path(path).is_some())
            .map(|route| route.method)
            .collect();
        allowed.push("OPTIONS");
        if let Ok(value) = http::HeaderValue::from_str(&allowed.join(", ")) {
            headers.insert(http::header::ALLOW, value);
        }
    }
    if let Ok(value) = http::HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert("x-request-id", value);
    }
    response
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
