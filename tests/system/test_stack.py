"""End-to-end: the README's run command (scripts/dev) serves the API under `cargo lambda
watch`, and a real HTTP client exercises it at the production URLs.

Proves the router, the API Gateway v2 event conversion and the functions together. The
stack runs on free ports with a throwaway cluster and .env; every wait is bounded, and the
server's log is printed when something fails.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from conftest import as_postgres, free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 300
STOP_TIMEOUT_S = 60


class Stack:
    """scripts/dev on free ports; `env` overrides its settings (e.g. BETTER_AUTH_URL,
    CORS_ALLOWED_ORIGINS, or DATABASE_URL to use an existing database)."""

    def __init__(self, env=None):
        self.env = env or {}
        self.tmp = Path(tempfile.mkdtemp(prefix="todo-e2e-"))
        self.tmp.chmod(0o755)  # the postgres user must reach the cluster inside
        self.port = free_port()
        self.log_path = self.tmp / "dev.log"
        self.proc = None
        self.started = False

    def start(self):
        self.pg_port = free_port()
        env = dict(
            os.environ,
            PORT=str(self.port),
            DEV_PG_PORT=str(self.pg_port),
            DEV_STATE_DIR=str(self.tmp / "state"),
            DEV_ENV_FILE=str(self.tmp / ".env"),
            WATCH_ARGS="--ignore-changes",
        )
        env.pop("DATABASE_URL", None)
        env.update(self.env)
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [str(ROOT / "scripts" / "dev")],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.fail(f"scripts/dev exited with {self.proc.returncode}")
            # With BETTER_AUTH_SECRET it prints a dev token; without, only that it is up.
            if "export TOKEN=" in self.output() or "the API is up at" in self.output():
                self.started = True
                return
            time.sleep(0.5)
        self.fail(f"the stack was not ready within {START_TIMEOUT_S} s")

    def output(self):
        return self.log_path.read_text(errors="replace")

    def fail(self, message):
        pytest.fail(f"{message}\n--- scripts/dev log ---\n{self.output()[-20000:]}")

    def stop(self):
        # A stack that died on its own before the end is a failure too (its log was never
        # checked, nor its Ctrl-C), once it had started.
        died = self.proc is not None and self.proc.poll() is not None
        if self.proc and (self.tmp / ".env").exists():
            from conftest import assert_no_secrets
            secret = re.search(r"^BETTER_AUTH_SECRET=(.+)$", (self.tmp / ".env").read_text(), re.M)
            pg_password = self.env_value("DEV_PG_PASSWORD")
            # The log of the whole stack (functions included) holds no secret or token,
            # except the dev token that scripts/dev prints on purpose for the developer.
            printed = re.search(r"export TOKEN=(\S+)", self.output())
            log = self.output().replace(printed.group(1), "") if printed else self.output()
            assert_no_secrets(log, *[s for s in (secret and secret.group(1), pg_password) if s])
        if self.proc and not died:
            os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C sends
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
                self.fail("scripts/dev did not stop on Ctrl-C")
        state = self.tmp / "state" / "pg"
        if state.is_symlink():
            shutil.rmtree(os.path.realpath(state), ignore_errors=True)
        log = self.output()
        shutil.rmtree(self.tmp, ignore_errors=True)  # its .env holds secrets
        if died and self.started:
            pytest.fail(f"scripts/dev had exited ({self.proc.returncode}) before the tests were done\n"
                        f"--- scripts/dev log ---\n{log[-20000:]}")

    def env_value(self, name):
        return re.search(rf"^{name}=(.+)$", (self.tmp / ".env").read_text(), re.M).group(1)

    def token(self, user):
        from conftest import MINTED_TOKENS
        secret = re.search(r"^BETTER_AUTH_SECRET=(.+)$", (self.tmp / ".env").read_text(), re.M)
        token = subprocess.run(
            [str(ROOT / "target" / "debug" / "dev-token"), user, "600"],
            env=dict(os.environ, BETTER_AUTH_SECRET=secret.group(1)),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        MINTED_TOKENS.append(token)
        return token

    def request(self, method, path, token=None, body=None, headers=None):
        from conftest import http
        status, headers, raw = http(f"http://127.0.0.1:{self.port}", method, path, token, body, headers)
        return status, dict(headers), raw


@pytest.fixture(scope="module")
def stack():
    s = Stack()
    try:
        s.start()
        yield s
    finally:
        s.stop()


def call(stack, *args, expect, **kwargs):
    status, headers, body = stack.request(*args, **kwargs)
    if status != expect:
        stack.fail(f"{args[0]} {args[1]}: expected {expect}, got {status}: {body!r}")
    return headers, (json.loads(body) if body else None)


def test_the_printed_curl_commands_work(stack):
    out = stack.output()
    token = re.search(r"export TOKEN=(\S+)", out).group(1)
    commands = re.findall(r"^  (curl .*?)(?<!\\)$", out.replace("\\\n", ""), re.M)
    assert len(commands) == 2, commands
    env = dict(os.environ, TOKEN=token)
    created = subprocess.run(commands[0], shell=True, env=env, capture_output=True, text=True, timeout=60)
    task = json.loads(created.stdout)
    assert task["title"] == "Buy milk"
    listed = subprocess.run(commands[1], shell=True, env=env, capture_output=True, text=True, timeout=60)
    assert task["id"] in [t["id"] for t in json.loads(listed.stdout)]


def test_full_crud_sequence(stack):
    user = uuid.uuid4().hex
    token = stack.token(user)
    base = f"/api/{user}/tasks"
    headers, task = call(stack, "POST", base, token, {"title": "e2e task"}, expect=201)
    assert headers["location"] == f"{base}/{task['id']}"
    assert headers.get("x-request-id")
    _, got = call(stack, "GET", f"{base}/{task['id']}", token, expect=200)
    assert got == task
    _, updated = call(stack, "PUT", f"{base}/{task['id']}", token, {"description": "more"}, expect=200)
    assert updated["description"] == "more" and updated["title"] == "e2e task"
    _, done = call(stack, "PATCH", f"{base}/{task['id']}/complete", token, expect=200)
    assert done["completed"] is True
    headers, listed = call(stack, "GET", f"{base}?status=completed", token, expect=200)
    assert [t["id"] for t in listed] == [task["id"]]
    assert headers["x-total-count"] == "1"
    call(stack, "DELETE", f"{base}/{task['id']}", token, expect=204)
    call(stack, "GET", f"{base}/{task['id']}", token, expect=404)
    _, health = call(stack, "GET", "/health", expect=200)
    assert health["status"] == "healthy" and health["database"] == "ok"


def test_a_trailing_slash_is_routed_as_api_gateway_routes_it(stack):
    """API Gateway routes `/api/u/tasks/` as `/api/u/tasks`; so does the watch router."""
    user = uuid.uuid4().hex
    token = stack.token(user)
    base = f"/api/{user}/tasks"
    headers, task = call(stack, "POST", f"{base}/", token, {"title": "slash"}, expect=201)
    assert headers["location"] == f"{base}/{task['id']}"
    _, listed = call(stack, "GET", f"{base}/", token, expect=200)
    assert [t["id"] for t in listed] == [task["id"]]
    call(stack, "GET", f"{base}/{task['id']}/", token, expect=200)
    call(stack, "PATCH", f"{base}/{task['id']}/complete/", token, expect=200)
    _, health = call(stack, "GET", "/health/", expect=200)
    assert health["status"] == "healthy"


def test_error_cases(stack):
    alice, bob = uuid.uuid4().hex, uuid.uuid4().hex
    token = stack.token(alice)
    headers, body = call(stack, "GET", f"/api/{alice}/tasks", expect=401)
    assert headers["www-authenticate"].startswith("Bearer") and body["detail"]
    call(stack, "GET", f"/api/{alice}/tasks", "not-a-jwt", expect=401)
    call(stack, "GET", f"/api/{bob}/tasks", token, expect=403)
    call(stack, "GET", f"/api/{alice}/tasks/{uuid.uuid4()}", token, expect=404)
    _, body = call(stack, "POST", f"/api/{alice}/tasks", token, {"title": ""}, expect=422)
    assert body["detail"][0]["loc"] == ["body", "title"]
    _, body = call(stack, "GET", f"/api/{alice}/tasks/not-a-uuid", token, expect=422)
    assert body["detail"][0]["loc"] == ["path", "id"]


def test_cors_preflight_for_the_frontend(stack):
    status, headers, _ = stack.request(
        "OPTIONS",
        f"/api/{uuid.uuid4().hex}/tasks",
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert status in (200, 204)
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["access-control-allow-origin"] == "http://localhost:3000"
    assert "POST" in lower["access-control-allow-methods"]
    assert "authorization" in lower["access-control-allow-headers"].lower()


def test_cors_is_answered_as_api_gateway_would(stack):
    """scripts/dev runs watch with --disable-cors: an origin missing from
    CORS_ALLOWED_ORIGINS gets no CORS headers, on the preflight and on the request, and
    preflights work on every routed path."""
    user = uuid.uuid4().hex
    token = stack.token(user)
    for path, method in [("/health", "GET"), (f"/api/{user}/tasks", "POST"),
                         (f"/api/{user}/tasks/{uuid.uuid4()}", "PUT"),
                         (f"/api/{user}/tasks/{uuid.uuid4()}/complete", "PATCH")]:
        status, headers, _ = stack.request("OPTIONS", path, headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": method})
        lower = {k.lower(): v for k, v in headers.items()}
        assert status == 204, path
        assert lower["access-control-allow-origin"] == "http://localhost:3000", path
    evil = {"Origin": "http://evil.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"}
    status, headers, _ = stack.request("OPTIONS", f"/api/{user}/tasks", headers=evil)
    lower = {k.lower(): v for k, v in headers.items()}
    assert status == 204
    assert not any(k.startswith("access-control-") for k in lower), lower
    status, headers, _ = stack.request("GET", f"/api/{user}/tasks", token,
                                       headers={"Origin": "http://evil.example"})
    lower = {k.lower(): v for k, v in headers.items()}
    assert status == 200
    assert not any(k.startswith("access-control-") for k in lower), lower
    status, headers, _ = stack.request("GET", f"/api/{user}/tasks", token,
                                       headers={"Origin": "http://localhost:3000"})
    lower = {k.lower(): v for k, v in headers.items()}
    assert lower["access-control-allow-origin"] == "http://localhost:3000"
    assert "x-total-count" in lower["access-control-expose-headers"]


def test_requests_no_route_takes_are_answered_as_the_fallback_routes_do(stack):
    """As the fallback routes do in AWS: a path no route has is a 404, a method a routed
    path does not take a 405 with Allow, each with a JSON detail and X-Request-Id, from
    the health function (under watch: its router's catch-all and extra methods)."""
    user = uuid.uuid4().hex
    token = stack.token(user)
    for method, path, allow in [
        ("PUT", f"/api/{user}/tasks", "GET, HEAD, POST, OPTIONS"),
        ("GET", f"/api/{user}/tasks/{uuid.uuid4()}/complete", "PATCH, OPTIONS"),
        ("DELETE", "/health", "GET, HEAD, OPTIONS"),
        ("GET", "/", None),
        ("GET", "/wp-login.php", None),
        ("POST", f"/api/{user}/task", None),
    ]:
        status, headers, raw = stack.request(method, path, token)
        lower = {k.lower(): v for k, v in headers.items()}
        expected = (405, "Method Not Allowed") if allow else (404, "Not Found")
        assert (status, json.loads(raw)["detail"]) == expected, (method, path, raw)
        assert lower.get("allow") == allow, (method, path)
        assert lower.get("x-request-id"), (method, path)


def test_head_reaches_the_get_routes_function_and_answers_without_a_body(stack):
    """Under watch, as in AWS (the template's HEAD routes): HEAD on a GET route is that
    route's function's answer, with the GET's status and headers and no body."""
    user = uuid.uuid4().hex
    token = stack.token(user)
    call(stack, "POST", f"/api/{user}/tasks", token, {"title": "head"}, expect=201)
    for path in ("/health", f"/api/{user}/tasks"):
        get_status, get_headers, _ = stack.request("GET", path, token)
        status, headers, raw = stack.request("HEAD", path, token)
        assert (status, raw) == (get_status, b""), (path, status, raw)
        get_lower = {k.lower(): v for k, v in get_headers.items()}
        lower = {k.lower(): v for k, v in headers.items()}
        assert lower.get("x-total-count") == get_lower.get("x-total-count"), path
        assert lower.get("x-request-id"), path


def test_local_secrets_are_private_and_the_cluster_asks_for_its_password(stack):
    for path in (stack.tmp / ".env", stack.tmp / "state" / "watch.env"):
        assert path.stat().st_mode & 0o777 == 0o600, path
    password = stack.env_value("DEV_PG_PASSWORD")
    assert len(password) >= 32
    from conftest import pg_bin

    def connect(**env):
        return subprocess.run(
            [str(pg_bin() / "psql"), "-X", "-w", "-h", "127.0.0.1", "-p", str(stack.pg_port),
             "-U", "postgres", "-d", "todo", "-Atc", "SELECT 1"],
            env=dict(os.environ, **env), capture_output=True, text=True, timeout=30)

    os.environ.pop("PGPASSWORD", None)
    refused = connect()
    assert refused.returncode != 0 and "password" in refused.stderr, refused.stderr
    assert connect(PGPASSWORD="wrong").returncode != 0
    assert connect(PGPASSWORD=password).stdout.strip() == "1"


def test_a_change_outside_the_functions_sources_restarts_no_function():
    """`cargo lambda watch` rebuilds and restarts every running function when a file it
    watches changes. Building the TypeScript client (clients/, as the README's frontend
    steps do while scripts/dev runs) is no such change (.cargolambdaignore); before, it
    restarted all seven functions, killing any call they were answering."""
    s = Stack(env={"WATCH_ARGS": ""})
    try:
        s.start()
        call(s, "GET", "/health", expect=200)
        assert "Running `target/debug/health`" in s.output()
        before = s.output().count("Running `target/")
        client_source = ROOT / "clients" / "typescript" / "src" / "index.ts"
        os.utime(client_source)
        time.sleep(4)
        assert s.output().count("Running `target/") == before, s.output()[-3000:]
        call(s, "GET", "/health", expect=200)
    finally:
        s.stop()


def test_neon_database_url_alone_is_used_and_no_local_cluster_is_started(cluster):
    """The README lists NEON_DATABASE_URL as an alias of DATABASE_URL: scripts/dev must use
    it, not start (and migrate) a local cluster beside it."""
    database = "neon_alias_" + uuid.uuid4().hex[:8]
    subprocess.run(as_postgres([cluster.pg_bin / "createdb", "-h", "127.0.0.1", "-p", cluster.port,
                                "-U", "postgres", database]), check=True, capture_output=True)
    url = cluster.url.replace("/postgres?", f"/{database}?")
    stack = Stack(env={"NEON_DATABASE_URL": url})
    try:
        stack.start()
        assert "no local cluster" in stack.output(), stack.output()[-5000:]
        assert not any(stack.tmp.rglob("PG_VERSION")), "a local cluster was made"
        user = "neon-alias"
        call(stack, "POST", f"/api/{user}/tasks", token=stack.token(user), body={"title": "in the given database"},
             expect=201)
    finally:
        stack.stop()
    rows = subprocess.run(as_postgres([cluster.pg_bin / "psql", "-h", "127.0.0.1", "-p", cluster.port, "-U",
                                       "postgres", "-d", database, "-tAc", "SELECT title FROM tasks"]),
                          check=True, capture_output=True, text=True).stdout.split()
    assert " ".join(rows) == "in the given database"


def test_quoted_values_in_env_are_read_without_their_quotes(cluster):
    """A Neon URL holds `&`, so a developer quotes it in .env (the README's `. ./.env` needs
    that): scripts/dev must read the value inside the quotes, not stop at an unusable URL."""
    database = "quoted_env_" + uuid.uuid4().hex[:8]
    subprocess.run(as_postgres([cluster.pg_bin / "createdb", "-h", "127.0.0.1", "-p", cluster.port,
                                "-U", "postgres", database]), check=True, capture_output=True)
    url = cluster.url.replace("/postgres?", f"/{database}?") + "&application_name=quoted"
    stack = Stack()
    (stack.tmp / ".env").write_text(
        f"DATABASE_URL='{url}'\n"
        f"BETTER_AUTH_SECRET={uuid.uuid4().hex}{uuid.uuid4().hex}\n"
        f"DEV_PG_PASSWORD={uuid.uuid4().hex}\n"
        'CORS_ALLOWED_ORIGINS="http://localhost:3000"\r\n'
    )
    (stack.tmp / ".env").chmod(0o600)
    try:
        stack.start()
        user = "quoted-env"
        call(stack, "POST", f"/api/{user}/tasks", token=stack.token(user), body={"title": "quoted"},
             expect=201)
        status, headers, _ = stack.request("OPTIONS", f"/api/{user}/tasks", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
        assert headers.get("access-control-allow-origin") == "http://localhost:3000", (status, headers)
    finally:
        stack.stop()
    rows = subprocess.run(as_postgres([cluster.pg_bin / "psql", "-h", "127.0.0.1", "-p", cluster.port, "-U",
                                       "postgres", "-d", database, "-tAc", "SELECT title FROM tasks"]),
                          check=True, capture_output=True, text=True).stdout.split()
    assert rows == ["quoted"]


def test_a_checkout_the_postgres_user_cannot_enter_keeps_its_cluster_in_var_tmp():
    """As root in a checkout under /root (mode 700), initdb and postgres, which run as the
    `postgres` user, cannot reach .local/: scripts/dev keeps the cluster in /var/tmp, linked
    from there, and works."""
    stack = Stack()
    stack.tmp.chmod(0o700)
    try:
        stack.start()
        user = "private-checkout"
        call(stack, "POST", f"/api/{user}/tasks", token=stack.token(user), body={"title": "kept"}, expect=201)
        if os.geteuid() == 0:
            link = stack.tmp / "state" / "pg"
            assert link.is_symlink() and os.path.realpath(link).startswith("/var/tmp/"), link
    finally:
        stack.stop()


def test_a_checkout_path_with_a_space_works():
    stack = Stack()
    stack.env["DEV_STATE_DIR"] = str(stack.tmp / "my project" / "state")
    try:
        stack.start()
        user = "spaced"
        call(stack, "POST", f"/api/{user}/tasks", token=stack.token(user), body={"title": "ok"}, expect=201)
    finally:
        stack.stop()
