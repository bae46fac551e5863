"""Online mode: rewrite lock-heavy statements on existing tables into forms that keep writes flowing.

Applied by the planner to statements that touch tables which existed before
the deployment (tables created by the plan itself keep their plain forms —
nobody is using them yet). The rewrites are the ones strong_migrations and
GitLab's migration helpers use; each keeps the end state of the statement as
written (checked by the equivalence tests with a catalog fingerprint):

* ``CREATE [UNIQUE] INDEX``   → ``CREATE [UNIQUE] INDEX CONCURRENTLY`` (own step, autocommit)
* ``ADD CONSTRAINT … FOREIGN KEY | CHECK`` → ``… NOT VALID``, then ``VALIDATE CONSTRAINT``
* ``ALTER COLUMN … SET NOT NULL`` → ``CHECK (col IS NOT NULL) NOT VALID``, ``VALIDATE``,
  ``SET NOT NULL`` (PostgreSQL 12+ skips the scan given the validated check), drop the check
* ``ADD UNIQUE | PRIMARY KEY``  → unique index built concurrently, then ``ADD CONSTRAINT … USING INDEX``

SQL is produced by deparsing pglast ASTs, so it is valid PostgreSQL. In online
mode every statement of a rewritten migration is its own step, so each lock is
held briefly and on one table at a time; retries and resume work per step.
"""
from __future__ import annotations

import pglast
from pglast import ast, enums
from pglast.stream import RawStream

from schema_deploy.bundle.parse import (ACCESS_EXCLUSIVE, SHARE_ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE, Statement,
                                        relname)
from schema_deploy.pg import db
from schema_deploy.plan.steps import PlannedStatement

AT = enums.AlterTableType
CT = enums.ConstrType


def deparse(node: ast.Node) -> str:
    return RawStream()(node)


def fresh(sql: str) -> ast.Node:
    """A new AST for `sql` (never mutate the parsed statement others hold)."""
    return pglast.parse_sql(sql)[0].stmt


def quote(name: str) -> str:
    """One name (a column, a constraint, an index) for SQL built as text."""
    return db.quoted(name, split=False)


def qualified(rv: ast.RangeVar) -> str:
    return db.quoted(rv.schemaname, rv.relname) if rv.schemaname else quote(rv.relname)


def rewrite_statement(stmt: Statement, existing: set[str]) -> list[PlannedStatement] | None:
    """Online form of `stmt`, or None when it runs as written."""
    if stmt.node_type not in (ast.IndexStmt, ast.AlterTableStmt):  # only these have online forms
        return None
    node = stmt.node
    # An unnamed index cannot be found again after a crash or a lock retry, so a retried
    # concurrent build would leave a second (INVALID) index behind: those run as written.
    if (isinstance(node, ast.IndexStmt) and not node.concurrent and node.idxname
            and relname(node.relation) in existing):
        return [concurrent_index(stmt)]
    if isinstance(node, ast.AlterTableStmt) and relname(node.relation) in existing and node.cmds:
        if any(online_cmd(cmd) for cmd in node.cmds):
            return rewrite_alter_table(stmt)
    return None


def concurrent_index(stmt: Statement) -> PlannedStatement:
    node = fresh(stmt.sql)
    node.concurrent = True
    table = relname(node.relation)
    return PlannedStatement(
        sql=deparse(node), source=stmt, locks={table: SHARE_UPDATE_EXCLUSIVE}, transactional=False, node=node,
        reason=f"built CONCURRENTLY: the plain form holds SHARE on {table} (blocks writes) for the whole build",
    )


def online_cmd(cmd: ast.AlterTableCmd) -> bool:
    """Does this ALTER TABLE subcommand have an online form?"""
    if cmd.subtype == AT.AT_SetNotNull:
        return True
    if cmd.subtype == AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        c = cmd.def_
        if c.contype in (CT.CONSTR_FOREIGN, CT.CONSTR_CHECK):
            return not c.skip_validation and bool(c.conname)
        if c.contype in (CT.CONSTR_UNIQUE, CT.CONSTR_PRIMARY):
            # Attributes an index-backed constraint cannot carry over (USING INDEX would drop them).
            keeps_shape = not (c.deferrable or c.initdeferred or c.nulls_not_distinct or c.indexspace
                               or c.including or c.options)
            return not c.indexname and bool(c.conname) and keeps_shape
    return False


def rewrite_alter_table(stmt: Statement) -> list[PlannedStatement]:
    """Split an ALTER TABLE: plain subcommands stay together; each online one gets its steps."""
    node = fresh(stmt.sql)
    table_rv, table = node.relation, relname(node.relation)
    plain: list[ast.AlterTableCmd] = []
    out: list[PlannedStatement] = []

    def flush() -> None:
        if plain:
            alter = fresh(stmt.sql)
            alter.cmds = tuple(plain)
            out.append(PlannedStatement(sql=deparse(alter), source=stmt, locks={table: ACCESS_EXCLUSIVE},
                                        transactional=True, node=alter))
            plain.clear()

    for cmd in node.cmds:
        if not online_cmd(cmd):
            plain.append(cmd)
            continue
        flush()
        if cmd.subtype == AT.AT_SetNotNull:
            out.extend(set_not_null(stmt, table_rv, cmd.name))
        elif cmd.def_.contype in (CT.CONSTR_FOREIGN, CT.CONSTR_CHECK):
            out.extend(not_valid_then_validate(stmt, table_rv, cmd))
        else:
            out.extend(unique_via_index(stmt, table_rv, cmd.def_))
    flush()
    return out


