"""Shared fixtures: the embedded local stack started by `make stack-up`.

Tests talk to real services. The stack's addresses and credentials come from
the shell-sourceable file written by `devstack/stack.py up` (`.devstack/env`,
or the file named by `DEVSTACK_ENV_FILE`).
"""
from __future__ import annotations

import os
import shlex
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

REPO = Path(__file__).resolve().parent.parent


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
    return read_env_file(path)


def with_database(url: str, dbname: str) -> str:
    """Return `url` pointing at database `dbname` instead of its own."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + dbname))


def drop_database(base_url: str, name: str) -> None:
    """Drop a test database with the product's own helper (see schema_deploy.pg.tools)."""
    from schema_deploy.pg.tools import drop_database as drop, target_of

    drop(target_of(base_url), name, "schema-deploy-tests")


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
