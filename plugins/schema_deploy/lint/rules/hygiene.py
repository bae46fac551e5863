"""Lint rules beyond locking: destructive changes, retry safety, names and types, suppressions.

Destructive changes (DROP TABLE/COLUMN, TRUNCATE, renames) are errors even
though their locks are brief: they lose data or break the running application.
Retry-safety hints fire only in migrations that run in steps: a migration that
is one transaction rolls back as a whole, so re-running it starts clean.
"""
from __future__ import annotations

import difflib
import re
from collections.abc import Iterator

from pglast import ast, enums
from pglast.parser import scan

from schema_deploy.bundle.parse import Statement, relname
from schema_deploy.lint.registry import (AT, CT, LOCKS_BRIEFLY, OT, RULES, Context, Violation, constraints, dotted,
                                         q, rule, table_cmds, type_text)

NAMEDATALEN = 64
MAX_IDENTIFIER_BYTES = NAMEDATALEN - 1


# --- destructive changes -------------------------------------------------------------------

DESTRUCTIVE_HELP = ("First ship application code that no longer uses it, then remove it in a later migration "
                    "(after the backup). If it is intended, suppress with a reason: -- schema-deploy: ignore {rule} "
                    "<why it is safe>.")


@rule("error", ast.DropStmt)
def ban_drop_table(stmt: Statement, node: ast.DropStmt, ctx: Context) -> Iterator[Violation]:
    """DROP TABLE (data loss)."""
    if node.removeType != OT.OBJECT_TABLE:
        return
    for obj in node.objects or ():
        name = dotted(obj)
        if ctx.is_existing(name, stmt):
            yield Violation(
                f"DROP TABLE {q(name)} deletes the table and every row in it for good, and the running "
                f"application still queries it; {LOCKS_BRIEFLY}",
                DESTRUCTIVE_HELP.format(rule="ban-drop-table"))


@rule("error", ast.AlterTableStmt)
def ban_drop_column(stmt: Statement, node: ast.AlterTableStmt, ctx: Context) -> Iterator[Violation]:
    """DROP COLUMN (data loss)."""
    table = relname(node.relation)
    if not ctx.is_existing(table, stmt):
        return
    for cmd in table_cmds(node, AT.AT_DropColumn):
        yield Violation(
            f"DROP COLUMN {q(cmd.name)} of {q(table)} deletes its data for good, and the running application "
            f"(or an ORM that selects every column) still reads it; {LOCKS_BRIEFLY}",
            DESTRUCTIVE_HELP.format(rule="ban-drop-column"))


@rule("error", ast.TruncateStmt)
def ban_truncate(stmt: Statement, node: ast.TruncateStmt, ctx: Context) -> Iterator[Violation]:
    """TRUNCATE (data loss)."""
    tables = [relname(rv) for rv in node.relations or () if ctx.is_existing(relname(rv), stmt)]
    if tables:
        cascade = (" and, with CASCADE, every table that references them"
                   if node.behavior == enums.DropBehavior.DROP_CASCADE else "")
        yield Violation(
            f"TRUNCATE {', '.join(q(t) for t in tables)} deletes every row{cascade} for good; {LOCKS_BRIEFLY}",
            DESTRUCTIVE_HELP.format(rule="ban-truncate").replace("remove it", "empty it"))


@rule("error", ast.DropdbStmt)
def ban_drop_database(stmt: Statement, node: ast.DropdbStmt, ctx: Context) -> Iterator[Violation]:
    """DROP DATABASE."""
    yield Violation(f"DROP DATABASE {q(node.dbname)} deletes a whole database; a migration must never do that",
                    "Remove the statement; drop databases by hand, deliberately, after a backup.")


@rule("error", ast.RenameStmt)
def renaming_table(stmt: Statement, node: ast.RenameStmt, ctx: Context) -> Iterator[Violation]:
    """Renaming a table the running application uses."""
    if node.renameType != OT.OBJECT_TABLE or node.relation is None:
        return
    old = relname(node.relation)
    if ctx.is_existing(old, stmt):
        yield Violation(
            f"RENAME {q(old)} TO {q(node.newname)} breaks the running application, which still queries "
            f"{q(old)}, the moment it commits; {LOCKS_BRIEFLY}",
            f"Rename and, in the same migration, CREATE VIEW {q(old)} AS SELECT * FROM {q(node.newname)} (a simple "
            "view stays writable) until the application uses the new name; drop the view later.")


