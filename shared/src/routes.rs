//! The single route table. The SAM template, the `cargo lambda watch` router, the OpenAPI
//! document and the local server are all checked against it.

use std::collections::HashMap;

/// One operation of the API; each is one Lambda function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    ListTasks,
    CreateTask,
    GetTask,
    UpdateTask,
    DeleteTask,
    CompleteTask,
    Health,
}

/// Where an operation lives and what it can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub operation: Operation,
    pub method: &'static str,
    /// API Gateway syntax: `{name}` marks a path parameter.
    pub path: &'static str,
    /// The Lambda function (and binary, and crate under `functions/`).
    pub function: &'static str,
    /// Every status code the route can answer besides 500.
    pub statuses: &'static [u16],
}

pub const ROUTES: [Route; 7] = [
    Route {
        operation: Operation::ListTasks,
        method: "GET",
        path: "/api/{user_id}/tasks",
        function: "list-tasks",
        statuses: &[200, 401, 403, 422, 503],
    },
    Route {
        operation: Operation::CreateTask,
        method: "POST",
        path: "/api/{user_id}/tasks",
        function: "create-task",
        statuses: &[201, 401, 403, 413, 415, 422, 503, 504],
    },
    Route {
        operation: Operation::GetTask,
        method: "GET",
        path: "/api/{user_id}/tasks/{id}",
        function: "get-task",
        statuses: &[200, 401, 403, 404, 422, 503],
    },
    Route {
        operation: Operation::UpdateTask,
        method: "PUT",
        path: "/api/{user_id}/tasks/{id}",
        function: "update-task",
        statuses: &[200, 401, 403, 404, 412, 413, 415, 422, 503, 504],
    },
    Route {
        operation: Operation::DeleteTask,
        method: "DELETE",
        path: "/api/{user_id}/tasks/{id}",
        function: "delete-task",
        statuses: &[204, 401, 403, 404, 412, 422, 503, 504],
    },
    Route {
        operation: Operation::CompleteTask,
        method: "PATCH",
        path: "/api/{user_id}/tasks/{id}/complete",
        function: "complete-task",
        statuses: &[200, 401, 403, 404, 412, 413, 415, 422, 503, 504],
    },
    Route {
        operation: Operation::Health,
        method: "GET",
        path: "/health",
        function: "health",
        statuses: &[200, 503],
    },
];

/// The methods of the fallback routes (`<method> /` and `<method> /{proxy+}`), which send
/// every request no route above takes to the health function: it answers it as
/// `todo-server` does, 404 `Not Found`, or 405 with `Allow` where the path exists under
/// other methods, with `detail` and `X-Request-Id` like every other error, where API
/// Gateway itself would answer `{"message":"Not Found"}` ([`unrouted`]). A route of a
/// more specific path always wins over a greedy one (`{proxy+}`). Neither `OPTIONS` nor
/// `ANY` is among them: a route that takes `OPTIONS` would take the CORS preflights that
/// API Gateway answers itself.
pub const FALLBACK_METHODS: [&str; 6] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];

/// The fallback routes' paths, in API Gateway's syntax: the root, and every other path.
pub const FALLBACK_PATHS: [&str; 2] = ["/", "/{proxy+}"];

/// The function that serves the fallback routes.
pub const FALLBACK_FUNCTION: &str = "health";

/// How a request the fallback routes took is answered: none for one of the health route
/// (the health function's own), the reason otherwise. A request of another operation's
/// route cannot arrive here through API Gateway, which routes it there; it is answered
/// 404, as API Gateway does not route it.
pub fn unrouted(method: &str, path: &str) -> Option<Unrouted> {
    match resolve(method, path) {
        Ok((route, _)) if route.function == FALLBACK_FUNCTION => None,
        Ok(_) => Some(Unrouted::NoSuchPath),
        Err(unrouted) => Some(unrouted),
    }
}

impl Operation {
    pub fn route(self) -> &'static Route {
        ROUTES
            .iter()
            .find(|r| r.operation == self)
            .expect("every operation has a route")
    }
}

impl Route {
    /// The methods this route takes: its own, and `HEAD` where that is `GET` (RFC 9110,
    /// 9.3.2: the GET's answer, headers and all, without the body; uptime checks send it).
    pub fn methods(&self) -> impl Iterator<Item = &'static str> + use<> {
        let head = (self.method == "GET").then_some("HEAD");
        std::iter::once(self.method).chain(head)
    }

    /// Whether this route takes `method` ([`Route::methods`]).
    pub fn takes(&self, method: &str) -> bool {
        self.methods().any(|own| own == method)
    }

    /// Matches a concrete path against this route's template and returns the parameters.
    /// One trailing slash is ignored, as API Gateway ignores it: it routes `/api/u/tasks/`
    /// to `/api/u/tasks`.
    pub fn match_path(&self, path: &str) -> Option<HashMap<String, String>> {
        let path = path
            .strip_suffix('/')
            .filter(|p| !p.is_empty())
            .unwrap_or(path);
        let mut params = HashMap::new();
        let mut template = self.path.split('/');
        let mut actual = path.split('/');
        loop {
            match (template.next(), actual.next()) {
                (None, None) => return Some(params),
                (Some(t), Some(a)) => {
                    if let Some(name) = t.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                        if a.is_empty() {
                            return None;
                        }
                        params.insert(name.to_owned(), a.to_owned());
                    } else if t != a {
                        return None;
                    }
                }
                _ => return None,
            }
        }
    }
}

