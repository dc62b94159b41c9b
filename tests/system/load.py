"""A bounded load program with a consistency check.

Many concurrent users run mixed creates (some with an Idempotency-Key, some retried),
updates, toggles and deletes over HTTP against 127.0.0.1 only; each records what the server
acknowledged. Afterwards the database must equal exactly the acknowledged outcome: every
acknowledged task exists with its last acknowledged title and flag, every 204 is gone, no
task has the wrong owner, nothing is duplicated. Bounded in requests and in time.
"""

import json
import random
import subprocess
import threading
import time
import uuid

from conftest import as_postgres, hs256_token, http, pg_bin


def _call(base, method, path, token, body=None, headers=None):
    status, _, raw = http(base, method, path, token, body, headers)
    return status, json.loads(raw) if raw and status < 300 else None


class User(threading.Thread):
    def __init__(self, base, secret, ops, deadline, seed):
        super().__init__(daemon=True)
        self.base, self.ops, self.deadline = base, ops, deadline
        self.user = "load-" + uuid.uuid4().hex
        self.token = hs256_token(secret, self.user, lifetime=3600)
        self.rng = random.Random(seed)
        self.live = {}  # id -> (title, completed) as last acknowledged
        self.gone = set()
        self.requests = 0
        self.errors = []  # (method, status)

    def check(self, method, status, expected):
        self.requests += 1
        if status not in expected:
            self.errors.append((method, status))
            return False
        return True

    def run(self):
        tasks = f"/api/{self.user}/tasks"
        for n in range(self.ops):
            if time.monotonic() > self.deadline:
                break
            roll = self.rng.random()
            if not self.live or roll < 0.35:
                title = f"task {n}"
                key = str(uuid.uuid4()) if self.rng.random() < 0.5 else None
                headers = {"Idempotency-Key": key} if key else None
                status, task = _call(self.base, "POST", tasks, self.token, {"title": title}, headers)
                if self.check("POST", status, {201}):
                    self.live[task["id"]] = (task["title"], task["completed"])
                    if key:  # a client retry: must return the same task, create nothing
                        status, again = _call(self.base, "POST", tasks, self.token, {"title": title}, headers)
                        if self.check("POST retry", status, {201}) and again["id"] != task["id"]:
                            self.errors.append(("POST retry returned another task", again["id"]))
                continue
            task_id = self.rng.choice(list(self.live))
            path = f"{tasks}/{task_id}"
            if roll < 0.6:
                title = f"renamed {n}"
                status, task = _call(self.base, "PUT", path, self.token, {"title": title})
                if self.check("PUT", status, {200}):
                    self.live[task_id] = (task["title"], task["completed"])
            elif roll < 0.85:
                status, task = _call(self.base, "PATCH", path + "/complete", self.token)
                if self.check("PATCH", status, {200}):
                    self.live[task_id] = (task["title"], task["completed"])
            else:
                status, _ = _call(self.base, "DELETE", path, self.token)
                if self.check("DELETE", status, {204}):
                    del self.live[task_id]
                    self.gone.add(task_id)


def run(base, secret, users, ops_per_user, seconds):
    deadline = time.monotonic() + seconds
    workers = [User(base, secret, ops_per_user, deadline, seed) for seed in range(users)]
    started = time.monotonic()
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 60)
    return workers, time.monotonic() - started


def database_rows(cluster_port, users):
    names = ",".join("'" + w.user + "'" for w in users)
    sql = (f"SELECT coalesce(json_agg(json_build_array(id, user_id, title, completed)), '[]') "
           f"FROM tasks WHERE user_id IN ({names})")
    out = subprocess.run(as_postgres([pg_bin() / "psql", "-h", "127.0.0.1", "-p", str(cluster_port),
                                      "-U", "postgres", "-d", "postgres", "-At", "-c", sql]),
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def verify(workers, rows):
    """Returns a list of inconsistencies (empty when the database matches)."""
    problems = []
    by_id = {}
    for task_id, owner, title, completed in rows:
        if task_id in by_id:
            problems.append(f"duplicate id {task_id}")
        by_id[task_id] = (owner, title, completed)
    expected_total = 0
    for w in workers:
        expected_total += len(w.live)
        for task_id, (title, completed) in w.live.items():
            found = by_id.get(task_id)
            if found is None:
                problems.append(f"acknowledged task {task_id} is missing")
            elif found[0] != w.user:
                problems.append(f"task {task_id} has owner {found[0]}, expected {w.user}")
            elif (found[1], found[2]) != (title, completed):
                problems.append(f"task {task_id} is {found[1:]}, acknowledged {(title, completed)}")
        for task_id in w.gone:
            if task_id in by_id:
                problems.append(f"deleted task {task_id} still exists")
    if len(rows) != expected_total:
        problems.append(f"{len(rows)} rows for the load users, {expected_total} acknowledged")
    return problems
