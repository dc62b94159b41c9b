"""No event can stop a function: each real function binary, under a Lambda Runtime API,
answers hostile API Gateway v2 events (raw <>" and bad escapes in the query, odd paths,
missing requestContext fields, bodies that are not base64 or not UTF-8) with JSON that has
a detail and an X-Request-Id, and is still serving afterwards."""

import base64
import copy
import json
import subprocess
import uuid

import pytest

from conftest import ROOT, TARGET, RuntimeApi, api_event, hs256_token, lambda_env

SECRET = "hostile-events-secret-" + uuid.uuid4().hex
# One crate per route under functions/ (routes_agree.rs keeps them equal to the route table).
FUNCTIONS = sorted(p.name for p in (ROOT / "functions").iterdir())
# Each function's own method: the events reach it as API Gateway would send them, past the
# check that refuses another route's method (405).
METHODS = {"list-tasks": "GET", "create-task": "POST", "get-task": "GET", "update-task": "PUT",
           "delete-task": "DELETE", "complete-task": "PATCH", "health": "GET"}
assert sorted(METHODS) == FUNCTIONS, "a function without its method here"


def spoiled(mutate):
    event = api_event("GET", "/api/u/tasks")
    mutate(event)
    return event


def set_query(q):
    return lambda e: e.update(rawQueryString=q)


def set_path(p):
    return lambda e: e.update(rawPath=p)


def drop(*keys):
    def mutate(event):
        target = event
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return mutate


# (name, event, answered as a request?) — unusable events are a 400 from every function.
CASES = [
    ("raw <> in the query", spoiled(set_query("search=<a>")), True),
    ("raw quote in the query", spoiled(set_query('search="x"')), True),
    ("invalid escapes", spoiled(set_query("limit=%zz&search=%&x=%4")), True),
    ("spaces and brackets in the path", spoiled(set_path("/api/a b/<tasks>")), True),
    ("empty path", spoiled(set_path("")), True),
    ("unusable host header", spoiled(lambda e: e["headers"].update(host="exa mple")), True),
    ("non-UTF-8 body", spoiled(lambda e: e.update(
        body=base64.b64encode(b"\xff\xfe{").decode(), isBase64Encoded=True,
        headers={"content-type": "application/json"})), True),
    ("no requestContext", spoiled(drop("requestContext")), False),
    ("no requestContext.http", spoiled(drop("requestContext", "http")), False),
    ("invalid base64 body", spoiled(lambda e: e.update(body="%%%", isBase64Encoded=True)), False),
    ("not an object", [1, 2, 3], False),
]


def body_of(response):
    raw = response.get("body") or ""
    if response.get("isBase64Encoded"):
        raw = base64.b64decode(raw).decode()
    return json.loads(raw)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_a_function_survives_hostile_events_and_answers_each_with_json(function, cluster):
    runtime = RuntimeApi()
    proc = subprocess.Popen([str(TARGET / function)],
                            env=lambda_env(runtime, function, DATABASE_URL=cluster.url,
                                           BETTER_AUTH_SECRET=SECRET),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for name, event, is_request in CASES:
            event = copy.deepcopy(event)
            if is_request:
                event["requestContext"]["http"]["method"] = METHODS[function]
            response = runtime.invoke(event, timeout=20)
            status = response["statusCode"]
            if not is_request:
                expected = 400
            elif function == "health":
                expected = 404  # not its own path: it serves the fallback routes
            else:
                expected = 401  # no token in these events
            assert status == expected, (name, response)
            assert response["headers"].get("x-request-id"), (name, response)
            body = body_of(response)
            if status >= 400:
                assert isinstance(body.get("detail"), str), (name, body)
            assert proc.poll() is None, f"{function} died on {name}"
        # Still serving, with a real request.
        if function == "list-tasks":
            token = hs256_token(SECRET, "hostile-user")
            event = api_event("GET", "/api/hostile-user/tasks", token=token)
            event["rawQueryString"] = "search=<a>"
            assert runtime.invoke(event)["statusCode"] == 200
        assert proc.poll() is None
    finally:
        proc.kill()
        output = proc.communicate(timeout=10)[0]
        runtime.close()
    assert "panicked" not in output, output[-3000:]
