"""Data prechecks: find the rows that would make a migration fail, before anything changes.

Read-only queries against the target, bounded by `statement_timeout`, for the
statements of a plan that validate existing data:

* a foreign key → child rows whose key has no parent row (count + up to 5 sample keys);
* a unique index or constraint → duplicate key groups (count + samples);
* `SET NOT NULL` → rows where the column is NULL;
* a `CHECK` constraint → rows for which the expression is false.

The Epic 5 plan calls its foreign key "risk-free"; on a table with orphan
assignments it fails halfway through a deployment. This finds them first.
"""
from __future__ import annotations

from dataclasses import dataclass

import psycopg
from pglast import ast, enums
from pglast.stream import RawStream
from psycopg import sql

from schema_deploy import db
from schema_deploy.errors import PrecheckFailed
from schema_deploy.parse import Statement, relname
from schema_deploy.plan import Plan

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
    skipped: str | None = None  # why it could not run (e.g. the column is created by the plan)

    @property
    def failed(self) -> bool:
        return self.violations > 0

    def as_dict(self) -> dict[str, object]:
        return {"check": self.check, "where": self.statement.where, "table": self.table,
                "description": self.description, "violations": self.violations, "samples": self.samples,
                "fix": self.fix, "skipped": self.skipped}


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


def run_prechecks(conn: psycopg.Connection, plan: Plan, statement_timeout_ms: int = 60_000) -> list[PrecheckResult]:
    """Run every precheck of the plan's statements; returns all results (failed ones have violations)."""
    created: set[str] = set()
    results: list[PrecheckResult] = []
    for mp in plan.migrations:
        for stmt in mp.statements:
            for kind, table, details in checks_for(stmt):
                if table in created:
                    continue  # a table this plan creates holds no rows yet
                results.append(run_one(conn, kind, stmt, table, details, statement_timeout_ms))
            created |= stmt.creates
    return results


def run_one(conn: psycopg.Connection, kind: str, stmt: Statement, table: str, details: dict,
            timeout_ms: int) -> PrecheckResult:
    builder = {"foreign-key": foreign_key, "unique": unique, "not-null": not_null, "check": check}[kind]
    description, count_q, sample_q, fix = builder(table, details)
    try:
        with conn.transaction():
            conn.execute("SET TRANSACTION READ ONLY")
            conn.execute(f"SET LOCAL statement_timeout = {int(timeout_ms)}")
            violations = conn.execute(count_q).fetchone()[0]
            samples = [str(r[0]) for r in conn.execute(sample_q).fetchall()] if violations else []
    except (psycopg.errors.UndefinedColumn, psycopg.errors.UndefinedTable) as exc:
        return PrecheckResult(kind, stmt, table, description, 0, [], fix,
                              skipped=f"not checked: {exc.diag.message_primary} (created by this deployment)")
    return PrecheckResult(kind, stmt, table, description, violations, samples, fix)


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


def require_clean(conn: psycopg.Connection, plan: Plan, statement_timeout_ms: int = 60_000) -> list[PrecheckResult]:
    """Run the prechecks and raise PrecheckFailed if any found violating rows."""
    results = run_prechecks(conn, plan, statement_timeout_ms)
    failed = [r for r in results if r.failed]
    if failed:
        raise PrecheckFailed([
            (f"{r.statement.where}: {r.violations} {r.description}", r.samples, r.fix) for r in failed
        ])
    return results
