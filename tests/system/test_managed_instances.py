"""Lambda Managed Instances: one function process, handed N invocations at once by a Lambda
Runtime API (AWS_LAMBDA_MAX_CONCURRENCY=N), serves them at once, each on a pooled
connection of its own in a transaction of its own, for users interleaved: every answer is
right, no user sees another's task, and the database ends equal to what was acknowledged.
Without the variable (or with 1) a process serves one invocation at a time, as before."""

import json
import subprocess
import threading
import time
import uuid

import pytest

from conftest import TARGET, RuntimeApi, api_event, as_postgres, hs256_token, lambda_env, pg_bin

SECRET = "managed-instances-secret-" + uuid.uuid4().hex
N = 8
USERS = 5
ROUNDS = 6


def psql(cluster, sql):
    return subprocess.run(as_postgres([pg_bin() / "psql", "-X", "-h", "127.0.0.1", "-p", str(cluster.port),
                                       "-U", "postgres", "-d", "postgres", "-At", "-c", sql]),
                          check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def connections(cluster, app):
    return int(psql(cluster, f"SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'"))


class Function:
    """A function binary under a Runtime API of its own; `app` names its connections."""

    def __init__(self, cluster, name, concurrency):
        self.runtime = RuntimeApi()
        self.app = f"mi-{name}-{uuid.uuid4().hex[:8]}"
        extra = {"AWS_LAMBDA_MAX_CONCURRENCY": concurrency}
        self.proc = subprocess.Popen(
            [str(TARGET / name)],
            env=lambda_env(self.runtime, name, DATABASE_URL=f"{cluster.url}&application_name={self.app}",
                           BETTER_AUTH_SECRET=SECRET, DB_STATEMENT_TIMEOUT_MS="20000",
                           DB_POOL_TIMEOUT_MS="20000", **{k: v for k, v in extra.items() if v}),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def answer(self, request_id):
        response = self.runtime.result(request_id, timeout=40)
        return response["statusCode"], json.loads(response.get("body") or "null")

    def stop(self):
        self.proc.kill()
        output = self.proc.communicate(timeout=10)[0]
        self.runtime.close()
        return output


def create_event(user, token, title):
    return api_event("POST", f"/api/{user}/tasks", token=token, body={"title": title},
                     path_parameters={"user_id": user})


def list_event(user, token):
    event = api_event("GET", f"/api/{user}/tasks", token=token, path_parameters={"user_id": user})
    event["rawQueryString"] = "limit=500"
    return event


def assert_one_log_line_per_request(output, request_ids):
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    logged = [line.get("fields", line).get("request_id") for line in lines
              if line.get("fields", line).get("message") == "request"]
    for request_id in request_ids:
        assert logged.count(request_id) == 1, (request_id, output[-2000:])


def test_one_process_serves_n_users_at_once_each_in_a_transaction_of_its_own(cluster):
    users = [uuid.uuid4().hex for _ in range(USERS)]
    tokens = {user: hs256_token(SECRET, user) for user in users}
    create = Function(cluster, "create-task", str(N))
    listing = Function(cluster, "list-tasks", str(N))
    acknowledged = {user: set() for user in users}
    ack_lock = threading.Lock()
    request_ids = {create: [], listing: []}

    def check_list(user, status, body, must_contain=()):
        assert status == 200, body
        assert all(task["user_id"] == user for task in body), f"{user} saw another user's task: {body}"
        assert all(task["title"].startswith(user) for task in body), body
        assert set(must_contain) <= {task["id"] for task in body}, (must_contain, body)

    locker = None
    try:
        # 1. Held in the database: N creates and N lists for users interleaved, queued at
        # once while the tasks table is locked. Only a process that runs N invocations at
        # once, each on a connection of its own, gets N of each waiting inside Postgres.
        locker = subprocess.Popen(as_postgres([pg_bin() / "psql", "-X", "-At", "-h", "127.0.0.1", "-p",
                                               str(cluster.port), "-U", "postgres", "-d", "postgres"]),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        # Both have served a request: warm, their first connection open.
        status, warm = create.answer(create.runtime.submit(create_event(users[0], tokens[users[0]],
                                                                        f"{users[0]} warm")))
        assert status == 201, warm
        acknowledged[users[0]].add(warm["id"])
        check_list(users[0], *listing.answer(listing.runtime.submit(list_event(users[0], tokens[users[0]]))))
        locker.stdin.write("BEGIN; LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE; SELECT 'locked';\n")
        locker.stdin.flush()
        for _ in range(5):
            if locker.stdout.readline().strip() == "locked":
                break
        else:
            pytest.fail("could not lock the tasks table")
        held = []
        for i in range(N):
            user = users[i % USERS]
            held.append((create, user, create.runtime.submit(create_event(user, tokens[user], f"{user} held {i}"))))
            user = users[(i + 1) % USERS]
            held.append((listing, user, listing.runtime.submit(list_event(user, tokens[user]))))
        waiting = ("SELECT application_name, count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                   f"AND application_name IN ('{create.app}', '{listing.app}') GROUP BY 1")
        deadline = time.monotonic() + 15
        while True:
            counts = dict(line.split("|") for line in psql(cluster, waiting).splitlines())
            at_once = (create.runtime.in_flight, listing.runtime.in_flight,
                       int(counts.get(create.app, 0)), int(counts.get(listing.app, 0)))
            if at_once == (N, N, N, N):
                break
            assert time.monotonic() < deadline, (
                f"expected {N} invocations of each function in flight and {N} of each waiting in "
                f"Postgres on connections of their own; got (create, list, create waiting, list "
                f"waiting) = {at_once}")
            time.sleep(0.05)
        assert connections(cluster, create.app) == N and connections(cluster, listing.app) == N
        locker.stdin.write("COMMIT;\n")
        locker.stdin.close()
        for fn, user, request_id in held:
            request_ids[fn].append(request_id)
            status, body = fn.answer(request_id)
            if fn is create:
                assert status == 201 and body["user_id"] == user, (status, body)
                acknowledged[user].add(body["id"])
            else:
                check_list(user, status, body)

        # 2. Free-running: 2N clients, each for one of the users, creating and listing in
        # turn, so both processes stay N invocations deep with users interleaved.
        failures = []

        def client(t):
            user = users[t % USERS]
            mine = set()
            try:
                for r in range(ROUNDS):
                    request_id = create.runtime.submit(create_event(user, tokens[user], f"{user} {t}.{r}"))
                    status, body = create.answer(request_id)
                    assert status == 201 and body["user_id"] == user, (status, body)
                    mine.add(body["id"])
                    with ack_lock:
                        acknowledged[user].add(body["id"])
                        request_ids[create].append(request_id)
                    request_id = listing.runtime.submit(list_event(user, tokens[user]))
                    check_list(user, *listing.answer(request_id), must_contain=mine)
                    with ack_lock:
                        request_ids[listing].append(request_id)
            except BaseException as err:  # noqa: BLE001 - reported below
                failures.append(err)

        threads = [threading.Thread(target=client, args=(t,)) for t in range(2 * N)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not failures, failures[:3]
        assert create.runtime.max_in_flight == N and listing.runtime.max_in_flight == N
        assert connections(cluster, create.app) <= N and connections(cluster, listing.app) <= N
    finally:
        if locker:  # psql runs under runuser: end it through its input, not a signal
            if not locker.stdin.closed:
                locker.stdin.write("ROLLBACK;\n")
                locker.stdin.close()
            locker.wait(10)
        outputs = {fn: fn.stop() for fn in (create, listing)}

    for user in users:
        stored = set(psql(cluster, f"SELECT id FROM tasks WHERE user_id = '{user}'").split())
        assert stored == acknowledged[user], f"{user}: stored {len(stored)}, acknowledged {len(acknowledged[user])}"
    assert sum(map(len, acknowledged.values())) == 1 + N + 2 * N * ROUNDS
    for fn, output in outputs.items():
        assert "concurrency-tokio" not in output, output[:2000]
        assert "panicked" not in output, output[-2000:]
        assert_one_log_line_per_request(output, request_ids[fn])


@pytest.mark.parametrize("concurrency", [None, "1"])
def test_without_managed_concurrency_a_process_serves_one_invocation_at_a_time(cluster, concurrency):
    user = uuid.uuid4().hex
    token = hs256_token(SECRET, user)
    listing = Function(cluster, "list-tasks", concurrency)
    try:
        request_ids = [listing.runtime.submit(list_event(user, token)) for _ in range(6)]
        for request_id in request_ids:
            assert listing.answer(request_id) == (200, [])
        assert listing.runtime.max_in_flight == 1
        assert connections(cluster, listing.app) == 1
    finally:
        output = listing.stop()
    assert "concurrency-tokio" not in output and "running sequentially" not in output, output[:2000]
    assert_one_log_line_per_request(output, request_ids)
