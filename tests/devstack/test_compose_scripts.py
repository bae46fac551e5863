"""The docker-compose stack's own scripts, run here against the local stack's PostgreSQL.

The containers cannot run on this machine (no Docker engine), but what they run can:
`docker/postgres-init/10-migrator.sh` (the targets' first-start initialisation, as the
postgres image runs it: superuser over the socket) and `docker/seed.sh` (the seed-databases
service: baseline + demo rows, and nothing on a second run).
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest

from tests.conftest import drop_database, with_database

REPO = Path(__file__).resolve().parents[2]
BASELINE = "20250915090000_baseline"


@pytest.fixture
def superuser_env(stack_env: dict[str, str]) -> dict[str, str]:
    """What the postgres image gives an init script: the superuser over the local socket, psql on PATH."""
    admin = urlsplit(stack_env["STAGING_ADMIN_URL"])
    query = parse_qs(admin.query)
    return {**os.environ, "PGHOST": query["host"][0], "PGPORT": query["port"][0], "POSTGRES_USER": "postgres",
            "PATH": f"{stack_env['PG_BINDIR']}{os.pathsep}{os.environ['PATH']}"}


@pytest.fixture
def app_databases(stack_env: dict[str, str]) -> Iterator[list[str]]:
    names = [f"t_compose_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield names
    for name in names:
        drop_database(stack_env["STAGING_DATABASE_URL"], name)


def run_init(env: dict[str, str], database: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "docker/postgres-init/10-migrator.sh"], cwd=REPO, capture_output=True, text=True,
                          env={**env, "APP_DATABASE": database, "MIGRATOR_PASSWORD": "unused-role-exists"},
                          timeout=60)


def test_init_script_makes_a_database_the_migrator_owns_and_can_run_again(superuser_env, app_databases, stack_env):
    for _ in range(2):
        done = run_init(superuser_env, app_databases[0])
        assert done.returncode == 0, done.stderr
    with psycopg.connect(stack_env["STAGING_DATABASE_URL"]) as conn:
        owner = conn.execute("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                             (app_databases[0],)).fetchone()
        super_, createdb = conn.execute("SELECT rolsuper, rolcreatedb FROM pg_roles WHERE rolname = 'migrator'").fetchone()
    assert owner == ("migrator",)
    assert (super_, createdb) == (False, True)


@pytest.mark.slow
def test_seed_puts_both_targets_at_the_baseline_with_the_same_rows_once(superuser_env, app_databases, stack_env):
    for name in app_databases:
        assert run_init(superuser_env, name).returncode == 0
    urls = [with_database(stack_env["STAGING_DATABASE_URL"], name) for name in app_databases]
    env = {**os.environ, "STAGING_DATABASE_URL": urls[0], "PRODUCTION_DATABASE_URL": urls[1],
           "PYTHONPATH": f"{REPO / 'plugins'}{os.pathsep}{REPO}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def seed() -> subprocess.CompletedProcess[str]:
        return subprocess.run(["bash", "docker/seed.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    def facts(url: str) -> tuple:
        with psycopg.connect(url) as conn:
            ledger = conn.execute("SELECT migration_name, finished_at IS NOT NULL FROM _prisma_migrations").fetchall()
            rows = conn.execute('SELECT count(*) FROM "behavioral_events"').fetchone()[0]
        return ledger, rows

    first = seed()
    assert first.returncode == 0, first.stdout + first.stderr
    staging, production = facts(urls[0]), facts(urls[1])
    assert staging == production
    assert staging[0] == [(BASELINE, True)] and staging[1] > 0

    again = seed()
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.count("left as it is") == 2
    assert (facts(urls[0]), facts(urls[1])) == (staging, production)
