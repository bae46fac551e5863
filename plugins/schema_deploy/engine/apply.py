"""Apply a plan to a database, safely and resumably.

* Serialised with Prisma's advisory lock; the ledger is read again under it.
* A migration that is one transaction commits with its ledger row, or not at all.
* Otherwise each step commits on its own and advances `applied_steps_count`;
  a non-transactional step is guarded so that re-running it is harmless (an
  index that exists and is valid is skipped; an INVALID one left by a crash is
  dropped and rebuilt), so a re-run after a crash resumes where it stopped.
* Every session sets `lock_timeout` and `statement_timeout`. A statement that
  times out waiting for a lock (SQLSTATE 55P03) is retried with capped
  exponential backoff and jitter; when retries run out, the error names the
  sessions that blocked it (sampled from `pg_blocking_pids()` while waiting).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import psycopg
from pglast import ast, enums
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.pq import TransactionStatus

from schema_deploy.backfill.contract import backfills_to_do
from schema_deploy.backfill.contract import require_done as require_backfills_done
from schema_deploy.bundle.discover import Bundle
from schema_deploy.bundle.parse import LOCK_MODES, relname
from schema_deploy.engine.errors import LockRetriesExhausted, MigrationFailed
from schema_deploy.errors import PAGE
from schema_deploy.health.errors import HealthGateTimedOut, HealthGateWaiting
from schema_deploy.health.gate import HealthGate, StepHealth
from schema_deploy.pg import db
from schema_deploy.pg.errors import DatabaseError
from schema_deploy.pg.retry import Settings
from schema_deploy.plan.planner import MigrationPlan, Plan, plan_for
from schema_deploy.plan.prechecks import explain_failure, require_clean, written_before
from schema_deploy.plan.steps import PlannedStatement, Step
from schema_deploy.redact import scrub_sql
from schema_deploy.state import ledger
from schema_deploy.state.errors import LedgerBlocked
from schema_deploy.state.status import Status, compute_status

Log = Callable[[str], None]


@dataclass
class StepResult:
    number: int
    seconds: float
    attempts: int
    skipped: list[str] = field(default_factory=list)
    health: StepHealth | None = None  # production's online steps: the gate's wait, WAL written, replica lag


@dataclass
class MigrationResult:
    name: str
    checksum: str
    seconds: float
    steps: list[StepResult]
    resumed_from: int = 0
    sql: list[str] = field(default_factory=list)
    resumed_lock_retries: int = 0  # those the steps before `resumed_from` needed (an earlier run, or deferral)

    @property
    def lock_retries(self) -> int:
        """The migration's lock retries: its steps', those applied before a resume included."""
        return self.resumed_lock_retries + sum(s.attempts - 1 for s in self.steps)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "checksum": self.checksum, "seconds": round(self.seconds, 3),
                "resumed_from_step": self.resumed_from + 1 if self.resumed_from else None,
                "lock_retries": self.lock_retries,
                "steps": [{**s.__dict__, "health": s.health.as_dict() if s.health else None} for s in self.steps],
                "sql": self.sql}


@dataclass
class ApplyResult:
    applied: list[MigrationResult]
    status_before: Status
    backfills: list[Any] = field(default_factory=list)  # what `apply`'s `backfill` returned, in order
    stopped_before: str | None = None  # with until_backfill: the contract migration it stopped before
    waiting_for: list[str] = field(default_factory=list)  # …and the backfills it waits for

    def as_dict(self) -> dict[str, object]:
        return {"applied": [m.as_dict() for m in self.applied], "backfills": self.backfills,
                "stopped_before": self.stopped_before, "waiting_for": self.waiting_for}


def load_state(conn: psycopg.Connection, bundle: Bundle,
               schema: str = "public") -> tuple[Status, dict[str, ledger.Resumable]]:
    rows = ledger.read_rows(conn, schema)
    interrupted = {r.migration_name: r.resumable_at for r in rows if r.resumable}
    return compute_status(bundle, rows), interrupted


def apply(url: str, bundle: Bundle, settings: Settings = Settings(), *, log: Log = lambda _: None,
          to: str | None = None, online: bool = False, prechecks: bool = True,
          created: Callable[[Status], set[str]] | None = None,
          approve: Callable[[Plan], None] | None = None, waive_prechecks: str | None = None,
          health: HealthGate | None = None, backfill: Callable[[Any], Any] | None = None,
          until_backfill: bool = False) -> ApplyResult:
    """Apply every pending migration of `bundle` (up to `to`) to the database at `url`.

    `online` rewrites lock-heavy statements on existing tables (see online.py).
    `prechecks` first looks for rows that would make a statement fail (orphans,
    duplicates, NULLs) and stops with nothing changed if it finds any.
    `waive_prechecks` (a reason): failed prechecks are logged as waived instead of stopping the run.
    `created(status)` names the tables this deployment already created (see plan_for);
    `approve(plan)` may refuse the plan (by raising) before anything runs. Both are called
    under the migration lock, with the ledger as it is then, so what is checked is what runs.
    `health` (production): the gate that each online step waits for and that measures it; its role's
    privileges are checked first, before anything changes.
    `backfill(spec)`: runs a declared backfill (schema_deploy.backfill) that a pending migration after it
    needs done; without it, such a migration is refused while the backfill's rows remain.
    `until_backfill`: stop (successfully) before the first such migration instead, naming it and the
    backfills it waits for (`stopped_before`, `waiting_for`): the expand phase, when an orchestrator runs
    the backfill as a step of its own.
    """
    if health is not None:
        health.require_privileges()
    with db.connect(url) as conn, ledger.migration_lock(conn, settings.advisory_lock_timeout_s, log):
        ledger.ensure_ledger(conn, settings.schema)
        status, interrupted = load_state(conn, bundle, settings.schema)
        plan = plan_for(conn, bundle, status, interrupted, to=to, online=online,
                        created=created(status) if created else None)
        for warning in plan.warnings:
            log(f"warning: {warning}")
        if approve is not None:
            approve(plan)
        if prechecks and plan.migrations:
            checked = require_clean(conn, plan, settings, waive=waive_prechecks, log=log)
            for r in checked:
                if r.deferred:
                    log(f"precheck {r.statement.where}: {r.description}: {r.skipped}")
        mark_deferred_checks(plan)
        if not plan.migrations:
            log("nothing to apply: every migration is applied")
        results: list[MigrationResult] = []
        backfills: list[Any] = []
        for mp in plan.migrations:
            if until_backfill and (waiting := backfills_to_do(conn, bundle.migrations, mp.migration.name)):
                log(f"{mp.migration.name} waits for backfill {', '.join(waiting)}: the expand phase ends here")
                return ApplyResult(applied=results, status_before=status, stopped_before=mp.migration.name,
                                   waiting_for=waiting)
            # A migration after a declared backfill is its contract: it needs the backfill done.
            backfills += require_backfills_done(conn, bundle.migrations, mp.migration, [r.name for r in results],
                                                log, backfill)
            results.append(run_migration(conn, url, mp, settings, log, health))
    return ApplyResult(applied=results, status_before=status, backfills=backfills)


def mark_deferred_checks(plan: Plan) -> None:
    """Flag the planned statements whose checks are decided when they run (`prechecks.written_before`)."""
    deferred = written_before(plan)
    for mp in plan.migrations:
        for step in mp.steps:
            for ps in step.statements:
                ps.deferred_check = ps.source in deferred


# --- one migration -----------------------------------------------------------

def run_migration(conn: psycopg.Connection, url: str, mp: MigrationPlan, settings: Settings,
                  log: Log, health: HealthGate | None = None) -> MigrationResult:
    m = mp.migration
    started = time.monotonic()
    result = MigrationResult(name=m.name, checksum=m.checksum, seconds=0.0, steps=[], resumed_from=mp.resume_from,
                             sql=[s.sql for step in mp.steps for s in step.statements],
                             resumed_lock_retries=mp.resume_lock_retries)
    db.reset_session(conn)  # nothing a migration before it set (SET ROLE, search_path, …) reaches this one
    watch = BlockerWatch(url, conn.info.backend_pid)
    try:
        if mp.atomic:
            log(f"{m.name}: applying in one transaction")
            result.steps.append(run_atomic(conn, mp, settings, watch, log))
        else:
            result.steps.extend(run_stepped(conn, mp, settings, watch, log, health))
    except psycopg.Error as exc:  # from our own bookkeeping, not a statement (those are MigrationFailed)
        raise DatabaseError(
            f"migration {m.name} ({m.path}): the database answered {type(exc).__name__}"
            f"{f' (SQLSTATE {exc.sqlstate})' if exc.sqlstate else ''} outside its statements: "
            f"{str(exc).strip()}. What committed stays committed, and the ledger shows where it stopped ({PAGE} "
            "shows it; or `python -m schema_deploy status`): run apply again to resume.") from None
    finally:
        watch.close()
    result.seconds = time.monotonic() - started
    log(f"{m.name}: applied in {result.seconds:.2f} s ({len(mp.steps)} step(s), {result.lock_retries} lock retries)")
    return result


def run_atomic(conn: psycopg.Connection, mp: MigrationPlan, settings: Settings, watch: BlockerWatch,
               log: Log = lambda _: None) -> StepResult:
    """Statements and ledger row in one transaction; a failure leaves only a rolled-back record."""
    m, step, schema = mp.migration, mp.steps[0], settings.schema
    if mp.resume_row_id:
        check_same_plan(mp)

    def attempt(lock_timeout_ms: int) -> None:
        with conn.transaction():
            set_timeouts(conn, lock_timeout_ms, settings.statement_timeout_ms, local=True)
            # Complete an interrupted row (say, of a killed `prisma migrate deploy`) rather
            # than add one beside it: a failed row left behind would keep the migration pending.
            row_id = mp.resume_row_id or ledger.insert_started(conn, m.name, m.checksum, schema)
            execute_statements(conn, step.statements)
            db.as_connecting_role(conn)  # the ledger is written by the role that connected
            ledger.mark_finished(conn, row_id, 1, schema)

    t0 = time.monotonic()
    try:
        attempts = with_lock_retries(attempt, settings, watch, log)
    except LockRetriesExhaustedInternal as exc:
        ledger.insert_rolled_back(conn, m.name, m.checksum, ledger.RETRYABLE_MARK + "\n" + exc.logs(m.name, 1), schema)
        raise exc.public(m.name) from None
    except StatementFailed as exc:
        ledger.insert_rolled_back(conn, m.name, m.checksum, exc.logs(m.name, 1), schema)
        raise MigrationFailed(
            m.name, exc.ps.where, exc.sqlstate, exc.message,
            "Nothing of it was applied: its transaction rolled back. The attempt is recorded in "
            "_prisma_migrations as rolled back (history only). Fix the migration and apply again.",
        ) from None
    result = StepResult(number=1, seconds=time.monotonic() - t0, attempts=attempts)
    log(step_line(m.name, step, 1, result))
    return result


def run_stepped(conn: psycopg.Connection, mp: MigrationPlan, settings: Settings, watch: BlockerWatch,
                log: Log, health: HealthGate | None = None) -> list[StepResult]:
    """Step by step, each step recorded in `applied_steps_count` as it completes. With `health`, an
    online step first waits for the database's health; a wait that runs out (or is deferred) leaves the
    migration resumable at that step, nothing of it run."""
    m, schema = mp.migration, settings.schema
    retries = mp.resume_lock_retries  # of the applied steps: kept in the row's logs

    def progress(mark: str = ledger.IN_PROGRESS_MARK, extra: str = f" steps={len(mp.steps)}") -> str:
        return ledger.progress_logs(mark, mp.digest, retries, extra)

    marker = progress()
    if mp.resume_row_id:
        check_same_plan(mp)
        row_id = mp.resume_row_id
        ledger.mark_failed(conn, row_id, marker, schema)  # back to "in progress" with our plan
        log(f"{m.name}: resuming at step {mp.resume_from + 1} of {len(mp.steps)} (an earlier run stopped there)")
    else:
        row_id = ledger.insert_started(conn, m.name, m.checksum, schema, logs=marker)
        log(f"{m.name}: applying in {len(mp.steps)} steps")
    results = []
    for step in mp.steps[mp.resume_from:]:
        gated = gate_step(conn, mp, step, row_id, settings, log, health, progress(ledger.RETRYABLE_MARK, ""))
        t0 = time.monotonic()
        skipped: list[str] = []
        try:
            with health.measure(gated) if gated else nullcontext():
                attempts = with_lock_retries(lambda lt, s=step: run_step(
                    conn, s, lt, settings, skipped,
                    lambda c, n=s.number: ledger.set_steps(c, row_id, n, settings.schema)), settings, watch, log)
        except LockRetriesExhaustedInternal as exc:
            with ledger_write(conn):
                ledger.mark_failed(conn, row_id, progress(ledger.RETRYABLE_MARK, "\n" + exc.logs(m.name, step.number)),
                                   schema)
            raise exc.public(m.name) from None
        except StatementFailed as exc:
            with ledger_write(conn):
                ledger.mark_failed(conn, row_id, exc.logs(m.name, step.number), schema)
            done = step.number - 1
            raise MigrationFailed(
                m.name, f"step {step.number} of {len(mp.steps)}, {exc.ps.where}", exc.sqlstate, exc.message,
                f"Steps 1..{done} were applied and remain; _prisma_migrations marks {m.name} failed "
                f"(applied_steps_count {done}), so neither this tool nor Prisma will deploy on top of it. "
                f"Fix the cause, then undo those steps by hand and run `python -m schema_deploy resolve "
                f"--rolled-back {m.name}`, or complete the migration by hand and run `resolve --applied {m.name}`.",
            ) from None
        results.append(StepResult(number=step.number, seconds=time.monotonic() - t0, attempts=attempts,
                                  skipped=skipped, health=gated))
        log(step_line(m.name, step, len(mp.steps), results[-1]))
        if attempts > 1:  # the row keeps the count, so a resume after a crash or a deferral reports it
            retries += attempts - 1
            with ledger_write(conn):
                ledger.mark_failed(conn, row_id, progress(), schema)
    with ledger_write(conn):
        ledger.mark_finished(conn, row_id, len(mp.steps), schema)
    return results


def gate_step(conn: psycopg.Connection, mp: MigrationPlan, step: Step, row_id: str, settings: Settings, log: Log,
              health: HealthGate | None, retryable: str) -> StepHealth | None:
    """Before an online step: wait for the database's health (None for any other step, or without a gate).
    When the wait runs out or is deferred, the migration's row is left resumable at this step (its logs:
    `retryable`, the row's progress, and the gate's account)."""
    kind = step.online_kind if health is not None else None
    if kind is None:
        return None
    what = f"{mp.migration.name}: step {step.number}/{len(mp.steps)} ({kind})"
    try:
        return health.wait(what, sorted(step.locks), conn.info.backend_pid)
    except (HealthGateTimedOut, HealthGateWaiting) as exc:
        with ledger_write(conn):
            ledger.mark_failed(conn, row_id, f"{retryable}\nhealth gate: {exc}", settings.schema)
        if isinstance(exc, HealthGateTimedOut):
            done = step.number - 1
            raise HealthGateTimedOut(what, exc.waited_s, exc.reason,
                                     f"Steps 1..{done} of {mp.migration.name} are applied and stay; "
                                     if done else "Nothing of this migration ran; ") from None
        raise


# --- what a person reads in the log -------------------------------------------------

def statement_line(text: str, width: int = 80) -> str:
    """How a statement starts, on one line for a log: from its first line of SQL (comment lines left out,
    a short first line continued by the next), whitespace collapsed, cut at `width` with an ellipsis, and
    no password (ALTER ROLE … PASSWORD '…', URLs)."""
    text = scrub_sql(text)
    code = " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("--"))
    code = " ".join(code.split())
    return code if len(code) <= width else code[:width - 1].rstrip() + "…"


def locks_phrase(locks: dict[str, str]) -> str:
    """`ACCESS EXCLUSIVE on a, b; SHARE on c` (strongest first), or "no lock on existing tables"."""
    if not locks:
        return "no lock on existing tables"
    by_mode: dict[str, list[str]] = {}
    for table, mode in sorted(locks.items()):
        by_mode.setdefault(mode, []).append(table)
    order = sorted(by_mode, key=LOCK_MODES.index, reverse=True)
    return "; ".join(f"{mode} on {', '.join(by_mode[mode])}" for mode in order)


def step_line(migration: str, step: Step, total: int, result: StepResult, label: str = "step") -> str:
    """One line per step: migration, step n/N, what ran (its first statement's first line and how many
    more), its locks, how long it took and how many lock retries it needed."""
    statements = step.statements
    what = statement_line(statements[0].sql) if statements else "(no statement)"
    if len(statements) > 1:
        what += f" (+{len(statements) - 1} more statement{'s' if len(statements) > 2 else ''})"
    retries = result.attempts - 1
    line = (f"{migration}: {label} {step.number}/{total}: {what} | {locks_phrase(step.locks)} | "
            f"{result.seconds:.2f} s | {retries} lock retr{'y' if retries == 1 else 'ies'}")
    health = getattr(result, "health", None)
    line += f" | {health.describe()}" if health else ""
    return line + (f" | skipped: {', '.join(result.skipped)}" if result.skipped else "")


@contextmanager
def ledger_write(conn: psycopg.Connection) -> Iterator[None]:
    """A transaction in which the ledger is written by the role that connected (a migration's SET ROLE
    lasts until the migration ends; the ledger is never written as that role)."""
    with conn.transaction():
        db.as_connecting_role(conn)
        yield


def check_same_plan(mp: MigrationPlan) -> None:
    """A resume must run the steps the interrupted run numbered, or step counts mean nothing."""
    if mp.resume_from and mp.resume_digest is None:
        raise LedgerBlocked(
            f"{mp.migration.name} was interrupted after {mp.resume_from} step(s) by a tool that did not record "
            "its plan, so those steps cannot be matched to this plan. Finish or undo them by hand, then run "
            f"`python -m schema_deploy resolve --applied|--rolled-back {mp.migration.name}`.")
    if mp.resume_digest is not None and mp.resume_digest != mp.digest:
        raise LedgerBlocked(
            f"{mp.migration.name} was interrupted after {mp.resume_from} step(s) of a different plan "
            f"(plan {mp.resume_digest}, now {mp.digest}): resume with the same mode it started with "
            "(online or --no-online) against the same database. Nothing was changed.")


def run_step(conn: psycopg.Connection, step: Step, lock_timeout_ms: int, settings: Settings, skipped: list[str],
             record: Callable[[psycopg.Connection], object]) -> None:
    """One step; `record(conn)` is its ledger bookkeeping, inside the step's transaction when it
    has one, right after it otherwise (apply advances applied_steps_count, a rollback marks the row)."""
    if step.transactional:
        with conn.transaction():
            set_timeouts(conn, lock_timeout_ms, settings.statement_timeout_ms, local=True)
            todo = []
            for ps in step.statements:
                if not_valid_constraint_exists(conn, ps):
                    skipped.append(ps.sql.split("\n")[0][:80])
                else:
                    todo.append(ps)
            execute_statements(conn, todo)
            db.as_connecting_role(conn)
            record(conn)
        return
    ps = step.statements[0]
    if is_concurrent_build(ps) or is_concurrent_drop(ps):
        # Neither blocks reads or writes; a short lock_timeout would only throw the work away.
        lock_timeout_ms = max(lock_timeout_ms, settings.concurrent_lock_timeout_ms)
    set_timeouts(conn, lock_timeout_ms, settings.statement_timeout_ms, local=False)
    try:
        ready = prepare_non_transactional(conn, ps)
    except pgerrors.LockNotAvailable as exc:
        exc.planned = ps  # dropping an INVALID index left by an earlier attempt waited: name the statement
        raise
    if ready:
        execute_statements(conn, [ps])
    else:
        skipped.append(ps.sql.split("\n")[0][:80])
    with ledger_write(conn):
        record(conn)


def set_timeouts(conn: psycopg.Connection, lock_timeout_ms: int, statement_timeout_ms: int, *, local: bool) -> None:
    scope = "LOCAL " if local else ""
    conn.execute(f"SET {scope}lock_timeout = {int(lock_timeout_ms)}")
    conn.execute(f"SET {scope}statement_timeout = {int(statement_timeout_ms)}")


def execute_statements(conn: psycopg.Connection, statements: list[PlannedStatement]) -> None:
    for ps in statements:
        try:
            if ps.deferred_check and conn.info.transaction_status == TransactionStatus.INTRANS:
                with conn.transaction():  # a savepoint: after a failure, the rows the statement saw can be counted
                    conn.execute(ps.sql.encode(), prepare=False)
            else:
                conn.execute(ps.sql.encode(), prepare=False)
        except pgerrors.LockNotAvailable as exc:
            exc.planned = ps  # which statement waited, for the error message
            raise
        except psycopg.Error as exc:
            if conn.broken:
                raise DatabaseError(
                    f"lost the connection to the database while running {ps.where} "
                    f"({str(exc).strip()}). Whatever had committed stays committed and the ledger "
                    "shows the migration as interrupted: run apply again to resume at the step that "
                    "did not finish."
                ) from None
            failed = StatementFailed(ps, exc)
            if ps.deferred_check and isinstance(exc, pgerrors.IntegrityError):
                explained = explain_failure(conn, ps.source, exc.sqlstate)
                if explained:
                    failed.message += f"; precheck: {explained}"
            raise failed from exc


# --- idempotency of non-transactional statements -------------------------------

def prepare_non_transactional(conn: psycopg.Connection, ps: PlannedStatement) -> bool:
    """Make a re-run harmless. Returns False when the statement's effect is already there."""
    node = ps.ast
    if isinstance(node, ast.IndexStmt) and node.concurrent and node.idxname:
        return prepare_concurrent_index(conn, ps)
    if is_concurrent_drop(ps):
        return any(db.relation_exists(conn, *(p.sval for p in obj)) for obj in node.objects)
    if isinstance(node, ast.AlterEnumStmt) and node.newVal and not node.oldVal:
        exists = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_enum WHERE enumtypid = to_regtype(%s) AND enumlabel = %s)",
            (db.quoted(*(p.sval for p in node.typeName)), node.newVal)).fetchone()[0]
        return not exists
    return True