@rule("error", ast.RenameStmt)
def renaming_column(stmt: Statement, node: ast.RenameStmt, ctx: Context) -> Iterator[Violation]:
    """Renaming a column the running application uses."""
    if node.renameType != OT.OBJECT_COLUMN or node.relationType != OT.OBJECT_TABLE:
        return
    table = relname(node.relation)
    if ctx.is_existing(table, stmt):
        yield Violation(
            f"RENAME COLUMN {q(node.subname)} of {q(table)} TO {q(node.newname)} breaks the running application, "
            f"which still reads and writes {q(node.subname)}, the moment it commits; {LOCKS_BRIEFLY}",
            "Add the new column, write to both, backfill, switch reads to the new column, then drop the old "
            "one in a later migration.")


# --- retry safety --------------------------------------------------------------------------

@rule("info", ast.CreateStmt, ast.IndexStmt, ast.DropStmt, ast.AlterTableStmt)
def prefer_robust_stmts(stmt: Statement, node: ast.Node, ctx: Context) -> Iterator[Violation]:
    """CREATE without IF NOT EXISTS / DROP without IF EXISTS in a migration that runs in steps.

    Only in migrations that are not one transaction: a transactional migration rolls back
    as a whole on failure, so running it again starts from a clean slate.
    """
    if ctx.atomic:
        return  # one transaction: a failure rolls everything back, so a re-run starts clean
    fix = None
    if isinstance(node, ast.CreateStmt) and not node.if_not_exists:
        fix = "CREATE TABLE IF NOT EXISTS"
    elif isinstance(node, ast.IndexStmt) and node.idxname and not node.if_not_exists:
        fix = "CREATE INDEX " + ("CONCURRENTLY " if node.concurrent else "") + "IF NOT EXISTS"
    elif isinstance(node, ast.DropStmt) and not node.missing_ok:
        fix = "DROP … IF EXISTS"
    elif isinstance(node, ast.AlterTableStmt):
        for cmd in node.cmds or ():
            if cmd.subtype in (AT.AT_AddColumn, AT.AT_DropColumn, AT.AT_DropConstraint) and not cmd.missing_ok:
                fix = {AT.AT_AddColumn: "ADD COLUMN IF NOT EXISTS", AT.AT_DropColumn: "DROP COLUMN IF EXISTS",
                       AT.AT_DropConstraint: "DROP CONSTRAINT IF EXISTS"}[cmd.subtype]
                break
    if fix:
        yield Violation(
            f"{stmt.kind} is not retry-safe: this migration does not run as one transaction, so re-running it "
            "after a failure part-way (by hand, or with another migrator) stops here with \"already exists\" "
            "or \"does not exist\"",
            f"Write {fix}.")


# --- names and types -----------------------------------------------------------------------

# Runs of identifier characters long enough to exceed 63 bytes: in ASCII text that takes 64 characters,
# in other text as few as 16 (four-byte characters). Only statements with such a run are tokenized.
LONG_ASCII_RUN = re.compile(r'"(?:[^"]|""){64,}"|[A-Za-z_][A-Za-z0-9_$]{63,}')
# Letters, '_' and any non-ASCII character, then those, digits and '$' (written as negated ASCII classes:
# a range up to U+10FFFF costs re.compile ~10 ms at every start of `lint`).
IDENT_CANDIDATE = re.compile(r'"(?:[^"]|""){16,}"|[^\x00-\x40\x5b-\x5e\x60\x7b-\x7f]'
                             r'[^\x00-\x23\x25-\x2f\x3a-\x40\x5b-\x5e\x60\x7b-\x7f]{15,}')
ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def pg_truncate(name: str) -> str:
    """The name PostgreSQL keeps: the first 63 bytes, cut back to a UTF-8 character boundary."""
    return name.encode()[:MAX_IDENTIFIER_BYTES].decode("utf-8", "ignore")


def long_identifiers(sql: str) -> list[tuple[str, int]]:
    """Identifiers of `sql` over 63 bytes, with their character offsets (pglast truncates them in the AST)."""
    if sql.isascii():
        if not LONG_ASCII_RUN.search(sql):
            return []  # the common case: one C-level search and done
    elif not any(len(m.group().encode()) > MAX_IDENTIFIER_BYTES for m in IDENT_CANDIDATE.finditer(sql)):
        return []
    found: list[tuple[str, int]] = []
    for token in scan(sql):
        if token.name != "IDENT":
            continue
        raw = sql[token.start: token.end + 1]
        name = raw[1:-1].replace('""', '"') if raw.startswith('"') else raw.translate(ASCII_LOWER)
        if len(name.encode()) > MAX_IDENTIFIER_BYTES and name not in (n for n, _ in found):
            found.append((name, token.start))
    return found


