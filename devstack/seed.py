"""Put the local stack's staging and production databases back at the baseline with demo data.

Used by `make demo`, `make airflow` and the DAG tests: both targets get the same
deterministic rows (same seed), so their schemas and data match before a deployment.
"""
from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(REPO / "plugins"), str(REPO / "devstack")) if p not in sys.path]

from generate_data import generate  # noqa: E402
from schema_deploy.bundle.discover import load_bundle  # noqa: E402
from schema_deploy.engine.apply import apply  # noqa: E402

BASELINE = "20250915090000_baseline"


def recreate(url: str, template: str | None = None) -> None:
    """Drop and create the database `url` names (the stack's role owns it); `template`: as a copy of
    that database of the same cluster (CREATE DATABASE … TEMPLATE)."""
    from schema_deploy.pg.tools import drop_database, target_of

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    drop_database(target_of(admin), name, "schema-deploy-seed")
    with psycopg.connect(admin, autocommit=True) as conn:
        copy = sql.SQL(" TEMPLATE {}").format(sql.Identifier(template)) if template else sql.SQL("")
        conn.execute(sql.SQL("CREATE DATABASE {}{}").format(sql.Identifier(name), copy))


def reset(url: str, *, seed: int = 42, scale: str = "demo", log=print) -> None:
    """Recreate `url`'s database at the baseline migration, then fill it with generated rows."""
    recreate(url)
    apply(url, load_bundle(REPO / "sql" / "migrations"), to=BASELINE, log=log)
    generate(url, seed=seed, scale=scale)
