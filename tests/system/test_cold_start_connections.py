"""Which cold starts open a database connection. A task function opens its first one when
it starts, so its first request does not wait for it; the health function, which also
answers every path no route has (API Gateway's fallback routes, where scanners land),
opens none until `/health` asks: otherwise each of its cold starts would wake a suspended
Neon compute for a scanner's request."""

import subprocess
import time
import uuid

from conftest import TARGET, Forwarder, RuntimeApi, api_event, lambda_env

SECRET = "cold-start-connections-" + uuid.uuid4().hex


def connections(forwarder):
    with forwarder.lock:
        return len(forwarder.sockets) // 2


def start(function, forwarder, cluster):
    """The function binary under a Lambda Runtime API, its database through `forwarder`,
    once it polls for its first event (its cold start done)."""
    runtime = RuntimeApi()
    url = cluster.url.replace(f":{cluster.port}/", f":{forwarder.port}/")
    assert url != cluster.url, url
    proc = subprocess.Popen([str(TARGET / function)],
                            env=lambda_env(runtime, function, DATABASE_URL=url,
                                           BETTER_AUTH_SECRET=SECRET),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while runtime.first_next_at is None:
        assert proc.poll() is None and time.monotonic() < deadline, "no cold start"
        time.sleep(0.02)
    return runtime, proc


def test_the_health_function_connects_only_when_health_is_asked(cluster):
    forwarder = Forwarder(cluster.port)
    runtime, proc = start("health", forwarder, cluster)
    try:
        for path in ("/wp-login.php", "/", "/api/x/tasks/y/z"):
            event = api_event("GET", path, path_parameters={"proxy": path.lstrip("/")})
            event["routeKey"] = event["requestContext"]["routeKey"] = "GET /{proxy+}"
            assert runtime.invoke(event, timeout=20)["statusCode"] == 404, path
        assert connections(forwarder) == 0, "a scanner's request reached the database"

        response = runtime.invoke(api_event("GET", "/health"), timeout=20)
        assert response["statusCode"] == 200, response
        assert connections(forwarder) == 1
    finally:
        proc.kill()
        proc.wait()
        runtime.close()
        forwarder.cut()


def test_a_task_function_connects_at_its_cold_start(cluster):
    forwarder = Forwarder(cluster.port)
    runtime, proc = start("get-task", forwarder, cluster)
    try:
        assert connections(forwarder) == 1, "the first request would wait for the connection"
    finally:
        proc.kill()
        proc.wait()
        runtime.close()
        forwarder.cut()
