"""The embedded local stack: every service answers with the credentials it publishes.

Most tests use the stack that `make test` started. The start/stop test runs a
second, private stack (own state folder and ports) so it can stop it freely.
"""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import boto3
import psycopg
import pytest
import requests
from botocore.config import Config
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.webhook import WebhookClient

REPO = Path(__file__).resolve().parents[2]

REQUIRED_VARIABLES = [
    "STAGING_DATABASE_URL", "PRODUCTION_DATABASE_URL", "S3_ENDPOINT_URL", "BACKUP_BUCKET",
    "SLACK_WEBHOOK_URL", "SLACK_API_URL", "SLACK_MESSAGES_FILE",
    "AIRFLOW_CONN_STAGING_DB", "AIRFLOW_CONN_PRODUCTION_DB", "AIRFLOW_CONN_BACKUP_S3", "AIRFLOW_CONN_SLACK_DEPLOYS",
    "AIRFLOW_METADATA_URL", "AIRFLOW_METADATA_ADMIN_URL", "REDIS_URL",
]


def s3_client(env: dict[str, str]):
    return boto3.client(
        "s3", endpoint_url=env["S3_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}),
    )


def recorded(env: dict[str, str]) -> list[dict]:
    path = Path(env["SLACK_MESSAGES_FILE"])
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_env_file_publishes_every_service_and_connection(stack_env: dict[str, str]) -> None:
    missing = [name for name in REQUIRED_VARIABLES if not stack_env.get(name)]
    assert not missing
    aws = json.loads(stack_env["AIRFLOW_CONN_BACKUP_S3"])
    assert aws["conn_type"] == "aws" and aws["extra"]["endpoint_url"] == stack_env["S3_ENDPOINT_URL"]
    slack = json.loads(stack_env["AIRFLOW_CONN_SLACK_DEPLOYS"])
    assert slack == {"conn_type": "slackwebhook", "password": stack_env["SLACK_WEBHOOK_URL"]}
    assert stack_env["AIRFLOW_CONN_STAGING_DB"] == stack_env["STAGING_DATABASE_URL"]


@pytest.mark.parametrize("env_name", ["STAGING", "PRODUCTION"])
def test_each_cluster_accepts_the_password_role_which_is_not_superuser(stack_env: dict[str, str], env_name: str) -> None:
    url = stack_env[f"{env_name}_DATABASE_URL"]
    with psycopg.connect(url, connect_timeout=5) as conn:
        user, db, superuser, version = conn.execute(
            "SELECT current_user, current_database(), rolsuper, current_setting('server_version_num')::int "
            "FROM pg_roles WHERE rolname = current_user").fetchone()
    assert (user, db, superuser) == ("migrator", f"americano_{env_name.lower()}", False)
    assert 150000 <= version < 160000


@pytest.mark.parametrize("env_name", ["STAGING", "PRODUCTION", "AIRFLOW_METADATA"])
def test_each_role_proves_its_password_with_scram_of_the_stacks_few_rounds(stack_env: dict[str, str],
                                                                          env_name: str) -> None:
    """SCRAM-SHA-256 against a verifier the stack made (devstack/stack.py SCRAM_ROUNDS), not md5 or trust."""
    sys.path.insert(0, str(REPO / "devstack"))
    from stack import SCRAM_ROUNDS

    url = stack_env[f"{env_name}_URL" if env_name == "AIRFLOW_METADATA" else f"{env_name}_DATABASE_URL"]
    with psycopg.connect(url, connect_timeout=5) as conn:
        user = conn.execute("SELECT current_user").fetchone()[0]
    with psycopg.connect(stack_env[f"{env_name}_ADMIN_URL"], connect_timeout=5) as admin:
        stored = admin.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (user,)).fetchone()[0]
        method = admin.execute("SELECT DISTINCT auth_method FROM pg_hba_file_rules WHERE type = 'host'").fetchall()
    assert stored.startswith(f"SCRAM-SHA-256${SCRAM_ROUNDS}:") and method == [("scram-sha-256",)], (stored[:20], method)


def test_a_wrong_password_is_refused(stack_env: dict[str, str]) -> None:
    url = stack_env["STAGING_DATABASE_URL"]
    password = url.split(":")[2].split("@")[0]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(url.replace(password, "not-the-password"), connect_timeout=5)


def test_s3_round_trip_in_the_backup_bucket(stack_env: dict[str, str]) -> None:
    s3 = s3_client(stack_env)
    key = f"tests/{uuid.uuid4().hex}.bin"
    body = os.urandom(4096)
    s3.put_object(Bucket=stack_env["BACKUP_BUCKET"], Key=key, Body=body, ServerSideEncryption="AES256")
    got = s3.get_object(Bucket=stack_env["BACKUP_BUCKET"], Key=key)
    assert got["Body"].read() == body
    assert got["ServerSideEncryption"] == "AES256"
    s3.delete_object(Bucket=stack_env["BACKUP_BUCKET"], Key=key)


