"""The lint rule framework: the registry, what a rule sees, and shared phrasing.

A rule is a function named after its id (`require_concurrent_index` is
`require-concurrent-index`), registered with `@rule(severity, *node_types)`.
A statement rule is registered for the pglast node types it inspects and is
called as ``rule(stmt, node, ctx)``; a file rule (no node types) is called once
per migration file as ``rule(ctx)``. Both yield `Violation`s: a message that
says what the statement blocks and for how long, and help that says the fix
(and what schema-deploy's online mode does about it, where it does something).
The engine (`engine.py`) adds the rule id, severity, file:line and suppressions.

The rules themselves live in `rules/locks.py` (locks, rewrites, transactions)
and `rules/hygiene.py` (destructive changes, retry safety, names and types,
suppression comments). Lock levels and what they block follow PostgreSQL 15's
"Explicit Locking" chapter; the rule set follows squawk (its ids are kept where
a squawk rule matches) and strong_migrations.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pglast import ast, enums

from schema_deploy.bundle.parse import Statement, relname
from schema_deploy.bundle.splitter import Split
from schema_deploy.config.settings import LINT_SEVERITIES
from schema_deploy.pg.names import quoted

SEVERITIES = LINT_SEVERITIES  # deploy.yaml's lint: section is checked against these (config.settings)
AT, CT, OT = enums.AlterTableType, enums.ConstrType, enums.ObjectType

LOCK_EFFECT = {
    "ACCESS EXCLUSIVE": "blocks reads and writes (SELECT, INSERT, UPDATE, DELETE) on it",
    "EXCLUSIVE": "blocks writes on it; only plain reads proceed",
    "SHARE ROW EXCLUSIVE": "blocks writes (INSERT, UPDATE, DELETE) on it",
    "SHARE": "blocks writes (INSERT, UPDATE, DELETE) on it",
    "SHARE UPDATE EXCLUSIVE": "blocks other schema changes and VACUUM on it, not reads or writes",
}
QUEUES = ("the change itself is quick, but the lock waits behind every running query on the table, "
          "and every query that arrives meanwhile waits behind it")
# For changes that are not about locks first: "...; {LOCKS_BRIEFLY}".
LOCKS_BRIEFLY = f"it also takes an ACCESS EXCLUSIVE lock: {QUEUES}"
ONLINE = "schema-deploy's online mode rewrites this to"


# --- registry ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Violation:
    """What a rule found: the message, the fix, and (for file rules) where."""

    message: str
    help: str
    statement: Statement | None = None  # file rules name the statement it belongs to
    line: int | None = None  # a more precise line than the statement's first


@dataclass(frozen=True)
class Rule:
    """A registered rule: its id, default severity, function and what it inspects."""

    id: str
    severity: str
    check: Callable[..., Iterator[Violation]]
    nodes: tuple[type, ...]  # statement node types inspected; () for a whole-file rule
    summary: str


RULES: dict[str, Rule] = {}
BY_NODE: dict[type, list[Rule]] = {}
ANY_STATEMENT: list[Rule] = []  # statement rules that look at every statement
FILE_RULES: list[Rule] = []
META_RULES = ("suppression-without-reason", "suppression-unknown-rule")  # never suppressible


def rule(severity: str, *nodes: type, every_statement: bool = False):
    """Register the decorated function as the rule named after it (`a_b` → `a-b`); the first line of
    its docstring is the rule's summary."""
    def register(func: Callable[..., Iterator[Violation]]) -> Callable[..., Iterator[Violation]]:
        rid = func.__name__.replace("_", "-")
        summary = (func.__doc__ or "").strip().splitlines()[0].rstrip(".")
        r = Rule(id=rid, severity=severity, check=func, nodes=nodes, summary=summary)
        RULES[rid] = r
        if every_statement:
            ANY_STATEMENT.append(r)
        elif not nodes:
            FILE_RULES.append(r)
        for node_type in nodes:
            BY_NODE.setdefault(node_type, []).append(r)
        return func
    return register


# --- what a rule knows ---------------------------------------------------------------------

@dataclass(frozen=True)
class Directive:
    """A `-- schema-deploy: ignore <rule-id>[,<rule-id>] <reason>` comment."""

    line: int
    rules: tuple[str, ...]
    reason: str | None


@dataclass
class BundleFacts:
    """What lint learns across the files of a bundle, in order."""

    not_null_checked: set[tuple[str, str]] = field(default_factory=set)  # (table, column) with a validated check
    # (namespace, name cut to 63 bytes) -> (full name, file:line) of what the bundle creates, for collisions
    names: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    unvalidated_checks: dict[tuple[str, str], str] = field(default_factory=dict)  # (table, constraint) -> column


