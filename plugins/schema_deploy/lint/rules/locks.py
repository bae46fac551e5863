"""Lint rules about locks and rewrites: what a statement blocks, on which table, for how long.

Most fire only on existing tables (see `Context.is_existing`): a table created
earlier in the same migration has no readers or writers yet.
"""
from __future__ import annotations

from collections.abc import Iterator

from pglast import ast, enums

from schema_deploy.bundle.parse import (ACCESS_EXCLUSIVE, NON_VOLATILE_FUNCS, Statement, find_nodes, has_option,
                                        relname)
from schema_deploy.lint.registry import (AT, CT, LOCK_EFFECT, ONLINE, OT, QUEUES, Context, Violation,
                                         added_constraints, constraint_label, constraints, dotted, norm, q, rule,
                                         table_cmds, takes, type_is, type_text)


# --- indexes -------------------------------------------------------------------------------

@rule("error", ast.IndexStmt)
def require_concurrent_index(stmt: Statement, node: ast.IndexStmt, ctx: Context) -> Iterator[Violation]:
    """CREATE INDEX without CONCURRENTLY on an existing table."""
    table = relname(node.relation)
    if node.concurrent or not ctx.is_existing(table, stmt):
        return
    what = "CREATE UNIQUE INDEX" if node.unique else "CREATE INDEX"
    yield Violation(
        f"{takes(what, table, 'SHARE')} {ctx.for_the_whole(table, 'index build')}",
        f"Use {what} CONCURRENTLY: it takes SHARE UPDATE EXCLUSIVE, so reads and writes continue while it "
        f"builds (it cannot run in a transaction; schema-deploy runs it as a step of its own). "
        f"{ONLINE} {what} CONCURRENTLY.")


@rule("error", ast.IndexStmt)
def concurrent_index_without_name(stmt: Statement, node: ast.IndexStmt, ctx: Context) -> Iterator[Violation]:
    """CREATE INDEX CONCURRENTLY without an index name (not retry-safe)."""
    if node.concurrent and not node.idxname:
        table = relname(node.relation)
        yield Violation(
            f"CREATE INDEX CONCURRENTLY on {q(table)} has no name: an interrupted build leaves an INVALID index "
            "under a generated name, and a retry builds a second index beside it instead of finding and "
            "replacing the first",
            f"Name the index (e.g. CREATE INDEX CONCURRENTLY IF NOT EXISTS \"{norm(table)}_<columns>_idx\" …): "
            "schema-deploy uses the name to drop an INVALID leftover and rebuild it on retry.")


@rule("warning", ast.DropStmt)
def require_concurrent_index_deletion(stmt: Statement, node: ast.DropStmt, ctx: Context) -> Iterator[Violation]:
    """DROP INDEX without CONCURRENTLY."""
    if node.removeType != OT.OBJECT_INDEX or node.concurrent:
        return
    for obj in node.objects or ():
        name = dotted(obj)
        if ctx.is_existing(name, stmt):
            yield Violation(
                f"DROP INDEX {q(name)} takes an ACCESS EXCLUSIVE lock on the index's table: blocks reads and "
                f"writes on it until the migration commits; {QUEUES}",
                f"Use DROP INDEX CONCURRENTLY IF EXISTS {q(name)} (one index per statement; it cannot run in "
                "a transaction, schema-deploy runs it as a step of its own).")


@rule("error", ast.ReindexStmt)
def require_concurrent_reindex(stmt: Statement, node: ast.ReindexStmt, ctx: Context) -> Iterator[Violation]:
    """REINDEX without CONCURRENTLY."""
    if has_option(node.params, "concurrently"):
        return
    kind = enums.ReindexObjectType(node.kind).name.removeprefix("REINDEX_OBJECT_")
    if kind == "SYSTEM":  # PostgreSQL refuses REINDEX (CONCURRENTLY) SYSTEM: no online form to advise
        yield Violation(
            f"REINDEX SYSTEM {q(node.name or '')} rebuilds every system catalog index, each under locks that block "
            "reads and writes of that catalog: every query that plans or opens a table waits for it",
            "Keep it out of migrations: run it in a maintenance window, by hand (it cannot run CONCURRENTLY); "
            "for your own tables use REINDEX (CONCURRENTLY) TABLE or INDEX.")
        return
    if node.relation is not None:
        target = relname(node.relation)
        what = (f"REINDEX {kind} {q(target)} takes a SHARE lock on the table and ACCESS EXCLUSIVE on each index "
                f"it rebuilds: blocks writes, and every query that would use those indexes, "
                f"{ctx.for_the_whole(target, 'rebuild')}")
    else:
        target = node.name or ""
        what = (f"REINDEX {kind} {q(target)} rebuilds every index in it, each table in turn under a SHARE lock "
                "(and ACCESS EXCLUSIVE on its indexes): blocks writes, and every query that would use those "
                "indexes, for the whole rebuild of each table")
    yield Violation(
        what,
        f"Use REINDEX (CONCURRENTLY) {kind} {q(target)} (PostgreSQL 12+; not in a transaction, so in a "
        "migration step of its own): reads and writes continue while it rebuilds.")


