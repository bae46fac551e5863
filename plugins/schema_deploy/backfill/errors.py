"""Errors of backfills: each says what, where and how to fix it."""
from __future__ import annotations

from pathlib import Path

from schema_deploy.errors import SchemaDeployError


class BackfillSpecError(SchemaDeployError):
    """A backfill.yaml that cannot be run as written."""

    def __init__(self, path: Path, problem: str, fix: str) -> None:
        self.path, self.problem, self.fix = path, problem, fix
        super().__init__(f"{path}: {problem}. {fix}")


class BackfillRefused(SchemaDeployError):
    """The backfill cannot start here; nothing was changed. `state`: its checkpoint's, when that is why
    (paused, cancelled)."""

    exit_code = 1

    def __init__(self, backfill: str, problem: str, fix: str, state: str | None = None) -> None:
        self.backfill, self.problem, self.fix, self.state = backfill, problem, fix, state
        super().__init__(f"backfill {backfill}: {problem}. Nothing was changed. {fix}")


class BackfillBusy(SchemaDeployError):
    """Another session runs this backfill now."""

    exit_code = 1
    transient = True

    def __init__(self, backfill: str, holders: str) -> None:
        self.backfill = backfill
        super().__init__(f"backfill {backfill}: another session runs it now ({holders}). Nothing was changed. "
                         f"Wait for it to end, or pause it: python -m schema_deploy backfill pause --name {backfill}.")


class BackfillNotFound(SchemaDeployError):
    """Asked to act on a backfill that the environment has no checkpoint of."""

    def __init__(self, environment: str, backfill: str) -> None:
        self.environment, self.backfill = environment, backfill
        super().__init__(f"no backfill {backfill} on {environment}: it has not run there (the Backfills table lists "
                         "those that have)")


class BackfillStopped(SchemaDeployError):
    """A deployment reached a backfill that an operator paused or cancelled: the migrations after it wait."""

    exit_code = 1

    def __init__(self, backfill: str, state: str, by: str | None, rows_done: int) -> None:
        self.backfill, self.state = backfill, state
        super().__init__(
            f"backfill {backfill}: {state} by {by or 'an operator'} at {rows_done} rows, so the migrations after it "
            f"were not applied; those before it, and the rows done, stay (its checkpoint keeps them). Resume it "
            f"(python -m schema_deploy backfill resume --name {backfill}), then retry this task: the backfill goes "
            f"on from its checkpoint.")


class BackfillNotConverging(SchemaDeployError):
    """The backfill's `set` leaves rows its `where` still selects: it would never end."""

    exit_code = 1

    def __init__(self, backfill: str, problem: str, rows_done: int) -> None:
        self.backfill, self.rows_done = backfill, rows_done
        super().__init__(
            f"backfill {backfill}: stopped: {problem}. The batch that showed it was rolled back; {rows_done} rows "
            f"done before it stay done (the checkpoint keeps them). Fix backfill.yaml so that each row's new "
            f"values no longer match `where` (or, for rows the application writes meanwhile, add a trigger or a "
            f"default in the migration before it), then run the backfill again: an edited backfill.yaml starts "
            f"a new checkpoint.")


class BackfillLocked(SchemaDeployError):
    """A batch did not get its rows' locks in any of its attempts."""

    exit_code = 1
    transient = True

    def __init__(self, backfill: str, after: str, attempts: int, lock_timeout_ms: int, rows_done: int) -> None:
        self.backfill = backfill
        super().__init__(
            f"backfill {backfill}: the batch after key {after} waited for rows other sessions hold locked "
            f"{attempts} times (lock_timeout {lock_timeout_ms} ms each, the batch halved each time); {rows_done} "
            f"rows are done and checkpointed. Run it again later (it resumes there), or find the long "
            f"transaction holding the rows (pg_stat_activity, pg_locks).")


class ContractRefused(SchemaDeployError):
    """A migration after a backfill was about to run while the backfill still has rows to do."""

    exit_code = 1

    def __init__(self, contract: str, path: Path, backfill: str, table: str, where: str, left: int,
                 applied_before: list[str]) -> None:
        self.contract, self.backfill, self.left = contract, backfill, left
        before = (f"; applied before it in this run, and complete: {', '.join(applied_before)}" if applied_before
                  else "")
        super().__init__(
            f"migration {contract} ({path}): refused: it comes after backfill {backfill}, and {left} row(s) of "
            f"{table} still match that backfill's `where` ({where}). Nothing of {contract} was changed{before}. "
            f"Run the backfill first (python -m schema_deploy backfill run --name {backfill}; in Airflow, the "
            f"deployment's backfill task does), then apply again.")
