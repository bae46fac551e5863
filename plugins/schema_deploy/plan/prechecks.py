"""Data prechecks: find the rows that would make a migration fail, before anything changes.

Read-only queries against the target, bounded by `statement_timeout`, for the
statements of a plan that validate existing data:

* a foreign key → child rows whose key has no parent row (count + up to 5 sample keys);
* a unique index or constraint → duplicate key groups (count + samples);
* `SET NOT NULL` → rows where the column is NULL;
* a `CHECK` constraint → rows for which the expression is false.

The Epic 5 plan calls its foreign key "risk-free"; on a table with orphan
assignments it fails halfway through a deployment. This finds them first.

The data a statement will see. When an earlier statement of the same deployment
writes the table (the usual backfill: `UPDATE … WHERE col IS NULL` then
`SET NOT NULL` in one file), today's rows say nothing about what the statement
will meet, so the check is not run ahead: the statement runs (behind a
savepoint), and if it fails with the integrity error the check is about, the
error becomes the check's message, with counts and samples of the rows it saw
(`explain_failure`). Chosen over a guard query before the statement because a
guard scans the table a second time under the migration's locks on every run,
while this costs nothing when the statement succeeds.

Checks run like migration steps: with apply's lock_timeout and lock retries
(naming the sessions that hold the table when they run out), and a statement
timeout of their own (`Settings.precheck_timeout_ms`, `--precheck-timeout-ms`)
whose expiry names the check, the table and its size. A run may waive the checks
that fail, with a reason (`apply --waive-prechecks REASON`), which the results
and the audit record carry: never silently.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import psycopg
from pglast import ast, enums
from pglast.stream import RawStream
from psycopg import sql

from schema_deploy.bundle.parse import Statement, relname
from schema_deploy.pg import db
from schema_deploy.pg.retry import Settings
from schema_deploy.plan.errors import PrecheckCouldNotRun, PrecheckFailed, PrecheckLocked, PrecheckTimedOut
from schema_deploy.plan.planner import Plan

CT = enums.ConstrType
AT = enums.AlterTableType
SAMPLES = 5


@dataclass
class PrecheckResult:
    """The outcome of one check."""

    check: str  # foreign-key | unique | not-null | check
    statement: Statement
    table: str
    description: str
    violations: int
    samples: list[str]
    fix: str
    skipped: str | None = None  # why it did not run (the column is created by the plan; decided when it runs)
    waived: str | None = None  # the run's reason for going on although it failed
    deferred: bool = False  # decided when its statement runs (`written_before`), not now

    @property
    def failed(self) -> bool:
        return self.violations > 0

    def describe(self) -> str:
        """One log line in words: the outcome, where, and what was found (`description` is a plural noun
        phrase: "rows of t where c IS NULL")."""
        where = self.statement.where
        if self.skipped:
            return f"precheck skipped: {where}: {self.check} on {self.table} ({self.skipped})"
        if not self.failed:
            return f"precheck ok: {where}: no {self.description}"
        found = f"{self.violations} {self.description}" + (f" (e.g. {', '.join(self.samples[:3])})"
                                                           if self.samples else "")
        return (f"precheck waived ({self.waived}): {where}: {found}" if self.waived
                else f"precheck failed: {where}: {found}; {self.fix}")

    def as_dict(self) -> dict[str, object]:
        return {"check": self.check, "where": self.statement.where, "table": self.table,
                "description": self.description, "violations": self.violations, "samples": self.samples,
                "fix": self.fix, "skipped": self.skipped, "waived": self.waived}


def cols(names: list[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


def checks_for(stmt: Statement) -> list[tuple[str, str, dict]]:
    """(kind, table, details) for every data-dependent constraint in `stmt`."""
    if stmt.node_type not in (ast.IndexStmt, ast.AlterTableStmt):  # the rest has no data-dependent constraint
        return []
    node, found = stmt.node, []
    if isinstance(node, ast.IndexStmt) and node.unique:
        keys = [p.name for p in node.indexParams if p.name]
        if len(keys) == len(node.indexParams):
            found.append(("unique", relname(node.relation), {"columns": keys, "name": node.idxname}))
    if isinstance(node, ast.AlterTableStmt):
        table = relname(node.relation)
        for cmd in node.cmds or ():
            if cmd.subtype == AT.AT_SetNotNull:
                found.append(("not-null", table, {"column": cmd.name}))
            elif cmd.subtype == AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
                c = cmd.def_
                if c.contype == CT.CONSTR_FOREIGN:
                    found.append(("foreign-key", table, {
                        "columns": [k.sval for k in c.fk_attrs], "parent": relname(c.pktable),
                        "parent_columns": [k.sval for k in c.pk_attrs or ()], "name": c.conname}))
                elif c.contype == CT.CONSTR_CHECK:
                    found.append(("check", table, {"expr": RawStream()(c.raw_expr), "name": c.conname}))
                elif c.contype in (CT.CONSTR_UNIQUE, CT.CONSTR_PRIMARY) and c.keys:
                    found.append(("unique", table, {"columns": [k.sval for k in c.keys], "name": c.conname}))
    return found


Check = tuple[str, str, dict]  # (kind, table, details), from checks_for


def written_before(plan: Plan) -> dict[Statement, list[tuple[Check, Statement]]]:
    """The checks that today's rows cannot decide: their table is written (INSERT, UPDATE, DELETE,
    MERGE, COPY, or a rewrite such as a type change) by an earlier statement of the same deployment, or by
    a declared backfill that runs before it (`Plan.backfill_writes`), so the statement will see other rows
    than a query now would. Each comes with what writes it first (its `where` names it)."""
    written: dict[str, Any] = {}
    created: set[str] = set()
    deferred: dict[Statement, list[tuple[Check, Any]]] = {}
    for i, mp in enumerate(plan.migrations):
        for position, table, label in plan.backfill_writes:  # a backfill run before this migration
            if position == i:  # as statements name it: with or without the public schema
                for name in {table, table.removeprefix("public."), table if "." in table else f"public.{table}"}:
                    written.setdefault(name, SimpleNamespace(where=label))
        for stmt in mp.statements:
            for check_ in checks_for(stmt):
                if check_[1] not in created and check_[1] in written:
                    deferred.setdefault(stmt, []).append((check_, written[check_[1]]))
            created |= stmt.creates
            for table, mode in stmt.locks.items():
                if mode == "ROW EXCLUSIVE" or table in stmt.rewrites:
                    written.setdefault(table, stmt)
    return deferred


def run_prechecks(conn: psycopg.Connection, plan: Plan, settings: Settings | None = None) -> list[PrecheckResult]:
    """Run every precheck of the plan's statements; returns all results (failed ones have violations).

    A check whose table an earlier statement of the deployment writes is not run: it is decided when
    its statement runs (`explain_failure`), on the rows that statement sees. `settings` (apply's
    Settings): the lock timeouts, retries and precheck timeout to run with."""
    settings = settings if settings is not None else Settings()
    deferred = written_before(plan)
    created: set[str] = set()
    results: list[PrecheckResult] = []
    for mp in plan.migrations:
        for stmt in mp.statements:
            for check_ in checks_for(stmt):
                kind, table, details = check_
                if table in created:
                    continue  # a table this plan creates holds no rows yet
                writer = next((w for c, w in deferred.get(stmt, ()) if c == check_), None)
                if writer is not None:
                    builder = BUILDERS[kind]
                    description, _, _, fix = builder(table, details)
                    results.append(PrecheckResult(kind, stmt, table, description, 0, [], fix, deferred=True, skipped=(
                        f"decided when the statement runs: {writer.where} writes {table} before it")))
                    continue
                results.append(run_one(conn, kind, stmt, table, details, settings))
            created |= stmt.creates
    return results


def run_one(conn: psycopg.Connection, kind: str, stmt: Statement, table: str, details: dict,
            settings: Settings) -> PrecheckResult:
    """One check, read-only, with apply's lock timeouts and retries: a table locked by another session
    is retried like a migration step, and named with its holders when retries run out."""
    description, count_q, sample_q, fix = BUILDERS[kind](table, details)
    attempts = settings.lock_retries + 1
    for attempt in range(attempts):
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION READ ONLY")
                conn.execute(f"SET LOCAL statement_timeout = {int(settings.precheck_timeout_ms)}")
                conn.execute(f"SET LOCAL lock_timeout = {int(settings.lock_timeout_for(attempt))}")
                violations = conn.execute(count_q).fetchone()[0]
                samples = [str(r[0]) for r in conn.execute(sample_q).fetchall()] if violations else []
            return PrecheckResult(kind, stmt, table, description, violations, samples, fix)
        except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable) as exc:
            return PrecheckResult(kind, stmt, table, description, 0, [], fix,
                                  skipped=f"not checked: {exc.diag.message_primary} (created by this deployment)")
        except psycopg.errors.LockNotAvailable:
            if attempt + 1 == attempts:
                raise PrecheckLocked(stmt.where, description, table, attempts,
                                     db.lock_holders(conn, table)) from None
            time.sleep(settings.sleep_before(attempt))
        except psycopg.errors.QueryCanceled:
            raise PrecheckTimedOut(stmt.where, description, table, row_estimate(conn, table),
                                   settings.precheck_timeout_ms) from None
        except psycopg.Error as exc:
            raise PrecheckCouldNotRun(stmt.where, description, exc.sqlstate,
                                      exc.diag.message_primary or str(exc)) from None
    raise AssertionError("unreachable")


def row_estimate(conn: psycopg.Connection, table: str) -> int | None:
    row = conn.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                       (db.quoted(table),)).fetchone()
    return int(row[0]) if row and row[0] is not None and row[0] >= 0 else None


def foreign_key(table: str, d: dict) -> tuple[str, sql.Composable, sql.Composable, str]:
    child_cols, parent = d["columns"], d["parent"]
    parent_cols = d["parent_columns"] or ["id"]
    join = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(pc), sql.Identifier(cc)) for pc, cc in zip(parent_cols, child_cols))
    not_null = sql.SQL(" AND ").join(sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(cc)) for cc in child_cols)
    where = sql.SQL("{nn} AND NOT EXISTS (SELECT 1 FROM {parent} p WHERE {join})").format(
        nn=not_null, parent=db.ident(parent), join=join)
    key = sql.SQL(" || ', ' || ").join(sql.SQL("c.{}::text").format(sql.Identifier(cc)) for cc in child_cols)
    count_q = sql.SQL("SELECT count(*) FROM {t} c WHERE {w}").format(t=db.ident(table), w=where)
    sample_q = sql.SQL("SELECT DISTINCT {k} FROM {t} c WHERE {w} ORDER BY 1 LIMIT {n}").format(
        k=key, t=db.ident(table), w=where, n=sql.Literal(SAMPLES))
    child, parent_s = ", ".join(child_cols), ", ".join(parent_cols)
    return (f"rows of {table} whose ({child}) has no row in {parent} ({parent_s})", count_q, sample_q,
            f"delete or re-point the orphan rows of {table} (or insert the missing {parent} rows) before "
            f"deploying; e.g. DELETE FROM \"{table}\" c WHERE NOT EXISTS (SELECT 1 FROM \"{parent}\" p "
            f"WHERE p.\"{parent_cols[0]}\" = c.\"{child_cols[0]}\"), after checking why they exist.")


def unique(table: str, d: dict) -> tuple[str, sql.Composable, sql.Composable, str]:
    keys = d["columns"]
    not_null = sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(sql.Identifier(k)) for k in keys)
    groups = sql.SQL("SELECT {c} FROM {t} WHERE {nn} GROUP BY {c} HAVING count(*) > 1").format(
        c=cols(keys), t=db.ident(table), nn=not_null)
    key = sql.SQL(" || ', ' || ").join(sql.SQL("g.{}::text").format(sql.Identifier(k)) for k in keys)
    count_q = sql.SQL("SELECT count(*) FROM ({g}) g").format(g=groups)
    sample_q = sql.SQL("SELECT {k} FROM ({g}) g ORDER BY 1 LIMIT {n}").format(k=key, g=groups, n=sql.Literal(SAMPLES))
    return (f"duplicate ({', '.join(keys)}) groups in {table}", count_q, sample_q,
            f"remove or merge the duplicate rows of {table} so ({', '.join(keys)}) is unique, then deploy.")


def not_null(table: str, d: dict) -> tuple[str, sql.Composable, sql.Composable, str]:
    column = d["column"]
    count_q = sql.SQL("SELECT count(*) FROM {t} WHERE {c} IS NULL").format(t=db.ident(table), c=sql.Identifier(column))
    sample_q = sql.SQL("SELECT ctid::text FROM {t} WHERE {c} IS NULL LIMIT {n}").format(
        t=db.ident(table), c=sql.Identifier(column), n=sql.Literal(SAMPLES))
    return (f"rows of {table} where {column} IS NULL", count_q, sample_q,
            f"backfill {table}.{column} (UPDATE ... SET \"{column}\" = ... WHERE \"{column}\" IS NULL, in batches) "
            "in an earlier deployment, then set NOT NULL.")


def check(table: str, d: dict) -> tuple[str, sql.Composable, sql.Composable, str]:
    expr = sql.SQL(d["expr"])
    count_q = sql.SQL("SELECT count(*) FROM {t} WHERE ({e}) IS FALSE").format(t=db.ident(table), e=expr)
    sample_q = sql.SQL("SELECT ctid::text FROM {t} WHERE ({e}) IS FALSE LIMIT {n}").format(
        t=db.ident(table), e=expr, n=sql.Literal(SAMPLES))
    return (f"rows of {table} violating CHECK ({d['expr']})", count_q, sample_q,
            f"fix the rows of {table} that violate the check before deploying it.")


BUILDERS = {"foreign-key": foreign_key, "unique": unique, "not-null": not_null, "check": check}


def require_clean(conn: psycopg.Connection, plan: Plan, settings: Settings | None = None, *, waive: str | None = None,
                  log: Any = lambda _: None) -> list[PrecheckResult]:
    """Run the prechecks and raise PrecheckFailed if any found violating rows. With `waive` (the reason),
    failed checks do not stop the run: each is marked waived with that reason and logged, and the
    caller records them (the audit record, the CLI's output); nothing is waived silently."""
    results = run_prechecks(conn, plan, settings)
    failed = [r for r in results if r.failed]
    if failed and waive:
        for r in failed:
            r.waived = waive
            log(f"precheck waived ({waive}): {r.statement.where}: {r.violations} {r.description}")
        return results
    if failed:
        raise PrecheckFailed([
            (f"{r.statement.where}: {r.violations} {r.description}", r.samples, r.fix) for r in failed
        ])
    return results


# --- checks decided when their statement runs ----------------------------------------------------

INTEGRITY = {"23502": "not-null", "23503": "foreign-key", "23505": "unique", "23514": "check"}


def explain_failure(conn: psycopg.Connection, stmt: Statement, sqlstate: str | None) -> str | None:
    """When a statement with a deferred check (`written_before`) fails with the integrity error that
    check is about, the check's message with counts and samples of the rows the statement saw.
    `conn` must see what the statement saw (inside its transaction, back at a savepoint taken just
    before it). None when the error is not one a check explains."""
    kind = INTEGRITY.get(sqlstate or "")
    for k, table, details in checks_for(stmt):
        if kind is None or (k != kind and not (kind == "check" and k == "not-null")):
            continue  # online mode makes SET NOT NULL a CHECK constraint: its failure is 23514
        description, count_q, sample_q, fix = BUILDERS[k](table, details)
        violations = conn.execute(count_q).fetchone()[0]
        if not violations:
            continue
        samples = [str(r[0]) for r in conn.execute(sample_q).fetchall()]
        shown = f" (samples: {', '.join(samples)})" if samples else ""
        return (f"{violations} {description} when this statement ran (after the statements before it in this "
                f"deployment){shown}; fix: {fix}")
    return None
