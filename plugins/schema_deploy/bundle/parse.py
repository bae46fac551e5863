"""Parse migration SQL into classified statements: what runs, in which transaction, with which locks.

The file is cut into statements as psql cuts it (`splitter.py`, which also proves
that every character is a statement, a comment or whitespace), and each
statement goes through PostgreSQL's own parser (pglast, `fastparse.py`), so what
we split, where a statement starts and what kind of statement it is are exactly
what the server will see. Classification answers, per statement: can it run
inside a transaction, which tables it touches, which lock it takes on each,
and whether it rewrites or scans a table while holding that lock. Lock levels
follow PostgreSQL 15's documentation ("Explicit Locking" and the ALTER TABLE
reference page).

Explicit transaction blocks (`BEGIN; … COMMIT;`, which Prisma writes around an
enum change) are taken apart in `blocks.py`: each statement of a block carries
it, and the planner runs each block as one transaction. Refused with file:line
and the fix: transaction control with no safe meaning in a migration
(`blocks.py`), statements that need a client on the other end (`COPY … FROM
STDIN`, psql meta-commands), and writes to the ledger (`_prisma_migrations`).

Memory and time. A statement's syntax tree is kept only for the statement kinds
the planner, lint and verification look into again (DDL). Data statements
(INSERT, UPDATE, DELETE, SELECT, MERGE, COPY) are classified from the parser's
JSON without building a tree at all (`classify_data`, tested against
`classify`), and one is built from the text only if asked for (`node`), so a
50 MB data seed holds its text and its classification, not a tree twenty times
its size.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from pglast import ast, enums

from schema_deploy.bundle import splitter
from schema_deploy.bundle.blocks import Block, transaction_blocks
from schema_deploy.bundle.discover import Migration
from schema_deploy.bundle.errors import ClientOnlyStatement, MigrationFileError, SqlSyntaxError, UnaccountedBytes
from schema_deploy.bundle.fastparse import ParseError, parse_one, parse_statements
from schema_deploy.errors import shorten

# Lock modes, weakest first; conflicts grow with the index.
LOCK_MODES = (
    "ACCESS SHARE", "ROW SHARE", "ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE",
    "SHARE", "SHARE ROW EXCLUSIVE", "EXCLUSIVE", "ACCESS EXCLUSIVE",
)
ACCESS_EXCLUSIVE, SHARE, SHARE_ROW_EXCLUSIVE, SHARE_UPDATE_EXCLUSIVE = (
    "ACCESS EXCLUSIVE", "SHARE", "SHARE ROW EXCLUSIVE", "SHARE UPDATE EXCLUSIVE")

AT = enums.AlterTableType
# ALTER TABLE subcommands that take less than ACCESS EXCLUSIVE (PostgreSQL 15 docs).
AT_LOCKS = {
    AT.AT_SetStatistics: SHARE_UPDATE_EXCLUSIVE, AT.AT_ClusterOn: SHARE_UPDATE_EXCLUSIVE,
    AT.AT_DropCluster: SHARE_UPDATE_EXCLUSIVE, AT.AT_SetRelOptions: SHARE_UPDATE_EXCLUSIVE,
    AT.AT_ResetRelOptions: SHARE_UPDATE_EXCLUSIVE, AT.AT_ValidateConstraint: SHARE_UPDATE_EXCLUSIVE,
    AT.AT_AttachPartition: SHARE_UPDATE_EXCLUSIVE, AT.AT_DetachPartitionFinalize: SHARE_UPDATE_EXCLUSIVE,
    AT.AT_EnableTrig: SHARE_ROW_EXCLUSIVE, AT.AT_EnableAlwaysTrig: SHARE_ROW_EXCLUSIVE,
    AT.AT_EnableReplicaTrig: SHARE_ROW_EXCLUSIVE, AT.AT_DisableTrig: SHARE_ROW_EXCLUSIVE,
    AT.AT_EnableTrigAll: SHARE_ROW_EXCLUSIVE, AT.AT_DisableTrigAll: SHARE_ROW_EXCLUSIVE,
    AT.AT_EnableTrigUser: SHARE_ROW_EXCLUSIVE, AT.AT_DisableTrigUser: SHARE_ROW_EXCLUSIVE,
}
# Built-in functions that are not volatile (immutable or stable), as a default of an added column
# commonly calls them: PostgreSQL computes such a default once, so ADD COLUMN does not rewrite the
# table. Any other function (volatile built-ins such as random() or gen_random_uuid(), and every
# function the schema defines, whose volatility lint cannot see) is taken as volatile: a rewrite.
NON_VOLATILE_FUNCS = frozenset({
    "now", "transaction_timestamp", "statement_timestamp", "current_setting", "current_database", "version",
    "to_timestamp", "to_date", "to_char", "to_number", "date_trunc", "date_part", "extract", "make_date",
    "make_time", "make_timestamp", "make_timestamptz", "make_interval", "timezone", "age", "justify_days",
    "lower", "upper", "initcap", "btrim", "ltrim", "rtrim", "trim", "concat", "concat_ws", "replace", "substr",
    "substring", "left", "right", "length", "char_length", "octet_length", "lpad", "rpad", "repeat", "reverse",
    "md5", "sha256", "encode", "decode", "to_hex", "format", "split_part", "abs", "round", "trunc", "ceil",
    "ceiling", "floor", "mod", "power", "sqrt", "sign", "jsonb_build_object", "jsonb_build_array",
    "json_build_object", "json_build_array", "to_jsonb", "to_json", "jsonb_object", "json_object",
    "array_fill", "array_length", "cardinality", "int4range", "int8range", "numrange", "tsrange",
    "tstzrange", "daterange", "point", "inet", "cidr", "bool", "int4", "int8", "numeric", "text", "float8",
})
# Statements whose tree is dropped after classification (see "Memory" above).
DATA_STATEMENTS = (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.SelectStmt, ast.MergeStmt, ast.CopyStmt)
DATA_NAMES = frozenset(t.__name__ for t in DATA_STATEMENTS)
NONE: frozenset[str] = frozenset()


@dataclass(slots=True, eq=False)
class Statement:
    """One statement of a migration file, with where it is and what it does."""

    migration: str
    path: Path
    index: int  # 1-based position in the file (BEGIN/COMMIT of a block are not counted)
    line: int
    column: int
    sql: str
    tree: ast.Node | None  # the syntax tree, when kept (see `node`)
    node_type: type
    kind: str
    transactional: bool = True
    block: Block | None = None  # the file's BEGIN … COMMIT block holding it
    locks: dict[str, str] = field(default_factory=dict)  # table -> strongest lock mode
    # Tables rewritten under the lock, fully read under it, created. Read-only once classified (shared
    # empty frozensets: a data seed's hundred thousand statements would otherwise hold 3 sets each).
    rewrites: frozenset[str] = NONE
    scans: frozenset[str] = NONE
    creates: frozenset[str] = NONE

    @property
    def node(self) -> ast.Node:
        """The syntax tree: kept for DDL, rebuilt from the text (not kept) for data statements."""
        return self.tree if self.tree is not None else parse_one(self.sql)

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def tables(self) -> list[str]:
        return sorted(set(self.locks) | self.creates)

    def strongest_lock(self) -> str | None:
        if not self.locks:
            return None
        return max(self.locks.values(), key=LOCK_MODES.index)


@dataclass
class ParsedFile:
    """A parsed migration file: its statements, its BEGIN … COMMIT blocks, and the `;`s Prisma's
    splitter would cut at (for lint)."""

    statements: list[Statement]
    blocks: list[Block]
    split: splitter.Split


def parse_migration(migration: Migration) -> list[Statement]:
    """Parse a migration file into classified statements, or raise a located error."""
    return parse_migration_file(migration).statements


def parse_migration_file(migration: Migration) -> ParsedFile:
    """`parse_migration`, with the file's blocks and Prisma cuts; the problem found while reading the
    file (`Migration.problem`) is raised first."""
    if migration.problem is not None:
        raise migration.problem
    return parse_file(migration.sql, path=migration.path, migration=migration.name)


def migration_problem(migration: Migration) -> MigrationFileError | None:
    """What keeps `migration` from being deployed as written, or None (parses the file)."""
    try:
        parse_migration_file(migration)
    except MigrationFileError as exc:
        return exc
    return None


def parse_sql(text: str, *, path: Path | str = "<sql>", migration: str = "") -> list[Statement]:
    """The classified statements of one file's text."""
    return parse_file(text, path=path, migration=migration).statements


