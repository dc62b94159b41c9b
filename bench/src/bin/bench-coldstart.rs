//! `bench-coldstart`: cold start and memory of each function binary, under a minimal Lambda
//! Runtime API emulator served here on 127.0.0.1 (the real 2018-06-01 protocol:
//! `GET /runtime/invocation/next`, `POST /runtime/invocation/{id}/response`).
//!
//! For each function and run: exec → its first `next` request ("ready": the process has
//! read its configuration, built its state and opened its database connection; `health`
//! opens none at its cold start, so its first response includes the connection), and
//! exec → the first response (the first request served). Then one longer run serves
//! `RSS_INVOCATIONS` requests and reads the peak RSS (VmHWM) of the process.
//!
//! With `concurrency` as first argument it measures instead one process serving many
//! invocations at once (Lambda Managed Instances): for list and create, at
//! `AWS_LAMBDA_MAX_CONCURRENCY` 1, 8 and 32, as many clients invoke it in a closed loop
//! through the emulator for a few seconds; it prints throughput, p50/p99 latency (invoke →
//! response), the peak RSS and the Postgres connections the process opened.
//!
//! Usage: DATABASE_URL=… bench-coldstart <dir with the function binaries> [runs]
//!        DATABASE_URL=… bench-coldstart concurrency <dir> [seconds per run]
//! With BENCH_SECRETS_ENDPOINT, BENCH_DATABASE_URL_SECRET_ARN and
//! BENCH_AUTH_SECRET_ARN set (a Secrets Manager, e.g. moto on 127.0.0.1), it also measures
//! `health` reading both settings from Secrets Manager instead of the environment.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bench::{event, ms, percentile, token};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use uuid::Uuid;

const SECRET: &str = "benchmark-secret-0123456789abcdefghijklmnopqrstuvwxyz";
const RSS_INVOCATIONS: usize = 300;

#[derive(Default)]
struct Runtime {
    queue: VecDeque<(String, String)>,
    first_next: Option<Instant>,
    responses: Vec<(Instant, u16)>,
    /// Invocations whose caller waits for the answer ([`Emulator::invoke`]).
    waiting: HashMap<String, tokio::sync::oneshot::Sender<u16>>,
}

struct Emulator {
    state: Mutex<Runtime>,
    changed: Notify,
}

impl Emulator {
    fn reset(&self, events: impl IntoIterator<Item = String>) {
        let mut state = self.state.lock().unwrap();
        *state = Runtime::default();
        for event in events {
            state.queue.push_back((Uuid::new_v4().to_string(), event));
        }
    }

    async fn wait_for_responses(&self, count: usize, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            if self.state.lock().unwrap().responses.len() >= count {
                return Ok(());
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                anyhow::bail!("timed out waiting for {count} responses");
            }
            let _ = tokio::time::timeout(remaining, notified).await;
        }
    }

    /// Queues one invocation and waits for its status code (0: an error was reported).
    async fn invoke(&self, event: String) -> u16 {
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut state = self.state.lock().unwrap();
            let id = Uuid::new_v4().to_string();
            state.waiting.insert(id.clone(), tx);
            state.queue.push_back((id, event));
        }
        self.changed.notify_waiters();
        rx.await.unwrap_or(0)
    }

    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let path = req.uri().path().to_owned();
        if req.method() == hyper::Method::GET && path.ends_with("/runtime/invocation/next") {
            loop {
                let notified = self.changed.notified();
                {
                    let mut state = self.state.lock().unwrap();
                    state.first_next.get_or_insert_with(Instant::now);
                    if let Some((id, event)) = state.queue.pop_front() {
                        let deadline = chrono::Utc::now().timestamp_millis() + 30_000;
                        return Response::builder()
                            .header("content-type", "application/json")
                            .header("lambda-runtime-aws-request-id", id)
                            .header("lambda-runtime-deadline-ms", deadline.to_string())
                            .header(
                                "lambda-runtime-invoked-function-arn",
                                "arn:aws:lambda:us-east-1:123456789012:function:bench",
                            )
                            .header(
                                "lambda-runtime-trace-id",
                                "Root=1-00000000-000000000000000000000000",
                            )
                            .body(Full::new(Bytes::from(event)))
                            .unwrap();
                    }
                }
                notified.await;
            }
        }
        let body = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let id = path.rsplit('/').nth(1).unwrap_or_default().to_owned();
        if path.ends_with("/response") {
            let status = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v["statusCode"].as_u64())
                .unwrap_or(0) as u16;
            let mut state = self.state.lock().unwrap();
            match state.waiting.remove(&id) {
                Some(waiter) => {
                    let _ = waiter.send(status);
                }
                None => state.responses.push((Instant::now(), status)),
            }
            drop(state);
            self.changed.notify_waiters();
        } else if path.ends_with("/error") {
            eprintln!(
                "function reported an error: {}",
                String::from_utf8_lossy(&body)
            );
            let mut state = self.state.lock().unwrap();
            match state.waiting.remove(&id) {
                Some(waiter) => {
                    let _ = waiter.send(0);
                }
                None => state.responses.push((Instant::now(), 0)),
            }
            drop(state);
            self.changed.notify_waiters();
        }
        Response::builder()
            .status(202)
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap()
    }
}