def test_slack_webhook_and_api_messages_are_recorded(stack_env: dict[str, str]) -> None:
    marker = uuid.uuid4().hex
    hook = WebhookClient(stack_env["SLACK_WEBHOOK_URL"]).send(text=f"webhook {marker}")
    assert (hook.status_code, hook.body) == (200, "ok")
    api = WebClient(token=stack_env["SLACK_API_TOKEN"], base_url=stack_env["SLACK_API_URL"])
    posted = api.chat_postMessage(channel="#deploys", text=f"api {marker}")
    assert posted["ok"] and posted["ts"]
    texts = [m.get("text") for m in recorded(stack_env)]
    assert f"webhook {marker}" in texts and f"api {marker}" in texts


def test_slack_failure_mode_is_seen_by_slack_sdk(private_slack: dict[str, str]) -> None:
    # The stack's stand-in program, started for this test: its failures would hit other tests' posts.
    stack_env = private_slack
    control = stack_env["SLACK_CONTROL_URL"]
    requests.post(f"{control}/fail", json={"status": 500, "count": 2}, timeout=5).raise_for_status()
    try:
        hook = WebhookClient(stack_env["SLACK_WEBHOOK_URL"]).send(text="should fail")
        assert hook.status_code == 500
        api = WebClient(token=stack_env["SLACK_API_TOKEN"], base_url=stack_env["SLACK_API_URL"])
        with pytest.raises(SlackApiError):
            api.chat_postMessage(channel="#deploys", text="should fail too")
    finally:
        requests.delete(f"{control}/fail", timeout=5)
    assert "should fail" not in [m.get("text") for m in recorded(stack_env)]


def test_status_masks_every_password(stack_env: dict[str, str]) -> None:
    out = subprocess.run([sys.executable, "devstack/stack.py", "status"], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "DEVSTACK_DIR": stack_env["DEVSTACK_DIR"]})
    assert out.returncode == 0, out.stderr
    for secret_var in ("AWS_SECRET_ACCESS_KEY", "SLACK_API_TOKEN"):
        assert stack_env[secret_var] not in out.stdout
    for name in ("STAGING_DATABASE_URL", "PRODUCTION_DATABASE_URL", "AIRFLOW_METADATA_URL", "REDIS_URL"):
        password = unquote(urlsplit(stack_env[name]).password or "")
        assert len(password) >= 8 and password not in out.stdout, name
    assert "running" in out.stdout and "****" in out.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


@pytest.mark.slow
def test_private_stack_starts_idempotently_and_stops_leaving_nothing_running(tmp_path: Path) -> None:
    state = tmp_path / "stack"
    ports = {name: free_port() for name in ("STAGING", "PRODUCTION", "AIRFLOW_DB", "S3", "SLACK", "REDIS")}
    replica_port = free_port()
    env = {**os.environ, "DEVSTACK_DIR": str(state), **{f"DEVSTACK_{k}_PORT": str(v) for k, v in ports.items()},
           "DEVSTACK_REPLICA_PORT": str(replica_port)}
    if os.geteuid() == 0:
        os.chmod(tmp_path, 0o755)  # the postgres user must reach the cluster directories

    def stack(command: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "devstack/stack.py", command], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=180)

    try:
        early = stack("replica-up")  # nothing to replicate yet
        assert (early.returncode, early.stderr) == (
            2, "devstack: production is not running: start the stack first (make stack-up)\n")
        first = stack("up")
        assert first.returncode == 0, first.stderr
        pids = json.loads(stack("pids").stdout)
        assert set(pids) == {"s3", "slack", "postgres-staging", "postgres-production", "postgres-airflow", "redis"}
        assert all(pid_alive(pid) for pid in pids.values())
        assert all(port_open(p) for p in ports.values())

        again = stack("up")
        assert again.returncode == 0, again.stderr
        assert json.loads(stack("pids").stdout) == pids
        assert re.search(r"^postgres replica +stopped .*make replica-up", stack("status").stdout, re.M)

        # Production's replica, on demand: listed by status and pids, streaming, read-only.
        replica = stack("replica-up")
        assert replica.returncode == 0, replica.stderr
        assert f"production's replica streams on port {replica_port}" in replica.stderr
        status = stack("status")
        assert status.returncode == 0 and re.search(r"^postgres replica +running ", status.stdout, re.M), status.stdout
        pids = json.loads(stack("pids").stdout)
        assert set(pids) == {"s3", "slack", "postgres-staging", "postgres-production", "postgres-airflow", "redis",
                             "postgres-replica"}
        envfile = dict(line[len("export "):].split("=", 1) for line in (state / "env").read_text().splitlines()
                       if line.startswith("export "))
        with psycopg.connect(envfile["PRODUCTION_ADMIN_URL"].strip("'")) as conn:
            assert conn.execute("SELECT application_name, state FROM pg_stat_replication").fetchall() == [
                ("production_replica", "streaming")]
        with psycopg.connect(envfile["PRODUCTION_REPLICA_ADMIN_URL"].strip("'")) as conn:
            assert conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,)
    finally:
        down = stack("down")
    assert down.returncode == 0, down.stderr
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert not [name for name, port in {**ports, "REPLICA": replica_port}.items() if port_open(port)]
    assert not list(state.glob("*.pid")) and not list(state.glob("redis/*.pid"))
    assert stack("destroy").returncode == 0 and not state.exists()


