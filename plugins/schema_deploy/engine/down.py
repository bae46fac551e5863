"""Roll back applied migrations with their `down.sql`, through the same engine as apply.

* The migrations to undo are the newest applied ones (bundle order), newest first:
  `steps=N`, or `to=NAME` (NAME and every applied migration after it).
* Every `down.sql` is parsed and planned before anything runs (pglast, online
  rewrites against the live tables), then run step by step under Prisma's advisory
  lock, with `lock_timeout`, lock retries with backoff and the blocker report. A
  down migration that is one transaction commits together with its ledger update.
* The ledger: when a migration's down.sql has run, its applied row gets
  `rolled_back_at = now()` (what Prisma's `migrate resolve --rolled-back` writes).
  Prisma's `migrate deploy` treats a name as applied only through a row whose
  `rolled_back_at` is NULL, so the migration is pending again and the next deploy
  re-applies it as a new row; the rolled-back row stays as history.
* Resume: a stepped down migration commits step by step, and the ledger keeps the
  migration applied until its last step is done. A crash or a lock-retry failure
  half-way is finished by running the rollback again: down.sql guards every
  statement with IF EXISTS, and the engine skips a concurrent DROP INDEX whose
  index is already gone.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from schema_deploy.bundle.discover import Bundle, Migration, content_problem, read_sql_bytes
from schema_deploy.bundle.errors import MigrationFileError
from schema_deploy.bundle.parse import parse_migration_file
from schema_deploy.engine.apply import (BlockerWatch, LockRetriesExhaustedInternal, Log, MigrationResult,
                                        StatementFailed, StepResult, run_step, step_line, with_lock_retries)
from schema_deploy.engine.errors import NoDownMigration, NotApplied, RollbackFailed, RollbackRefused
from schema_deploy.errors import UsageError
from schema_deploy.pg import db
from schema_deploy.pg.retry import Settings
from schema_deploy.plan.planner import MigrationPlan, plan_migration, referenced_tables
from schema_deploy.state import ledger
from schema_deploy.state.status import APPLIED, FAILED, INTERRUPTED, Status, compute_status

DOWN_FILE = "down.sql"


@dataclass
class RollbackResult:
    """The migrations rolled back, newest first, with their steps and the SQL run."""

    rolled_back: list[MigrationResult] = field(default_factory=list)
    status_before: Status | None = None

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.rolled_back]

    def as_dict(self) -> dict[str, object]:
        return {"rolled_back": [m.as_dict() for m in self.rolled_back]}


def down(url: str, bundle: Bundle, *, steps: int | None = None, to: str | None = None,
         settings: Settings = Settings(), online: bool = True, log: Log = lambda _: None) -> RollbackResult:
    """Run the down.sql of the newest applied migrations, newest first, and mark them rolled back.

    `steps` (default 1) migrations, or every applied migration down to and including
    `to`. Refused, with nothing changed, when the ledger has failed or drifted
    migrations, when `to` is not applied, or when a migration to undo has no down.sql.
    """
    if steps is not None and to is not None:
        raise UsageError("give either steps or to (--steps N or --to NAME), not both.")
    if steps is not None and steps < 1:
        raise UsageError(f"steps must be 1 or more (got {steps}).")
    with db.connect(url) as conn, ledger.migration_lock(conn, settings.advisory_lock_timeout_s, log):
        status = compute_status(bundle, ledger.read_rows(conn, settings.schema))
        targets = choose(bundle, status, steps=1 if steps is None and to is None else steps, to=to)
        plans = plan_downs(conn, targets, online)
        if not plans:
            log("nothing to roll back: no migration is applied")
        result = RollbackResult(status_before=status)
        for mp in plans:
            result.rolled_back.append(run_down(conn, url, mp, settings, log))
    return result


def choose(bundle: Bundle, status: Status, *, steps: int | None, to: str | None) -> list[Migration]:
    """The migrations to undo, newest first; refuses before anything changes."""
    check_rollbackable(status)
    files = bundle.by_name()
    applied = [s.name for s in status.states if s.state == APPLIED and s.name in files]
    if to is not None:
        if to not in files:
            raise UsageError(f"--to {to}: no such migration in {bundle.root}; use a folder name, e.g. "
                             f"{(applied or [bundle.migrations[-1].name])[-1]}.")
        if to not in applied:
            state = next((s.state for s in status.states if s.name == to), "pending")
            raise NotApplied(to, state, applied)
        names = applied[applied.index(to):]
    else:
        names = applied[-steps:] if steps else []
    chosen = [files[name] for name in reversed(names)]
    for m in chosen:
        if m.down_path is None:
            raise NoDownMigration(m.name, expected_down_path(m))
    return chosen


def expected_down_path(m: Migration) -> str:
    if m.path.name == "migration.sql":
        return str(m.path.parent / DOWN_FILE)
    return f"{m.path.parent / m.name}/{DOWN_FILE} (down migrations need Prisma's folder layout: " \
           f"{m.name}/migration.sql beside {m.name}/{DOWN_FILE})"


def check_rollbackable(status: Status) -> None:
    """A failed or drifted ledger is resolved first: undoing on top of it would make history lie."""
    problems = [f"- {s.name} is {s.state} (after {s.applied_steps} step(s)): resolve it first "
                f"(`python -m schema_deploy status`, then apply again or `resolve`)"
                for s in status.states if s.state in (FAILED, INTERRUPTED)]
    problems += [f"- {s.name} is {s.state}: the bundle does not hold the applied version, so its down.sql "
                 "cannot be trusted to reverse it. Roll back from a backup, or deploy from the right bundle."
                 for s in status.drift]
    if problems:
        raise RollbackRefused("refusing to roll back: the ledger is not in a state to undo from; nothing was "
                              "changed.\n" + "\n".join(problems))


def down_migration(m: Migration) -> Migration:
    """The down.sql of `m` as a migration of its own name (checked like any migration file: an empty
    one would "roll back" by running nothing)."""
    assert m.down_path is not None
    raw = m.down_raw if m.down_raw is not None else read_sql_bytes(m.down_path)
    return Migration(name=m.name, path=m.down_path, raw=raw, problem=content_problem(m.down_path, raw))


def plan_downs(conn: psycopg.Connection, targets: list[Migration], online: bool) -> list[MigrationPlan]:
    """Parse and plan every down.sql before running any (a syntax error changes nothing)."""
    downs = [down_migration(m) for m in targets]
    parsed = {d.name: parse_migration_file(d) for d in downs}
    for d in downs:
        if not parsed[d.name].statements:
            raise MigrationFileError(
                d.path, None, None, "holds no SQL statement, only comments: rolling back would mark the "
                "migration pending while undoing nothing", "Write the SQL that reverses migration.sql there, or "
                "roll back from a backup instead", code="empty-file")
    existing = db.existing_relations(conn, referenced_tables(parsed)) if online else None
    return [plan_migration(d, set(), existing, parsed[d.name]) for d in downs]


def run_down(conn: psycopg.Connection, url: str, mp: MigrationPlan, settings: Settings, log: Log) -> MigrationResult:
    """The steps of one down migration, then its ledger row marked rolled back."""
    m, schema = mp.migration, settings.schema
    started = time.monotonic()
    result = MigrationResult(name=m.name, checksum=m.checksum, seconds=0.0, steps=[],
                             sql=[s.sql for step in mp.steps for s in step.statements])
    watch = BlockerWatch(url, conn.info.backend_pid)
    log(f"{m.name}: rolling back with {m.path} in {len(mp.steps)} step(s)"
        + (" (one transaction, with the ledger update)" if mp.atomic else ""))
    try:
        for step in mp.steps:
            t0, skipped = time.monotonic(), []
            # A one-transaction down migration commits together with its ledger update.
            record = (lambda c: mark_applied_rolled_back(c, m.name, schema)) if mp.atomic else (lambda c: None)
            try:
                attempts = with_lock_retries(lambda lt, s=step: run_step(conn, s, lt, settings, skipped, record),
                                             settings, watch, log)
            except LockRetriesExhaustedInternal as exc:
                raise exc.public(m.name) from None
            except StatementFailed as exc:
                raise RollbackFailed(m.name, f"step {step.number} of {len(mp.steps)}, {exc.ps.where}", exc.sqlstate,
                                     exc.message, 0 if mp.atomic else step.number - 1, len(mp.steps)) from None
            result.steps.append(StepResult(number=step.number, seconds=time.monotonic() - t0, attempts=attempts,
                                           skipped=skipped))
            log(step_line(m.name, step, len(mp.steps), result.steps[-1], label="down step"))
        if not mp.atomic:
            marked = mark_applied_rolled_back(conn, m.name, schema)
    finally:
        watch.close()
    result.seconds = time.monotonic() - started
    log(f"{m.name}: rolled back in {result.seconds:.2f} s ({result.lock_retries} lock retries); "
        f"_prisma_migrations marks it rolled back, so it is pending again. {PRISMA_STATUS_AFTER_ROLLBACK}")
    if not mp.atomic and not marked:
        log(f"warning: {m.name} had no applied ledger row left to mark (another session changed the ledger?)")
    return result


# Measured with the real CLI (tests/integration/test_prisma_interop.py): `migrate deploy` re-applies a migration
# whose rows are all rolled back, but `migrate status` lists as unapplied only names with no row at all.
PRISMA_STATUS_AFTER_ROLLBACK = ("Prisma disagrees in one place: `prisma migrate deploy` applies it again, but "
                                "`prisma migrate status` still says \"Database schema is up to date!\" (it does not "
                                "count a rolled-back row as pending); `python -m schema_deploy status` shows it pending.")


def mark_applied_rolled_back(conn: psycopg.Connection, name: str, schema: str = "public") -> int:
    """`rolled_back_at = now()` on the applied rows of `name` (finished_at kept): pending again for
    Prisma and this tool; the row stays as history."""
    cur = conn.execute(
        sql.SQL("UPDATE {} SET rolled_back_at = now() WHERE migration_name = %s "
                "AND finished_at IS NOT NULL AND rolled_back_at IS NULL").format(ledger.table_ident(schema)),
        (name,))
    return cur.rowcount
