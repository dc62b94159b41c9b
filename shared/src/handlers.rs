//! One handler per operation, and the pipeline each runs in: CORS preflight, the
//! operation, error mapping, CORS and request-id headers, one log line.
//!
//! Order of checks: 401 → 403 → 413 / 415 / 422 → 404 → 412 → success.

use std::time::Instant;

use http::{header, HeaderValue, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::cors::Cors;
use crate::error::{ApiError, AuthError};
use crate::listing::ListQuery;
use crate::owner::Owner;
use crate::precondition::{etag, IdempotencyKey, IfMatch};
use crate::repo::Created;
use crate::request::{bearer_token, json_object_body, request_id};
use crate::response::{empty_response, health_body, json_response, HttpResponse};
use crate::routes::{Operation, Route};
use crate::task::{Completion, NewTask, Task, TaskChanges, TaskId};
use crate::validation::{both, FieldError};
use crate::AppState;

/// Characters escaped in a path segment of a `Location` or `Link` URL: every ASCII
/// character RFC 3986 does not allow there, and those with a meaning of their own in a path
/// (`/`, `?`, `#`, `%`). A browser's URL parser reads a raw `\` as `/`.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// `GET /api/{user_id}/tasks`
pub async fn list_tasks(state: &AppState, req: Request) -> HttpResponse {
    serve(state, Operation::ListTasks, req, async |call| {
        let owner = call.owner().await?;
        let query = ListQuery::parse(call.req.uri().query())?;
        let page = state.tasks.list(&owner, &query).await?;
        let mut response = json_response(StatusCode::OK, &page.tasks);
        let headers = response.headers_mut();
        headers.insert("x-total-count", HeaderValue::from(page.total));
        let path = format!(
            "{}/api/{}/tasks",
            call.mapping_key(),
            encode_segment(owner.as_str())
        );
        if let Some(link) = query.next_link(&path, call.req.uri().query(), page.total) {
            if let Ok(value) = HeaderValue::from_str(&link) {
                headers.insert(header::LINK, value);
            }
        }
        Ok(response)
    })
    .await
}

/// `POST /api/{user_id}/tasks`
pub async fn create_task(state: &AppState, req: Request) -> HttpResponse {
    serve(state, Operation::CreateTask, req, async |call| {
        let owner = call.owner().await?;
        let body = json_object_body(call.req)?;
        let (key, new_task) = both(
            IdempotencyKey::from_headers(call.req.headers()),
            NewTask::from_body(body),
        )?;
        let tasks = &state.tasks;
        let (task, replayed) = match key {
            None => (tasks.create(&owner, &new_task).await?, false),
            Some(key) => match tasks.create_idempotent(&owner, &new_task, &key).await? {
                Created::New(task) => (task, false),
                Created::Replayed(task) => (task, true),
            },
        };
        let mut response = task_response(StatusCode::CREATED, &task);
        if replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        let location = format!(
            "{}/api/{}/tasks/{}",
            call.mapping_key(),
            encode_segment(owner.as_str()),
            task.id
        );
        if let Ok(value) = HeaderValue::from_str(&location) {
            response.headers_mut().insert(header::LOCATION, value);
        }
        Ok(response)
    })
    .await
}

/// `GET /api/{user_id}/tasks/{id}`
pub async fn get_task(state: &AppState, req: Request) -> HttpResponse {
    serve(state, Operation::GetTask, req, async |call| {
        let owner = call.owner().await?;
        let id = call.task_id()?;
        Ok(task_response(
            StatusCode::OK,
            &state.tasks.get(&owner, id).await?,
        ))
    })
    .await
}

/// `PUT /api/{user_id}/tasks/{id}`
pub async fn update_task(state: &AppState, req: Request) -> HttpResponse {
    serve(state, Operation::UpdateTask, req, async |call| {
        let owner = call.owner().await?;
        let body = json_object_body(call.req)?;
        let (id, changes) = both(call.task_id(), TaskChanges::from_body(body))?;
        let versions = call.allowed_versions();
        let task = (state.tasks)
            .update(&owner, id, &changes, versions.as_deref())
            .await?;
        Ok(task_response(StatusCode::OK, &task))
    })
    .await
}

/// `DELETE /api/{user_id}/tasks/{id}`
pub async fn delete_task(state: &AppState, req: Request) -> HttpResponse {
    serve(state, Operation::DeleteTask, req, async |call| {
        let owner = call.owner().await?;
        let id = call.task_id()?;
        let versions = call.allowed_versions();
        state.tasks.delete(&owner, id, versions.as_deref()).await?;
        Ok(empty_response(StatusCode::NO_CONTENT))
    })
    .await
}

/// `PATCH /api/{user_id}/tasks/{id}/complete`
pub async fn complete_task(state: &AppState, req: Request) -> HttpResponse {
    serve(state, Operation::CompleteTask, req, async |call| {
        let owner = call.owner().await?;
        let body = json_object_body(call.req)?;
        let (id, completion) = both(call.task_id(), Completion::from_body(body))?;
        let versions = call.allowed_versions();
        let task = (state.tasks)
            .complete(&owner, id, completion, versions.as_deref())
            .await?;
        Ok(task_response(StatusCode::OK, &task))
    })
    .await
}

/// `GET /health`: 200 when the database answers, 503 in the same shape when it does not.
///
/// The health function also serves API Gateway's fallback routes
/// ([`crate::routes::FALLBACK_METHODS`]): every other request it receives is answered 404,
/// or 405 with `Allow`, as `todo-server` answers it.
pub async fn health(state: &AppState, req: Request) -> HttpResponse {
    if let Some(unrouted) = unrouted_request(&req) {
        let started = Instant::now();
        let outcome = if Cors::is_preflight(&req) {
            Ok(state.cors.preflight(&req))
        } else {
            Err(unrouted.into())
        };
        return finish(state, &req, FALLBACK_ROUTE, started, outcome, None);
    }
    serve(state, Operation::Health, req, async |_| {
        match state.tasks.database().ping().await {
            Ok(()) => Ok(json_response(StatusCode::OK, &health_body(true))),
            Err(err) => Err(ApiError::Unhealthy(anyhow::anyhow!("{err:?}"))),
        }
    })
    .await
}

/// How the unrouted requests are logged (`route`).
pub const FALLBACK_ROUTE: &str = "/{proxy+}";

/// A request refused before any handler ran (by `todo-server`: a path no route has, a
/// method the path does not take, a body that did not arrive), answered and logged as the
/// handlers' are: one line, the request id, CORS. `route` is the route's path, or
/// [`FALLBACK_ROUTE`].
pub fn refused(
    state: &AppState,
    req: &Request,
    route: &'static str,
    started: Instant,
    error: ApiError,
) -> HttpResponse {
    finish(state, req, route, started, Err(error), None)
}

/// Why the health function answers `req` with an error, if it does: none for the health
/// route. In AWS, API Gateway's route key says it is that route whatever the path holds
/// (behind a custom domain's API mapping, the raw path starts with the mapping's key),
/// and a fallback route's `proxy` parameter is the path API Gateway routed (without that
/// key); `cargo lambda watch`'s router names the same parameter, and otherwise the path
/// is the request's own.
fn unrouted_request(req: &Request) -> Option<crate::routes::Unrouted> {
    let health = Operation::Health.route();
    if let Some(RequestContext::ApiGatewayV2(context)) = req.request_context_ref() {
        let key = context.route_key.as_deref().unwrap_or_default();
        if let Some((method, path)) = key.split_once(' ') {
            if path == health.path && health.takes(method) {
                return None;
            }
        }
    }
    let proxied = (req.path_parameters_ref())
        .and_then(|params| params.first("proxy"))
        .map(|path| format!("/{path}"));
    let path = proxied.as_deref().unwrap_or(req.uri().path());
    crate::routes::unrouted(req.method().as_str(), path)
}

/// The handler of an operation, for callers that resolved a route (`todo-server`, tests).
pub async fn handle(state: &AppState, operation: Operation, req: Request) -> HttpResponse {
    match operation {
        Operation::ListTasks => list_tasks(state, req).await,
        Operation::CreateTask => create_task(state, req).await,
        Operation::GetTask => get_task(state, req).await,
        Operation::UpdateTask => update_task(state, req).await,
        Operation::DeleteTask => delete_task(state, req).await,
        Operation::CompleteTask => complete_task(state, req).await,
        Operation::Health => health(state, req).await,
    }
}

/// One request to one operation, as its handler sees it.
struct Call<'a> {
    state: &'a AppState,
    route: &'static Route,
    req: &'a Request,
}