/// A fresh emulator on a port of its own for each process, so that a long-poll left over
/// from a killed process can never take an event meant for the next one.
async fn start_emulator(
    events: impl IntoIterator<Item = String>,
) -> anyhow::Result<(Arc<Emulator>, String, tokio::task::JoinHandle<()>)> {
    let emulator = Arc::new(Emulator {
        state: Mutex::new(Runtime::default()),
        changed: Notify::new(),
    });
    emulator.reset(events);
    let (address, server) = serve(emulator.clone()).await?;
    Ok((emulator, address, server))
}

async fn serve(emulator: Arc<Emulator>) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let server = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let emulator = emulator.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let emulator = emulator.clone();
                    async move { Ok::<_, Infallible>(emulator.handle(req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((address, server))
}

struct Function {
    name: &'static str,
    event: String,
    env: Vec<(String, String)>,
}

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn spawn(
    dir: &Path,
    function: &Function,
    runtime_api: &str,
) -> anyhow::Result<tokio::process::Child> {
    let mut cmd = tokio::process::Command::new(dir.join(function.name));
    cmd.env_clear()
        .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
        .env("AWS_LAMBDA_FUNCTION_NAME", function.name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env("AWS_REGION", "us-east-1")
        .env("RUST_LOG", "info")
        .envs(function.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd.spawn()
        .with_context(|| format!("cannot run {}", function.name))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let url = std::env::var("DATABASE_URL").context("DATABASE_URL must be set")?;
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("concurrency") {
        let dir = PathBuf::from(
            args.nth(1)
                .context("usage: bench-coldstart concurrency <binaries dir> [seconds]")?,
        );
        let seconds = args
            .next()
            .map(|s| s.parse().expect("seconds"))
            .unwrap_or(5);
        return concurrency(&url, &dir, Duration::from_secs(seconds)).await;
    }
    let dir = PathBuf::from(
        args.next()
            .context("usage: bench-coldstart <binaries dir> [runs]")?,
    );
    let runs: usize = args.next().map(|r| r.parse().expect("runs")).unwrap_or(20);

    let user = Uuid::new_v4().simple().to_string();
    let tok = token(SECRET, &user);
    let client = shared::db::connect_once(&url, None, Duration::from_secs(10)).await?;
    let target = Uuid::now_v7();
    client
        .execute(
            "INSERT INTO tasks (id, user_id, title) VALUES ($1, $2::text, 'cold')",
            &[&target, &user],
        )
        .await?;
    let tasks = format!("/api/{user}/tasks");
    let one = format!("{tasks}/{target}");
    let with_id = json!({"user_id": user, "id": target.to_string()});
    let base_env = vec![
        ("DATABASE_URL".to_owned(), url.clone()),
        ("BETTER_AUTH_SECRET".to_owned(), SECRET.to_owned()),
    ];
    let mut functions = vec![
        Function {
            name: "list-tasks",
            event: event("GET", &tasks, "", &tok, None, json!({"user_id": user})).to_string(),
            env: base_env.clone(),
        },
        Function {
            name: "create-task",
            event: event(
                "POST",
                &tasks,
                "",
                &tok,
                Some(&json!({"title": "cold"})),
                json!({"user_id": user}),
            )
            .to_string(),
            env: base_env.clone(),
        },
        Function {
            name: "get-task",
            event: event("GET", &one, "", &tok, None, with_id.clone()).to_string(),
            env: base_env.clone(),
        },
        Function {
            name: "update-task",
            event: event(
                "PUT",
                &one,
                "",
                &tok,
                Some(&json!({"title": "warm"})),
                with_id.clone(),
            )
            .to_string(),
            env: base_env.clone(),
        },
        Function {
            name: "delete-task",
            // A task that does not exist: the same statement, and the target survives.
            event: event(
                "DELETE",
                &format!("{tasks}/{}", Uuid::nil()),
                "",
                &tok,
                None,
                json!({"user_id": user, "id": Uuid::nil().to_string()}),
            )
            .to_string(),
            env: base_env.clone(),
        },
        Function {
            name: "complete-task",
            event: event(
                "PATCH",
                &format!("{one}/complete"),
                "",
                &tok,
                None,
                with_id.clone(),
            )
            .to_string(),
            env: base_env.clone(),
        },
        Function {
            name: "health",
            event: event("GET", "/health", "", &tok, None, json!({})).to_string(),
            env: base_env.clone(),
        },
    ];
    if let (Ok(endpoint), Ok(db_arn), Ok(auth_arn)) = (
        std::env::var("BENCH_SECRETS_ENDPOINT"),
        std::env::var("BENCH_DATABASE_URL_SECRET_ARN"),
        std::env::var("BENCH_AUTH_SECRET_ARN"),
    ) {
        functions.push(Function {
            name: "health",
            event: event("GET", "/health", "", &tok, None, json!({})).to_string(),
            env: vec![
                ("DATABASE_URL_SECRET_ARN".into(), db_arn),
                ("BETTER_AUTH_SECRET_ARN".into(), auth_arn),
                ("AWS_ENDPOINT_URL".into(), endpoint),
                ("AWS_ACCESS_KEY_ID".into(), "bench".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "bench".into()),
            ],
        });
    }

    println!("cold start, {runs} runs per function (medians; p90 in brackets)");
    println!(
        "{:<22} {:>16} {:>22} {:>14}",
        "function", "exec→ready ms", "exec→first response ms", "peak RSS MiB"
    );
    for function in &functions {
        let mut ready = Vec::new();
        let mut first = Vec::new();
        for _ in 0..runs {
            let (emulator, address, server) = start_emulator([function.event.clone()]).await?;
            let started = Instant::now();
            let mut child = spawn(&dir, function, &address).await?;
            emulator
                .wait_for_responses(1, Duration::from_secs(20))
                .await
                .with_context(|| format!("{} did not answer", function.name))?;
            {
                let state = emulator.state.lock().unwrap();
                let (answered, status) = state.responses[0];
                anyhow::ensure!(
                    (200..500).contains(&status) && status != 0,
                    "{} answered {status}",
                    function.name
                );
                ready.push(state.first_next.unwrap() - started);
                first.push(answered - started);
            }
            child.kill().await?;
            server.abort();
        }
        // Peak memory while serving a stream of requests.
        let (emulator, address, server) =
            start_emulator(std::iter::repeat_n(function.event.clone(), RSS_INVOCATIONS)).await?;
        let mut child = spawn(&dir, function, &address).await?;
        emulator
            .wait_for_responses(RSS_INVOCATIONS, Duration::from_secs(120))
            .await?;
        let rss = child.id().and_then(peak_rss_kib).unwrap_or(0);
        child.kill().await?;
        server.abort();
        let label = if function
            .env
            .iter()
            .any(|(k, _)| k == "DATABASE_URL_SECRET_ARN")
        {
            format!("{} (secrets)", function.name)
        } else {
            function.name.to_owned()
        };
        println!(
            "{:<22} {:>9.2} [{:>5.2}] {:>15.2} [{:>5.2}] {:>14.1}",
            label,
            ms(percentile(&mut ready, 50.0)),
            ms(percentile(&mut ready, 90.0)),
            ms(percentile(&mut first, 50.0)),
            ms(percentile(&mut first, 90.0)),
            rss as f64 / 1024.0
        );
    }
    Ok(())
}

/// One process at several `AWS_LAMBDA_MAX_CONCURRENCY`: closed-loop clients, as many as
/// the concurrency, for `run` each; throughput, latency, peak RSS, Postgres connections.
async fn concurrency(url: &str, dir: &Path, run: Duration) -> anyhow::Result<()> {
    let client = shared::db::connect_once(url, None, Duration::from_secs(10)).await?;
    let lister = Uuid::new_v4().simple().to_string();
    for i in 0..20 {
        client
            .execute(
                "INSERT INTO tasks (id, user_id, title) VALUES ($1, $2::text, $3::text)",
                &[&Uuid::now_v7(), &lister, &format!("task {i}")],
            )
            .await?;
    }
    let creator = Uuid::new_v4().simple().to_string();
    let operations = [
        (
            "list-tasks",
            event(
                "GET",
                &format!("/api/{lister}/tasks"),
                "limit=20",
                &token(SECRET, &lister),
                None,
                json!({"user_id": lister}),
            ),
        ),
        (
            "create-task",
            event(
                "POST",
                &format!("/api/{creator}/tasks"),
                "",
                &token(SECRET, &creator),
                Some(&json!({"title": "concurrent"})),
                json!({"user_id": creator}),
            ),
        ),
    ];
    println!(
        "one process under the Runtime API emulator, AWS_LAMBDA_MAX_CONCURRENCY = clients, {}s per run",
        run.as_secs()
    );
    println!(
        "{:<12} {:>5} {:>10} {:>9} {:>9} {:>7} {:>13} {:>12}",
        "function", "conc", "req/s", "p50 ms", "p99 ms", "errors", "peak RSS MiB", "PG conns"
    );
    for (name, event) in &operations {
        for concurrency in [1usize, 8, 32] {
            let app = format!("bench-{}", Uuid::new_v4().simple());
            let function = Function {
                name,
                event: event.to_string(),
                env: vec![
                    (
                        "DATABASE_URL".to_owned(),
                        format!(
                            "{url}{}application_name={app}",
                            if url.contains('?') { '&' } else { '?' }
                        ),
                    ),
                    ("BETTER_AUTH_SECRET".to_owned(), SECRET.to_owned()),
                    (
                        "AWS_LAMBDA_MAX_CONCURRENCY".to_owned(),
                        concurrency.to_string(),
                    ),
                    ("RUST_LOG".to_owned(), "warn".to_owned()),
                ],
            };
            let (emulator, address, server) = start_emulator([]).await?;
            let mut child = spawn(dir, &function, &address).await?;
            anyhow::ensure!(
                emulator.invoke(function.event.clone()).await / 100 == 2,
                "{name} did not answer its first request"
            );
            let started = Instant::now();
            let clients = (0..concurrency).map(|_| {
                let emulator = emulator.clone();
                let event = function.event.clone();
                tokio::spawn(async move {
                    let mut samples = Vec::new();
                    let mut errors = 0usize;
                    while started.elapsed() < run {
                        let sent = Instant::now();
                        let status = emulator.invoke(event.clone()).await;
                        samples.push(sent.elapsed());
                        errors += usize::from(status / 100 != 2);
                    }
                    (samples, errors)
                })
            });
            let mut latencies = Vec::new();
            let mut errors = 0;
            for client in clients.collect::<Vec<_>>() {
                let (samples, errs) = client.await?;
                latencies.extend(samples);
                errors += errs;
            }
            let elapsed = started.elapsed();
            let connections: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                    &[&app],
                )
                .await?
                .get(0);
            let rss = child.id().and_then(peak_rss_kib).unwrap_or(0);
            child.kill().await?;
            server.abort();
            println!(
                "{:<12} {:>5} {:>10.0} {:>9.2} {:>9.2} {:>7} {:>13.1} {:>12}",
                name,
                concurrency,
                latencies.len() as f64 / elapsed.as_secs_f64(),
                ms(percentile(&mut latencies, 50.0)),
                ms(percentile(&mut latencies, 99.0)),
                errors,
                rss as f64 / 1024.0,
                connections
            );
        }
    }
    Ok(())
}
