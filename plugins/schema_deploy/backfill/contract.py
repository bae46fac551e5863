"""Contract migrations: every migration after a backfill's needs that backfill done, i.e. its `where`
selecting no row, when it is about to be applied."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import psycopg
from psycopg import sql

from schema_deploy.backfill.errors import ContractRefused
from schema_deploy.backfill.spec import BackfillSpec, load_spec
from schema_deploy.pg import db


class Declaring(Protocol):
    """What this needs of a bundle's migration (bundle.discover.Migration)."""

    name: str
    path: Path
    backfill_raw: bytes | None

    @property
    def backfill_path(self) -> Path: ...


def backfills_before(migrations: Sequence[Declaring], name: str) -> list[BackfillSpec]:
    """The backfills declared by the migrations before `name`, in bundle order."""
    found = []
    for m in migrations:
        if m.name == name:
            break
        if m.backfill_raw is not None:
            found.append(load_spec(m.name, m.backfill_path, m.backfill_raw))
    return found


def count_left(conn: psycopg.Connection, spec: BackfillSpec) -> int:
    """Rows `spec`'s `where` selects now: the rows still to do."""
    query = sql.SQL("SELECT count(*) FROM {} WHERE ({})").format(db.ident(spec.table), sql.SQL(spec.where))
    return int(conn.execute(query).fetchone()[0])


def rows_left(conn: psycopg.Connection, spec: BackfillSpec) -> int | None:
    """`count_left`, or None when it cannot be asked any more (a later migration dropped or renamed its
    table or columns: nothing after that can need them filled)."""
    try:
        with conn.transaction():
            return count_left(conn, spec)
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        return None


def backfills_to_do(conn: psycopg.Connection, migrations: Sequence[Declaring], name: str) -> list[str]:
    """The ids of the backfills before migration `name` that still have rows to do (those whose `where`
    cannot be asked any more are not: nothing after can need them)."""
    return [spec.id for spec in backfills_before(migrations, name) if rows_left(conn, spec)]


def require_done(conn: psycopg.Connection, migrations: Sequence[Declaring], contract: Declaring,
                 applied_now: list[str], log: Callable[[str], None],
                 run: Callable[[BackfillSpec], object] | None = None) -> list[object]:
    """Before applying `contract`: each backfill before it with rows to do is run first by `run` (what it
    returns is returned), or, without `run`, refused (ContractRefused); refused too when rows remain after
    its run."""
    ran = []
    for spec in backfills_before(migrations, contract.name):
        left = rows_left(conn, spec)
        if left is None:
            log(f"{contract.name}: backfill {spec.id}'s `where` cannot be evaluated any more (its table or columns "
                "are gone); not checked")
            continue
        if left and run is not None:
            log(f"{contract.name}: comes after backfill {spec.id}, which has {left} row(s) to do: running it first")
            ran.append(run(spec))
            left = rows_left(conn, spec)
        if left:
            raise ContractRefused(contract.name, contract.path, spec.id, spec.table, spec.where, left, applied_now)
    return ran


def estimate(conn: psycopg.Connection, spec: BackfillSpec) -> dict[str, object]:
    """Rows to do and a time at the WAL budget, before a run. Rows: what `where` selects now, or, before the
    expand migration is applied (its column missing), every row of the table (the planner's estimate).
    Time: rows × the table's bytes per row (heap and indexes, what an update rewrites) ÷ the budget: a
    floor, since full-page writes after a checkpoint come on top (bench/backfill.py measured about 3×)."""
    oid = db.relation_oid(conn, spec.table)
    if oid is None:
        return {"rows": None, "rows_known": False, "eta_s": None, "why": f"{spec.table} does not exist yet"}
    rows, known = rows_left(conn, spec), True
    tuples, size = conn.execute("SELECT greatest(reltuples, 0)::bigint, pg_table_size(%s) + pg_indexes_size(%s) "
                                "FROM pg_class WHERE oid = %s", (oid, oid, oid)).fetchone()
    if rows is None:
        rows, known = int(tuples), False
    per_row = size / tuples if tuples else 0
    return {"rows": rows, "rows_known": known, "bytes_per_row": round(per_row),
            "eta_s": round(rows * per_row / spec.wal_budget_bytes_per_s, 1) if per_row else None,
            "why": "" if known else "its column is not there yet: every row of the table, as the planner counts them"}


def phases(conn: psycopg.Connection, migrations: Sequence[Declaring], pending: Sequence[str]) -> list[dict[str, object]]:
    """The pending migrations as expand → backfill → contract phases, each backfill with its estimate
    (`estimate`); [] when no backfill bears on them. A backfill bears on them when it is declared by a
    pending migration, or by an applied one and still has rows to do."""
    out: list[dict[str, object]] = []
    todo = set(pending)
    current: list[str] = []
    for m in migrations:
        if m.name in todo:
            current.append(m.name)
        if m.backfill_raw is None:
            continue
        spec = load_spec(m.name, m.backfill_path, m.backfill_raw)
        if m.name not in todo:
            left = rows_left(conn, spec)
            if not left:
                continue
        out.append({"phase": "expand", "migrations": current})
        out.append({"phase": "backfill", "backfill": spec.id, "table": spec.table,
                    "wal_budget_bytes_per_s": spec.wal_budget_bytes_per_s, **estimate(conn, spec)})
        current = []
    if out:
        out.append({"phase": "contract", "migrations": current})
    return out


def render_phases(found: list[dict[str, object]]) -> str:
    lines = []
    for p in found:
        if p["phase"] == "backfill":
            rows = f"{p['rows']} rows to do" if p["rows_known"] else f"about {p['rows']} rows ({p['why']})"
            eta = (f", about {p['eta_s']:.0f} s at {int(p['wal_budget_bytes_per_s']) / (1024 * 1024):g} MB/s of WAL or "
                   "longer (full-page writes come on top)" if p.get("eta_s") is not None else "")
            lines.append(f"   backfill  {p['backfill']} on {p['table']}: "
                         + (rows + eta if p["rows"] is not None else str(p["why"])))
        else:
            lines.append(f"   {p['phase']:<8}  {', '.join(p['migrations']) or '(none pending)'}")  # type: ignore[arg-type]
    return "\n".join(lines)
