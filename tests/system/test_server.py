"""The single-process server (`todo-server`) serves every route with the same handlers
and route table as the functions: the same answers, over plain HTTP."""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid

import pytest

from conftest import TARGET, free_port, hs256_token

SECRET = "server-test-secret-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def server(cluster):
    port = free_port()
    env = dict(os.environ, DATABASE_URL=cluster.url, BETTER_AUTH_SECRET=SECRET, PORT=str(port))
    proc = subprocess.Popen([str(TARGET / "todo-server")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/health", timeout=5)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("todo-server did not start:\n" + proc.communicate()[0])
            time.sleep(0.2)
    yield base
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert SECRET not in out


def call(base, method, path, token=None, body=None, headers=None):
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, resp.headers, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, err.headers, json.loads(raw) if raw else None


def test_crud_over_one_process(server):
    user = uuid.uuid4().hex
    token = hs256_token(SECRET, user)
    status, headers, task = call(server, "POST", f"/api/{user}/tasks", token, {"title": "srv"})
    assert status == 201 and headers["Location"] == f"/api/{user}/tasks/{task['id']}"
    status, headers, _ = call(server, "PUT", f"/api/{user}/tasks/{task['id']}", token,
                              {"title": "x"}, {"If-Match": '"999"'})
    assert status == 412
    status, _, done = call(server, "PATCH", f"/api/{user}/tasks/{task['id']}/complete", token)
    assert status == 200 and done["completed"] is True
    status, headers, listed = call(server, "GET", f"/api/{user}/tasks?limit=1", token)
    assert status == 200 and headers["X-Total-Count"] == "1" and listed[0]["id"] == task["id"]
    assert call(server, "DELETE", f"/api/{user}/tasks/{task['id']}", token)[0] == 204
    assert call(server, "GET", f"/api/{uuid.uuid4().hex}/tasks", token)[0] == 403
    assert call(server, "GET", f"/api/{user}/tasks")[0] == 401


def test_unknown_routes_and_methods(server):
    status, _, body = call(server, "GET", "/nope")
    assert status == 404 and body["detail"]
    status, _, body = call(server, "POST", "/health")
    assert status == 405 and body["detail"]


def test_oversized_bodies_are_413_without_reading_them_whole(server):
    user = uuid.uuid4().hex
    token = hs256_token(SECRET, user)
    status, _, body = call(server, "POST", f"/api/{user}/tasks", token,
                           {"title": "t", "pad": "x" * (1024 * 1024)})
    assert status == 413 and body["detail"]


def test_cors_preflight(server):
    status, headers, _ = call(server, "OPTIONS", f"/api/{uuid.uuid4().hex}/tasks",
                              headers={"Origin": "http://localhost:3000",
                                       "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