def parse_file(text: str, *, path: Path | str = "<sql>", migration: str = "") -> ParsedFile:
    """Split, account for every character, parse and classify one file's text; refuse what cannot be deployed."""
    path = Path(path)
    try:
        cut = splitter.split(text)
        splitter.account(cut)
    except splitter.SplitProblem as problem:
        raise split_error(path, problem) from None
    raw: list[Statement] = []
    for piece in cut.pieces:
        raw.extend(parse_piece(text, piece, path, migration, len(raw)))
    if cut.problem is not None:  # a psql meta-command: refused after anything before it (a COPY FROM STDIN)
        raise split_error(path, cut.problem)
    statements, blocks = transaction_blocks(raw, path)
    return ParsedFile(statements=statements, blocks=blocks, split=cut)


def split_error(path: Path, problem: splitter.SplitProblem) -> MigrationFileError:
    cls = ClientOnlyStatement if problem.code == "psql-meta-command" else UnaccountedBytes
    return cls(path, problem.line, problem.column, problem.what, problem.fix, code=problem.code)


def parse_piece(text: str, piece: splitter.Piece, path: Path, migration: str, before: int) -> list[Statement]:
    """The statements of one piece (almost always one), classified, at their places in the file."""
    sql = text[piece.start:piece.end]
    try:
        found = parse_statements(sql, skip=DATA_NAMES)
    except ParseError as exc:
        message, offset = exc.args[0], (exc.args[1] if len(exc.args) > 1 else None)
        if offset is None:  # "at end of input": point just past the last token
            offset = len(sql.rstrip())
        line, column = within(piece, sql, offset)
        at = piece.start + offset
        eol = text.find("\n", at)
        source_line = text[text.rfind("\n", 0, at) + 1: eol if eol >= 0 else len(text)]
        raise SqlSyntaxError(path, line, column, source_line.rstrip("\r"), message) from None
    statements = []
    for node, start, end in found:
        body = sql[start:end]
        lead = len(body) - len(body.lstrip(splitter.WHITESPACE))
        line, column = within(piece, sql, start + lead)
        stmt_sql = body.strip(splitter.WHITESPACE)
        data = node[1] if isinstance(node, tuple) else None  # a data statement, classified from its JSON
        stmt = Statement(migration=migration, path=path, index=before + len(statements) + 1, line=line,
                         column=column, sql=stmt_sql, tree=None if data is not None else node,
                         node_type=node[0] if data is not None else type(node), kind=statement_kind(stmt_sql))
        if data is None:
            classify(stmt)
        else:
            classify_data(stmt, data)
        refuse_client_only(stmt, data)
        refuse_ledger_writes(stmt)
        statements.append(stmt)
    return statements