impl Call<'_> {
    /// 401 for a bad token, then 403 when the path names another user.
    async fn owner(&self) -> Result<Owner, ApiError> {
        let token = bearer_token(self.req.headers())?;
        let caller = self.state.verifier.verify_token(token).await?;
        let path_user_id =
            (self.path_parameter("user_id")).ok_or(AuthError::Invalid("no user id in the path"))?;
        Owner::authorize(caller, &path_user_id)
    }

    /// A path parameter, from the API Gateway event or, failing that, from the path itself.
    fn path_parameter(&self, name: &str) -> Option<String> {
        if let Some(value) = self
            .req
            .path_parameters_ref()
            .and_then(|params| params.first(name))
        {
            return Some(value.to_owned());
        }
        self.route
            .match_path(self.req.uri().path())
            .and_then(|mut params| params.remove(name))
    }

    /// What comes before the route's own segments in the request's path: behind a custom
    /// domain whose API mapping has a key (`api.example.com/v1` → this API), API Gateway
    /// routes the path after the key and the raw path keeps it (`/v1`), which the URLs the
    /// API hands out (`Location`, `Link`) must keep too. Empty otherwise. A trailing slash
    /// is not a segment of the route's: API Gateway routes `/api/u/tasks/` as
    /// `/api/u/tasks`, and its raw path keeps the slash.
    fn mapping_key(&self) -> &str {
        let path = self.req.uri().path();
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut end = path.len();
        for _ in 0..self.route.path.matches('/').count() {
            match path[..end].rfind('/') {
                Some(at) => end = at,
                None => return "",
            }
        }
        &path[..end]
    }

    fn task_id(&self) -> Result<TaskId, FieldError> {
        TaskId::parse(&self.path_parameter("id").unwrap_or_default())
    }

    /// The versions `If-Match` allows a write to apply to; `None` without the header.
    fn allowed_versions(&self) -> Option<Vec<i64>> {
        IfMatch::allowed_versions(IfMatch::from_headers(self.req.headers()).as_ref())
    }
}

