"""The frontend's whole path, as in production, in headless Chromium: a real Better Auth
server (email and password, the jwt plugin with its defaults) on http://localhost:3000
serves a page that signs a new user up, takes the JWT and runs the typed client
(clients/typescript) against the API under scripts/dev, on another origin, which verifies
the EdDSA tokens through Better Auth's JWKS with JWT_ISSUER / JWT_AUDIENCE set as the
README recommends. Then the same page against an API whose CORS_ALLOWED_ORIGINS does not
list the page's origin must fail in the browser, as it would in AWS; and against an API
whose database has become unreachable, the page must read the 503's Retry-After.

tests/browser holds the server, the page and the driver; scripts/test installs their
packages (npm ci) and Chromium (apt)."""

import json
import os
import secrets
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import Forwarder, as_postgres, pg_bin
from test_stack import Stack

ROOT = Path(__file__).resolve().parents[2]
BROWSER = ROOT / "tests" / "browser"
ORIGIN = "http://localhost:3000"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

STEPS = [
    "sign up with Better Auth",
    "get a JWT from the jwt plugin",
    "create (the README example)",
    "list",
    "get",
    "update with If-Match",
    "toggle with If-Match",
    "a stale If-Match is 412",
    "a keyed create replayed returns the same task",
    "another user's path is 403",
    "invalid input is 422 with FastAPI's detail",
    "delete with If-Match",
]


def port_open(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def auth_server(cluster):
    """Better Auth on http://localhost:3000, with its tables in a database of its own."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (scripts/test installs Debian's chromium)"
    assert (BROWSER / "node_modules").exists(), "run npm ci in tests/browser (scripts/test does)"
    if port_open(3000):
        pytest.fail("port 3000 is in use; the Better Auth server of this test must run on it")
    database = "better_auth_" + secrets.token_hex(4)
    subprocess.run(as_postgres([pg_bin() / "createdb", "-h", "127.0.0.1", "-p", cluster.port,
                                "-U", "postgres", database]), check=True, capture_output=True)
    log_path = cluster.dir / "auth-server.log"
    log = open(log_path, "w")
    env = dict(os.environ, BETTER_AUTH_SECRET=secrets.token_urlsafe(32), BETTER_AUTH_TELEMETRY="0",
               AUTH_DATABASE_URL=cluster.url.replace("/postgres?", f"/{database}?"))
    proc = subprocess.Popen(["node", "auth-server.mjs"], cwd=BROWSER, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "auth server ready" not in log_path.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the Better Auth server did not start:\n" + log_path.read_text()[-5000:])
            time.sleep(0.2)
        yield log_path
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()


def api(cluster, allowed_origins, database_url=None):
    """scripts/dev verifying Better Auth's tokens through its JWKS only (no HS256 secret)."""
    return Stack(env={
        "DATABASE_URL": database_url or cluster.url,
        "BETTER_AUTH_SECRET": "",
        "BETTER_AUTH_URL": ORIGIN,
        "JWT_ISSUER": ORIGIN,
        "JWT_AUDIENCE": ORIGIN,
        "CORS_ALLOWED_ORIGINS": allowed_origins,
    })


def run_page(stack, auth_log, query=""):
    result = subprocess.run(["node", "drive.mjs", f"http://127.0.0.1:{stack.port}", "90", query], cwd=BROWSER,
                            capture_output=True, text=True, timeout=180)
    if result.returncode != 0:
        stack.fail(f"the browser driver failed:\n{result.stdout[-5000:]}\n{result.stderr[-5000:]}"
                   f"\n--- Better Auth ---\n{auth_log.read_text()[-5000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["done"], report
    return report


def test_the_page_runs_every_operation_through_better_auth_and_the_typed_client(cluster, auth_server):
    stack = api(cluster, ORIGIN)
    try:
        stack.start()
        report = run_page(stack, auth_server)
    finally:
        stack.stop()
    failed = [s for s in report["steps"] if not s["ok"]]
    assert not failed, json.dumps(report, indent=2)
    assert [s["name"] for s in report["steps"]] == STEPS, report
    assert not any("CORS" in line for line in report["console"]), report["console"]


def test_the_page_fails_in_the_browser_when_the_api_does_not_allow_its_origin(cluster, auth_server):
    # The origin differs only by its port: the mistake a real deployment makes.
    stack = api(cluster, "http://localhost:3001")
    try:
        stack.start()
        report = run_page(stack, auth_server)
    finally:
        stack.stop()
    steps = {s["name"]: s for s in report["steps"]}
    assert steps["sign up with Better Auth"]["ok"] and steps["get a JWT from the jwt plugin"]["ok"], report
    create = steps["create (the README example)"]
    # fetch rejects with a TypeError, no HTTP status reaches the page, and the page stops.
    assert not create["ok"] and create["errorName"] == "TypeError" and create.get("status") is None, report
    assert len(report["steps"]) == 3, report
    assert any("blocked by CORS policy" in line for line in report["console"]), report["console"]


def test_the_page_reads_when_to_retry_from_a_503(cluster, auth_server):
    # Retry-After is not a header browsers show to code unless the API exposes it: without
    # it in Access-Control-Expose-Headers, the typed client retries at its own guess.
    database = Forwarder(cluster.port)
    stack = api(cluster, ORIGIN, cluster.url.replace(f":{cluster.port}/", f":{database.port}/"))
    try:
        stack.start()
        database.cut()
        report = run_page(stack, auth_server, "expect=unavailable")
    finally:
        stack.stop()
    assert [s["name"] for s in report["steps"]] == STEPS[:2] + [
        "a 503's Retry-After and X-Request-Id are readable"], report
    failed = [s for s in report["steps"] if not s["ok"]]
    assert not failed, json.dumps(report, indent=2)


def test_the_readme_example_is_the_one_the_browser_runs():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Connect your frontend", 1)[1].split("\n## ", 1)[0]
    example = (BROWSER / "app" / "example.ts").read_text()
    assert f"```ts\n{example}```" in section, "README's example differs from tests/browser/app/example.ts"
    assert len(example.strip().splitlines()) <= 18