LEDGER_TABLE = "_prisma_migrations"
READS = ("ACCESS SHARE", "ROW SHARE")


def refuse_ledger_writes(stmt: Statement) -> None:
    """A migration that writes the ledger (`TRUNCATE`, `DELETE FROM`, `INSERT INTO`, `DROP` …
    `_prisma_migrations`) would make the ledger lie about what ran: its own row could vanish and
    the next run re-apply everything. Reading it is fine."""
    for table in (*stmt.locks, *stmt.creates):
        if table.rsplit(".", 1)[-1] == LEDGER_TABLE and (table in stmt.creates or stmt.locks[table] not in READS):
            raise MigrationFileError(
                stmt.path, stmt.line, stmt.column,
                f"`{shorten(stmt.sql, 60)}` writes {LEDGER_TABLE}, the ledger that says which migrations ran: "
                "its own row could vanish, and the next run would apply everything again",
                "Remove it; change the ledger with `python -m schema_deploy resolve --applied|--rolled-back NAME` "
                "(as `prisma migrate resolve` does)", code="writes-ledger")


def classify_data(stmt: Statement, data: dict) -> None:
    """What `classify` finds for a data statement, read from its JSON parse tree (no tree is built):
    INSERT, UPDATE, DELETE, MERGE and COPY … FROM take ROW EXCLUSIVE on their table; the rest takes no
    lock we track."""
    copy_into = stmt.node_type is ast.CopyStmt and data.get("is_from") and data.get("relation")
    if stmt.node_type in (ast.InsertStmt, ast.UpdateStmt, ast.DeleteStmt, ast.MergeStmt) or copy_into:
        rv = data.get("relation") or {}
        name = rv.get("relname", "?")
        lock(stmt, f"{rv['schemaname']}.{name}" if rv.get("schemaname") else name, "ROW EXCLUSIVE")


def within(piece: splitter.Piece, sql: str, offset: int) -> tuple[int, int]:
    """Line and column in the file of `offset` into a piece's text."""
    newlines = sql.count("\n", 0, offset)
    if not newlines:
        return piece.line, piece.column + offset
    return piece.line + newlines, offset - sql.rfind("\n", 0, offset)


