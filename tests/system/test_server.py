"""The single-process server (`todo-server`) serves every route with the same handlers
and route table as the functions: the same answers, over plain HTTP."""

import json
import re
import socket
import time
import uuid

from conftest import SERVER_SECRET as SECRET
from conftest import hs256_token, http


def call(base, method, path, token=None, body=None, headers=None):
    status, headers, raw = http(base, method, path, token, body, headers)
    return status, headers, json.loads(raw) if raw else None


def test_crud_over_one_process(server):
    server, _ = server
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
    server, _ = server
    status, _, body = call(server, "GET", "/nope")
    assert status == 404 and body["detail"]
    status, headers, body = call(server, "POST", "/health")
    assert status == 405 and body["detail"]
    assert headers["Allow"] == "GET, HEAD, OPTIONS" and headers["X-Request-Id"]
    status, headers, _ = call(server, "TRACE", "/api/u/tasks/x")
    assert status == 405 and headers["Allow"] == "GET, HEAD, PUT, DELETE, OPTIONS"
    # Methods are case-sensitive: `delete` is no DELETE.
    status, headers, _ = call(server, "delete", "/api/u/tasks/x")
    assert status == 405 and headers["Allow"] == "GET, HEAD, PUT, DELETE, OPTIONS"


def test_head_is_the_gets_answer_without_its_body(server):
    """Over real HTTP: HEAD on a GET route has the GET's status and headers, and its
    Content-Length, with no body (uptime checks send HEAD /health); it was a 405."""
    server, _ = server
    user = uuid.uuid4().hex
    token = hs256_token(SECRET, user)
    call(server, "POST", f"/api/{user}/tasks", token, {"title": "head"})
    for path in ("/health", f"/api/{user}/tasks"):
        get_status, get_headers, get_raw = http(server, "GET", path, token)
        status, headers, raw = http(server, "HEAD", path, token)
        assert (status, raw) == (get_status, b""), (path, status, raw)
        assert headers["Content-Length"] == str(len(get_raw)), path
        assert headers.get("X-Total-Count") == get_headers.get("X-Total-Count"), path


def test_oversized_bodies_are_413_without_reading_them_whole(server):
    server, _ = server
    user = uuid.uuid4().hex
    token = hs256_token(SECRET, user)
    status, _, body = call(server, "POST", f"/api/{user}/tasks", token,
                           {"title": "t", "pad": "x" * (1024 * 1024)})
    assert status == 413 and body["detail"]
    # A body announced at 10 MiB of which only 70 KiB ever come: the answer is the 413 as
    # soon as the 64 KiB limit is passed, not a wait for the rest (then a 408).
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall((f"POST /api/{user}/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                   "Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n").encode())
        s.sendall(b'{"title": "' + b"x" * 70 * 1024)
        started = time.monotonic()
        answer = s.recv(4096)
        took = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert took < 2, f"{took:.1f} s: the server waited for the rest of the body"


def test_cors_preflight(server):
    server, _ = server
    status, headers, _ = call(server, "OPTIONS", f"/api/{uuid.uuid4().hex}/tasks",
                              headers={"Origin": "http://localhost:3000",
                                       "Access-Control-Request-Method": "POST"})
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


def test_requests_refused_before_a_handler_are_answered_and_logged_as_routed_ones(server, cluster):
    """404, 405 and a body that cannot be read: each is one log line with its request id,
    and carries CORS for an allowed origin, as the handlers' answers do."""
    base, _ = server
    origin = {"Origin": "http://localhost:3000"}
    answers = [call(base, "GET", "/nope", headers=origin), call(base, "TRACE", "/api/u/tasks/x", headers=origin)]
    assert [a[0] for a in answers] == [404, 405]
    for status, headers, body in answers:
        assert body["detail"] and headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    # A chunked body whose chunk size is not a number: unreadable, not "too large".
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /api/u/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n")
        raw = b""
        while b"\r\n\r\n" not in raw or len(raw.partition(b"\r\n\r\n")[2]) < int(
                re.search(rb"(?im)^content-length: (\d+)", raw.partition(b"\r\n\r\n")[0]).group(1)):
            chunk = s.recv(4096)
            assert chunk, raw
            raw += chunk
    assert raw.startswith(b"HTTP/1.1 400"), raw[:300]
    head, _, body = raw.partition(b"\r\n\r\n")
    assert json.loads(body)["detail"]
    chunked_id = re.search(rb"(?im)^x-request-id: (\S+)", head).group(1).decode()
    log = (cluster.dir / "todo-server.log").read_text()
    for request_id, status in [(answers[0][1]["X-Request-Id"], 404), (answers[1][1]["X-Request-Id"], 405),
                               (chunked_id, 400)]:
        lines = [json.loads(line) for line in log.splitlines() if request_id in line]
        assert len(lines) == 1, (request_id, lines)
        line = lines[0].get("fields", lines[0])
        assert line["status"] == status and "latency_ms" in line and line["route"], line