def is_concurrent_build(ps: PlannedStatement) -> bool:
    node = ps.ast
    return ((isinstance(node, ast.IndexStmt) and bool(node.concurrent))
            or (isinstance(node, ast.ReindexStmt) and any(getattr(p, "defname", "") == "concurrently"
                                                           for p in node.params or ())))


def is_concurrent_drop(ps: PlannedStatement) -> bool:
    node = ps.ast
    return (isinstance(node, ast.DropStmt) and bool(node.concurrent)
            and node.removeType == enums.ObjectType.OBJECT_INDEX)


def not_valid_constraint_exists(conn: psycopg.Connection, ps: PlannedStatement) -> bool:
    """An online `ADD CONSTRAINT … NOT VALID` whose constraint is already there (added by an
    earlier, interrupted attempt or by hand) is not added again: the next step validates it."""
    if ps.node_type is not ast.AlterTableStmt:  # looked at first: a data statement's tree is not kept
        return False
    node = ps.ast
    if not (node.cmds and len(node.cmds) == 1):
        return False
    cmd = node.cmds[0]
    if cmd.subtype != enums.AlterTableType.AT_AddConstraint or not isinstance(cmd.def_, ast.Constraint):
        return False
    c = cmd.def_
    if not (c.skip_validation and c.conname):
        return False
    rv = node.relation
    table = db.quoted(rv.schemaname, rv.relname) if rv.schemaname else db.quoted(rv.relname, split=False)
    found = conn.execute(
        "SELECT contype, array(SELECT a.attname::text FROM unnest(conkey) WITH ORDINALITY k(n, o) "
        "       JOIN pg_attribute a ON a.attrelid = conrelid AND a.attnum = k.n ORDER BY k.o), "
        "       confrelid, pg_get_constraintdef(oid) "
        "FROM pg_constraint WHERE conname = %s AND conrelid = to_regclass(%s)", (c.conname, table)).fetchone()
    if found is None:
        return False
    contype, columns, parent, definition = found
    wanted = {enums.ConstrType.CONSTR_FOREIGN: "f", enums.ConstrType.CONSTR_CHECK: "c"}.get(c.contype)
    same = contype == wanted
    if same and c.contype == enums.ConstrType.CONSTR_FOREIGN:
        same = (columns == [k.sval for k in c.fk_attrs or ()]
                and parent == db.relation_oid(conn, relname(c.pktable)))
    if not same:
        raise StatementFailed(ps, sqlstate="42710", message=(
            f'constraint "{c.conname}" already exists on {table} with another definition: {definition}; this '
            f"migration asks for {' '.join(ps.source.sql.split())}. Nothing was skipped: give the migration's "
            "constraint a name that differs within its first 63 bytes, or drop the other one first"))
    return True


