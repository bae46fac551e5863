"""Shared fixtures: the embedded local stack started by `make stack-up`.

Tests talk to real services. The stack's addresses and credentials come from
the shell-sourceable file written by `devstack/stack.py up` (`.devstack/env`,
or the file named by `DEVSTACK_ENV_FILE`).

`make test` runs the files side by side (pytest-xdist, `--dist loadfile`, the
scheduling below): each pytest process posts to Slack through a webhook path of its own (the stand-in
records the path), so a test reads its own messages only; see `stack_env`.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

REPO = Path(__file__).resolve().parent.parent
# How `make test` runs the files side by side (pytest-xdist, `-n N --dist loadfile`): each file runs
# whole on one pytest process (its module fixtures, e.g. one set of Airflow services, are made once),
# except the files in SPREAD, whose tests are independent (fixtures per test) and slow: each of those
# tests is a unit of its own. The slowest files are handed out first (FIRST, then the rest of
# tests/e2e, then the other tiers), so the quick tiers fill the gaps at the end. The files that run
# Airflow's services wait on them much of the time: the DAG tests' units between them keep both
# cores busy (with the four side by side at the start, a fifth of the CPU idled for a minute).
SPREAD = {"tests/e2e/test_deploy_dag.py", "tests/e2e/test_fleet_dag.py", "tests/e2e/test_rollback_dag.py",
          "tests/e2e/test_failure_messages.py"}
# Files that must not run at the same time: one unit, run one after the other on one process.
# test_prisma_schema checks that no `schema_deploy_shadow_*` database is left on staging, which
# test_pipeline_deploy's Prisma preflight creates (and drops) while it runs.
TOGETHER = {"tests/integration/test_prisma_schema.py": "prisma shadow databases",
            "tests/integration/test_pipeline_deploy.py": "prisma shadow databases"}
FIRST = ["tests/e2e/test_celery.py", "tests/e2e/test_fleet_dag.py", "tests/e2e/test_ui_page.py",
         "tests/e2e/test_deploy_dag.py", "tests/e2e/test_trigger_forms.py", "tests/e2e/test_rollback_dag.py",
         "tests/e2e/test_airflow_services.py"]
TIERS = ["tests/e2e/", "tests/integration/", "tests/devstack/", "tests/dags/", "tests/unit/"]


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def rank(nodeid: str) -> tuple[int, int]:
    """Where a test's file goes in the queue: FIRST in its order, then by tier."""
    path = file_of(nodeid)
    if path in FIRST:
        return 0, FIRST.index(path)
    return 1, next((i for i, tier in enumerate(TIERS) if path.startswith(tier)), len(TIERS))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The slowest files first (a stable sort: each file's own order is kept)."""
    if config.getoption("dist", "no") != "no" or os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: rank(item.nodeid))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """`--dist loadfile`, but the tests of SPREAD's files each a unit of their own and TOGETHER's files
    one unit, queued in collection order (rank above), not by the number of tests in a unit."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SpreadScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = file_of(nodeid)
            return nodeid if path in SPREAD else TOGETHER.get(path, path)

    config.option.loadscopereorder = False
    return SpreadScheduling(config, log)


def worker_id() -> str:
    """This pytest process under xdist (`gw0`, `gw1`, …), or `main`."""
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def worker_webhook(url: str) -> str:
    """The stack's Slack webhook URL with a path of this process's own (same secret): the stand-in
    accepts any `/services/T…/B…/<secret>` and records the path with each message."""
    tag = re.sub(r"[^A-Z0-9]", "", worker_id().upper())
    return re.sub(r"/services/(T[A-Z0-9]+)/(B[A-Z0-9]+)/", rf"/services/\1/\2{tag}/", url)


def read_env_file(path: Path) -> dict[str, str]:
    """Parse the `export KEY=value` lines that `devstack/stack.py` writes."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line.startswith("export "):
            continue
        key, _, value = line[len("export "):].partition("=")
        parts = shlex.split(value)
        env[key] = parts[0] if parts else ""
    return env