@dataclass
class Context:
    """One migration file as the rules see it.

    "Existing" means: in the target database when one is given (`existing`),
    else anything not created earlier in this same file (see engine.py).
    """

    statements: list[Statement]
    existing: set[str] | None = None
    rows: dict[str, int] = field(default_factory=dict)
    facts: BundleFacts = field(default_factory=BundleFacts)
    directives: list[Directive] = field(default_factory=list)
    created_at: dict[str, int] = field(default_factory=dict)  # name -> index of the statement creating it
    source: str = ""  # the file's text, for rules that read what the parser drops (comments, where `;`s are)
    split: Split | None = None  # the splitter's pass over `source`, when the caller has it

    atomic: bool = field(init=False)  # the whole file runs as one transaction
    # The first ACCESS EXCLUSIVE lock on an existing table among the statements seen so far: (table, statement).
    first_exclusive: tuple[str, Statement] | None = field(init=False, default=None)
    # Constraints this file adds NOT VALID: (table, name) -> the statement adding them.
    not_valid_added: dict[tuple[str, str], Statement] = field(init=False, default_factory=dict)
    _columns: dict[int, list] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.atomic = all(s.transactional for s in self.statements) and self.steps() <= 1

    def created_earlier(self, name: str, stmt: Statement) -> bool:
        """Did a statement before `stmt` in this file create `name`?"""
        made = self.created_at.get(norm(name))
        return made is not None and made < stmt.index

    def is_existing(self, name: str, stmt: Statement) -> bool:
        """Is relation `name` in use before `stmt` runs (see the class docstring)?"""
        if self.created_earlier(name, stmt):
            return False
        return True if self.existing is None else norm(name) in self.existing

    def typed_columns(self, stmt: Statement) -> list[tuple[str, ast.ColumnDef, str | None]]:
        """(table, column, built-in type name or None) defined by a CREATE TABLE, ADD COLUMN or ALTER
        COLUMN TYPE; computed once per statement for the several type rules."""
        cached = self._columns.get(stmt.index)
        if cached is None:
            cached = self._columns[stmt.index] = [(t, c, builtin_type(c.typeName)) for t, c in column_defs(stmt.node)]
        return cached

    def for_the_whole(self, table: str, activity: str, reading: str = "reads all") -> str:
        rows = self.rows.get(norm(table))
        if rows is None:
            return f"for the whole {activity}, proportional to the table's size"
        return f"for the whole {activity}, which {reading} ~{rows:,} rows"

    def steps(self) -> int:
        """How many steps the plan makes of this file: runs of transactional statements, each BEGIN …
        COMMIT block one of its own (as `plan.planner.group_steps` makes them)."""
        count, previous = 0, None
        for s in self.statements:
            if not (previous is not None and previous.transactional and s.transactional
                    and previous.block is s.block):
                count += 1
            previous = s
        return count


def norm(name: str) -> str:
    """Compare names without the default schema: `public.t` is `t`."""
    return name[7:] if name.startswith("public.") else name


def q(name: str | None) -> str:
    """Quote a name for a message; `schema.table` becomes "schema"."table"."""
    return quoted(str(name))


def article(mode: str) -> str:
    return "an" if mode[0] in "AEIOU" else "a"


def takes(what: str, table: str, mode: str) -> str:
    return f"{what} on {q(table)} takes {article(mode)} {mode} lock: {LOCK_EFFECT[mode]}"


def dotted(names: tuple | None) -> str:
    return ".".join(n.sval for n in names or ())


def type_text(tn: ast.TypeName | None) -> str:
    from pglast.stream import RawStream  # here: pglast's printers cost a lint call ~8 ms to import

    return RawStream()(tn) if tn is not None else "?"


def builtin_type(tn: ast.TypeName | None) -> str | None:
    """The lower-case name of a built-in type (unqualified or in pg_catalog), e.g. `int4`, `timestamp`."""
    if tn is None or not tn.names:
        return None
    parts = tn.names
    if len(parts) > 2 or (len(parts) == 2 and parts[0].sval != "pg_catalog"):
        return None
    return parts[-1].sval.lower()


def type_is(tn: ast.TypeName | None, *names: str) -> str | None:
    """The type's name if it is one of `names` (built-in, unqualified or in pg_catalog)."""
    name = builtin_type(tn)
    return name if name in names else None


def column_defs(node: ast.Node) -> Iterator[tuple[str, ast.ColumnDef]]:
    """(table, column definition) of a CREATE TABLE, ADD COLUMN or ALTER COLUMN TYPE."""
    if isinstance(node, ast.CreateStmt):
        table = relname(node.relation)
        for elt in node.tableElts or ():
            if isinstance(elt, ast.ColumnDef):
                yield table, elt
    elif isinstance(node, ast.AlterTableStmt):
        table = relname(node.relation)
        for cmd in table_cmds(node, AT.AT_AddColumn, AT.AT_AlterColumnType):
            if isinstance(cmd.def_, ast.ColumnDef):
                col = cmd.def_ if cmd.def_.colname else ast.ColumnDef(colname=cmd.name, typeName=cmd.def_.typeName)
                yield table, col


