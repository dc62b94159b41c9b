"""dev-token mints what the API accepts: with JWT_ISSUER and JWT_AUDIENCE set (the README's
local set-up next to Better Auth sets both, and the API then requires iss and aud of every
token with a sub), its token carries them, so the curl that scripts/dev prints works there
too."""

import subprocess
import uuid

from conftest import MINTED_TOKENS, TARGET, RuntimeApi, api_event, lambda_env

SECRET = "dev-token-secret-" + uuid.uuid4().hex
CLAIMS = {"JWT_ISSUER": "http://localhost:3000", "JWT_AUDIENCE": "http://localhost:3000"}


def test_a_dev_token_passes_the_issuer_and_audience_checks(cluster):
    user = "dev-" + uuid.uuid4().hex[:12]
    token = subprocess.run([str(TARGET / "dev-token"), user, "600"], check=True, text=True,
                           capture_output=True,
                           env={"BETTER_AUTH_SECRET": SECRET, **CLAIMS}).stdout.strip()
    MINTED_TOKENS.append(token)
    runtime = RuntimeApi()
    proc = subprocess.Popen([str(TARGET / "list-tasks")],
                            env=lambda_env(runtime, "list-tasks", DATABASE_URL=cluster.url,
                                           BETTER_AUTH_SECRET=SECRET, **CLAIMS),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        response = runtime.invoke(api_event("GET", f"/api/{user}/tasks", token=token,
                                            path_parameters={"user_id": user}))
        assert response["statusCode"] == 200, response
    finally:
        proc.kill()
        proc.wait(timeout=10)
        runtime.close()


def test_a_refused_token_says_why_in_the_log_and_not_to_the_client(cluster, tmp_path):
    """A token from another issuer is a 401 "Invalid token" for the client; the request's one
    log line says which check refused it, so a misconfigured JWT_ISSUER can be found."""
    user = "dev-" + uuid.uuid4().hex[:12]
    token = subprocess.run([str(TARGET / "dev-token"), user, "600"], check=True, text=True,
                           capture_output=True,
                           env={"BETTER_AUTH_SECRET": SECRET, **CLAIMS,
                                "JWT_ISSUER": "https://elsewhere.example"}).stdout.strip()
    MINTED_TOKENS.append(token)
    runtime = RuntimeApi()
    log_path = tmp_path / "list-tasks.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(TARGET / "list-tasks")],
                                env=lambda_env(runtime, "list-tasks", DATABASE_URL=cluster.url,
                                               BETTER_AUTH_SECRET=SECRET, **CLAIMS),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            response = runtime.invoke(api_event("GET", f"/api/{user}/tasks", token=token,
                                                path_parameters={"user_id": user}))
        finally:
            proc.kill()
            proc.wait(timeout=10)
            runtime.close()
    assert response["statusCode"] == 401, response
    assert "issuer" not in response["body"], response["body"]
    lines = [line for line in log_path.read_text().splitlines() if "status" in line and "401" in line]
    assert len(lines) == 1 and "another issuer (iss)" in lines[0], log_path.read_text()
    assert token not in log_path.read_text()
