"""todo-server faces the internet directly: slow or hostile clients cannot hold it, and
SIGTERM finishes what it started. Every run is on 127.0.0.1, bounded in connections and
seconds."""

import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
import uuid

import pytest

from conftest import SERVER_SECRET, TARGET, as_postgres, free_port, hs256_token, http, pg_bin

STALLED = 400


@pytest.fixture(autouse=True, scope="module")
def enough_file_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 4096)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class Server:
    """A todo-server of its own, with extra settings and optionally a lower fd limit."""

    def __init__(self, cluster, nofile=None, **settings):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = cluster.dir / f"todo-server-{self.port}.log"
        env = dict(os.environ, DATABASE_URL=cluster.url, BETTER_AUTH_SECRET=SERVER_SECRET,
                   PORT=str(self.port), **settings)

        def limit_fds():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen([str(TARGET / "todo-server")], env=env, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=limit_fds)
        deadline = time.monotonic() + 60
        while http(self.base, "GET", "/health")[0] != 200:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.stop()
                pytest.fail("todo-server did not start:\n" + self.log())
            time.sleep(0.1)

    def log(self):
        return self.log_path.read_text(errors="replace")

    def cpu_seconds(self):
        fields = open(f"/proc/{self.proc.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def stall(port, count):
    """Connections that send half a request line and then nothing."""
    sockets = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"GET /health HT")
        sockets.append(s)
    return sockets


def closed_by_server(s, deadline):
    s.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return s.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    except OSError:
        return True


def timed(base, method, path, token=None, body=None):
    started = time.monotonic()
    status = http(base, method, path, token, body)[0]
    return status, time.monotonic() - started