def prepare_concurrent_index(conn: psycopg.Connection, ps: PlannedStatement) -> bool:
    """Skip a valid index that is the one asked for (a retry after the build finished); drop an INVALID
    one (a crashed or cancelled build) so it is rebuilt. A valid index of that name with another
    definition is an error naming both, never a skip (two long names PostgreSQL cut to the same 63 bytes)."""
    node = ps.ast
    schema = node.relation.schemaname
    parts = (schema, node.idxname) if schema else (node.idxname,)
    oid = db.relation_oid(conn, *parts, split=False)
    if oid is None:
        return True
    wait_for_builds(conn, oid)
    valid, ready = conn.execute("SELECT indisvalid, indisready FROM pg_index WHERE indexrelid = %s",
                                (oid,)).fetchone()
    if valid and ready:
        require_same_index(conn, ps, oid)
        return False
    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(db.ident(*parts, split=False)))
    return True


def require_same_index(conn: psycopg.Connection, ps: PlannedStatement, oid: int) -> None:
    """The existing index `oid` has the table, uniqueness, key columns, method and predicate-or-not that
    `ps` asks for; otherwise StatementFailed naming both definitions."""
    node: ast.IndexStmt = ps.ast
    table, unique, method, keys, partial, definition = conn.execute(
        "SELECT i.indrelid, i.indisunique, am.amname, "
        "       array(SELECT a.attname::text FROM unnest(i.indkey[0:i.indnkeyatts - 1]) WITH ORDINALITY k(n, o) "
        "             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.n ORDER BY k.o), "
        "       i.indpred IS NOT NULL, pg_get_indexdef(i.indexrelid) "
        "FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam "
        "WHERE i.indexrelid = %s", (oid,)).fetchone()
    wanted_table = db.relation_oid(conn, relname(node.relation))
    wanted_keys = [p.name for p in node.indexParams or ()]  # None for an expression, as the catalog has it
    same = (table == wanted_table and unique == bool(node.unique) and method == (node.accessMethod or "btree")
            and keys == wanted_keys and partial == (node.whereClause is not None))
    if not same:
        raise StatementFailed(ps, sqlstate="42P07", message=(
            f'index "{node.idxname}" already exists with another definition: {definition}; this migration asks '
            f"for {' '.join(ps.source.sql.split())}. Nothing was skipped: give the migration's index a name that "
            "differs within its first 63 bytes (PostgreSQL cuts longer names), or drop the other index first"))