def refuse_client_only(stmt: Statement, data: dict | None = None) -> None:
    """COPY … FROM STDIN / TO STDOUT needs a client streaming rows; a migration sends statements only.
    (`data`: the statement's JSON parse tree, when no tree was built.)"""
    if stmt.node_type is not ast.CopyStmt:
        return
    copy = data if data is not None else {"filename": stmt.node.filename, "is_program": stmt.node.is_program,
                                          "is_from": stmt.node.is_from}
    if copy.get("filename") is None and not copy.get("is_program"):
        if copy.get("is_from"):
            raise ClientOnlyStatement(
                stmt.path, stmt.line, stmt.column, "`COPY … FROM STDIN`: the rows would have to come from the "
                "client (psql reads them from the lines after the statement), and a migration runner sends SQL "
                "statements only", "Write the rows as INSERT statements (`pg_dump --inserts` writes them), or "
                "load a file the database server can read with COPY … FROM '/path' (pg_read_server_files)",
                code="copy-from-stdin")
        raise ClientOnlyStatement(
            stmt.path, stmt.line, stmt.column, "`COPY … TO STDOUT`: a migration has no client to receive the rows",
            "Remove it from the migration; export data with psql or pg_dump outside the deployment",
            code="copy-from-stdin")


def statement_kind(sql: str) -> str:
    """A short human label: the statement's first keywords, e.g. 'CREATE INDEX'."""
    words = [w.upper() for w in sql[:200].replace("(", " ").split()[:4]]
    skip = {"UNIQUE", "CONCURRENTLY", "OR", "REPLACE", "TEMP", "TEMPORARY", "UNLOGGED", "IF", "NOT", "EXISTS"}
    head = [w for w in words if w not in skip]
    return sys.intern(" ".join(head[:2])) if head else "?"  # interned: thousands of statements share a kind


def relname(rv: ast.RangeVar | None) -> str:
    if rv is None:
        return "?"
    return f"{rv.schemaname}.{rv.relname}" if rv.schemaname else rv.relname


def lock(stmt: Statement, table: str, mode: str) -> None:
    """Record `mode` on `table`, keeping the strongest seen."""
    old = stmt.locks.get(table)
    if old is None or LOCK_MODES.index(mode) > LOCK_MODES.index(old):
        stmt.locks[table] = mode


def has_option(options: tuple | None, name: str) -> bool:
    """Is option `name` on in a statement's option list: `(FULL)`, `(FULL true)`, but not `(FULL false)`,
    `(FULL off)` or `(FULL 0)`?"""
    for o in options or ():
        if isinstance(o, ast.DefElem) and o.defname == name:
            arg = o.arg
            value = getattr(arg, "sval", None) if isinstance(arg, ast.String) else getattr(arg, "ival", None) \
                if isinstance(arg, ast.Integer) else getattr(arg, "boolval", None) if isinstance(arg, ast.Boolean) else True
            return str(value).lower() not in ("false", "off", "0", "no")
    return False


def classify(stmt: Statement) -> None:
    """Fill in the statement's transactional flag, locks, rewrites, scans and creates."""
    node = stmt.node
    handler = CLASSIFIERS.get(type(node))
    if handler is not None:
        stmt.rewrites, stmt.scans, stmt.creates = set(), set(), set()  # the handlers add to these
        handler(stmt, node)
        stmt.rewrites, stmt.scans, stmt.creates = (frozenset(stmt.rewrites) or NONE, frozenset(stmt.scans) or NONE,
                                                    frozenset(stmt.creates) or NONE)


def _index(stmt: Statement, node: ast.IndexStmt) -> None:
    table = relname(node.relation)
    if node.concurrent:
        stmt.transactional = False
        lock(stmt, table, SHARE_UPDATE_EXCLUSIVE)
    else:
        lock(stmt, table, SHARE)
    stmt.scans.add(table)


def _create_table(stmt: Statement, node: ast.CreateStmt) -> None:
    stmt.creates.add(relname(node.relation))
    for elt in node.tableElts or ():
        constraints = list(elt.constraints or ()) if isinstance(elt, ast.ColumnDef) else [elt]
        for c in constraints:
            if isinstance(c, ast.Constraint) and c.contype == enums.ConstrType.CONSTR_FOREIGN:
                lock(stmt, relname(c.pktable), SHARE_ROW_EXCLUSIVE)


