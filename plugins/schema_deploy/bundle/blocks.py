"""Explicit transaction blocks in a migration file: `BEGIN; … COMMIT;` taken apart into a Block.

Prisma writes such a block around an enum change, and people write them by hand. The
statements between BEGIN and COMMIT carry their Block; the planner runs each block as
one transaction (`plan.planner.group_steps`), as written. BEGIN and COMMIT themselves are not
statements of the plan. Transaction control with no safe meaning in a migration is
refused with file:line and the fix: ROLLBACK (outside a block PostgreSQL only warns, and
it would silently discard what ran before it), savepoints, a nested BEGIN (ignored with a
warning, so the first COMMIT would end the outer block), a COMMIT or END with no BEGIN,
a block never closed, AND CHAIN, two-phase commit, BEGIN with options, and a statement
PostgreSQL cannot run inside a block (`CREATE INDEX CONCURRENTLY`, `VACUUM`, …).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pglast import ast, enums

from schema_deploy.bundle.errors import TransactionControlError
from schema_deploy.errors import shorten

if TYPE_CHECKING:  # parse imports this module; its statements are what it takes apart
    from schema_deploy.bundle.parse import Statement

TK = enums.TransactionStmtKind


@dataclass(frozen=True, slots=True)
class Block:
    """An explicit `BEGIN; … COMMIT;` block of a file: its number (1-based) and its lines."""

    number: int
    begin_line: int
    end_line: int

    @property
    def lines(self) -> str:
        return f"lines {self.begin_line}-{self.end_line}" if self.end_line > self.begin_line \
            else f"line {self.begin_line}"


def transaction_blocks(raw: list[Statement], path: Path) -> tuple[list[Statement], list[Block]]:
    """Take BEGIN/COMMIT out of the statements, marking the statements between them with their block;
    refuse transaction control that has no safe meaning in a migration."""
    statements: list[Statement] = []
    blocks: list[Block] = []
    opened: Statement | None = None
    members: list[Statement] = []
    for stmt in raw:
        if stmt.node_type is not ast.TransactionStmt:
            stmt.index = len(statements) + 1
            statements.append(stmt)
            if opened is not None:
                members.append(stmt)
            continue
        node, word = stmt.tree, shorten(stmt.sql, 60)
        if node.kind in (TK.TRANS_STMT_BEGIN, TK.TRANS_STMT_START):
            if opened is not None:
                raise TransactionControlError(
                    path, stmt.line, word, f"inside the BEGIN block opened at line {opened.line}: PostgreSQL "
                    "ignores a nested BEGIN with a warning, so the first COMMIT would end the outer block early",
                    "Remove it, or COMMIT the first block before it")
            if node.options:
                raise TransactionControlError(
                    path, stmt.line, " ".join(stmt.sql.split()), "with transaction options",
                    "Write the block as plain BEGIN; (a migration's transaction runs with the server's defaults)")
            opened, members = stmt, []
        elif node.kind == TK.TRANS_STMT_COMMIT and not node.chain:
            if opened is None:
                raise TransactionControlError(
                    path, stmt.line, word, "closes no BEGIN: PostgreSQL only warns, and the statements before it "
                    "would not be the one transaction it suggests", "Remove it, or add BEGIN; where the "
                    "transaction should start")
            block = Block(number=len(blocks) + 1, begin_line=opened.line, end_line=stmt.line)
            blocks.append(block)
            for member in members:
                enter_block(member, block, path)
            opened = None
        else:
            raise TransactionControlError(path, stmt.line, word, *TRANSACTION_REFUSALS.get(
                node.kind if not (node.kind == TK.TRANS_STMT_COMMIT and node.chain) else "chain",
                TRANSACTION_REFUSALS[None]))
    if opened is not None:
        raise TransactionControlError(
            path, opened.line, shorten(opened.sql, 60), "is never closed: PostgreSQL would roll the "
            "block back when the session ends", "Add COMMIT; after the block's last statement")
    return statements, blocks


def enter_block(stmt: Statement, block: Block, path: Path) -> None:
    """Mark `stmt` as run inside `block`; refuse what PostgreSQL cannot run in a transaction block."""
    stmt.block = block
    if stmt.transactional:
        return
    if stmt.node_type is ast.AlterEnumStmt:  # allowed in a transaction since PostgreSQL 12, as written
        stmt.transactional = True
        return
    raise TransactionControlError(
        path, stmt.line, shorten(stmt.sql, 60), f"inside the BEGIN … COMMIT block of {block.lines}: PostgreSQL refuses it "
        "there (\"cannot run inside a transaction block\")", "Move it after the block's COMMIT")


TRANSACTION_REFUSALS: dict[object, tuple[str, str]] = {
    TK.TRANS_STMT_ROLLBACK: (
        "would silently discard what ran before it in its transaction (outside a block PostgreSQL only warns)",
        "Remove it: a migration that fails is rolled back by schema-deploy, and its ledger says so"),
    TK.TRANS_STMT_SAVEPOINT: (
        "has no safe meaning in a migration: schema-deploy decides where transactions start and end",
        "Remove the savepoint and what refers to it"),
    TK.TRANS_STMT_RELEASE: (
        "has no safe meaning in a migration: schema-deploy decides where transactions start and end",
        "Remove the savepoint and what refers to it"),
    TK.TRANS_STMT_ROLLBACK_TO: (
        "would silently discard part of the migration", "Remove the savepoint and what refers to it"),
    "chain": ("AND CHAIN has no safe meaning in a migration", "Write COMMIT; then BEGIN; for the next block"),
    None: ("two-phase commit has no place in a migration", "Remove it"),
}
