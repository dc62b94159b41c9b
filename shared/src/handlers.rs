//! The request pipeline every function runs, and one entry point per operation.
//!
//! Order of checks: 401 → 403 → 413 / 415 / 422 → 404 → 412 → success.

use std::time::Instant;

use http::{header, HeaderValue, StatusCode};
use lambda_http::{Request, RequestExt};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};

use crate::cors::Cors;
use crate::error::{ApiError, AuthError};
use crate::listing::ListQuery;
use crate::owner::Owner;
use crate::precondition::{etag, IdempotencyKey, IfMatch};
use crate::repo::Created;
use crate::request::{bearer_token, json_object_body, request_id};
use crate::response::{empty_response, health_body, json_response, HttpResponse};
use crate::routes::Operation;
use crate::task::{Completion, NewTask, Task, TaskChanges, TaskId};
use crate::validation::{both, FieldError};
use crate::AppState;

/// The handler's error type, as `lambda_http::run` wants it; handlers never return it.
pub type HandlerError = lambda_http::Error;

/// Characters escaped in a path segment of a `Location` or `Link` URL.
const PATH_SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'/')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

macro_rules! entry_points {
    ($($(#[$doc:meta])* $name:ident => $op:ident,)*) => {$(
        $(#[$doc])*
        pub async fn $name(state: &AppState, req: Request) -> Result<HttpResponse, HandlerError> {
            Ok(handle(state, Operation::$op, req).await)
        }
    )*};
}

entry_points! {
    /// `GET /api/{user_id}/tasks`
    list_tasks => ListTasks,
    /// `POST /api/{user_id}/tasks`
    create_task => CreateTask,
    /// `GET /api/{user_id}/tasks/{id}`
    get_task => GetTask,
    /// `PUT /api/{user_id}/tasks/{id}`
    update_task => UpdateTask,
    /// `DELETE /api/{user_id}/tasks/{id}`
    delete_task => DeleteTask,
    /// `PATCH /api/{user_id}/tasks/{id}/complete`
    complete_task => CompleteTask,
    /// `GET /health`
    health => Health,
}

/// Runs one operation end to end and always produces a response; logs one line.
pub async fn handle(state: &AppState, operation: Operation, req: Request) -> HttpResponse {
    let started = Instant::now();
    let request_id = request_id(&req);
    let method = req.method().clone();
    let (mut response, error) = if Cors::is_preflight(&req) {
        (state.cors.preflight(&req), None)
    } else {
        match dispatch(state, operation, &req).await {
            Ok(response) => (response, None),
            Err(err) => {
                let status = err.status();
                let logged = (status.is_server_error()).then(|| format!("{err:?}"));
                (err.into_response(), logged)
            }
        }
    };
    if method != http::Method::OPTIONS {
        state.cors.decorate(req.headers(), &mut response);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16();
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let route = operation.route().path;
    match error {
        Some(error) => tracing::error!(
            request_id, method = %method, route, status, latency_ms, error, "request failed"
        ),
        None => tracing::info!(request_id, method = %method, route, status, latency_ms, "request"),
    }
    response
}

async fn dispatch(
    state: &AppState,
    operation: Operation,
    req: &Request,
) -> Result<HttpResponse, ApiError> {
    if operation == Operation::Health {
        return health_check(state).await;
    }
    let owner = authenticate(state, operation, req).await?;
    let tasks = &state.tasks;
    match operation {
        Operation::ListTasks => {
            let query = ListQuery::parse(req.uri().query())?;
            let page = tasks.list(&owner, &query).await?;
            let mut response = json_response(StatusCode::OK, &page.tasks);
            let headers = response.headers_mut();
            headers.insert("x-total-count", HeaderValue::from(page.total));
            let path = format!("/api/{}/tasks", encode_segment(owner.as_str()));
            if let Some(link) = query.next_link(&path, req.uri().query(), page.total) {
                if let Ok(value) = HeaderValue::from_str(&link) {
                    headers.insert(header::LINK, value);
                }
            }
            Ok(response)
        }
        Operation::CreateTask => {
            let body = json_object_body(req)?;
            let (key, new_task) = both(
                IdempotencyKey::from_headers(req.headers()),
                NewTask::from_body(body),
            )?;
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
            let location = format!("/api/{}/tasks/{}", encode_segment(owner.as_str()), task.id);
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Ok(response)
        }
        Operation::GetTask => {
            let id = task_id(operation, req)?;
            Ok(task_response(StatusCode::OK, &tasks.get(&owner, id).await?))
        }
        Operation::UpdateTask => {
            let body = json_object_body(req)?;
            let (id, changes) = both(task_id(operation, req), TaskChanges::from_body(body))?;
            let versions = allowed_versions(req);
            Ok(task_response(
                StatusCode::OK,
                &tasks
                    .update(&owner, id, &changes, versions.as_deref())
                    .await?,
            ))
        }
        Operation::DeleteTask => {
            let id = task_id(operation, req)?;
            let versions = allowed_versions(req);
            tasks.delete(&owner, id, versions.as_deref()).await?;
            Ok(empty_response(StatusCode::NO_CONTENT))
        }
        Operation::CompleteTask => {
            let body = json_object_body(req)?;
            let (id, completion) = both(task_id(operation, req), Completion::from_body(body))?;
            let versions = allowed_versions(req);
            Ok(task_response(
                StatusCode::OK,
                &tasks
                    .complete(&owner, id, completion, versions.as_deref())
                    .await?,
            ))
        }
        Operation::Health => unreachable!("handled above"),
    }
}

/// 401 for a bad token, then 403 when the path names another user.
async fn authenticate(
    state: &AppState,
    operation: Operation,
    req: &Request,
) -> Result<Owner, ApiError> {
    let token = bearer_token(req.headers())?;
    let caller = state.verifier.verify_token(token).await?;
    let path_user_id = path_parameter(operation, req, "user_id").ok_or(AuthError::Invalid)?;
    Owner::authorize(caller, &path_user_id)
}

/// A path parameter, from the API Gateway event or, failing that, from the path itself.
fn path_parameter(operation: Operation, req: &Request, name: &str) -> Option<String> {
    if let Some(value) = req
        .path_parameters_ref()
        .and_then(|params| params.first(name))
    {
        return Some(value.to_owned());
    }
    operation
        .route()
        .match_path(req.uri().path())
        .and_then(|mut params| params.remove(name))
}

fn task_id(operation: Operation, req: &Request) -> Result<TaskId, FieldError> {
    TaskId::parse(&path_parameter(operation, req, "id").unwrap_or_default())
}

/// The versions `If-Match` allows a write to apply to; `None` without the header.
fn allowed_versions(req: &Request) -> Option<Vec<i64>> {
    IfMatch::allowed_versions(IfMatch::from_headers(req.headers()).as_ref())
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

async fn health_check(state: &AppState) -> Result<HttpResponse, ApiError> {
    match state.tasks.database().ping().await {
        Ok(()) => Ok(json_response(StatusCode::OK, &health_body(true))),
        Err(err) => Err(ApiError::Unhealthy(anyhow::anyhow!("{err:?}"))),
    }
}
