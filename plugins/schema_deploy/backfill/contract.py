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


def rows_left(conn: psycopg.Connection, spec: BackfillSpec) -> int | None:
    """Rows `spec`'s `where` selects now; None when it cannot be asked any more (a later migration dropped
    or renamed its table or columns: nothing after that can need them filled)."""
    query = sql.SQL("SELECT count(*) FROM {} WHERE ({})").format(db.ident(spec.table), sql.SQL(spec.where))
    try:
        with conn.transaction():
            return int(conn.execute(query).fetchone()[0])
    except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
        return None


def require_done(conn: psycopg.Connection, migrations: Sequence[Declaring], contract: Declaring,
                 applied_now: list[str], log: Callable[[str], None]) -> None:
    """Before applying `contract`: ContractRefused when a backfill before it still has rows to do."""
    for spec in backfills_before(migrations, contract.name):
        left = rows_left(conn, spec)
        if left is None:
            log(f"{contract.name}: backfill {spec.id}'s `where` cannot be evaluated any more (its table or columns "
                "are gone); not checked")
        elif left:
            raise ContractRefused(contract.name, contract.path, spec.id, spec.table, spec.where, left, applied_now)