/// Runs one operation end to end and always produces a response; logs one line.
async fn serve(
    state: &AppState,
    operation: Operation,
    req: Request,
    run: impl AsyncFnOnce(&Call<'_>) -> Result<HttpResponse, ApiError>,
) -> HttpResponse {
    let started = Instant::now();
    let route = operation.route();
    let (outcome, note) = if Cors::is_preflight(&req) {
        (Ok(state.cors.preflight(&req)), None)
    } else if !route.takes(req.method().as_str()) {
        // A function serves its one route: an event of another method (a route changed
        // outside the template, a direct invoke) is refused before anything runs, so that,
        // say, a GET sent to the delete function deletes nothing.
        let mut allowed: Vec<_> = route.methods().collect();
        allowed.push("OPTIONS");
        (Err(ApiError::MethodNotAllowed { allowed }), None)
    } else {
        let call = Call {
            state,
            route,
            req: &req,
        };
        crate::telemetry::noting(run(&call)).await
    };
    finish(state, &req, route.path, started, outcome, note)
}

/// A request's response from its outcome, with the CORS and request-id headers; logs the
/// request's one line, with what the database layer noted (`database`).
fn finish(
    state: &AppState,
    req: &Request,
    route: &'static str,
    started: Instant,
    outcome: Result<HttpResponse, ApiError>,
    database: Option<&'static str>,
) -> HttpResponse {
    let request_id = request_id(req);
    let method = req.method();
    let (mut response, error, reason) = match outcome {
        Ok(response) => (response, None, None),
        Err(err) => {
            let status = err.status();
            let logged = (status.is_server_error()).then(|| format!("{err:?}"));
            // Why a token was refused, which the client is not told (never the token).
            let reason = match &err {
                ApiError::Unauthorized(AuthError::Invalid(reason)) => Some(*reason),
                _ => None,
            };
            (err.into_response(), logged, reason)
        }
    };
    if method != http::Method::OPTIONS {
        state.cors.decorate(req.headers(), &mut response);
    }
    if method == http::Method::HEAD {
        without_body(&mut response);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    // `None` fields are left out of the line.
    match error {
        Some(error) => tracing::error!(
            request_id, method = %method, route, status, latency_ms, error, database,
            "request failed"
        ),
        None => tracing::info!(
            request_id, method = %method, route, status, latency_ms, reason, database, "request"
        ),
    }
    response
}

/// The answer to a `HEAD`: the `GET`'s, headers and all, with the length of the body it
/// leaves out (RFC 9110, 9.3.2 and 8.6).
fn without_body(response: &mut HttpResponse) {
    let length = std::mem::replace(response.body_mut(), Body::Empty)
        .as_ref()
        .len();
    if length > 0 {
        response
            .headers_mut()
            .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
}

/// A task as JSON, with its `ETag`.
fn task_response(status: StatusCode, task: &Task) -> HttpResponse {
    let mut response = json_response(status, task);
    if let Ok(value) = HeaderValue::from_str(&etag(task)) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

fn encode_segment(segment: &str) -> String {
    utf8_percent_encode(segment, PATH_SEGMENT).to_string()
}
