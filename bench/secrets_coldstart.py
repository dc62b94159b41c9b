"""Cold start with both secrets in Secrets Manager: how long a function binary takes from
exec to its first /next (its initialisation done) when every request to Secrets Manager
takes DELAY seconds. Secrets Manager is moto's server on 127.0.0.1 behind a proxy that
holds each request for DELAY, so the result reads directly: about 1 x DELAY when the two
secrets are read at once, 2 x DELAY when one after the other.

    .venv/bin/python bench/secrets_coldstart.py [binary=target/debug/list-tasks] [runs=5] [delay=0.3]

(`scripts/test` installs moto and boto3 into .venv; build the binary first.)"""

import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "system"))

import boto3  # noqa: E402

from conftest import Forwarder, RuntimeApi, free_port, lambda_env  # noqa: E402


def main():
    binary = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target" / "debug" / "list-tasks")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.3
    port = free_port()
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = boto3.client("secretsmanager", endpoint_url=f"http://127.0.0.1:{port}",
                              region_name="us-east-1", aws_access_key_id="test",
                              aws_secret_access_key="test")
        for _ in range(300):
            try:
                client.list_secrets()
                break
            except Exception:
                time.sleep(0.1)
        # The database is never reached: a start-up that cannot connect only logs it.
        db = client.create_secret(Name=f"bench/db-{uuid.uuid4().hex}",
                                  SecretString="postgres://bench@127.0.0.1:1/bench")["ARN"]
        auth = client.create_secret(Name=f"bench/auth-{uuid.uuid4().hex}",
                                    SecretString=uuid.uuid4().hex * 2)["ARN"]
        aws = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{Forwarder(port, hold=delay).port}",
               "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_EC2_METADATA_DISABLED": "true"}
        times = []
        for _ in range(runs):
            runtime = RuntimeApi()
            started = time.monotonic()
            proc = subprocess.Popen([str(binary)], env=lambda_env(
                runtime, binary.name, DATABASE_URL_SECRET_ARN=db, BETTER_AUTH_SECRET_ARN=auth, **aws),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while runtime.first_next_at is None and time.monotonic() - started < 60:
                if proc.poll() is not None:
                    sys.exit(f"{binary.name} exited with {proc.returncode} during its start-up")
                time.sleep(0.002)
            times.append(runtime.first_next_at - started)
            proc.kill()
            proc.wait()
            runtime.close()
        median = statistics.median(times)
        print(f"{binary.name}: exec -> first /next with both secrets, Secrets Manager delayed "
              f"{delay * 1000:.0f} ms per request: median {median * 1000:.0f} ms of {runs} "
              f"({median / delay:.2f} x the delay); runs "
              + ", ".join(f"{t * 1000:.0f}" for t in times))
    finally:
        moto.kill()
        moto.wait()


if __name__ == "__main__":
    main()
