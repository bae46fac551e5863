"""What a plan is made of: planned statements, grouped into steps.

Its own module so that the planner (planner.py) and the online rewrites (online.py),
which produce these, both import them without importing each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pglast import ast as pg_ast
from pglast.enums import AlterTableType

from schema_deploy.bundle.parse import LOCK_MODES, Statement


@dataclass(eq=False, slots=True)
class PlannedStatement:
    """SQL to run, and the file statement it comes from."""

    sql: str
    source: Statement
    locks: dict[str, str]
    transactional: bool
    reason: str | None = None  # why this differs from the file (online rewrites)
    node: pg_ast.Node | None = None  # AST of `sql` when it differs from the source statement's
    deferred_check: bool = False  # a precheck is decided when this runs (its table is written before it)

    @property
    def ast(self) -> pg_ast.Node:
        return self.node if self.node is not None else self.source.node

    @property
    def node_type(self) -> type:
        """The statement's node type, without rebuilding a tree the parser did not keep."""
        return type(self.node) if self.node is not None else self.source.node_type

    @property
    def where(self) -> str:
        return self.source.where


@dataclass
class Step:
    """What runs at once: a transaction, or one non-transactional statement."""

    number: int
    transactional: bool
    statements: list[PlannedStatement] = field(default_factory=list)

    @property
    def locks(self) -> dict[str, str]:
        merged: dict[str, str] = {}
        for st in self.statements:
            for table, mode in st.locks.items():
                if table not in merged or LOCK_MODES.index(mode) > LOCK_MODES.index(merged[table]):
                    merged[table] = mode
        return merged

    @property
    def online_kind(self) -> str | None:
        """"index build" or "constraint validation" when this step builds an index concurrently or validates a
        constraint (the work the health gate paces in production: it writes WAL or scans a table while the
        application runs); else None."""
        for st in self.statements:
            if st.node_type is pg_ast.IndexStmt and st.ast.concurrent:
                return "index build"
            if st.node_type is pg_ast.AlterTableStmt and any(
                    getattr(cmd, "subtype", None) == AlterTableType.AT_ValidateConstraint for cmd in st.ast.cmds or ()):
                return "constraint validation"
        return None

    def as_dict(self) -> dict[str, object]:
        return {
            "step": self.number,
            "transaction": self.transactional,
            "locks": self.locks,
            "statements": [
                {"sql": s.sql, "where": s.where, "locks": s.locks, "reason": s.reason} for s in self.statements
            ],
        }