@rule("warning", every_statement=True)
def identifier_too_long(stmt: Statement, node: ast.Node, ctx: Context) -> Iterator[Violation]:
    """Identifier longer than 63 bytes (PostgreSQL truncates it).

    PostgreSQL's limit is NAMEDATALEN - 1 = 63 bytes: exactly 63 is fine. The name is read
    from the SQL text, because pglast's AST already holds the truncated one.
    """
    for name, offset in long_identifiers(stmt.sql):
        short = pg_truncate(name)
        yield Violation(
            f'identifier "{name}" is {len(name.encode())} bytes; PostgreSQL keeps only 63 bytes of a name, so it '
            f'will be "{short}": two names that share those bytes collide, and tools that compare the full name '
            "(Prisma's drift check, schema-deploy's verify) will not find it",
            f"Shorten it to at most 63 bytes, e.g. \"{short}\" (Prisma cuts its generated index names the same "
            "way before appending _idx).",
            line=stmt.line + stmt.sql.count("\n", 0, offset))


def created_names(node: ast.Node) -> list[tuple[str, str]]:
    """(namespace, name) of what a statement creates that PostgreSQL names: relations (tables, indexes,
    views) share one namespace per schema; constraints have one per table. Names as the parser gives
    them (already cut to 63 bytes)."""
    out: list[tuple[str, str]] = []
    if isinstance(node, ast.IndexStmt) and node.idxname:
        out.append((f"relation:{node.relation.schemaname or ''}", node.idxname))
    elif isinstance(node, ast.CreateStmt):
        out.append((f"relation:{node.relation.schemaname or ''}", node.relation.relname))
        out.extend((f"constraint:{relname(node.relation)}", name) for name in named_constraints(node.tableElts))
    elif isinstance(node, ast.AlterTableStmt):
        defs = [cmd.def_ for cmd in node.cmds or () if cmd.subtype in (AT.AT_AddConstraint, AT.AT_AddColumn)]
        out.extend((f"constraint:{relname(node.relation)}", name) for name in named_constraints(defs))
    return out


def named_constraints(elements: tuple | list | None) -> list[str]:
    """The names given to the constraints among table elements (ColumnDefs' and table constraints)."""
    found = []
    for elt in elements or ():
        for c in (elt.constraints or ()) if isinstance(elt, ast.ColumnDef) else (elt,):
            if isinstance(c, ast.Constraint) and c.conname:
                found.append(c.conname)
    return found


@rule("error", ast.IndexStmt, ast.CreateStmt, ast.AlterTableStmt)
def identifier_collision(stmt: Statement, node: ast.Node, ctx: Context) -> Iterator[Violation]:
    """Two names that PostgreSQL cuts to the same 63 bytes (the second object is never made).

    Across the bundle, in order: an index, table or constraint whose name, cut to 63 bytes, is
    the cut name of another one in the same namespace with a different full name. As written the
    second CREATE fails ("already exists"); a tool that skips what already exists would skip it.
    """
    created = created_names(node)
    if not created:
        return
    full = {pg_truncate(name): name for name, _ in long_identifiers(stmt.sql)}
    for namespace, cut in created:
        name = full.get(cut, cut)
        earlier = ctx.facts.names.get((namespace, cut))
        if earlier is None:
            ctx.facts.names[(namespace, cut)] = (name, stmt.where)
            continue
        if earlier[0] != name:
            yield Violation(
                f'"{name}" and "{earlier[0]}" ({earlier[1]}) are both "{cut}" to PostgreSQL, which keeps only '
                f"{MAX_IDENTIFIER_BYTES} bytes of a name: this one is never created (as written the statement "
                "fails with \"already exists\")",
                "Give them names that differ within their first 63 bytes (Prisma: map = \"…\" on the @@index or "
                "@relation).")


def _type_hint(stmt: Statement, ctx: Context, names: tuple[str, ...],
               only_limited: bool = False) -> dict[str, list[str]]:
    """Columns per table whose built-in type is one of `names` (with a length limit, if `only_limited`)."""
    found: dict[str, list[str]] = {}
    for table, col, type_name in ctx.typed_columns(stmt):
        if type_name in names and (not only_limited or col.typeName.typmods):
            found.setdefault(table, []).append(col.colname)
    return found