@pytest.mark.slow
def test_a_busy_port_is_reported_with_the_variable_to_change(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        env = {**os.environ, "DEVSTACK_DIR": str(tmp_path / "stack"), "DEVSTACK_STAGING_PORT": str(port),
               "DEVSTACK_PRODUCTION_PORT": str(free_port())}
        if os.geteuid() == 0:
            os.chmod(tmp_path, 0o755)
        try:
            out = subprocess.run([sys.executable, "devstack/stack.py", "up"], cwd=REPO, env=env,
                                 capture_output=True, text=True, timeout=120)
        finally:
            subprocess.run([sys.executable, "devstack/stack.py", "destroy"], cwd=REPO, env=env, capture_output=True)
    assert out.returncode == 2
    assert f"port {port} (staging PostgreSQL) is already in use" in out.stderr
    assert "DEVSTACK_STAGING_PORT" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_services_start_when_a_generated_secret_begins_with_a_dash(tmp_path: Path) -> None:
    """token_urlsafe() can start with '-'; the stack must pass it so argparse does not take it for an option."""
    state = tmp_path / "stack"
    state.mkdir()
    (state / "secrets.json").write_text(json.dumps({
        "staging_password": "stg-x", "production_password": "prd-x", "s3_secret_key": "-starts-with-a-dash",
        "slack_token": "xoxb-test", "slack_webhook_path": "/services/T0/B0/abc"}))
    env = {**os.environ, "DEVSTACK_DIR": str(state), "DEVSTACK_S3_PORT": str(free_port()),
           "DEVSTACK_SLACK_PORT": str(free_port())}
    code = (
        "import sys; sys.path.insert(0, 'devstack'); import stack\n"
        "values = stack.load_secrets()\n"
        "for s in stack.services():\n"
        "    stack.start_service(s, values)\n"
        "print('up')\n"
        "for s in stack.services():\n"
        "    stack.stop_service(s)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "up" in out.stdout, out.stderr


def redis_command(url: str, *command: str, password: bool = True) -> str:
    """One command through redis-cli (the password via REDISCLI_AUTH, not argv); its output."""
    parts = urlsplit(url)
    env = {k: v for k, v in os.environ.items() if k != "REDISCLI_AUTH"}
    if password:
        env["REDISCLI_AUTH"] = unquote(parts.password or "")
    out = subprocess.run(["redis-cli", "-h", parts.hostname, "-p", str(parts.port), *command], env=env,
                         capture_output=True, text=True, timeout=10)
    return (out.stdout + out.stderr).strip()


def test_redis_answers_only_with_its_password_on_loopback(stack_env: dict[str, str]) -> None:
    url = stack_env["REDIS_URL"]
    assert urlsplit(url).hostname == "127.0.0.1"
    assert redis_command(url, "PING") == "PONG"
    assert "NOAUTH" in redis_command(url, "PING", password=False)
    assert redis_command(url, "CONFIG", "GET", "appendonly").splitlines() == ["appendonly", "yes"]


def test_the_airflow_metadata_cluster_takes_its_own_role(stack_env: dict[str, str]) -> None:
    with psycopg.connect(stack_env["AIRFLOW_METADATA_URL"], connect_timeout=5) as conn:
        user, superuser = conn.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
    assert (user, superuser) == ("airflow", False)
    other = urlsplit(stack_env["STAGING_DATABASE_URL"])
    with pytest.raises(psycopg.OperationalError):  # the staging role does not exist there
        psycopg.connect(urlunsplit(urlsplit(stack_env["AIRFLOW_METADATA_URL"])._replace(
            netloc=f"{other.username}:{other.password}@{urlsplit(stack_env['AIRFLOW_METADATA_URL']).netloc.split('@')[1]}")),
            connect_timeout=5)
