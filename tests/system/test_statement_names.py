"""Named statements through a pooler that does not keep them. tokio-postgres names prepared
statements s0, s1, ... in each process, so get-task's and delete-task's first calls are both
"s0". Through a pooler in transaction mode that passes names through (Debian's PgBouncer
1.18 here; also 1.21 with max_prepared_statements = 0), a Bind can reach the statement the
other process prepared under that name on the same server connection. With the default
DB_PREPARED_STATEMENTS=true, that made DELETEs run the get's statement, answered 204 with
nothing deleted. Every function now refuses a call meant for another function before it
does anything (procedures::WRONG_STATEMENT): nothing ran, so the process switches to
unnamed statements and repeats the call; no answer may differ from what happened."""

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import (TARGET, RuntimeApi, api_event, as_postgres, free_port, hs256_token,
                      lambda_env)

SECRET = "statement-names-" + uuid.uuid4().hex
SWITCHED = "unnamed statements from now on"


@pytest.fixture
def old_pgbouncer(cluster):
    """Debian's PgBouncer 1.18 in transaction mode, two server connections."""
    directory = Path(tempfile.mkdtemp(prefix="todo-pgb-names-"))
    directory.chmod(0o777)
    port = free_port()
    (directory / "userlist.txt").write_text('"postgres" ""\n')
    (directory / "pgbouncer.ini").write_text(
        f"[databases]\n* = host=127.0.0.1 port={cluster.port}\n"
        f"[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        f"auth_type = trust\nauth_file = {directory}/userlist.txt\npool_mode = transaction\n"
        f"default_pool_size = 2\nmax_client_conn = 100\n"
        f"ignore_startup_parameters = extra_float_digits\nserver_reset_query =\n"
        f"logfile = {directory}/pgbouncer.log\npidfile = {directory}/pgbouncer.pid\n")
    for path in directory.iterdir():
        path.chmod(0o666)
    subprocess.run(as_postgres(["/usr/sbin/pgbouncer", "-d", str(directory / "pgbouncer.ini")]),
                   check=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.monotonic() < deadline, "pgbouncer did not listen:\n" + (
                directory / "pgbouncer.log").read_text(errors="replace")
            time.sleep(0.05)
        yield f"postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable"
    finally:
        pid_file = directory / "pgbouncer.pid"
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        shutil.rmtree(directory, ignore_errors=True)


class Functions:
    """Function binaries, each under a Lambda Runtime API of its own, all reaching the
    database through `url`; their logs are in `logs` once the `with` block ends."""

    def __init__(self, url):
        self.url = url
        self.processes = []
        self.logs = []

    def start(self, function):
        runtime = RuntimeApi()
        log = tempfile.TemporaryFile("w+")
        proc = subprocess.Popen([str(TARGET / function)], stdout=log, stderr=subprocess.STDOUT,
                                env=lambda_env(runtime, function, DATABASE_URL=self.url,
                                               BETTER_AUTH_SECRET=SECRET))
        self.processes.append((proc, runtime, log))
        return runtime

    def __enter__(self):
        return self

    def __exit__(self, *_):
        for proc, runtime, log in self.processes:
            proc.kill()
            proc.wait(timeout=10)
            runtime.close()
            log.seek(0)
            self.logs.append(log.read())
            log.close()


def hold_a_server_connection(cluster, url):
    """Keeps one of the pooler's two server connections busy for 2 s, so that the next
    process to start prepares its statements on the other one."""
    holder = subprocess.Popen([str(cluster.pg_bin / "psql"), url, "-c",
                               "BEGIN; SELECT pg_sleep(2); COMMIT;"], stdout=subprocess.DEVNULL)
    time.sleep(0.5)
    return holder


def test_a_call_never_runs_another_functions_statement(cluster, old_pgbouncer):
    def sql(statement):
        return subprocess.run([str(cluster.pg_bin / "psql"), cluster.url, "-Atc", statement],
                              capture_output=True, text=True, check=True).stdout.strip()

    user = "names-" + uuid.uuid4().hex[:12]
    token = hs256_token(SECRET, user)
    kept = [str(uuid.uuid4()) for _ in range(2)]
    doomed = [str(uuid.uuid4()) for _ in range(42)]
    ids = ",".join(f"'{task}'" for task in kept + doomed)
    sql(f"INSERT INTO tasks (id, user_id, title) "
        f"SELECT id::uuid, '{user}', 'task ' || id FROM unnest(ARRAY[{ids}]) id")

    def event(method, task):
        return api_event(method, f"/api/{user}/tasks/{task}", token=token,
                         path_parameters={"user_id": user, "id": task})

    answers = []  # (method, task, status, body)

    def call(runtime, method, task):
        response = runtime.invoke(event(method, task))
        answers.append((method, task, response["statusCode"], response.get("body") or ""))

    with Functions(old_pgbouncer) as functions:
        get = functions.start("get-task")
        call(get, "GET", kept[0])  # prepares "s0" on a server connection
        call(get, "GET", kept[0])
        # Keep that server connection busy, so that delete-task prepares its "s0" on the other.
        holder = hold_a_server_connection(cluster, old_pgbouncer)
        delete = functions.start("delete-task")
        call(delete, "DELETE", doomed[0])
        call(delete, "DELETE", doomed[1])
        holder.wait(timeout=30)
        # Then both at once: a Bind of "s0" reaches either process's statement.
        gets = [(kept[n % 2], get.submit(event("GET", kept[n % 2]))) for n in range(40)]
        deletes = [(task, delete.submit(event("DELETE", task))) for task in doomed[2:]]
        for runtime, method, submitted in ((get, "GET", gets), (delete, "DELETE", deletes)):
            for task, request in submitted:
                response = runtime.result(request)
                answers.append((method, task, response["statusCode"], response.get("body") or ""))
    logs = functions.logs

    left = set(sql(f"SELECT id FROM tasks WHERE user_id = '{user}'").split("\n"))
    wrong = []
    for method, task, status, body in answers:
        if status not in (200, 204, 503):
            wrong.append(f"{method} {task}: {status} {body}")
        elif method == "DELETE" and status == 204 and task in left:
            wrong.append(f"DELETE {task} answered 204, and the task is still there")
        elif method == "DELETE" and status == 503 and task not in left:
            wrong.append(f"DELETE {task} answered 503, and the task is gone")
        elif method == "GET" and status == 200 and task not in body:
            wrong.append(f"GET {task} answered 200 with another body: {body}")
    gone = [task for task in kept if task not in left]
    wrong.sort(key=lambda problem: "still there" not in problem)
    assert not wrong and not gone, f"{len(wrong)} wrong answers, first {wrong[:8]}\nkept tasks deleted: {gone}"
    # The run did reach another process's statement (or none), and the process that met it
    # switched to unnamed statements: without that, this test proves nothing.
    assert any(SWITCHED in log for log in logs), "no call met another statement: inconclusive"


def test_a_named_statement_of_another_shape_switches_to_unnamed_statements(cluster, old_pgbouncer):
    """health's "s0" is `SELECT 1` (no parameters) and get-task's "s0" its function's call
    (six): a Bind of one reaching the other fails at Bind in Postgres (the number of
    parameters), not in the function. That too means the pooler does not keep names: the
    process switches to unnamed statements and repeats the call, which then succeeds. Before,
    such calls were answered 503 again and again, and never switched."""
    user = "shapes-" + uuid.uuid4().hex[:12]
    token = hs256_token(SECRET, user)
    task = str(uuid.uuid4())
    subprocess.run([str(cluster.pg_bin / "psql"), cluster.url, "-Atc",
                    f"INSERT INTO tasks (id, user_id, title) VALUES ('{task}', '{user}', 'kept')"],
                   check=True, capture_output=True)
    get_event = api_event("GET", f"/api/{user}/tasks/{task}", token=token,
                          path_parameters={"user_id": user, "id": task})
    health_event = api_event("GET", "/health")

    answers = []
    with Functions(old_pgbouncer) as functions:
        get = functions.start("get-task")
        for _ in range(2):  # prepares "s0" on a server connection
            answers.append(("get", get.invoke(get_event)["statusCode"]))
        holder = hold_a_server_connection(cluster, old_pgbouncer)
        health = functions.start("health")
        for _ in range(2):  # its "s0" on the other one
            answers.append(("health", health.invoke(health_event)["statusCode"]))
        holder.wait(timeout=30)
        for _ in range(3):
            submitted = [("get", get.submit(get_event)) for _ in range(10)]
            submitted += [("health", health.submit(health_event)) for _ in range(10)]
            for name, request in submitted:
                response = (get if name == "get" else health).result(request)
                answers.append((name, response["statusCode"]))
    logs = functions.logs
    assert any(SWITCHED in log for log in logs), (
        "no process switched to unnamed statements (no Bind met another statement, or one did "
        "and was not recognised)")
    failed = [(name, status) for name, status in answers if status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} calls failed: {failed[:10]}"