def _columns(table: str, cols: list[str]) -> str:
    return f"{'column' if len(cols) == 1 else 'columns'} {', '.join(q(c) for c in cols)} of {q(table)}"


TYPE_NODES = (ast.CreateStmt, ast.AlterTableStmt)


@rule("info", *TYPE_NODES)
def prefer_timestamptz(stmt: Statement, node: ast.Node, ctx: Context) -> Iterator[Violation]:
    """A `timestamp` (without time zone) column: prefer timestamptz."""
    for table, cols in _type_hint(stmt, ctx, ("timestamp",)).items():
        yield Violation(
            f"{_columns(table, cols)}: timestamp without time zone stores a wall-clock reading with no zone, so "
            "its meaning shifts with the server's or client's TimeZone setting",
            "Use timestamptz (same 8 bytes, stores an instant); in a Prisma schema, @db.Timestamptz(3).")


@rule("info", *TYPE_NODES)
def prefer_bigint_primary_key(stmt: Statement, node: ast.Node, ctx: Context) -> Iterator[Violation]:
    """An integer or serial primary key: prefer bigint."""
    small = ("int2", "int4", "smallint", "integer", "int", "serial", "serial4", "smallserial", "serial2")
    keys: set[str] = set()
    for elt in (node.tableElts or ()) if isinstance(node, ast.CreateStmt) else ():
        if isinstance(elt, ast.Constraint) and elt.contype == CT.CONSTR_PRIMARY:
            keys.update(k.sval for k in elt.keys or ())
    for table, col, kind in ctx.typed_columns(stmt):
        if kind in small and (col.colname in keys or constraints(col, CT.CONSTR_PRIMARY)):
            limit = "32,767" if kind in ("int2", "smallint", "smallserial", "serial2") else "2,147,483,647"
            yield Violation(
                f"primary key {q(col.colname)} of {q(table)} is {type_text(col.typeName)}: it runs out at {limit}, "
                "and widening it later rewrites this table and every table that references it under ACCESS "
                "EXCLUSIVE",
                "Use bigint (bigint GENERATED ALWAYS AS IDENTITY instead of serial).")


@rule("info", *TYPE_NODES)
def prefer_text_field(stmt: Statement, node: ast.Node, ctx: Context) -> Iterator[Violation]:
    """A varchar(n) column: prefer text with a CHECK constraint."""
    for table, cols in _type_hint(stmt, ctx, ("varchar",), only_limited=True).items():
        yield Violation(
            f"{_columns(table, cols)}: varchar(n) puts the length limit in the type, so changing it later takes "
            "an ACCESS EXCLUSIVE lock (and shortening it rewrites the table)",
            "Use text with a CHECK (char_length(col) <= n) constraint, which can be changed online "
            "(NOT VALID, then VALIDATE).")


@rule("warning", *TYPE_NODES)
def ban_char_field(stmt: Statement, node: ast.Node, ctx: Context) -> Iterator[Violation]:
    """A char(n) column."""
    for table, cols in _type_hint(stmt, ctx, ("bpchar",)).items():
        yield Violation(
            f"{_columns(table, cols)}: char(n) pads values with spaces to n characters, compares ignoring them, "
            "and is no faster than text",
            "Use text (or varchar) with a CHECK constraint for the length.")


# --- suppressions --------------------------------------------------------------------------

@rule("error")
def suppression_without_reason(ctx: Context) -> Iterator[Violation]:
    """A suppression comment without a reason (it then suppresses nothing)."""
    for d in ctx.directives:
        if d.rules and not d.reason:
            ids = ",".join(d.rules)
            yield Violation(
                f"suppression of {ids} has no reason, so it does not take effect: say why the statement is safe",
                f"Write the reason after the rule id: -- schema-deploy: ignore {ids} <why it is safe here>.",
                line=d.line)


@rule("error")
def suppression_unknown_rule(ctx: Context) -> Iterator[Violation]:
    """A suppression comment naming no rule or an unknown one."""
    for d in ctx.directives:
        unknown = [r for r in d.rules if r not in RULES] if d.rules else ["(none)"]
        for rid in unknown:
            close = difflib.get_close_matches(rid, RULES, n=1)
            hint = f"Did you mean {close[0]}? " if close else ""
            yield Violation(
                f"suppression names the rule {rid}, which does not exist; it suppresses nothing",
                f"{hint}Valid rule ids: {', '.join(sorted(RULES))}.",
                line=d.line)
