"""Secrets at cold start: a real function binary reads DATABASE_URL and BETTER_AUTH_SECRET
from AWS Secrets Manager (moto's server on 127.0.0.1 stands in for AWS), and a missing or
unreadable secret stops the start-up with a message that names it and never its value."""

import json
import subprocess
import tempfile
import time
import uuid

import boto3
import pytest

from conftest import (DB_PASSWORD, TARGET, RuntimeApi, api_event, assert_no_secrets,
                      free_port, hs256_token, lambda_env)

AUTH_SECRET = "secrets-manager-hs256-" + uuid.uuid4().hex + uuid.uuid4().hex


@pytest.fixture(scope="module")
def moto():
    port = free_port()
    proc = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("secretsmanager", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
    deadline = time.monotonic() + 60
    while True:
        try:
            client.list_secrets()
            break
        except Exception:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise
            time.sleep(0.2)
    yield endpoint, client
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def secrets(moto, cluster):
    endpoint, client = moto
    db = client.create_secret(Name=f"todo/db-{uuid.uuid4().hex}", SecretString=cluster.url)["ARN"]
    auth = client.create_secret(Name=f"todo/auth-{uuid.uuid4().hex}", SecretString=AUTH_SECRET)["ARN"]
    return endpoint, db, auth, cluster.url


def aws(endpoint):
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}


def start(function, env):
    return subprocess.Popen([str(TARGET / function)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def list_with_secrets(endpoint, db_arn, auth_arn):
    """A new user's list from list-tasks started with both secrets' ARNs: the answer, and the
    function's output."""
    runtime = RuntimeApi()
    proc = start("list-tasks", lambda_env(runtime, "list-tasks", DATABASE_URL_SECRET_ARN=db_arn,
                                          BETTER_AUTH_SECRET_ARN=auth_arn, **aws(endpoint)))
    try:
        user = uuid.uuid4().hex
        response = runtime.invoke(api_event("GET", f"/api/{user}/tasks",
                                            token=hs256_token(AUTH_SECRET, user),
                                            path_parameters={"user_id": user}))
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        runtime.close()
    return response, out


def test_a_function_reads_both_secrets_at_cold_start(secrets):
    endpoint, db_arn, auth_arn, _ = secrets
    response, out = list_with_secrets(endpoint, db_arn, auth_arn)
    assert response["statusCode"] == 200, response
    assert response["body"] == "[]"
    assert AUTH_SECRET not in out


def test_at_log_level_trace_no_token_secret_or_password_is_logged(secrets, moto):
    # RUST_LOG=trace is what one sets to debug a function. Below info, the Lambda runtime
    # logs every raw event (its Authorization header), tokio-postgres every statement's
    # parameters and the AWS SDK its requests; none of that may reach the log.
    endpoint, client = moto
    _, _, auth_arn, db_url = secrets
    with_password = db_url.replace("postgres@", f"postgres:{DB_PASSWORD}@")
    assert with_password != db_url
    db_arn = client.create_secret(Name=f"todo/db-{uuid.uuid4().hex}", SecretString=with_password)["ARN"]
    runtime = RuntimeApi()
    env = lambda_env(runtime, "create-task", DATABASE_URL_SECRET_ARN=db_arn,
                     BETTER_AUTH_SECRET_ARN=auth_arn, **aws(endpoint))
    env["RUST_LOG"] = "trace"
    # A file, not a pipe: a pipe nobody reads until the end would fill up at this level.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([str(TARGET / "create-task")], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    try:
        user = uuid.uuid4().hex
        token = hs256_token(AUTH_SECRET, user)
        event = api_event("POST", f"/api/{user}/tasks", token=token, body={"title": "traced"},
                          path_parameters={"user_id": user})
        response = runtime.invoke(event)
        assert response["statusCode"] == 201, response
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        runtime.close()
        log.seek(0)
        out = log.read()
        log.close()
    assert '"message":"request"' in out and '"status":201' in out, out[-3000:]
    assert_no_secrets(out, AUTH_SECRET, DB_PASSWORD, with_password)


def test_key_value_secrets_give_their_entry(secrets, moto):
    """The console's default "key/value" secrets hold a JSON object: its entry named after
    the setting is used (taken whole, the object would have been a plausible but wrong
    HS256 secret: every token a 401)."""
    endpoint, client = moto
    _, _, _, db_url = secrets
    db_arn = client.create_secret(Name=f"todo/db-kv-{uuid.uuid4().hex}",
                                  SecretString=json.dumps({"DATABASE_URL": db_url}))["ARN"]
    auth_arn = client.create_secret(Name=f"todo/auth-kv-{uuid.uuid4().hex}",
                                    SecretString=json.dumps({"BETTER_AUTH_SECRET": AUTH_SECRET}))["ARN"]
    response, out = list_with_secrets(endpoint, db_arn, auth_arn)
    assert response["statusCode"] == 200, response
    assert AUTH_SECRET not in out


@pytest.mark.parametrize("which", ["DATABASE_URL_SECRET_ARN", "BETTER_AUTH_SECRET_ARN"])
def test_a_missing_secret_stops_the_cold_start_naming_it(secrets, which):
    endpoint, db_arn, auth_arn, db_url = secrets
    arns = {"DATABASE_URL_SECRET_ARN": db_arn, "BETTER_AUTH_SECRET_ARN": auth_arn}
    missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:todo/nope-AbCdEf"
    arns[which] = missing
    runtime = RuntimeApi()
    proc = start("list-tasks", lambda_env(runtime, "list-tasks", **arns, **aws(endpoint)))
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        runtime.close()
    assert proc.returncode != 0
    assert which in out and missing in out, out
    assert AUTH_SECRET not in out and db_url not in out


def test_the_health_function_never_reads_the_better_auth_secret(secrets):
    """The health function verifies no token, and its role may not read the Better Auth
    secret: given an ARN that Secrets Manager does not have, it starts all the same (it
    never asks for it) and answers /health from the database secret."""
    endpoint, db_arn, _, _ = secrets
    missing = "arn:aws:secretsmanager:us-east-1:123456789012:secret:todo/nope-AbCdEf"
    runtime = RuntimeApi()
    proc = start("health", lambda_env(runtime, "health", DATABASE_URL_SECRET_ARN=db_arn,
                                      BETTER_AUTH_SECRET_ARN=missing, **aws(endpoint)))
    try:
        response = runtime.invoke(api_event("GET", "/health"))
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        runtime.close()
    assert response["statusCode"] == 200, (response, out[-3000:])
    assert missing not in out


def test_an_unreachable_secrets_manager_stops_the_cold_start(secrets):
    _, db_arn, _, db_url = secrets
    runtime = RuntimeApi()
    dead = f"http://127.0.0.1:{free_port()}"
    proc = start("health", lambda_env(runtime, "health", DATABASE_URL_SECRET_ARN=db_arn,
                                      BETTER_AUTH_SECRET=AUTH_SECRET, **aws(dead)))
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        runtime.close()
    assert proc.returncode != 0
    assert "DATABASE_URL_SECRET_ARN" in out, out
    assert AUTH_SECRET not in out


def test_without_arns_the_sdk_is_never_called(cluster):
    # The endpoint is dead: if the SDK were touched, start-up would fail.
    runtime = RuntimeApi()
    proc = start("health", lambda_env(runtime, "health", DATABASE_URL=cluster.url,
                                      BETTER_AUTH_SECRET=AUTH_SECRET,
                                      **aws(f"http://127.0.0.1:{free_port()}")))
    try:
        response = runtime.invoke(api_event("GET", "/health"))
        assert response["statusCode"] == 200, response
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
        runtime.close()
