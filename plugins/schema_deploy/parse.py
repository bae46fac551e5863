"""Split migration SQL into statements with pglast and classify each one.

pglast wraps PostgreSQL's own parser, so what we split, where a statement
starts and what kind of statement it is are exactly what the server will see.
Classification answers, per statement: can it run inside a transaction, which
tables it touches, which lock it takes on each, and whether it rewrites or
scans a table while holding that lock. Lock levels follow PostgreSQL 15's
documentation ("Explicit Locking" and the ALTER TABLE reference page).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pglast
from pglast import ast, enums

from schema_deploy.bundle import Migration
from schema_deploy.errors import SqlSyntaxError, TransactionControlError

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
VOLATILE_DEFAULT_FUNCS = {"random", "gen_random_uuid", "uuid_generate_v4", "clock_timestamp",
                          "timeofday", "nextval", "uuid_generate_v1", "uuid_generate_v1mc"}


@dataclass
class Statement:
    """One statement of a migration file, with where it is and what it does."""

    migration: str
    path: Path
    index: int  # 1-based position in the file
    line: int
    column: int
    sql: str
    node: ast.Node
    kind: str
    transactional: bool = True
    locks: dict[str, str] = field(default_factory=dict)  # table -> strongest lock mode
    rewrites: set[str] = field(default_factory=set)  # tables rewritten under the lock
    scans: set[str] = field(default_factory=set)  # tables fully read under the lock
    creates: set[str] = field(default_factory=set)  # tables this statement creates

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


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column of a character offset."""
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


def parse_migration(migration: Migration) -> list[Statement]:
    """Parse a migration file into classified statements, or raise a located error."""
    return parse_sql(migration.sql, path=migration.path, migration=migration.name)


def parse_sql(text: str, *, path: Path | str = "<sql>", migration: str = "") -> list[Statement]:
    path = Path(path)
    try:
        raws = pglast.parse_sql(text)
    except pglast.parser.ParseError as exc:
        message, offset = exc.args[0], (exc.args[1] if len(exc.args) > 1 else None)
        if offset is None:  # "at end of input": point just past the last token
            offset = len(text.rstrip())
        line, col = line_col(text, offset)
        raise SqlSyntaxError(path, line, col, text.split("\n")[line - 1].rstrip("\r"), message) from None
    statements = []
    for i, raw in enumerate(raws, start=1):
        start = raw.stmt_location or 0
        sql = text[start: start + raw.stmt_len].strip() if raw.stmt_len else text[start:].strip()
        line, col = line_col(text, start)
        stmt = Statement(migration=migration, path=path, index=i, line=line, column=col,
                         sql=sql, node=raw.stmt, kind=statement_kind(sql))
        if isinstance(raw.stmt, ast.TransactionStmt):
            raise TransactionControlError(path, line, sql.split()[0].upper())
        classify(stmt)
        statements.append(stmt)
    return statements


def statement_kind(sql: str) -> str:
    """A short human label: the statement's first keywords, e.g. 'CREATE INDEX'."""
    words = [w.upper() for w in sql.replace("(", " ").split()[:4]]
    skip = {"UNIQUE", "CONCURRENTLY", "OR", "REPLACE", "TEMP", "TEMPORARY", "UNLOGGED", "IF", "NOT", "EXISTS"}
    head = [w for w in words if w not in skip]
    return " ".join(head[:2]) if head else "?"


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
    return any(isinstance(o, ast.DefElem) and o.defname == name for o in options or ())


def classify(stmt: Statement) -> None:
    """Fill in the statement's transactional flag, locks, rewrites and scans."""
    node = stmt.node
    handler = CLASSIFIERS.get(type(node))
    if handler is not None:
        handler(stmt, node)


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
    """Does an added column's DEFAULT call a volatile function (forcing a table rewrite)?"""
    for c in col.constraints or ():
        if isinstance(c, ast.Constraint) and c.contype == enums.ConstrType.CONSTR_DEFAULT and c.raw_expr:
            names = {n.sval.lower() for f in find_nodes(c.raw_expr, ast.FuncCall) for n in f.funcname[-1:]}
            if names & VOLATILE_DEFAULT_FUNCS:
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