def wait_for_builds(conn: psycopg.Connection, index_oid: int, timeout_s: float = 60.0) -> None:
    """Wait while another backend (say, of a crashed run) is still building this index."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = conn.execute("SELECT count(*) FROM pg_stat_progress_create_index WHERE index_relid = %s",
                            (index_oid,)).fetchone()[0]
        if not busy:
            return
        time.sleep(0.5)


# --- lock retries -------------------------------------------------------------

class StatementFailed(Exception):
    """A statement failed for a reason other than a lock timeout."""

    def __init__(self, ps: PlannedStatement, exc: psycopg.Error | None = None, *, sqlstate: str | None = None,
                 message: str = "") -> None:
        self.ps = ps
        self.sqlstate = exc.sqlstate if exc is not None else sqlstate
        if exc is not None:
            diag = exc.diag
            message = diag.message_primary or str(exc)
            if diag.message_detail:
                message += f" ({diag.message_detail})"
        self.message = message
        super().__init__(self.message)

    def logs(self, migration: str, step: int) -> str:
        # Close to Prisma's own logs text, so people reading the ledger recognise it.
        return (f"Migration {migration} failed at step {step} ({self.ps.where}).\n"
                f"Database error code: {self.sqlstate}\n\nDatabase error:\nERROR: {self.message}\n\n"
                f"Statement:\n{self.ps.sql}")


class LockRetriesExhaustedInternal(Exception):
    def __init__(self, ps: PlannedStatement | None, step_sql: str, attempts: int,
                 blockers: list[db.Session]) -> None:
        self.ps, self.step_sql, self.attempts, self.blockers = ps, step_sql, attempts, blockers
        super().__init__("lock retries exhausted")

    def logs(self, migration: str, step: int) -> str:
        who = ", ".join(f"pid {b.pid}" for b in self.blockers) or "unknown"
        return (f"Migration {migration}: step {step} could not get its locks in {self.attempts} attempts "
                f"(SQLSTATE 55P03); blocked by {who}.")

    def public(self, migration: str) -> LockRetriesExhausted:
        where = self.ps.where if self.ps else "?"
        return LockRetriesExhausted(migration, where, self.ps.sql if self.ps else self.step_sql,
                                    self.attempts, self.blockers)


def with_lock_retries(attempt_fn: Callable[[int], None], settings: Settings, watch: BlockerWatch,
                      log: Log = lambda _: None) -> int:
    """Run `attempt_fn(lock_timeout_ms)` until it does not time out on a lock; return attempts used.

    Each timeout is logged with the sessions that held the lock (the blocker report)."""
    attempts = settings.lock_retries + 1
    for i in range(attempts):
        watch.start()
        try:
            attempt_fn(settings.lock_timeout_for(i))
            return i + 1
        except pgerrors.LockNotAvailable as exc:
            blockers = watch.stop()
            if i + 1 == attempts:
                failing = getattr(exc, "planned", None)
                raise LockRetriesExhaustedInternal(failing, "", attempts, blockers) from None
            pause = settings.sleep_before(i)
            log(f"lock not granted within {settings.lock_timeout_for(i)} ms (attempt {i + 1} of {attempts}); "
                f"blocked by {db.describe_blockers(blockers)}; lock retry in {pause:.2f} s")
            time.sleep(pause)
        finally:
            watch.stop()
    raise AssertionError("unreachable")


class BlockerWatch:
    """Samples `pg_blocking_pids()` of our session from a second connection while a step runs."""

    def __init__(self, url: str, pid: int, interval_s: float = 0.05) -> None:
        self.url, self.pid, self.interval_s = url, pid, interval_s
        self.conn: psycopg.Connection | None = None
        self.thread: threading.Thread | None = None
        self.stopping = threading.Event()  # waited on between samples, so stop() never waits out a pause
        self.last: list[db.Session] = []

    def start(self) -> None:
        if self.conn is None:
            self.conn = db.connect(self.url, application_name=db.APPLICATION_NAME + "-watch")
        self.last = []
        self.stopping.clear()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                found = db.blockers(self.conn, self.pid)
            except psycopg.Error:
                return
            if found:
                self.last = found
            self.stopping.wait(self.interval_s)

    def stop(self) -> list[db.Session]:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        return self.last

    def close(self) -> None:
        self.stop()
        if self.conn is not None:
            self.conn.close()