def _alter_table(stmt: Statement, node: ast.AlterTableStmt) -> None:
    table = relname(node.relation)
    if node.objtype not in (enums.ObjectType.OBJECT_TABLE, None):
        lock(stmt, table, ACCESS_EXCLUSIVE)
        return
    for cmd in node.cmds or ():
        _alter_table_cmd(stmt, table, cmd)


def _alter_table_cmd(stmt: Statement, table: str, cmd: ast.AlterTableCmd) -> None:
    sub = cmd.subtype
    if sub == AT.AT_AddConstraint and isinstance(cmd.def_, ast.Constraint):
        c = cmd.def_
        if c.contype == enums.ConstrType.CONSTR_FOREIGN:
            lock(stmt, table, SHARE_ROW_EXCLUSIVE)
            lock(stmt, relname(c.pktable), SHARE_ROW_EXCLUSIVE)
            if not c.skip_validation:
                stmt.scans.add(table)
            return
        lock(stmt, table, ACCESS_EXCLUSIVE)
        if c.contype == enums.ConstrType.CONSTR_CHECK and not c.skip_validation:
            stmt.scans.add(table)
        if c.contype in (enums.ConstrType.CONSTR_PRIMARY, enums.ConstrType.CONSTR_UNIQUE,
                         enums.ConstrType.CONSTR_EXCLUSION) and not c.indexname:
            stmt.scans.add(table)
        return
    lock(stmt, table, AT_LOCKS.get(sub, ACCESS_EXCLUSIVE))
    if sub == AT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef):
        for c in cmd.def_.constraints or ():  # ADD COLUMN ... REFERENCES locks the referenced table too
            if isinstance(c, ast.Constraint) and c.contype == enums.ConstrType.CONSTR_FOREIGN:
                lock(stmt, relname(c.pktable), SHARE_ROW_EXCLUSIVE)
    if sub == AT.AT_ValidateConstraint or sub == AT.AT_SetNotNull:
        stmt.scans.add(table)
    elif sub == AT.AT_AlterColumnType:
        stmt.rewrites.add(table)
    elif sub == AT.AT_AddColumn and isinstance(cmd.def_, ast.ColumnDef) and added_column_rewrites(cmd.def_):
        stmt.rewrites.add(table)
    elif sub in (AT.AT_SetTableSpace, AT.AT_SetLogged, AT.AT_SetUnLogged, AT.AT_SetAccessMethod):
        stmt.rewrites.add(table)


SERIAL_TYPES = {"smallserial", "serial2", "serial", "serial4", "bigserial", "serial8"}


def added_column_rewrites(col: ast.ColumnDef) -> bool:
    """Must PostgreSQL compute the added column for every existing row (a table rewrite)?

    A volatile DEFAULT does, and so do the columns whose value comes from a
    sequence or an expression: serial types, identity and stored generated columns.
    """
    names = [n.sval.lower() for n in (col.typeName.names if col.typeName else ()) if isinstance(n, ast.String)]
    if len(names) == 1 and names[0] in SERIAL_TYPES:
        return True
    if any(isinstance(c, ast.Constraint) and c.contype in (enums.ConstrType.CONSTR_IDENTITY,
                                                           enums.ConstrType.CONSTR_GENERATED)
           for c in col.constraints or ()):
        return True
    return column_default_is_volatile(col)


def column_default_is_volatile(col: ast.ColumnDef) -> bool:
    """Does an added column's DEFAULT call a function that may be volatile (forcing a table rewrite)?
    Any function but the known non-volatile built-ins (`NON_VOLATILE_FUNCS`, unqualified or in
    pg_catalog) counts: a user-defined one may well be volatile, and lint cannot see its definition."""
    for c in col.constraints or ():
        if isinstance(c, ast.Constraint) and c.contype == enums.ConstrType.CONSTR_DEFAULT and c.raw_expr:
            for f in find_nodes(c.raw_expr, ast.FuncCall):
                parts = [n.sval.lower() for n in f.funcname]
                if parts[-1] not in NON_VOLATILE_FUNCS or parts[:-1] not in ([], ["pg_catalog"]):
                    return True
    return False


def find_nodes(node: object, kind: type) -> list:
    """Every node of type `kind` under `node` (depth first)."""
    found = []
    if isinstance(node, kind):
        found.append(node)
    if isinstance(node, ast.Node):
        for name in node:
            found.extend(find_nodes(getattr(node, name), kind))
    elif isinstance(node, (tuple, list)):
        for item in node:
            found.extend(find_nodes(item, kind))
    return found


