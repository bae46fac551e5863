"""Helpers shared by the engine's integration tests (bundles in tmp, ledger reads, the CLI)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from schema_deploy.bundle.discover import Bundle, load_bundle
from schema_deploy.pg import db
from schema_deploy.pg.retry import Settings

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "sql" / "migrations"
BASELINE = "20250915090000_baseline"
EPIC5 = "20251017120000_epic5_schema_completion"
# The example after Epic 5: a nullable column with its trigger and backfill.yaml, then NOT NULL and an index.
EXPAND = "20251103090000_event_date_expand"
CONTRACT = "20251103090100_event_date_contract"
SHIPPED = [BASELINE, EPIC5, EXPAND, CONTRACT]  # sql/migrations, in order

# Short waits everywhere, so lock tests take a second, not a minute.
FAST = Settings(lock_timeout_ms=50, max_lock_timeout_ms=200, lock_retries=20, backoff_s=0.05,
                backoff_cap_s=0.2, advisory_lock_timeout_s=10)


def backfilling(url: str):
    """`apply`'s `backfill`: runs a declared backfill (the example's) to the end before its contract
    migration, as `python -m schema_deploy apply` does (ungated)."""
    from schema_deploy.backfill.engine import Runner, run_to_done

    return lambda spec: run_to_done(Runner(url, spec)).as_dict()


def copy_bundle(tmp_path: Path, *, epic5_only: bool = False) -> Path:
    """A private copy of the committed bundle, free to edit; `epic5_only`: without the example after Epic 5
    (for tests of Epic 5's own down migration, which only rolls back as the latest applied)."""
    root = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, root, ignore=shutil.ignore_patterns("*_event_date_*") if epic5_only else None)
    return root


def plain_bundle(root: Path, migrations: dict[str, str]) -> Bundle:
    """Write `<name>.sql` files (the plain layout) and load them."""
    root.mkdir(parents=True, exist_ok=True)
    for name, sql in migrations.items():
        (root / f"{name}.sql").write_text(sql)
    return load_bundle(root)


def rows(url: str, query: str, params: tuple = ()) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(query, params).fetchall()


def scalar(url: str, query: str, params: tuple = ()) -> object:
    with psycopg.connect(url) as conn:
        return conn.execute(query, params).fetchone()[0]


def ledger(url: str, name: str | None = None) -> list[dict]:
    """`_prisma_migrations` rows (of one migration), oldest first."""
    where, params = ("WHERE migration_name = %s", (name,)) if name else ("", ())
    return rows(url, f"SELECT * FROM _prisma_migrations {where} ORDER BY started_at, migration_name", params)


def table_exists(url: str, name: str) -> bool:
    """Is there a table `name` (one unqualified name, on the search path)?"""
    with db.connect(url) as conn:
        return db.relation_exists(conn, name, split=False)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PYTHONPATH"] = str(REPO / "plugins")
    env.update(extra)
    return env


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "schema_deploy", *args]


def run_cli(*args: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    """`python -m schema_deploy ARGS` from the repository root, as an operator runs it."""
    return subprocess.run(cli_command(*args), cwd=REPO, env=cli_env(**env), capture_output=True, text=True,
                          timeout=timeout)
