"""`backfill.yaml`: a data change declared beside a migration's `migration.sql`.

A migration folder may carry one (Prisma reads only `migration.sql` and ignores the rest)::

    # 20261201000100_event_date_backfill/backfill.yaml
    table: behavioral_events           # optionally schema-qualified: public.behavioral_events
    key: id                            # a unique, NOT NULL column: batches walk it in order
    set:                               # column: SQL expression, evaluated on the row being updated
      eventDate: ("timestamp" AT TIME ZONE 'UTC')::date
    where: '"eventDate" IS NULL'       # the rows still to do; none left when the backfill is done
    batch: {target_ms: 500, min_rows: 100, max_rows: 50000, first_rows: 1000}   # optional
    wal_budget_mb_per_s: 16            # optional: WAL the backfill may write per second
    lock_timeout_ms: 1000              # optional: how long a batch waits for a row lock

It runs after its folder's `migration.sql`, and every later migration of the bundle needs it done
(its `where` selects no row). The `set` expressions and the `where` are single SQL expressions,
checked with PostgreSQL's own parser (pglast) when the file is read.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from schema_deploy.backfill.errors import BackfillSpecError

FILE = "backfill.yaml"
MB = 1024 * 1024

Text = Annotated[str, StringConstraints(min_length=1)]
Positive = Annotated[int, Field(ge=1)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Batch(_Section):
    target_ms: Positive = 500
    min_rows: Positive = 100
    max_rows: Positive = 50_000
    first_rows: Positive = 1_000


class _File(_Section):
    table: Text
    key: Text
    set: dict[Text, Text] = Field(min_length=1)
    where: Text
    batch: Batch = Batch()
    wal_budget_mb_per_s: Annotated[float, Field(gt=0)] = 16.0
    lock_timeout_ms: Positive = 1_000


@dataclass(frozen=True)
class BackfillSpec:
    """One declared backfill, checked. `id` is its migration's name; `digest` the sha256 of the file's
    bytes (a checkpoint belongs to one digest: an edited backfill does not resume another's work)."""

    id: str
    path: Path
    digest: str
    table: str
    key: str
    set: tuple[tuple[str, str], ...]
    where: str
    target_s: float
    min_rows: int
    max_rows: int
    first_rows: int
    wal_budget_bytes_per_s: int
    lock_timeout_ms: int

    def describe(self) -> str:
        columns = ", ".join(c for c, _ in self.set)
        return (f"backfill {self.id}: {self.table}.{columns} where {self.where}, in batches walking {self.key} "
                f"(about {self.target_s * 1000:.0f} ms each, {self.min_rows}-{self.max_rows} rows), "
                f"WAL budget {self.wal_budget_bytes_per_s / MB:g} MB/s, lock_timeout {self.lock_timeout_ms} ms")


@functools.lru_cache(maxsize=256)
def load_spec(migration: str, path: Path, raw: bytes) -> BackfillSpec:
    """The backfill declared in `raw` (the bytes of `path`, a migration's backfill.yaml). Cached: the contract
    check reads each backfill before every later migration, and a spec is frozen."""
    import yaml

    try:
        data = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BackfillSpecError(path, "is not UTF-8", "Save it as UTF-8.") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise BackfillSpecError(path, f"is not valid YAML{where} ({getattr(exc, 'problem', None) or exc})",
                                "Fix the YAML: keys table, key, set, where (see docs/backfills.md).") from None
    if not isinstance(data, dict):
        raise BackfillSpecError(path, "is not a mapping", "Write its keys (table, key, set, where) one per line.")
    try:
        model = _File.model_validate(data)
    except ValidationError as exc:
        raise _error(path, exc.errors(include_url=False)[0]) from None
    if model.batch.min_rows > model.batch.max_rows:
        raise BackfillSpecError(path, f"batch.min_rows ({model.batch.min_rows}) is more than batch.max_rows "
                                f"({model.batch.max_rows})", "Make min_rows at most max_rows.")
    for column, expression in model.set.items():
        check_expression(path, f"set.{column}", expression)
    check_expression(path, "where", model.where)
    first = min(max(model.batch.first_rows, model.batch.min_rows), model.batch.max_rows)
    return BackfillSpec(id=migration, path=path, digest=hashlib.sha256(raw).hexdigest(), table=model.table,
                        key=model.key, set=tuple(model.set.items()), where=model.where,
                        target_s=model.batch.target_ms / 1000, min_rows=model.batch.min_rows,
                        max_rows=model.batch.max_rows, first_rows=first,
                        wal_budget_bytes_per_s=int(model.wal_budget_mb_per_s * MB),
                        lock_timeout_ms=model.lock_timeout_ms)


def _error(path: Path, error: dict[str, Any]) -> BackfillSpecError:
    where = ".".join(str(p) for p in error["loc"])
    kind, value = error["type"], error.get("input")
    if kind == "missing":
        return BackfillSpecError(path, f"{where}: missing", "Add it: it has no default (see docs/backfills.md).")
    if kind == "extra_forbidden":
        known = ", ".join(sorted(_File.model_fields if len(error["loc"]) == 1 else Batch.model_fields))
        return BackfillSpecError(path, f"{where}: not a key of backfill.yaml", f"Use one of: {known}.")
    if kind == "too_short":
        return BackfillSpecError(path, f"{where}: empty", "Give at least one column: expression.")
    return BackfillSpecError(path, f"{where}: {error['msg'].lower()}, got {value!r}", "Fix its value.")


def check_expression(path: Path, where: str, expression: str) -> None:
    """`expression` is one SQL value expression (no statement, no second statement after a `;`)."""
    import pglast
    from pglast import ast

    try:
        statements = pglast.parse_sql(f"SELECT ({expression})")
    except pglast.parser.ParseError as exc:
        raise BackfillSpecError(path, f"{where}: {expression!r} is not an SQL expression ({exc.args[0]})",
                                "Write one expression, as it would follow SELECT.") from None
    stmt = statements[0].stmt if len(statements) == 1 else None
    if not (isinstance(stmt, ast.SelectStmt) and len(stmt.targetList or ()) == 1 and not stmt.fromClause):
        raise BackfillSpecError(path, f"{where}: {expression!r} is not one SQL expression",
                                "Write one expression, as it would follow SELECT (no ';', no second statement).")
