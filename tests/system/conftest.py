"""Shared fixtures for the system tests: free ports, a throwaway PostgreSQL cluster, HS256
tokens, and a minimal Lambda Runtime API so that real function binaries can be invoked."""

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import signal
import urllib.error
import urllib.request

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGET = ROOT / "target" / "debug"


def free_port():
    """A port on 127.0.0.1 that is free now, below the ephemeral range (32768-60999), where
    a client socket could already hold it by the time a server binds it. From a random
    start, so that concurrent runs rarely try the same ones (the Rust harness does the same,
    tests/src/cluster.rs)."""
    start = random.randrange(20000, 32000)
    for offset in range(12000):
        port = 20000 + (start - 20000 + offset) % 12000
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-31999")


MINTED_TOKENS = []


class Forwarder:
    """A TCP forwarder on 127.0.0.1 to `target_port`, for faults on the way: `hold` delays
    every chunk a client sends by that many seconds, and `cut()` closes every connection
    through it and refuses new ones, as when the far side becomes unreachable."""

    def __init__(self, target_port: int, hold: float = 0.0):
        self.target = ("127.0.0.1", int(target_port))
        self.hold = hold
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # cut
            upstream = socket.create_connection(self.target, timeout=10)
            upstream.settimeout(None)
            with self.lock:
                self.sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, self.hold), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, 0.0), daemon=True).start()

    @staticmethod
    def _pump(source, sink, hold):
        try:
            while data := source.recv(65536):
                if hold:
                    time.sleep(hold)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        # Shut down first: a close alone leaves the socket listening while accept() waits.
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for s in self.sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", self.port)) != 0, "the forwarder still listens"


def hs256_token(secret: str, sub: str, lifetime: int = 600) -> str:
    """A token for `sub`, minted by `dev-token` (the one HS256 minter; built by
    `cargo build --workspace --bins`, as scripts/test does before these tests)."""
    env = {k: v for k, v in os.environ.items() if k not in ("BETTER_AUTH_SECRET", "JWT_SECRET")}
    env["BETTER_AUTH_SECRET"] = secret
    token = subprocess.run([str(TARGET / "dev-token"), sub, str(lifetime)], env=env, check=True,
                           capture_output=True, text=True).stdout.strip()
    MINTED_TOKENS.append(token)
    return token


def api_event(method: str, path: str, token=None, body=None, path_parameters=None):
    """An API Gateway HTTP API (payload v2.0) event."""
    headers = {"host": "api.example.com"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    if body is not None:
        headers["content-type"] = "application/json"
    event = {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": "",
        "headers": headers,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example.com",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1",
                     "sourceIp": "192.0.2.1", "userAgent": "system-test"},
            "requestId": str(uuid.uuid4()),
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "time": "22/Nov/2026:03:14:15 +0000",
            "timeEpoch": 1795317255000,
        },
        "isBase64Encoded": False,
    }
    if path_parameters:
        event["pathParameters"] = path_parameters
    if body is not None:
        event["body"] = json.dumps(body)
    return event


def http(base, method, path, token=None, body=None, headers=None):
    """One HTTP request: (status, headers, raw body); status 0 when no answer came."""
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()
    except OSError:
        return 0, {}, b""


def pg_bin():
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                      key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    assert versions, "PostgreSQL server binaries are missing (scripts/test installs them)"
    return versions[-1].parent