/// Why no route answers a method and path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unrouted {
    /// No route has this path (404).
    NoSuchPath,
    /// The path exists under other methods (405); `allowed` is the `Allow` header's list.
    MethodNotAllowed { allowed: Vec<&'static str> },
}

impl From<Unrouted> for crate::error::ApiError {
    fn from(unrouted: Unrouted) -> Self {
        match unrouted {
            Unrouted::NoSuchPath => crate::error::ApiError::NoSuchPath,
            Unrouted::MethodNotAllowed { allowed } => {
                crate::error::ApiError::MethodNotAllowed { allowed }
            }
        }
    }
}

/// Finds the route for a method and path, with the path's parameters. A CORS preflight
/// (`OPTIONS`) goes to the first route of its path: every operation answers preflights.
pub fn resolve(
    method: &str,
    path: &str,
) -> Result<(&'static Route, HashMap<String, String>), Unrouted> {
    // Methods are case-sensitive (RFC 9110): `delete` is not DELETE.
    let preflight = method == "OPTIONS";
    let mut allowed = Vec::new();
    for route in &ROUTES {
        if let Some(params) = route.match_path(path) {
            if preflight || route.takes(method) {
                return Ok((route, params));
            }
            allowed.extend(route.methods());
        }
    }
    if allowed.is_empty() {
        Err(Unrouted::NoSuchPath)
    } else {
        allowed.push("OPTIONS");
        Err(Unrouted::MethodNotAllowed { allowed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_to_their_operation() {
        let (route, params) = resolve("PATCH", "/api/u1/tasks/abc/complete").unwrap();
        assert_eq!(route.operation, Operation::CompleteTask);
        assert_eq!(params["user_id"], "u1");
        assert_eq!(params["id"], "abc");
        assert_eq!(resolve("GET", "/health").unwrap().0.function, "health");
        assert_eq!(
            resolve("POST", "/health").unwrap_err(),
            Unrouted::MethodNotAllowed {
                allowed: vec!["GET", "HEAD", "OPTIONS"]
            }
        );
        assert_eq!(
            resolve("TRACE", "/api/u/tasks/x").unwrap_err(),
            Unrouted::MethodNotAllowed {
                allowed: vec!["GET", "HEAD", "PUT", "DELETE", "OPTIONS"]
            }
        );
        for (path, operation) in [
            ("/health", Operation::Health),
            ("/api/u1/tasks", Operation::ListTasks),
            ("/api/u1/tasks/abc", Operation::GetTask),
        ] {
            assert_eq!(resolve("HEAD", path).unwrap().0.operation, operation);
        }
        assert_eq!(
            resolve("HEAD", "/api/u1/tasks/abc/complete").unwrap_err(),
            Unrouted::MethodNotAllowed {
                allowed: vec!["PATCH", "OPTIONS"]
            }
        );
        assert_eq!(
            resolve("GET", "/api/u1/nope").unwrap_err(),
            Unrouted::NoSuchPath
        );
        assert_eq!(
            resolve("GET", "/api//tasks").unwrap_err(),
            Unrouted::NoSuchPath
        );
        let (preflight, _) = resolve("OPTIONS", "/api/u1/tasks").unwrap();
        assert_eq!(preflight.path, "/api/{user_id}/tasks");
    }

    #[test]
    fn one_trailing_slash_is_ignored_as_api_gateway_ignores_it() {
        let (route, params) = resolve("GET", "/api/u1/tasks/").unwrap();
        assert_eq!(route.operation, Operation::ListTasks);
        assert_eq!(params["user_id"], "u1");
        let (route, params) = resolve("PATCH", "/api/u1/tasks/abc/complete/").unwrap();
        assert_eq!(route.operation, Operation::CompleteTask);
        assert_eq!(params["id"], "abc");
        assert_eq!(resolve("GET", "/health/").unwrap().0.function, "health");
        assert_eq!(
            resolve("GET", "/api/u1/tasks//").unwrap_err(),
            Unrouted::NoSuchPath
        );
        assert_eq!(resolve("GET", "/").unwrap_err(), Unrouted::NoSuchPath);
    }

    #[test]
    fn the_fallback_answers_all_but_the_health_route() {
        assert_eq!(unrouted("GET", "/health"), None);
        assert_eq!(unrouted("OPTIONS", "/health"), None);
        assert_eq!(unrouted("HEAD", "/health"), None);
        assert_eq!(
            unrouted("DELETE", "/health"),
            Some(Unrouted::MethodNotAllowed {
                allowed: vec!["GET", "HEAD", "OPTIONS"]
            })
        );
        assert_eq!(
            unrouted("PUT", "/api/u1/tasks"),
            Some(Unrouted::MethodNotAllowed {
                allowed: vec!["GET", "HEAD", "POST", "OPTIONS"]
            })
        );
        assert_eq!(unrouted("GET", "/"), Some(Unrouted::NoSuchPath));
        assert_eq!(unrouted("GET", "/wp-login.php"), Some(Unrouted::NoSuchPath));
        assert_eq!(
            unrouted("GET", "/api/u1/tasks"),
            Some(Unrouted::NoSuchPath),
            "another function's route"
        );
        assert!(ROUTES.iter().any(|r| r.function == FALLBACK_FUNCTION));
    }

    #[test]
    fn each_function_appears_once() {
        let mut functions: Vec<_> = ROUTES.iter().map(|r| r.function).collect();
        functions.sort_unstable();
        functions.dedup();
        assert_eq!(functions.len(), ROUTES.len());
    }
}