@rule("info", ast.IndexStmt)
def index_too_many_columns(stmt: Statement, node: ast.IndexStmt, ctx: Context) -> Iterator[Violation]:
    """Non-unique index with more than three columns."""
    columns = len(node.indexParams or ())
    if not node.unique and columns > 3:
        yield Violation(
            f"index {q(node.idxname or '?')} on {q(relname(node.relation))} has {columns} columns: past three, "
            "a non-unique btree index rarely speeds up more queries, but it is larger and slows every write",
            "Keep non-unique indexes to three columns or fewer unless EXPLAIN shows a query that needs more.")


# --- constraints ---------------------------------------------------------------------------

@rule("error", ast.AlterTableStmt)
def adding_foreign_key_constraint(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """ADD FOREIGN KEY without NOT VALID on an existing table."""
    table = relname(node.relation)
    if not ctx.is_existing(table, stmt):
        return
    for c, column in added_constraints(node, CT.CONSTR_FOREIGN):
        if c.skip_validation:
            continue
        ref = relname(c.pktable)
        if column is None:
            locks = f"takes SHARE ROW EXCLUSIVE locks on it and on {q(ref)}: blocks writes (INSERT, UPDATE, DELETE) on both"
        else:
            locks = (f"takes an ACCESS EXCLUSIVE lock on it and SHARE ROW EXCLUSIVE on {q(ref)}: blocks reads and "
                     f"writes on it and writes on {q(ref)}")
        online = (f" {ONLINE} ADD CONSTRAINT … NOT VALID followed by VALIDATE CONSTRAINT in its own step."
                  if column is None else "")
        yield Violation(
            f"{constraint_label(c, column, 'FOREIGN KEY')} on {q(table)} {locks} "
            f"{ctx.for_the_whole(table, f'check of its rows against {q(ref)}', 'checks all')}",
            ("Add the column first, then " if column else "")
            + f"ADD CONSTRAINT … FOREIGN KEY … NOT VALID (a brief lock; new rows are checked from then on), and "
            f"ALTER TABLE {q(table)} VALIDATE CONSTRAINT … in a later step: validation takes SHARE UPDATE "
            f"EXCLUSIVE, which lets reads and writes continue.{online}")


@rule("error", ast.AlterTableStmt)
def constraint_missing_not_valid(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """ADD CHECK constraint without NOT VALID on an existing table."""
    table = relname(node.relation)
    if not ctx.is_existing(table, stmt):
        return
    for c, column in added_constraints(node, CT.CONSTR_CHECK):
        if c.skip_validation:
            continue
        online = (f" {ONLINE} ADD CONSTRAINT … NOT VALID followed by VALIDATE CONSTRAINT in its own step."
                  if column is None else "")
        yield Violation(
            f"{takes(constraint_label(c, column, 'CHECK'), table, ACCESS_EXCLUSIVE)} "
            f"{ctx.for_the_whole(table, 'check of existing rows', 'checks all')}",
            f"ADD CONSTRAINT … CHECK (…) NOT VALID (a brief lock; new rows are checked from then on), then "
            f"ALTER TABLE {q(table)} VALIDATE CONSTRAINT … in a later step: validation takes SHARE UPDATE "
            f"EXCLUSIVE, which lets reads and writes continue.{online}")


@rule("error", ast.AlterTableStmt)
def validate_constraint_in_same_transaction(stmt: Statement, node: ast.AlterTableStmt,
                                            ctx: Context) -> Iterator[Violation]:
    """VALIDATE CONSTRAINT in the transaction that added it NOT VALID.

    The validation then scans the table while the lock the ADD took (ACCESS EXCLUSIVE for a
    CHECK, SHARE ROW EXCLUSIVE for a foreign key) is still held, so NOT VALID gains nothing.
    """
    table = norm(relname(node.relation))
    for cmd in table_cmds(node, AT.AT_ValidateConstraint):
        added = ctx.not_valid_added.get((table, cmd.name))
        if added is None or not (ctx.atomic or (added.block is not None and added.block is stmt.block)):
            continue
        yield Violation(
            f"VALIDATE CONSTRAINT {q(cmd.name)} runs in the same transaction as its ADD … NOT VALID (line "
            f"{added.line}): the scan of {q(relname(node.relation))} happens while that ADD's lock is still held "
            "(ACCESS EXCLUSIVE for a CHECK: reads and writes wait), so NOT VALID gains nothing",
            "Validate in a later migration (or after the COMMIT of the block): VALIDATE alone takes SHARE UPDATE "
            "EXCLUSIVE, which lets reads and writes continue during the scan.")


@rule("warning", ast.AlterTableStmt)
def ban_drop_not_null(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """ALTER COLUMN … DROP NOT NULL (readers may assume a value).

    A warning by default: real histories drop NOT NULL routinely, and it takes only a brief
    lock; what it can break is code that reads the column and assumes it is set.
    """
    table = relname(node.relation)
    if not ctx.is_existing(table, stmt):
        return
    for cmd in table_cmds(node, AT.AT_DropNotNull):
        yield Violation(
            f"ALTER COLUMN {q(cmd.name)} DROP NOT NULL on {q(table)}: from now on the column may hold NULL, and code "
            "that reads it and assumes a value (the running release, reports, other services) breaks on the first "
            "such row; it is backward-incompatible for readers",
            "Ship readers that handle NULL first, then drop the constraint; if they already do, suppress with a "
            "reason: -- schema-deploy: ignore ban-drop-not-null <why readers cope>.")


@rule("warning", ast.CreateDomainStmt)
def ban_create_domain_with_constraint(stmt: Statement, node: ast.CreateDomainStmt,
                                      ctx: Context) -> Iterator[Violation]:
    """CREATE DOMAIN with a CHECK constraint (changing it later scans every column of the domain)."""
    checks = [c for c in node.constraints or () if isinstance(c, ast.Constraint) and c.contype == CT.CONSTR_CHECK]
    if checks:
        yield Violation(
            f"domain {q(dotted(node.domainname))} carries a CHECK constraint: every later change of it (ALTER DOMAIN "
            "… ADD CONSTRAINT, or replacing the domain) checks every column of every table that uses it, under "
            "locks that block writes, and there is no NOT VALID-then-VALIDATE path for a column's type",
            "Put the CHECK on the columns (ADD CONSTRAINT … CHECK (…) NOT VALID, then VALIDATE), or use a domain "
            "without constraints.")


@rule("error", ast.AlterDomainStmt)
def ban_alter_domain_with_add_constraint(stmt: Statement, node: ast.AlterDomainStmt,
                                         ctx: Context) -> Iterator[Violation]:
    """ALTER DOMAIN … ADD CONSTRAINT (checks every column of the domain)."""
    c = node.def_
    if node.subtype != "C" or not isinstance(c, ast.Constraint) or c.skip_validation:
        return
    yield Violation(
        f"ALTER DOMAIN {q(dotted(node.typeName))} ADD CONSTRAINT checks every column of every table that uses the "
        "domain before it returns, each table locked against writes for its whole scan",
        "Add it NOT VALID (ALTER DOMAIN … ADD CONSTRAINT … NOT VALID: new values are checked at once), then "
        "ALTER DOMAIN … VALIDATE CONSTRAINT in a later migration, or put the CHECK on the columns instead.")


@rule("error", ast.AlterTableStmt)
def adding_not_nullable_field(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """ALTER COLUMN SET NOT NULL on an existing table.

    Quiet when an earlier statement of the bundle validated CHECK (col IS NOT NULL) on that
    column: PostgreSQL 12+ then skips the scan.
    """
    table = relname(node.relation)
    if not ctx.is_existing(table, stmt):
        return
    for cmd in table_cmds(node, AT.AT_SetNotNull):
        if (norm(table), cmd.name) in ctx.facts.not_null_checked:
            continue  # PostgreSQL 12+ uses the validated CHECK (col IS NOT NULL) instead of scanning
        yield Violation(
            f"{takes(f'ALTER COLUMN {q(cmd.name)} SET NOT NULL', table, ACCESS_EXCLUSIVE)} "
            f"{ctx.for_the_whole(table, 'scan for NULLs', 'reads all')}",
            f"ADD CONSTRAINT … CHECK ({q(cmd.name)} IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT it in a later "
            "step (reads and writes continue), then SET NOT NULL: PostgreSQL 12+ skips the scan given the "
            "validated check; drop the check afterwards. schema-deploy's online mode does exactly this.")


@rule("error", ast.AlterTableStmt)
def disallowed_unique_constraint(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """ADD UNIQUE constraint without USING INDEX on an existing table."""
    yield from _index_backed_constraint(stmt, node, ctx, CT.CONSTR_UNIQUE, "UNIQUE")


@rule("error", ast.AlterTableStmt)
def adding_serial_primary_key_field(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """ADD PRIMARY KEY without USING INDEX on an existing table."""
    yield from _index_backed_constraint(stmt, node, ctx, CT.CONSTR_PRIMARY, "PRIMARY KEY")


def _index_backed_constraint(stmt: Statement, node: ast.AlterTableStmt, ctx: Context, kind: CT,
                             label: str) -> Iterator[Violation]:
    table = relname(node.relation)
    if not ctx.is_existing(table, stmt):
        return
    for c, column in added_constraints(node, kind):
        if c.indexname:
            continue
        name = c.conname or f"{norm(table)}_{'pkey' if kind == CT.CONSTR_PRIMARY else 'key'}"
        online = (f" {ONLINE} a concurrently built unique index and ADD CONSTRAINT … USING INDEX."
                  if column is None else "")
        yield Violation(
            f"{constraint_label(c, column, label)} on {q(table)} builds its unique index under an ACCESS "
            f"EXCLUSIVE lock: {LOCK_EFFECT[ACCESS_EXCLUSIVE]} {ctx.for_the_whole(table, 'index build')}",
            f"CREATE UNIQUE INDEX CONCURRENTLY {q(name)} ON {q(table)} (…) in a step of its own, then "
            f"ALTER TABLE {q(table)} ADD CONSTRAINT {q(name)} {label} USING INDEX {q(name)} (a brief lock)."
            + online)


@rule("error", ast.AlterTableStmt)
def adding_exclusion_constraint(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """ADD EXCLUDE constraint on an existing table."""
    table = relname(node.relation)
    if not ctx.is_existing(table, stmt):
        return
    for c, column in added_constraints(node, CT.CONSTR_EXCLUSION):
        yield Violation(
            f"{takes(constraint_label(c, column, 'EXCLUDE'), table, ACCESS_EXCLUSIVE)} "
            f"{ctx.for_the_whole(table, 'index build')}",
            "An exclusion constraint has no online form (no NOT VALID, no USING INDEX): run it in the "
            "maintenance window, or enforce the rule in a trigger or the application instead.")


# --- columns -------------------------------------------------------------------------------

SERIAL_TYPES = ("serial", "serial4", "bigserial", "serial8", "smallserial", "serial2")


def rewrite_cause(col: ast.ColumnDef) -> str | None:
    """Why adding this column rewrites the table, if it does (PostgreSQL 11+ rules)."""
    serial = type_is(col.typeName, *SERIAL_TYPES)
    if serial:
        return f"type {serial} (a sequence default, evaluated for every row)"
    for c in constraints(col, CT.CONSTR_IDENTITY, CT.CONSTR_GENERATED, CT.CONSTR_DEFAULT):
        if c.contype == CT.CONSTR_IDENTITY:
            return "GENERATED … AS IDENTITY (a sequence value for every row)"
        if c.contype == CT.CONSTR_GENERATED and c.generated_kind == "s":
            return "GENERATED ALWAYS AS (…) STORED (computed for every row)"
        if c.contype == CT.CONSTR_DEFAULT and c.raw_expr is not None:
            for f in find_nodes(c.raw_expr, ast.FuncCall):
                parts = [n.sval.lower() for n in f.funcname]
                if parts[-1] not in NON_VOLATILE_FUNCS or parts[:-1] not in ([], ["pg_catalog"]):
                    known = parts[-1] in KNOWN_VOLATILE
                    return (f"the {'volatile' if known else 'possibly volatile'} DEFAULT {'.'.join(parts)}() "
                            f"(evaluated for every row{'' if known else ': lint cannot see its volatility, so it counts as volatile'})")
    return None


KNOWN_VOLATILE = frozenset({"random", "gen_random_uuid", "uuid_generate_v4", "uuid_generate_v1", "uuid_generate_v1mc",
                            "clock_timestamp", "timeofday", "nextval", "setval", "txid_current", "random_normal"})


@rule("error", ast.AlterTableStmt)
def adding_field_with_default(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """ADD COLUMN with a volatile default (table rewrite)."""
    table = relname(node.relation)
    if not ctx.is_existing(table, stmt):
        return
    for cmd in table_cmds(node, AT.AT_AddColumn):
        cause = rewrite_cause(cmd.def_) if isinstance(cmd.def_, ast.ColumnDef) else None
        if cause:
            yield Violation(
                f"{takes(f'ADD COLUMN {q(cmd.def_.colname)} with {cause}', table, ACCESS_EXCLUSIVE)} "
                f"{ctx.for_the_whole(table, 'rewrite of the table and its indexes', 'rewrites all')}",
                "Add the column without that default (or with a constant one: no rewrite since PostgreSQL 11), "
                "then ALTER COLUMN … SET DEFAULT for new rows and backfill existing rows in batches.")


@rule("error", ast.AlterTableStmt)
def adding_required_field(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """ADD COLUMN … NOT NULL without a default on an existing table."""
    table = relname(node.relation)
    if not ctx.is_existing(table, stmt):
        return
    for cmd in table_cmds(node, AT.AT_AddColumn):
        col = cmd.def_
        if not isinstance(col, ast.ColumnDef):
            continue
        required = col.is_not_null or constraints(col, CT.CONSTR_NOTNULL, CT.CONSTR_PRIMARY)
        filled = (constraints(col, CT.CONSTR_DEFAULT, CT.CONSTR_IDENTITY, CT.CONSTR_GENERATED)
                  or type_is(col.typeName, *SERIAL_TYPES))
        if required and not filled:
            rows = ctx.rows.get(norm(table))
            has = f" (it has ~{rows:,})" if rows else ""
            yield Violation(
                f"ADD COLUMN {q(col.colname)} NOT NULL without a DEFAULT on {q(table)} fails as soon as the table "
                f"has a row{has}: existing rows would get NULL (\"column contains null values\")",
                "Give it a constant DEFAULT (no rewrite since PostgreSQL 11), or add it nullable, backfill, and "
                "set NOT NULL through a validated CHECK (col IS NOT NULL) constraint.")


@rule("error", ast.AlterTableStmt)
def changing_column_type(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """ALTER COLUMN TYPE (rewrite under ACCESS EXCLUSIVE)."""
    table = relname(node.relation)
    if not ctx.is_existing(table, stmt):
        return
    for cmd in table_cmds(node, AT.AT_AlterColumnType):
        new_type = type_text(cmd.def_.typeName if isinstance(cmd.def_, ast.ColumnDef) else None)
        yield Violation(
            f"{takes(f'ALTER COLUMN {q(cmd.name)} TYPE {new_type}', table, ACCESS_EXCLUSIVE)} "
            f"{ctx.for_the_whole(table, 'rewrite of the table and its indexes', 'rewrites all')} (only a few "
            "binary-compatible changes, such as varchar(n) to text or to a longer varchar, skip the rewrite)",
            "Add a column of the new type, write to both, backfill in batches, switch the application over, "
            "then drop the old column in a later migration.")


@rule("warning", ast.AlterTableStmt)
def require_concurrent_partition_detach(stmt: Statement, node: ast.AlterTableStmt,
                                        ctx: Context) -> Iterator[Violation]:
    """DETACH PARTITION without CONCURRENTLY."""
    table = relname(node.relation)
    for cmd in table_cmds(node, AT.AT_DetachPartition):
        if isinstance(cmd.def_, ast.PartitionCmd) and not cmd.def_.concurrent and ctx.is_existing(table, stmt):
            part = relname(cmd.def_.name)
            yield Violation(
                f"{takes(f'DETACH PARTITION {q(part)}', table, ACCESS_EXCLUSIVE)} and on the partition; {QUEUES}",
                f"Use ALTER TABLE {q(table)} DETACH PARTITION {q(part)} CONCURRENTLY (PostgreSQL 14+, not in a "
                "transaction): it takes SHARE UPDATE EXCLUSIVE on the parent.")


# --- table rewrites and maintenance --------------------------------------------------------

@rule("error", ast.VacuumStmt)
def ban_vacuum_full(stmt: Statement, node: ast.VacuumStmt, ctx: Context) -> Iterator[Violation]:
    """VACUUM FULL."""
    if not has_option(node.options, "full"):  # (FULL false) is a plain VACUUM
        return
    tables = [relname(r.relation) for r in node.rels or ()]
    if not tables:
        yield Violation("VACUUM FULL without a table rewrites every table of the database, each under an ACCESS "
                        "EXCLUSIVE lock that blocks reads and writes on it for its whole rewrite",
                        "Use pg_repack or pg_squeeze to reclaim space online, or plain VACUUM.")
    for table in tables:
        yield Violation(
            f"{takes('VACUUM FULL', table, ACCESS_EXCLUSIVE)} "
            f"{ctx.for_the_whole(table, 'rewrite of the table and its indexes', 'rewrites all')}",
            "Use pg_repack or pg_squeeze to reclaim space online, or plain VACUUM (no blocking lock).")


@rule("error", ast.ClusterStmt)
def ban_cluster(stmt: Statement, node: ast.ClusterStmt, ctx: Context) -> Iterator[Violation]:
    """CLUSTER."""
    if node.relation is None:
        yield Violation("CLUSTER without a table rewrites every clustered table of the database, each under an "
                        "ACCESS EXCLUSIVE lock that blocks reads and writes on it for its whole rewrite",
                        "Use pg_repack (--order-by) to reorder a table online.")
        return
    table = relname(node.relation)
    yield Violation(
        f"{takes('CLUSTER', table, ACCESS_EXCLUSIVE)} "
        f"{ctx.for_the_whole(table, 'rewrite of the table and its indexes', 'rewrites all')}",
        "Use pg_repack (--order-by) to reorder a table online.")


@rule("warning", ast.RefreshMatViewStmt)
def require_concurrent_refresh(stmt: Statement, node: ast.RefreshMatViewStmt, ctx: Context) -> Iterator[Violation]:
    """REFRESH MATERIALIZED VIEW without CONCURRENTLY."""
    view = relname(node.relation)
    if node.concurrent or node.skipData or not ctx.is_existing(view, stmt):
        return
    yield Violation(
        f"REFRESH MATERIALIZED VIEW on {q(view)} takes an ACCESS EXCLUSIVE lock: blocks reads of it for the "
        "whole refresh, which re-runs the view's query",
        f"Use REFRESH MATERIALIZED VIEW CONCURRENTLY {q(view)} (needs a unique index on the view): readers keep "
        "the old contents until it finishes.")


# --- transactions and sessions -------------------------------------------------------------

@rule("warning")
def mixed_transaction_modes(ctx: Context) -> Iterator[Violation]:
    """A file that mixes statements that cannot run in a transaction with ones that can.

    "CONCURRENTLY inside a BEGIN … COMMIT block" cannot happen as such (parse refuses it, as
    PostgreSQL would); what can happen is a file that mixes CONCURRENTLY
    (or VACUUM, ALTER TYPE … ADD VALUE) with transactional statements. schema-deploy then
    applies it in steps, so the migration is no longer atomic. One finding per file, at
    the first statement that cannot run in a transaction.
    """
    loose = [s for s in ctx.statements if not s.transactional]
    if not loose or len(loose) == len(ctx.statements):
        return
    first = loose[0]
    label = first.kind + (" CONCURRENTLY" if getattr(first.node, "concurrent", False) else "")
    yield Violation(
        f"this migration mixes {label} (line {first.line}), which cannot run in a transaction, with "
        f"statements that can, so schema-deploy applies it in {ctx.steps()} steps, each committed on its own: "
        "it is no longer all-or-nothing, and if a later step fails the earlier ones stay applied",
        "Put each statement that cannot run in a transaction (CONCURRENTLY, VACUUM, ALTER TYPE … ADD VALUE) in "
        "a migration of its own. Runners that send the file as one script (psql --single-transaction, a "
        "multi-statement query, as some Prisma versions do) reject CONCURRENTLY in it (SQLSTATE 25001).",
        statement=first)


@rule("warning")
def multiple_access_exclusive_locks(ctx: Context) -> Iterator[Violation]:
    """ACCESS EXCLUSIVE locks on several existing tables in one transaction.

    One finding per migration that runs as one transaction, naming the tables in the
    order it locks them, at the statement that locks the second one.
    """
    if not ctx.atomic:
        return
    order: dict[str, Statement] = {}  # label -> the statement that takes the lock first
    for s in ctx.statements:
        dropped_index = s.node_type is ast.DropStmt and s.node.removeType == OT.OBJECT_INDEX
        for name, mode in s.locks.items():
            label = f"the table of index {q(name)}" if dropped_index else q(name)
            if mode == ACCESS_EXCLUSIVE and label not in order and ctx.is_existing(name, s):
                order[label] = s
    if len(order) < 2:
        return
    second = list(order.values())[1]
    listed = ", ".join(f"{label} (line {s.line})" for label, s in order.items())
    first = next(iter(order))
    yield Violation(
        f"this migration runs in one transaction and takes ACCESS EXCLUSIVE locks on {len(order)} tables, in "
        f"this order: {listed}; each is held until the end, so {first} stays blocked for reads and writes "
        "while the rest runs, and a transaction that locks them in another order can deadlock with it",
        "Split the changes into one migration per table, or keep this order everywhere these tables are "
        "locked together. (schema-deploy's online mode applies a migration it rewrites one statement per "
        "step, so each lock is held briefly, on one table at a time.)",
        statement=second)


@rule("warning", ast.UpdateStmt, ast.DeleteStmt)
def backfill_in_ddl_transaction(stmt: Statement, node: ast.Node, ctx: Context) -> Iterator[Violation]:
    """UPDATE/DELETE in the transaction of a blocking schema change."""
    if not ctx.atomic or ctx.first_exclusive is None:
        return
    table, earlier = ctx.first_exclusive  # the first such lock of an earlier statement (lint keeps it as it goes)
    verb = "UPDATE" if isinstance(node, ast.UpdateStmt) else "DELETE"
    yield Violation(
        f"{verb} of {q(relname(node.relation))} runs in the same transaction as the ACCESS EXCLUSIVE "
        f"lock taken on {q(table)} at line {earlier.line}: {q(table)} stays blocked for reads and "
        f"writes until the {verb} has gone through every row it touches",
        "Backfill in a migration of its own (or outside migrations), in batches of a few thousand "
        "rows, each committed on its own.")


@rule("warning", ast.VariableSetStmt)
def ban_session_set(stmt: Statement, node: ast.VariableSetStmt, ctx: Context) -> Iterator[Violation]:
    """Session-level SET/RESET (not SET LOCAL)."""
    kinds = enums.VariableSetKind
    if node.is_local or (node.kind == kinds.VAR_SET_MULTI and node.name == "TRANSACTION"):
        return
    if node.kind == kinds.VAR_RESET_ALL:
        what = "RESET ALL"
    elif node.kind == kinds.VAR_RESET:
        what = f"RESET {node.name}"
    else:
        what = f"SET {node.name}"
    timeouts = node.name in ("lock_timeout", "statement_timeout") or node.kind == kinds.VAR_RESET_ALL
    extra = (", and it overrides the lock_timeout/statement_timeout schema-deploy sets to keep lock waits short"
             if timeouts else "")
    yield Violation(
        f"{what} changes the whole session, not just this migration: schema-deploy applies every migration "
        f"of a run (and writes the ledger) on one session, so it leaks into everything after it{extra}",
        "Use SET LOCAL (it ends with the transaction). Configure timeouts with --lock-timeout-ms and "
        "--statement-timeout-ms instead of in the file.")


@rule("warning", ast.AlterEnumStmt)
def adding_enum_value(stmt: Statement, node: ast.AlterEnumStmt, ctx: Context) -> Iterator[Violation]:
    """ALTER TYPE … ADD VALUE (irreversible; unusable in the same transaction)."""
    name = dotted(node.typeName)
    # types are not relations, so the database's view does not cover them: only the file's does
    if node.oldVal is not None or node.newVal is None or ctx.created_earlier(name, stmt):
        return
    yield Violation(
        f"ALTER TYPE {q(name)} ADD VALUE '{node.newVal}' cannot be undone (PostgreSQL has no DROP VALUE; removing "
        "it means recreating the type and rewriting every column that uses it), and the new value cannot be used "
        "in the transaction that adds it; schema-deploy runs it as a step of its own",
        "Add the value in a migration before the one (and the application release) that uses it, with "
        "ADD VALUE IF NOT EXISTS so a retry is harmless; deploy code that tolerates the value first.")