def as_postgres(args):
    return (["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []) + [str(a) for a in args]


class Cluster:
    """A throwaway cluster on 127.0.0.1, migrated, removed on stop(). Started by
    scripts/lib.sh (start_throwaway_cluster), the one shell starter of clusters."""

    def __init__(self, extra_conf=()):
        env = dict(os.environ, THROWAWAY_PG_OPTIONS=" ".join(["-c fsync=off", *extra_conf]))
        out = subprocess.run(
            ["bash", "-c", 'source "$0" && start_throwaway_cluster && printf "%s\\n" '
             '"$THROWAWAY_DIR" "$THROWAWAY_PORT" "$THROWAWAY_PG_BIN"', ROOT / "scripts" / "lib.sh"],
            env=env, check=True, capture_output=True, text=True).stdout.split("\n")
        self.dir, self.port, self.pg_bin = Path(out[0]), int(out[1]), Path(out[2])
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"
        subprocess.run([TARGET / "migrate"], env=dict(os.environ, DATABASE_URL=self.url),
                       check=True, capture_output=True, timeout=60)

    def stop(self):
        subprocess.run(["bash", "-c", 'source "$0" && stop_throwaway_cluster', ROOT / "scripts" / "lib.sh"],
                       env=dict(os.environ, THROWAWAY_DIR=str(self.dir), THROWAWAY_PGDATA=str(self.dir / "data"),
                                THROWAWAY_PG_BIN=str(self.pg_bin)), capture_output=True)


@pytest.fixture(scope="session")
def cluster():
    c = Cluster()
    yield c
    c.stop()


class QuietServer(ThreadingHTTPServer):
    """A function process killed at the end of a test drops its open `/invocation/next`:
    that reset is expected, not worth a traceback in the test output."""

    def handle_error(self, request, client_address):
        if isinstance(sys.exc_info()[1], (ConnectionError, BrokenPipeError)):
            return
        super().handle_error(request, client_address)


class RuntimeApi:
    """The Lambda Runtime API (2018-06-01) as far as a function uses it: it hands out the
    queued events on /invocation/next and records responses and errors. Any number of
    `next` requests may wait at once (Lambda Managed Instances poll with one per concurrent
    invocation); `in_flight` counts the events handed out and not yet answered."""

    def __init__(self):
        self.events = []
        self.results = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self.init_error = None
        self.first_next_at = None
        self.cond = threading.Condition()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self):
                length = int(self.headers.get("content-length") or 0)
                return self.rfile.read(length) if length else b""

            def _reply(self, status, body=b"", headers=None):
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if not self.path.endswith("/runtime/invocation/next"):
                    return self._reply(404)
                with api.cond:
                    if api.first_next_at is None:
                        api.first_next_at = time.monotonic()
                    api.cond.notify_all()
                    while not api.events:
                        if not api.cond.wait(timeout=30):
                            return self._reply(500)
                    request_id, event = api.events.pop(0)
                    api.in_flight += 1
                    api.max_in_flight = max(api.max_in_flight, api.in_flight)
                self._reply(200, json.dumps(event).encode(), {
                    "content-type": "application/json",
                    "lambda-runtime-aws-request-id": request_id,
                    "lambda-runtime-deadline-ms": str(int(time.time() * 1000) + 30000),
                    "lambda-runtime-invoked-function-arn": "arn:aws:lambda:us-east-1:123456789012:function:test",
                    "lambda-runtime-trace-id": "Root=1-00000000-000000000000000000000000",
                })

            def do_POST(self):
                body = self._body()
                parts = self.path.split("/")
                with api.cond:
                    if self.path.endswith("/runtime/init/error"):
                        api.init_error = body
                    elif len(parts) >= 6 and parts[-1] in ("response", "error"):
                        api.results[parts[-2]] = (parts[-1], body)
                        api.in_flight -= 1
                    api.cond.notify_all()
                self._reply(202, b"{}", {"content-type": "application/json"})

        self.server = QuietServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def invoke(self, event, timeout=30):
        return self.result(self.submit(event), timeout)

    def submit(self, event):
        """Queues an invocation without waiting for it; `result` waits for its answer."""
        request_id = str(uuid.uuid4())
        with self.cond:
            self.events.append((request_id, event))
            self.cond.notify_all()
        return request_id

    def result(self, request_id, timeout=30):
        with self.cond:
            deadline = time.monotonic() + timeout
            while request_id not in self.results:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.cond.wait(timeout=remaining):
                    raise TimeoutError("no response from the function")
            kind, body = self.results.pop(request_id)
        assert kind == "response", body
        return json.loads(body)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def lambda_env(runtime_api, function, **extra):
    env = {
        "PATH": os.environ.get("PATH", ""),
        "AWS_LAMBDA_RUNTIME_API": runtime_api.address,
        "AWS_LAMBDA_FUNCTION_NAME": function,
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "256",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_REGION": "us-east-1",
        "RUST_LOG": "info",
    }
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


SERVER_SECRET = "server-test-secret-" + uuid.uuid4().hex


DB_PASSWORD = "db-password-" + uuid.uuid4().hex


def assert_no_secrets(log: str, *secrets: str):
    """No token, secret or password may appear in a log."""
    for secret in [*secrets, *MINTED_TOKENS]:
        assert secret not in log, "a secret or token leaked into the log"
    for token in MINTED_TOKENS:
        assert token.split(".")[2] not in log, "a token signature leaked into the log"


@pytest.fixture(scope="session")
def server(cluster):
    port = free_port()
    # The password is never asked for (trust authentication) but must never be logged.
    url = cluster.url.replace("postgres@", f"postgres:{DB_PASSWORD}@")
    env = dict(os.environ, DATABASE_URL=url, BETTER_AUTH_SECRET=SERVER_SECRET, PORT=str(port))
    log_path = cluster.dir / "todo-server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen([str(TARGET / "todo-server")], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/health", timeout=5)
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                pytest.fail("todo-server did not start:\n" + log_path.read_text())
            time.sleep(0.2)
    yield base, SERVER_SECRET
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()
    text = log_path.read_text()
    assert proc.returncode == 0, text[-5000:]
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), "every log line is JSON"
    assert_no_secrets(text, SERVER_SECRET, DB_PASSWORD)
