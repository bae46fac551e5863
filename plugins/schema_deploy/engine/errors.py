"""Errors of engine/: applying, resolving and rolling back migrations."""
from __future__ import annotations

from typing import TYPE_CHECKING

from schema_deploy.errors import SchemaDeployError, shorten

if TYPE_CHECKING:
    from schema_deploy.pg.db import Session


class LockRetriesExhausted(SchemaDeployError):
    """A statement kept timing out on a table lock (SQLSTATE 55P03)."""

    transient = True

    exit_code = 1

    def __init__(self, migration: str, where: str, statement: str, attempts: int,
                 blockers: list[Session]) -> None:
        self.migration, self.where, self.attempts, self.blockers = migration, where, attempts, blockers
        lines = [
            f"{migration} ({where}): gave up after {attempts} attempts: the statement could not get its "
            f"lock within lock_timeout each time (SQLSTATE 55P03).",
            f"    statement: {shorten(statement, 200)}",
        ]
        if blockers:
            lines.append("    blocked by:")
            lines.extend(f"      {b.as_blocker()}" for b in blockers)
        else:
            lines.append("    the blocking sessions had finished by the time they were looked up.")
        lines.append("Retry when the blocking work is done (the migration resumes where it stopped), "
                     "or raise the retry budget (--lock-retries).")
        super().__init__("\n".join(lines))


class MigrationFailed(SchemaDeployError):
    """A statement of a migration failed; the ledger records it the way Prisma would."""

    exit_code = 1

    def __init__(self, migration: str, where: str, sqlstate: str | None, pg_message: str, ledger_note: str) -> None:
        self.migration, self.where, self.sqlstate, self.pg_message = migration, where, sqlstate, pg_message
        super().__init__(
            f"migration {migration} failed at {where}: SQLSTATE {sqlstate or '?'}: {pg_message.strip()}\n"
            f"{ledger_note}"
        )


class ResolveRefused(SchemaDeployError):
    """`resolve` asked for something Prisma refuses too."""

    exit_code = 1


class RollbackRefused(SchemaDeployError):
    """A rollback that cannot be done as asked; nothing was changed."""

    exit_code = 1


class NoDownMigration(RollbackRefused):
    """A migration to roll back has no down.sql."""

    def __init__(self, name: str, expected: str) -> None:
        self.name, self.expected = name, expected
        super().__init__(
            f"cannot roll back {name}: it has no down migration; expected {expected}. Write the SQL that "
            "reverses migration.sql there (guard each statement with IF EXISTS so a re-run is harmless), "
            "or roll back from a backup instead. Nothing was changed.")


class NotApplied(RollbackRefused):
    """The migration named by `to` is not applied on the target."""

    def __init__(self, name: str, state: str, applied: list[str]) -> None:
        self.name, self.state = name, state
        newest = ", ".join(applied[-3:]) or "none"
        super().__init__(
            f"cannot roll back {name}: it is not applied to this database (its state is {state}). Only "
            f"applied migrations can be rolled back; the newest applied ones are: {newest}. Nothing was changed.")


class RollbackFailed(SchemaDeployError):
    """A statement of a down migration failed; the ledger still records the migration applied."""

    exit_code = 1

    def __init__(self, migration: str, where: str, sqlstate: str | None, pg_message: str, done: int,
                 total: int) -> None:
        self.migration, self.where, self.sqlstate, self.pg_message = migration, where, sqlstate, pg_message
        kept = (f"Steps 1..{done} of {total} ran and stay committed" if done else "Nothing of it ran")
        super().__init__(
            f"rollback of {migration} failed at {where}: SQLSTATE {sqlstate or '?'}: {pg_message.strip()}\n"
            f"{kept}; _prisma_migrations still records {migration} as applied. Fix the cause (or the "
            f"down.sql), then run the rollback again: statements guarded with IF EXISTS skip what is done.")