def _drop(stmt: Statement, node: ast.DropStmt) -> None:
    kind = node.removeType
    names = [".".join(p.sval for p in obj) for obj in node.objects or () if isinstance(obj, tuple)]
    if kind == enums.ObjectType.OBJECT_INDEX:
        if node.concurrent:
            stmt.transactional = False
        for name in names:
            lock(stmt, name, SHARE_UPDATE_EXCLUSIVE if node.concurrent else ACCESS_EXCLUSIVE)
    elif kind in (enums.ObjectType.OBJECT_TABLE, enums.ObjectType.OBJECT_MATVIEW, enums.ObjectType.OBJECT_VIEW):
        for name in names:
            lock(stmt, name, ACCESS_EXCLUSIVE)


def _rename(stmt: Statement, node: ast.RenameStmt) -> None:
    if node.relation is not None:
        lock(stmt, relname(node.relation), ACCESS_EXCLUSIVE)


def _truncate(stmt: Statement, node: ast.TruncateStmt) -> None:
    for rv in node.relations or ():
        lock(stmt, relname(rv), ACCESS_EXCLUSIVE)


def _vacuum(stmt: Statement, node: ast.VacuumStmt) -> None:
    full = has_option(node.options, "full")
    if node.is_vacuumcmd:
        stmt.transactional = False
    for rel in node.rels or ():
        table = relname(rel.relation)
        lock(stmt, table, ACCESS_EXCLUSIVE if full else SHARE_UPDATE_EXCLUSIVE)
        (stmt.rewrites if full else stmt.scans).add(table)


def _cluster(stmt: Statement, node: ast.ClusterStmt) -> None:
    if node.relation is None:
        stmt.transactional = False
        return
    table = relname(node.relation)
    lock(stmt, table, ACCESS_EXCLUSIVE)
    stmt.rewrites.add(table)


def _reindex(stmt: Statement, node: ast.ReindexStmt) -> None:
    concurrent = has_option(node.params, "concurrently")
    if concurrent or node.relation is None:
        stmt.transactional = False
    if node.relation is not None:
        lock(stmt, relname(node.relation), SHARE_UPDATE_EXCLUSIVE if concurrent else SHARE)


def _refresh(stmt: Statement, node: ast.RefreshMatViewStmt) -> None:
    table = relname(node.relation)
    lock(stmt, table, "EXCLUSIVE" if node.concurrent else ACCESS_EXCLUSIVE)
    stmt.rewrites.add(table)


def _dml(stmt: Statement, node: ast.Node) -> None:
    lock(stmt, relname(node.relation), "ROW EXCLUSIVE")


def _copy(stmt: Statement, node: ast.CopyStmt) -> None:
    if node.is_from and node.relation is not None:
        lock(stmt, relname(node.relation), "ROW EXCLUSIVE")


def _trigger(stmt: Statement, node: ast.CreateTrigStmt) -> None:
    lock(stmt, relname(node.relation), SHARE_ROW_EXCLUSIVE)


def _non_transactional(stmt: Statement, node: ast.Node) -> None:
    stmt.transactional = False


def _lock_table(stmt: Statement, node: ast.LockStmt) -> None:
    mode = LOCK_MODES[min(max(node.mode - 1, 0), len(LOCK_MODES) - 1)]
    for rv in node.relations or ():
        lock(stmt, relname(rv), mode)


CLASSIFIERS = {
    ast.IndexStmt: _index,
    ast.CreateStmt: _create_table,
    ast.AlterTableStmt: _alter_table,
    ast.DropStmt: _drop,
    ast.RenameStmt: _rename,
    ast.TruncateStmt: _truncate,
    ast.VacuumStmt: _vacuum,
    ast.ClusterStmt: _cluster,
    ast.ReindexStmt: _reindex,
    ast.RefreshMatViewStmt: _refresh,
    ast.InsertStmt: _dml,
    ast.UpdateStmt: _dml,
    ast.DeleteStmt: _dml,
    ast.MergeStmt: _dml,
    ast.CopyStmt: _copy,
    ast.CreateTrigStmt: _trigger,
    ast.LockStmt: _lock_table,
    # ALTER TYPE ... ADD VALUE may run in a transaction since PostgreSQL 12, but
    # the new value cannot be used before that transaction commits: run it alone.
    ast.AlterEnumStmt: _non_transactional,
    ast.CreatedbStmt: _non_transactional,
    ast.DropdbStmt: _non_transactional,
    ast.AlterSystemStmt: _non_transactional,
    ast.CreateTableSpaceStmt: _non_transactional,
    ast.DropTableSpaceStmt: _non_transactional,
}
