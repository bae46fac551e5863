"""Errors of plan/: plans refused before anything changed: invalid pending files, data prechecks, schema.prisma checks."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from schema_deploy.errors import SchemaDeployError

if TYPE_CHECKING:
    from schema_deploy.bundle.errors import MigrationFileError
    from schema_deploy.pg.db import Session


class PendingMigrationInvalid(SchemaDeployError):
    """A pending migration of the run cannot be deployed as written; nothing was changed."""

    def __init__(self, migration: str, error: MigrationFileError, before: str | None) -> None:
        self.migration, self.error = migration, error
        rest = f"\nTo deploy the migrations before it now, run with --to {before}." if before else ""
        super().__init__(f"refusing to deploy: migration {migration} cannot be applied as written; nothing was "
                         f"changed:\n{error.message}{rest}")


class PrecheckFailed(SchemaDeployError):
    """Existing rows would make a migration fail; found before anything changed."""

    exit_code = 1

    def __init__(self, failures: list[tuple[str, list[str], str]]) -> None:
        self.failures = failures
        lines = ["data prechecks failed; nothing was changed:"]
        for headline, samples, fix in failures:
            lines.append(f"- {headline}")
            if samples:
                lines.append(f"    samples: {', '.join(samples)}")
            lines.append(f"    fix: {fix}")
        super().__init__("\n".join(lines))


class PrecheckLocked(SchemaDeployError):
    """A precheck could not read its table: another session held a conflicting lock every time."""

    exit_code = 1

    def __init__(self, where: str, description: str, table: str, attempts: int, holders: list[Session]) -> None:
        self.where, self.table, self.holders = where, table, holders
        who = "; ".join(h.as_blocker() for h in holders) or "sessions that had finished by the time they were looked up"
        super().__init__(
            f"data precheck for {where} ({description}) could not read {table} in {attempts} attempts: another "
            f"session holds a lock on it that blocks reads (lock_timeout each time, SQLSTATE 55P03). Held by: "
            f"{who}. Nothing was changed. Run again when that work is done, raise --lock-retries, or end the "
            "session with SELECT pg_terminate_backend(<pid>).")


class PrecheckCouldNotRun(SchemaDeployError):
    """A precheck's query failed on the existing rows (the statement would most likely fail the same way)."""

    exit_code = 1

    def __init__(self, where: str, description: str, sqlstate: str | None, pg_message: str) -> None:
        self.where, self.sqlstate = where, sqlstate
        super().__init__(
            f"data precheck for {where} ({description}) could not run: SQLSTATE {sqlstate or '?'}: {pg_message}. "
            "Nothing was changed. The statement would most likely fail the same way on these rows: fix the rows "
            "or the statement, or, if you know it will not, waive the checks for this run with "
            "--waive-prechecks REASON.")


class PrecheckTimedOut(SchemaDeployError):
    """A precheck ran past its statement_timeout (a large table)."""

    exit_code = 1

    def __init__(self, where: str, description: str, table: str, rows: int | None, timeout_ms: int) -> None:
        self.where, self.table, self.timeout_ms = where, table, timeout_ms
        size = f"~{rows:,} rows" if rows is not None else "size unknown: never analyzed"
        super().__init__(
            f"data precheck for {where} ({description}) did not finish within {timeout_ms} ms on {table} ({size}); "
            "nothing was changed. Give it longer with --precheck-timeout-ms (deploy.yaml: prechecks.timeout_ms), "
            "or run the check yourself off-peak and waive it for this run with --waive-prechecks REASON.")


class PrismaSchemaMismatch(SchemaDeployError):
    """schema.prisma declares something the migrations do not create, or the other way round."""

    exit_code = 1

    def __init__(self, schema: Path | str, migrations: Path | str, differences: list[str]) -> None:
        self.schema, self.migrations, self.differences = Path(schema), Path(migrations), differences
        super().__init__(
            f"{schema} does not match what the migrations in {migrations} create (`prisma migrate diff`); "
            "nothing was changed:\n" + "\n".join(f"- {d}" for d in differences)
            + f"\nAdd a migration that makes them agree (`prisma migrate diff --from-migrations {migrations} "
              f"--to-schema-datamodel {schema} --script` writes its SQL), or correct schema.prisma.")


class PrismaCheckFailed(SchemaDeployError):
    """`prisma migrate diff` ran but could not compare (a migration fails on the shadow database, a bad schema)."""

    exit_code = 1

    def __init__(self, schema: Path | str, migrations: Path | str, code: int, output: str) -> None:
        self.schema, self.migrations, self.code = Path(schema), Path(migrations), code
        tail = "\n".join(line for line in output.strip().splitlines()[-12:])
        super().__init__(
            f"`prisma migrate diff` of {migrations} against {schema} failed (exit {code}):\n{tail}\n"
            "Fix what it names (a migration that fails on an empty database, or a schema `prisma validate` "
            "rejects), or remove prisma.schema from deploy.yaml to skip this check.")
