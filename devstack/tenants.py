"""A fleet of tenant databases on the local stack, for `make demo-fleet` and bench/fleet.py.

    python devstack/tenants.py create [--tenants N] [--prefix tenant_] [--orphans-in NAME]
    python devstack/tenants.py drop [--prefix tenant_]

Tenants live on the production cluster (they are production databases; staging is the
rehearsal). One template database is built at the baseline with the generator's `small`
preset and a fixed seed, then every tenant is a copy of it (`CREATE DATABASE … TEMPLATE`),
so N tenants cost one data load and N file copies. Creating again drops every database of
the prefix first (a run with fewer tenants leaves none of the last run's behind).

A tenant's connection id is its name (`tenant_07`), so a `prefix: tenant_` fleet finds them as
the `AIRFLOW_CONN_TENANT_07` variables of `conn_env`; its database is that name, or
`<database_prefix><name>` (tests keep theirs apart from the demo's that way).
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(REPO / "plugins"), str(REPO / "devstack")) if p not in sys.path]

from seed import reset  # noqa: E402

PREFIX = "tenant_"
SEED = 7
SCALE = "small"  # ~4,000 rows a tenant: a tenant's deployment is seconds of work, not minutes
ORPHAN_ROWS = 3
APP = "schema-deploy-tenants"


def with_database(url: str, name: str) -> str:
    """`url` pointing at database `name`."""
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


def names(count: int, prefix: str = PREFIX) -> list[str]:
    """`count` tenant names, zero-padded so they sort in order (tenant_00 … tenant_19, tenant_000 … tenant_199)."""
    width = max(2, len(str(count - 1)))
    return [f"{prefix}{i:0{width}d}" for i in range(count)]


def template_name(prefix: str = PREFIX) -> str:
    return f"{prefix}template"


def existing(base_url: str, prefix: str = PREFIX) -> list[str]:
    """The databases of `prefix` on `base_url`'s cluster (tenants and their template)."""
    pattern = "^" + re.escape(prefix)
    with psycopg.connect(base_url) as conn:
        return [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname ~ %s ORDER BY 1",
                                           (pattern,)).fetchall()]


def drop(base_url: str, prefix: str = PREFIX) -> list[str]:
    """Drop every database of `prefix` (tenants and template); returns their names."""
    from schema_deploy.pg.tools import drop_database, target_of

    found = existing(base_url, prefix)
    admin = target_of(with_database(base_url, "postgres"))
    for name in found:
        drop_database(admin, name, APP)
    return found


def create(base_url: str, count: int, *, prefix: str = PREFIX, database_prefix: str = "", seed: int = SEED,
           scale: str = SCALE, log: Callable[[str], None] = lambda _: None) -> dict[str, str]:
    """`count` tenants at the baseline with the same small deterministic data, after dropping the
    databases of `database_prefix + prefix`; returns {connection id: URL} in name order."""
    if count < 1:
        raise ValueError(f"need at least one tenant, got {count}")
    t0 = time.monotonic()
    gone = drop(base_url, database_prefix + prefix)
    template = template_name(database_prefix + prefix)
    reset(with_database(base_url, template), seed=seed, scale=scale, log=lambda _: None)
    log(f"template {template} at the baseline ({scale} data, seed {seed}) after dropping {len(gone)} old "
        f"database(s) in {time.monotonic() - t0:.1f} s")
    t1 = time.monotonic()
    tenants = names(count, prefix)
    with psycopg.connect(with_database(base_url, "postgres"), autocommit=True) as conn:
        for name in tenants:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(database_prefix + name),
                                                                          sql.Identifier(template)))
    log(f"{count} tenants {tenants[0]} … {tenants[-1]} copied from {template} in {time.monotonic() - t1:.1f} s")
    return {name: with_database(base_url, database_prefix + name) for name in tenants}


def plant_orphans(url: str, rows: int = ORPHAN_ROWS) -> int:
    """Point `rows` experiment assignments at experiments that do not exist: the Epic 5 foreign key
    would fail there, so the member's data prechecks refuse it before any change."""
    with psycopg.connect(url) as conn:
        return conn.execute('UPDATE experiment_assignments SET "experimentId" = \'exp_missing_\' || id '
                            'WHERE id IN (SELECT id FROM experiment_assignments ORDER BY id LIMIT %s)',
                            (rows,)).rowcount


def conn_env(tenants: dict[str, str]) -> dict[str, str]:
    """The tenants as Airflow connections: {"AIRFLOW_CONN_TENANT_00": url, …}."""
    return {f"AIRFLOW_CONN_{name.upper()}": url for name, url in tenants.items()}


def main(argv: list[str] | None = None) -> int:
    from airflow_env import stack_env

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="(re)create N tenants at the baseline on the production cluster")
    c.add_argument("--tenants", type=int, default=20)
    c.add_argument("--orphans-in", metavar="NAME", help="plant orphan rows in this tenant")
    d = sub.add_parser("drop", help="drop every tenant database of the prefix and its template")
    for s in (c, d):
        s.add_argument("--prefix", default=PREFIX)
    args = p.parse_args(argv)
    base = stack_env()["PRODUCTION_DATABASE_URL"]
    if args.command == "drop":
        print(f"dropped {len(drop(base, args.prefix))} database(s) of {args.prefix}*")
        return 0
    tenants = create(base, args.tenants, prefix=args.prefix, log=print)
    if args.orphans_in:
        if args.orphans_in not in tenants:
            p.error(f"--orphans-in {args.orphans_in}: not one of {', '.join(tenants)}")
        print(f"{plant_orphans(tenants[args.orphans_in])} orphan rows planted in {args.orphans_in}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