def single_cmd_alter(table_rv: ast.RangeVar, sql_tail: str) -> ast.AlterTableStmt:
    return fresh(f"ALTER TABLE {qualified(table_rv)} {sql_tail}")


def not_valid_then_validate(stmt: Statement, table_rv: ast.RangeVar, cmd: ast.AlterTableCmd) -> list[PlannedStatement]:
    c: ast.Constraint = cmd.def_
    table = relname(table_rv)
    add = fresh(f"ALTER TABLE {qualified(table_rv)} ADD CONSTRAINT x CHECK (true)")
    c.skip_validation, c.initially_valid = True, False
    add.cmds[0].def_ = c
    locks = {table: ACCESS_EXCLUSIVE}
    kind = "FOREIGN KEY" if c.contype == CT.CONSTR_FOREIGN else "CHECK"
    if c.contype == CT.CONSTR_FOREIGN:
        locks = {table: SHARE_ROW_EXCLUSIVE, relname(c.pktable): SHARE_ROW_EXCLUSIVE}
    validate = single_cmd_alter(table_rv, f"VALIDATE CONSTRAINT {quote(c.conname)}")
    validate_locks = {table: SHARE_UPDATE_EXCLUSIVE}
    if c.contype == CT.CONSTR_FOREIGN:
        validate_locks[relname(c.pktable)] = "ROW SHARE"
    return [
        PlannedStatement(sql=deparse(add), source=stmt, locks=locks, transactional=True, node=add,
                         reason=f"{kind} added NOT VALID: takes its lock briefly, without scanning {table}"),
        PlannedStatement(sql=deparse(validate), source=stmt, locks=validate_locks, transactional=True,
                         node=validate,
                         reason=f"validated separately under SHARE UPDATE EXCLUSIVE: {table} stays writable during the scan"),
    ]


def set_not_null(stmt: Statement, table_rv: ast.RangeVar, column: str) -> list[PlannedStatement]:
    table = relname(table_rv)
    # A name no schema author would pick, so an existing constraint of theirs is never dropped.
    check = f"{table_rv.relname}_{column}_sd_online_nn"[-63:]
    steps = [
        (f"ADD CONSTRAINT {quote(check)} CHECK ({quote(column)} IS NOT NULL) NOT VALID", ACCESS_EXCLUSIVE,
         f"NOT NULL via a check constraint: added NOT VALID (brief lock, no scan of {table})"),
        (f"VALIDATE CONSTRAINT {quote(check)}", SHARE_UPDATE_EXCLUSIVE,
         f"the check is validated under SHARE UPDATE EXCLUSIVE: {table} stays writable during the scan"),
        (f"ALTER COLUMN {quote(column)} SET NOT NULL", ACCESS_EXCLUSIVE,
         "SET NOT NULL without a scan: PostgreSQL uses the validated check"),
        (f"DROP CONSTRAINT {quote(check)}", ACCESS_EXCLUSIVE, "the helper check is no longer needed"),
    ]
    out = []
    for tail, mode, reason in steps:
        node = single_cmd_alter(table_rv, tail)
        out.append(PlannedStatement(sql=deparse(node), source=stmt, locks={table: mode}, transactional=True,
                                    node=node, reason=reason))
    return out


def unique_via_index(stmt: Statement, table_rv: ast.RangeVar, c: ast.Constraint) -> list[PlannedStatement]:
    table = relname(table_rv)
    cols = ", ".join(quote(k.sval) for k in c.keys)
    kind = "PRIMARY KEY" if c.contype == CT.CONSTR_PRIMARY else "UNIQUE"
    index = fresh(f"CREATE UNIQUE INDEX CONCURRENTLY {quote(c.conname)} ON {qualified(table_rv)} ({cols})")
    attach = fresh(f"ALTER TABLE {qualified(table_rv)} ADD CONSTRAINT {quote(c.conname)} {kind} "
                   f"USING INDEX {quote(c.conname)}")
    return [
        PlannedStatement(sql=deparse(index), source=stmt, locks={table: SHARE_UPDATE_EXCLUSIVE}, transactional=False,
                         node=index, reason=f"{kind} index built CONCURRENTLY first: writes to {table} continue"),
        PlannedStatement(sql=deparse(attach), source=stmt, locks={table: ACCESS_EXCLUSIVE}, transactional=True,
                         node=attach, reason="then attached as the constraint (brief lock; for a PRIMARY KEY on "
                                             "nullable columns PostgreSQL also sets NOT NULL, which scans the table)"),
    ]