@pytest.fixture(scope="session")
def stack_env() -> dict[str, str]:
    """The local stack's environment (URLs, credentials, connection ids)."""
    path = Path(os.environ.get("DEVSTACK_ENV_FILE", REPO / ".devstack" / "env"))
    if not path.exists():
        pytest.fail(
            f"{path} not found: the local stack is not running. "
            "Start it with `make stack-up` (or run the suite with `make test`)."
        )
    env = read_env_file(path)
    # This process's webhook, in the dict and for every Airflow a test starts (run_deploy and
    # airflow_local take the caller's AIRFLOW_CONN_SLACK_DEPLOYS over the stack's).
    env["SLACK_WEBHOOK_URL"] = worker_webhook(env["SLACK_WEBHOOK_URL"])
    env["AIRFLOW_CONN_SLACK_DEPLOYS"] = json.dumps({"conn_type": "slackwebhook", "password": env["SLACK_WEBHOOK_URL"]},
                                                   separators=(",", ":"))
    os.environ["AIRFLOW_CONN_SLACK_DEPLOYS"] = env["AIRFLOW_CONN_SLACK_DEPLOYS"]
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def private_slack(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`stack_env` with a Slack stand-in of the test's own (devstack/slack_standin.py on a free port):
    for tests that switch Slack's failures on, which would fail every other test's posts meanwhile."""
    tmp = tmp_path_factory.mktemp("slack")
    port, token = free_port(), stack_env["SLACK_API_TOKEN"]
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, str(REPO / "devstack/slack_standin.py"), "--host", "127.0.0.1",
                             "--port", str(port), "--messages-file", str(tmp / "messages.jsonl"), "--token", token,
                             "--log-file", str(tmp / "standin.log")], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "the private Slack stand-in did not start"
                time.sleep(0.1)
        webhook = base + "/services/T0PRIVATE/B0PRIVATE/" + stack_env["SLACK_WEBHOOK_URL"].rsplit("/", 1)[-1]
        yield {**stack_env, "SLACK_WEBHOOK_URL": webhook, "SLACK_API_URL": base + "/api/",
               "SLACK_CONTROL_URL": base + "/_standin", "SLACK_MESSAGES_FILE": str(tmp / "messages.jsonl"),
               "AIRFLOW_CONN_SLACK_DEPLOYS": json.dumps({"conn_type": "slackwebhook", "password": webhook},
                                                        separators=(",", ":"))}
    finally:
        stop_process(proc)


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL if it is still there 10 s later; reaped either way."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def with_database(url: str, dbname: str) -> str:
    """Return `url` pointing at database `dbname` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def drop_database(base_url: str, name: str) -> None:
    """Drop a test database with the product's own helper (see schema_deploy.pg.tools)."""
    from schema_deploy.pg.tools import drop_database as drop, target_of

    drop(target_of(base_url), name, "schema-deploy-tests")


class Seeded:
    """Databases at the baseline with generated rows (devstack/seed.py `reset`), each a copy of a
    template seeded once per cluster, seed and scale in this pytest process: CREATE DATABASE …
    TEMPLATE took 0.1 s where seeding took 0.75 s, for the same rows. The templates are dropped
    when the session ends."""

    def __init__(self) -> None:
        self.templates: dict[tuple[str, int, str], tuple[str, str]] = {}

    def reset(self, url: str, *, seed: int = 42, scale: str = "demo") -> None:
        """Like seed.reset(url, seed=seed, scale=scale): `url`'s database dropped and made again."""
        from seed import recreate, reset

        parts = urlsplit(url)
        key = (parts.netloc, seed, scale)
        if key not in self.templates:
            template = f"t_seeded_{uuid.uuid4().hex[:8]}"
            reset(with_database(url, template), seed=seed, scale=scale, log=lambda _: None)
            self.templates[key] = (urlunsplit(parts._replace(path="/postgres")), template)
        recreate(url, template=self.templates[key][1])

    def drop(self) -> None:
        for admin, template in self.templates.values():
            drop_database(admin, template)


@pytest.fixture(scope="session")
def seeded(stack_env: dict[str, str]) -> Iterator[Seeded]:
    """`seeded.reset(url, seed=…, scale=…)`: a seeded database by copying (Seeded)."""
    made = Seeded()
    try:
        yield made
    finally:
        made.drop()


@pytest.fixture
def fresh_db(stack_env: dict[str, str]) -> Iterator[str]:
    """A new, empty database on the staging cluster, dropped after the test.

    Owned by the stack's migrator role (not a superuser), as a real
    deployment target would be.
    """
    base = stack_env["STAGING_DATABASE_URL"]
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield with_database(base, name)
    finally:
        drop_database(base, name)


@pytest.fixture
def s3(stack_env: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    """The product's own S3 client (boto3's standard environment) pointed at the stack's endpoint."""
    from schema_deploy.backups.store import default_s3_client

    for key, value in stack_env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    return default_s3_client()
