"""Errors of state/: the ledger (`_prisma_migrations`) and its advisory lock."""
from __future__ import annotations

from typing import TYPE_CHECKING

from schema_deploy.errors import PAGE, SchemaDeployError

if TYPE_CHECKING:
    from schema_deploy.pg.db import Session


class AdvisoryLockTimeout(SchemaDeployError):
    """Another migrator holds Prisma's advisory lock past our deadline."""

    transient = True

    exit_code = 1

    def __init__(self, waited_s: float, holders: list[Session]) -> None:
        self.waited_s, self.holders = waited_s, holders
        if holders:
            who = "; ".join(h.as_session() for h in holders)
        else:
            who = "a session that released it just now"
        super().__init__(
            f"another migrator holds the migration lock (pg_advisory_lock 72707369, shared with "
            f"`prisma migrate deploy`); waited {waited_s:.1f} s. Held by: {who}. Wait for it to finish, "
            "or if it is stuck, end it with SELECT pg_terminate_backend(<pid>)."
        )


class LedgerRowMissing(SchemaDeployError):
    """The ledger row a migration started with was gone (or finished by someone else) when it ended."""

    exit_code = 1

    def __init__(self, row_id: str, schema: str) -> None:
        self.row_id = row_id
        super().__init__(
            f"the ledger row {row_id} this run inserted into {schema}._prisma_migrations was gone or already "
            "finished when the migration ended: something else wrote the ledger meanwhile (a statement of the "
            "migration, or another tool without the migration lock). The migration is not recorded as applied; "
            f"a migration that ran in one transaction rolled back. Check the ledger before running again: {PAGE} "
            "shows it; or `python -m schema_deploy status`.")


class LedgerBlocked(SchemaDeployError):
    """The ledger has failed rows or drift, so apply refuses to start."""

    exit_code = 1
