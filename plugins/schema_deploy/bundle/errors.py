"""Errors of bundle/: migrations folders and files that cannot be read or deployed as written."""
from __future__ import annotations

from pathlib import Path

from schema_deploy.errors import SchemaDeployError


class BundleError(SchemaDeployError):
    """A migrations folder that cannot be read as a bundle."""

    def __init__(self, path: Path | str, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{path}: {problem}. {fix}")


class MigrationFileError(SchemaDeployError):
    """A migration file that cannot be deployed as written: what, where (file:line:column) and the fix.

    `code` names the condition; lint reports it as a finding under that id. Whether it stops a run
    depends on the migration: pending and in the run, it refuses the run; applied long ago or after
    `--to`, it is a warning (a history that deployed once must never block on an upgrade).
    """

    code = "migration-file"

    def __init__(self, path: Path | str, line: int | None, column: int | None, problem: str, fix: str,
                 *, code: str | None = None) -> None:
        self.path, self.line, self.column, self.problem, self.fix = Path(path), line, column, problem, fix
        if code is not None:
            self.code = code
        where = f"{path}:{line}:{column}" if line is not None and column is not None else \
            f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}. {fix.rstrip('.')}.")

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}" if self.line is not None else str(self.path)


class SqlSyntaxError(MigrationFileError):
    """PostgreSQL's parser rejected a migration file."""

    code = "syntax-error"

    def __init__(self, path: Path | str, line: int, column: int, source_line: str, pg_message: str) -> None:
        self.path, self.line, self.column, self.pg_message = Path(path), line, column, pg_message
        self.problem, self.fix = f"syntax error: {pg_message}", "Fix the SQL at that position"
        pointer = " " * (column - 1) + "^"
        SchemaDeployError.__init__(
            self,
            f"{path}:{line}:{column}: syntax error: {pg_message}\n"
            f"    {source_line}\n    {pointer}\n"
            "Fix the SQL at that position; the file was not applied anywhere."
        )


class TransactionControlError(MigrationFileError):
    """Transaction control in a migration file that has no safe meaning there."""

    code = "transaction-control"

    def __init__(self, path: Path | str, line: int, statement: str, problem: str, fix: str) -> None:
        self.statement = statement
        super().__init__(path, line, None, f"`{statement}` {problem}", fix)


class UnaccountedBytes(MigrationFileError):
    """Characters in a migration file that are neither SQL, a comment nor whitespace (a NUL byte)."""

    code = "unaccounted-bytes"


class NotUtf8(MigrationFileError):
    """A migration file whose bytes are not UTF-8."""

    code = "not-utf8"


class ClientOnlyStatement(MigrationFileError):
    """A statement that needs a client on the other end (COPY … FROM STDIN, a psql meta-command)."""

    code = "client-only-statement"


class SymlinkOutsideBundle(MigrationFileError):
    """A migration folder or file that is a symbolic link resolving outside the bundle's folder."""

    code = "symlink-outside-bundle"

    def __init__(self, path: Path | str, target: Path | str, bundle: str | None) -> None:
        self.target = Path(target)
        allow = (f"bundles: {{{bundle}: {{path: …, allow_symlinks: true}}}}" if bundle
                 else "allow_symlinks: true on the bundle in deploy.yaml")
        super().__init__(path, None, None, f"is a symbolic link to {target}, outside the bundle's folder",
                         "Copy the migration into the bundle; or, if the link is deliberate (a shared folder "
                         f"of migrations), allow it with {allow}, which the release records")
