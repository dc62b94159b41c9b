"""The TypeScript client (clients/typescript) against the API that scripts/dev serves:
its Node tests (node:test) run against a real stack on free ports with a throwaway
cluster. scripts/test has installed the client's dependencies (npm ci) and built it."""

import os
import re
import subprocess
from pathlib import Path

from test_stack import stack  # noqa: F401 (the fixture: the stack scripts/dev serves)

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "typescript"


def test_the_typescript_client_passes_its_tests_against_the_api(stack):
    assert (CLIENT / "dist" / "index.js").exists(), "build the client first (scripts/test does)"
    secret = re.search(r"^BETTER_AUTH_SECRET=(.+)$", (stack.tmp / ".env").read_text(), re.M).group(1)
    env = dict(os.environ, TODO_API_URL=f"http://127.0.0.1:{stack.port}",
               BETTER_AUTH_SECRET=secret, DEV_TOKEN=str(ROOT / "target" / "debug" / "dev-token"))
    result = subprocess.run(["npm", "test", "--silent"], cwd=CLIENT, env=env, capture_output=True,
                            text=True, timeout=300)
    output = result.stdout + result.stderr
    assert secret not in output
    if result.returncode != 0:
        stack.fail(f"npm test failed:\n{output[-20000:]}")
    assert re.search(r"^ℹ fail 0$", output, re.M) and not re.search(r"^ℹ skipped [1-9]", output, re.M), output
    print(output)