def drip_body(port, token, user, result):
    """A create whose 60 000-byte body arrives 10 bytes every 100 ms."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall((f"POST /api/{user}/tasks HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
               "Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n").encode())
    started = time.monotonic()
    s.settimeout(0.1)
    answer = b""
    while time.monotonic() - started < 8 and not answer:
        try:
            s.sendall(b"x" * 10)
            answer = s.recv(4096)
        except socket.timeout:
            continue
        except OSError:
            break
    result["status_line"] = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    result["answer"] = answer
    result["after"] = time.monotonic() - started
    s.close()


def test_stalled_connections_and_a_dripped_body_do_not_hold_the_server(cluster):
    # 5 s to send headers: longer than the burst below takes to open here, so that every
    # stalled connection is still held while the probes run.
    server = Server(cluster, HTTP_HEADER_TIMEOUT_MS="5000", HTTP_BODY_TIMEOUT_MS="1500")
    user = uuid.uuid4().hex
    token = hs256_token(SERVER_SECRET, user)
    try:
        opened = time.monotonic()
        sockets = stall(server.port, STALLED)
        # Opening them can take seconds here (the kernel drops SYNs of such a burst, and the
        # client resends them after 1 s): the probes run for a second once all are open.
        stalled = time.monotonic()
        drip = {}
        dripper = threading.Thread(target=drip_body, args=(server.port, token, user, drip))
        dripper.start()
        health, creates = [], []
        while not health or time.monotonic() - stalled < 1:
            health.append(timed(server.base, "GET", "/health"))
            creates.append(timed(server.base, "POST", f"/api/{user}/tasks", token, {"title": "t"}))
            time.sleep(0.2)
        # The server closes every stalled connection once its header timeout has passed.
        closed = sum(closed_by_server(s, stalled + 5 + 3) for s in sockets)
        closed_after = time.monotonic() - opened
        dripper.join(15)
        for s in sockets:
            s.close()
        print(f"\nslow clients: {STALLED} stalled connections + 1 dripped body; "
              f"/health max {max(t for _, t in health) * 1000:.0f} ms over {len(health)} probes, "
              f"create max {max(t for _, t in creates) * 1000:.0f} ms; "
              f"{closed}/{STALLED} stalled closed by the server within {closed_after:.1f} s; "
              f"dripped body answered {drip.get('status_line')!r} after {drip.get('after', 0):.1f} s")
        assert all(status == 200 and t < 1 for status, t in health), health
        assert all(status == 201 and t < 1 for status, t in creates), creates
        assert closed == STALLED, f"only {closed} of {STALLED} stalled connections were closed"
        assert drip["status_line"].startswith("HTTP/1.1 408"), drip
        assert json.loads(drip["answer"].split(b"\r\n\r\n", 1)[1])["detail"]
        assert drip["after"] < 1.5 + 2
    finally:
        server.stop()
    assert server.proc.returncode == 0, server.log()[-3000:]


def test_a_low_file_limit_neither_spins_nor_stops_the_server(cluster):
    # 128 descriptors and 300 stalled connections: the old server ran out of descriptors,
    # then spun on failing accepts, logging each, and never answered again.
    server = Server(cluster, nofile=128, HTTP_HEADER_TIMEOUT_MS="1000")
    try:
        cpu_before = server.cpu_seconds()
        started = time.monotonic()
        sockets = stall(server.port, 300)
        time.sleep(2)
        cpu = (server.cpu_seconds() - cpu_before) / (time.monotonic() - started)
        # The stalled connections stay open on our side; header timeouts free the server.
        recovered = None
        while time.monotonic() - started < 15:
            status, took = timed(server.base, "GET", "/health")
            if status == 200:
                recovered = time.monotonic() - started
                break
        for s in sockets:
            s.close()
        accept_errors = server.log().count("accept failed")
        print(f"\nfd limit 128, 300 stalled connections: server CPU {cpu:.0%} of a core, "
              f"{accept_errors} accept errors logged, /health answered after {recovered} s")
        assert cpu < 0.5, f"the server spun at {cpu:.0%} of a core"
        assert accept_errors < 50, f"{accept_errors} 'accept failed' lines"
        assert recovered is not None, "the server never answered /health again"
        assert http(server.base, "GET", "/health")[0] == 200
    finally:
        server.stop()


def psql(cluster, sql):
    return subprocess.run(as_postgres([pg_bin() / "psql", "-X", "-h", "127.0.0.1", "-p", str(cluster.port),
                                       "-U", "postgres", "-d", "postgres", "-At", "-c", sql]),
                          check=True, capture_output=True, text=True, timeout=30).stdout.strip()


class Locker:
    """A psql session that takes a lock (`sql`, in a transaction) and holds it until
    release()."""

    def __init__(self, cluster, sql):
        self.proc = subprocess.Popen(as_postgres([pg_bin() / "psql", "-X", "-At", "-h", "127.0.0.1", "-p",
                                                  str(cluster.port), "-U", "postgres", "-d", "postgres"]),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.proc.stdin.write(f"BEGIN; {sql}; SELECT 'locked';\n")
        self.proc.stdin.flush()
        for _ in range(5):  # psql prints the command tags first
            if self.proc.stdout.readline().strip() == "locked":
                return
        self.proc.kill()
        pytest.fail(f"could not take the lock: {sql}")

    def release(self):
        self.proc.stdin.write("COMMIT;\n")
        self.proc.stdin.close()
        self.proc.wait(10)

    def kill(self):
        self.proc.kill()


def wait_for_lock_waiters(cluster, count, what):
    """Until `count` of the API's calls (its statement functions, schema todo_api) wait for
    a lock."""
    waiting = ("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
               "AND query LIKE 'SELECT todo_api.q%'")
    deadline = time.monotonic() + 10
    while int(psql(cluster, waiting)) < count:
        assert time.monotonic() < deadline, f"{what} never reached the database"
        time.sleep(0.05)


def put_and_hang_up(server, cluster, owner, task_id, title, waiters):
    """A PUT over a raw connection, closed once the update waits for its row (it is the
    `waiters`-th call waiting)."""
    token = hs256_token(SERVER_SECRET, owner)
    body = json.dumps({"title": title})
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall((f"PUT /api/{owner}/tasks/{task_id} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode())
        wait_for_lock_waiters(cluster, waiters, "the update")


def new_task(server, owner):
    status, _, raw = http(server.base, "POST", f"/api/{owner}/tasks", hs256_token(SERVER_SECRET, owner),
                          {"title": "before"})
    assert status == 201, raw
    return json.loads(raw)["id"]


def logged_statuses(server, method):
    lines = [json.loads(line) for line in server.log().splitlines() if f'"method":"{method}"' in line]
    return sorted(line.get("fields", line)["status"] for line in lines)


def test_sigterm_finishes_in_flight_creates_and_loses_none(cluster):
    server = Server(cluster)
    user = uuid.uuid4().hex
    token = hs256_token(SERVER_SECRET, user)
    batch = 10
    # Hold back every insert, so that the creates are in flight inside Postgres at SIGTERM.
    locker = Locker(cluster, "LOCK TABLE tasks IN EXCLUSIVE MODE")
    try:
        answers = [None] * batch

        def create(i):
            status, _, raw = http(server.base, "POST", f"/api/{user}/tasks", token, {"title": f"t{i}"})
            answers[i] = (status, json.loads(raw)["id"] if status == 201 else None)

        threads = [threading.Thread(target=create, args=(i,)) for i in range(batch)]
        for t in threads:
            t.start()
        wait_for_lock_waiters(cluster, batch, "the creates")
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        refused = http(server.base, "GET", "/health")[0] == 0
        locker.release()
        server.proc.wait(20)
        for t in threads:
            t.join(30)
    finally:
        locker.kill()
        server.stop()
    acknowledged = {task_id for status, task_id in answers if status == 201}
    stored = set(filter(None, psql(cluster, f"SELECT id FROM tasks WHERE user_id = '{user}'").split()))
    print(f"\nSIGTERM with {batch} creates in flight: {len(acknowledged)} acknowledged, "
          f"{len(stored)} stored, new connections refused: {refused}")
    assert stored == acknowledged, f"stored {len(stored)}, acknowledged {len(acknowledged)}: {answers}"
    assert len(acknowledged) == batch, answers
    assert refused, "the server kept accepting after SIGTERM"
    assert server.proc.returncode == 0, server.log()[-3000:]


def test_a_client_that_hangs_up_leaves_its_request_to_finish_on_its_own_connection(cluster):
    """A client that closes its connection while its write waits in Postgres: the request
    still runs to its end on its own database connection (and logs its line), so the next
    request, another user's, gets another connection instead of queueing behind the
    abandoned call."""
    server = Server(cluster, DB_POOL_SIZE="2")
    owner, other = uuid.uuid4().hex, uuid.uuid4().hex
    task_id = new_task(server, owner)
    locker = Locker(cluster, f"SELECT 1 FROM tasks WHERE id = '{task_id}' FOR UPDATE")
    try:
        put_and_hang_up(server, cluster, owner, task_id, "after the hang-up", waiters=1)
        time.sleep(0.3)
        status, took = timed(server.base, "GET", f"/api/{other}/tasks", hs256_token(SERVER_SECRET, other))
        locker.release()
        deadline = time.monotonic() + 10
        while not logged_statuses(server, "PUT") and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        locker.kill()
        server.stop()
    print(f"\nanother user's list after a hang-up: {status} in {took * 1000:.0f} ms")
    assert status == 200 and took < 2, f"{status} after {took:.1f} s: it queued behind the abandoned call"
    assert logged_statuses(server, "PUT") == [200], server.log()[-3000:]
    assert psql(cluster, f"SELECT title FROM tasks WHERE id = '{task_id}'") == "after the hang-up"


def test_hung_up_requests_keep_their_connection_slot_and_finish_before_shutdown(cluster):
    """Requests whose clients hung up still count against MAX_CONNECTIONS until they end
    (a client cannot pile them up by reconnecting), and SIGTERM waits for them too."""
    server = Server(cluster, MAX_CONNECTIONS="2")
    owner = uuid.uuid4().hex
    task_id = new_task(server, owner)
    locker = Locker(cluster, f"SELECT 1 FROM tasks WHERE id = '{task_id}' FOR UPDATE")
    try:
        for i in range(2):
            put_and_hang_up(server, cluster, owner, task_id, f"hung up {i}", waiters=i + 1)
        time.sleep(0.3)
        # Both slots are held by the two unfinished requests: a third client waits.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(0.7)
            try:
                answered = s.recv(100)
            except socket.timeout:
                answered = b""
        assert answered == b"", f"answered while both slots were held: {answered!r}"
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        locker.release()
        server.proc.wait(20)
    finally:
        locker.kill()
        server.stop()
    assert logged_statuses(server, "PUT") == [200, 200], server.log()[-3000:]
    assert server.proc.returncode == 0, server.log()[-3000:]


def test_a_setting_that_stops_the_start_says_so_in_a_json_line(cluster):
    env = dict(os.environ, DATABASE_URL=cluster.url, BETTER_AUTH_SECRET=SERVER_SECRET,
               PORT=str(free_port()), HTTP_HEADER_TIMEOUT_MS="soon")
    result = subprocess.run([str(TARGET / "todo-server")], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert lines and all(line.startswith("{") for line in lines), lines
    assert "HTTP_HEADER_TIMEOUT_MS" in lines[-1], lines
