"""The load program, small enough for CI: concurrent users over HTTP against todo-server,
zero 5xx, and the database equal to what the server acknowledged. The longer run is
`scripts/load`."""

import os

import load


def test_concurrent_mixed_load_leaves_exactly_the_acknowledged_state(server, cluster):
    base, secret = server
    users = int(os.environ.get("LOAD_USERS", "16"))
    ops = int(os.environ.get("LOAD_OPS_PER_USER", "40"))
    seconds = int(os.environ.get("LOAD_SECONDS", "60"))
    workers, elapsed = load.run(base, secret, users, ops, seconds)
    requests = sum(w.requests for w in workers)
    errors = [e for w in workers for e in w.errors]
    print(f"load: {requests} requests, concurrency {users}, {len(errors)} errors, {elapsed:.1f} s")
    assert not errors, errors[:10]
    assert requests >= users * ops * 0.9
    problems = load.verify(workers, load.database_rows(cluster.port, workers))
    assert not problems, problems[:20]