def constraints(col: ast.ColumnDef, *kinds: CT) -> list[ast.Constraint]:
    return [c for c in col.constraints or () if isinstance(c, ast.Constraint) and c.contype in kinds]


def table_cmds(node: ast.AlterTableStmt, *subtypes: AT) -> Iterator[ast.AlterTableCmd]:
    """The subcommands of an ALTER TABLE (not ALTER INDEX/VIEW/...) of the given kinds."""
    if node.objtype not in (OT.OBJECT_TABLE, None):
        return
    for cmd in node.cmds or ():
        if cmd.subtype in subtypes:
            yield cmd


def added_constraints(node: ast.AlterTableStmt, kind: CT) -> Iterator[tuple[ast.Constraint, str | None]]:
    """Constraints of `kind` added by ADD CONSTRAINT, or inline by ADD COLUMN (with that column)."""
    for cmd in table_cmds(node, AT.AT_AddConstraint, AT.AT_AddColumn):
        if cmd.subtype == AT.AT_AddConstraint:
            if isinstance(cmd.def_, ast.Constraint) and cmd.def_.contype == kind:
                yield cmd.def_, None
        elif isinstance(cmd.def_, ast.ColumnDef):
            for c in constraints(cmd.def_, kind):
                yield c, cmd.def_.colname


def constraint_label(c: ast.Constraint, column: str | None, kind: str) -> str:
    if column is not None:
        return f"ADD COLUMN {q(column)} … {kind}"
    return f"ADD CONSTRAINT {q(c.conname)} {kind}" if c.conname else f"ADD {kind}"


# --- what the rules learn as they go -------------------------------------------------------

OBSERVED = (ast.CreateStmt, ast.IndexStmt, ast.CreateTableAsStmt, ast.ViewStmt, ast.CreateEnumStmt,
            ast.CompositeTypeStmt, ast.RenameStmt, ast.AlterTableStmt)


def observe(stmt: Statement, ctx: Context) -> None:
    """Record what `stmt` creates, which NOT NULL checks it validates and the first ACCESS EXCLUSIVE
    lock on an existing table, after the rules ran on it."""
    if ctx.first_exclusive is None:
        for table, mode in stmt.locks.items():
            if mode == "ACCESS EXCLUSIVE" and ctx.is_existing(table, stmt):
                ctx.first_exclusive = (table, stmt)
                break
    if stmt.node_type not in OBSERVED:  # a data statement's tree is not kept: do not rebuild it for nothing
        return
    node = stmt.node
    created = None
    if isinstance(node, ast.CreateStmt):
        created = relname(node.relation)
    elif isinstance(node, ast.IndexStmt) and node.idxname:
        created = f"{node.relation.schemaname}.{node.idxname}" if node.relation.schemaname else node.idxname
    elif isinstance(node, ast.CreateTableAsStmt):
        created = relname(node.into.rel)
    elif isinstance(node, ast.ViewStmt):
        created = relname(node.view)
    elif isinstance(node, (ast.CreateEnumStmt, ast.CompositeTypeStmt)):
        created = dotted(node.typeName) if isinstance(node, ast.CreateEnumStmt) else relname(node.typevar)
    elif isinstance(node, ast.RenameStmt) and node.relation is not None and node.renameType == OT.OBJECT_TABLE:
        if not ctx.is_existing(relname(node.relation), stmt):
            created = f"{node.relation.schemaname}.{node.newname}" if node.relation.schemaname else node.newname
    elif isinstance(node, ast.AlterTableStmt):
        _observe_not_null_checks(node, ctx.facts)
        for cmd in node.cmds or ():
            c = cmd.def_
            if cmd.subtype == AT.AT_AddConstraint and isinstance(c, ast.Constraint) and c.skip_validation and c.conname:
                ctx.not_valid_added[(norm(relname(node.relation)), c.conname)] = stmt
    if created is not None:
        ctx.created_at.setdefault(norm(created), stmt.index)


def _observe_not_null_checks(node: ast.AlterTableStmt, facts: BundleFacts) -> None:
    table = norm(relname(node.relation))
    for cmd in node.cmds or ():
        c = cmd.def_
        if (cmd.subtype == AT.AT_AddConstraint and isinstance(c, ast.Constraint) and c.contype == CT.CONSTR_CHECK
                and isinstance(c.raw_expr, ast.NullTest)
                and c.raw_expr.nulltesttype == enums.NullTestType.IS_NOT_NULL
                and isinstance(c.raw_expr.arg, ast.ColumnRef)):
            column = c.raw_expr.arg.fields[-1].sval
            if c.skip_validation:
                facts.unvalidated_checks[(table, c.conname or "")] = column
            else:
                facts.not_null_checked.add((table, column))
        elif cmd.subtype == AT.AT_ValidateConstraint and (table, cmd.name) in facts.unvalidated_checks:
            facts.not_null_checked.add((table, facts.unvalidated_checks[(table, cmd.name)]))
