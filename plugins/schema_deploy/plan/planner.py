"""Turn pending migrations into an ordered plan of steps.

A step is what runs at once: either a transaction (consecutive statements that
can run inside one) or a single statement that cannot (`CREATE INDEX
CONCURRENTLY`, `VACUUM`, `ALTER TYPE ... ADD VALUE`), run in autocommit. A
migration whose statements are all transactional is one step, committed
together with its ledger row.

A file's explicit `BEGIN; … COMMIT;` block is one step of its own, run as
written: never merged with statements around it, and never rewritten for
online mode (its author asked for one transaction, and an online form that
needs autocommit cannot run inside one); the plan says so for that block. A
file that is one block is one step, committed with its ledger row.

Which migrations a plan reads: only those it will run (pending, up to `--to`).
A file that cannot be deployed as written refuses the plan when it is one of
them, naming the file and the `--to` that deploys the ones before it; a
pending file after `--to`, or an applied file whose bytes are now refused
(a link out of the bundle, not UTF-8), is a warning on the plan: a history
that deployed once never blocks an upgrade.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import psycopg
from pglast import ast as pg_ast

from schema_deploy.bundle.discover import Bundle, Migration, checksum_matches
from schema_deploy.bundle.errors import MigrationFileError
from schema_deploy.bundle.parse import ParsedFile, Statement, migration_problem, parse_migration_file
from schema_deploy.errors import UsageError
from schema_deploy.pg import db
from schema_deploy.plan.errors import PendingMigrationInvalid
from schema_deploy.plan.online import rewrite_statement
from schema_deploy.plan.steps import PlannedStatement, Step
from schema_deploy.state.errors import LedgerBlocked
from schema_deploy.state.ledger import Resumable
from schema_deploy.state.status import INTERRUPTED, PENDING, Status


@dataclass
class MigrationPlan:
    """The steps of one pending (or interrupted) migration."""

    migration: Migration
    statements: list[Statement]
    steps: list[Step]
    resume_from: int = 0  # steps already applied by an interrupted run
    resume_row_id: str | None = None
    resume_digest: str | None = None  # the plan digest that interrupted run recorded
    resume_lock_retries: int = 0  # the lock retries its applied steps needed
    notes: list[str] = field(default_factory=list)  # what the plan says about it (BEGIN … COMMIT blocks)
    file: ParsedFile | None = None  # the parsed file (for lint after planning)

    @property
    def digest(self) -> str:
        """sha256 of the steps (their SQL and kind): what a resume must find unchanged."""
        text = "\n-- step --\n".join(
            f"{'tx' if s.transactional else 'auto'}:" + "\n".join(p.sql for p in s.statements) for s in self.steps)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def atomic(self) -> bool:
        """One transaction holding every statement and the ledger row."""
        return len(self.steps) == 1 and self.steps[0].transactional

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.migration.name,
            "checksum": self.migration.checksum,
            "atomic": self.atomic,
            "resume_from_step": self.resume_from + 1 if self.resume_from else None,
            "notes": self.notes,
            "steps": [s.as_dict() for s in self.steps],
        }


@dataclass
class Plan:
    """Everything `apply` will do to one database, in order."""

    migrations: list[MigrationPlan]
    table_sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    online: bool = False
    warnings: list[str] = field(default_factory=list)  # problems in files this plan does not run
    # Tables a declared backfill writes before the plan's migration at that position (0: before the first):
    # (position, table, what writes it). Their rows are not today's when later statements run.
    backfill_writes: list[tuple[int, str, str]] = field(default_factory=list)

    def tables(self) -> list[str]:
        return sorted({t for mp in self.migrations for s in mp.steps for t in s.locks})

    def as_dict(self) -> dict[str, object]:
        return {
            "online": self.online,
            "migrations": [m.as_dict() for m in self.migrations],
            "table_sizes": self.table_sizes,
            "warnings": self.warnings,
        }


def group_steps(planned: list[PlannedStatement], *, one_per_step: bool = False) -> list[Step]:
    """Consecutive transactional statements share a step (with `one_per_step`, each is its own);
    the statements of one BEGIN … COMMIT block always share one, with nothing else in it."""
    steps: list[Step] = []
    for ps in planned:
        block = ps.source.block
        last = steps[-1] if steps else None
        joins = last is not None and last.transactional and ps.transactional and (
            (block is not None and last.statements[-1].source.block is block)
            or (block is None and last.statements[-1].source.block is None and not one_per_step))
        if joins:
            last.statements.append(ps)
        else:
            steps.append(Step(number=len(steps) + 1, transactional=ps.transactional, statements=[ps]))
    return steps


def plan_statements(statements: list[Statement], created: set[str],
                    existing: set[str] | None) -> list[PlannedStatement]:
    """Planned statements; with `existing` (online mode), lock-heavy statements on
    tables that exist and were not created by this plan get their online forms
    (outside BEGIN … COMMIT blocks, which run as written)."""
    planned: list[PlannedStatement] = []
    for s in statements:
        rewritten = None
        if existing is not None and s.block is None:
            rewritten = rewrite_statement(s, existing - created)
        if rewritten is not None:
            planned.extend(rewritten)
        else:
            # The statement's own dict unless the plan created one of its tables (no copy per statement).
            locks = s.locks if created.isdisjoint(s.locks) else {t: m for t, m in s.locks.items() if t not in created}
            planned.append(PlannedStatement(sql=s.sql, source=s, locks=locks, transactional=s.transactional))
        created |= s.creates
    return planned


def block_notes(parsed: ParsedFile, online: bool) -> list[str]:
    """What the plan says about each BEGIN … COMMIT block of a file."""
    notes = []
    for block in parsed.blocks:
        members = [s for s in parsed.statements if s.block is block]
        note = (f"{parsed.statements[0].path if parsed.statements else ''}:{block.begin_line}: BEGIN … COMMIT "
                f"block ({block.lines}, {len(members)} statement(s)) runs as written, in one transaction")
        if online:
            note += ("; online rewrites are not applied inside it (a CONCURRENTLY build cannot run in a "
                     "transaction block)")
        notes.append(note)
    return notes


SESSION_SETTINGS = {"role": "SET ROLE", "session_authorization": "SET SESSION AUTHORIZATION",
                    "search_path": "SET search_path"}


def session_notes(parsed: ParsedFile) -> list[str]:
    """What the plan says about session-level settings a file changes that decide who owns what it creates
    and where names resolve: they last until the migration ends, and no further."""
    notes = []
    for s in parsed.statements:
        if s.node_type is pg_ast.VariableSetStmt and not s.node.is_local and s.node.name in SESSION_SETTINGS:
            notes.append(f"{s.where}: {SESSION_SETTINGS[s.node.name]} lasts until this migration ends: the "
                         "statements after it in this file run with it; schema-deploy ends it before the next "
                         "migration and writes the ledger as the role that connected")
    return notes


def plan_migration(migration: Migration, created: set[str] | None = None,
                   existing: set[str] | None = None, parsed: ParsedFile | None = None) -> MigrationPlan:
    """Steps of one migration; `created` collects tables created so far in the plan.

    Online mode (`existing` given) runs a migration that has any rewritten statement
    one statement per step (a BEGIN … COMMIT block stays one step), so each lock is
    short and on one table at a time.
    """
    created = set() if created is None else created
    parsed = parsed if parsed is not None else parse_migration_file(migration)
    planned = plan_statements(parsed.statements, created, existing)
    steps = group_steps(planned, one_per_step=any(p.reason for p in planned))
    return MigrationPlan(migration=migration, statements=parsed.statements, steps=steps,
                         notes=block_notes(parsed, existing is not None) + session_notes(parsed), file=parsed)


def to_plan(bundle: Bundle, status: Status, to: str | None) -> list[Migration]:
    """The migrations a plan runs: pending or interrupted, in order, up to `to` (inclusive)."""
    if to is not None and to not in bundle.by_name():
        raise UsageError(f"--to {to}: no such migration in {bundle.root}; "
                         f"use a folder name, e.g. {bundle.migrations[0].name}.")
    todo = {s.name for s in status.states if s.state in (PENDING, INTERRUPTED)}
    chosen = []
    for m in bundle.migrations:
        if m.name in todo:
            chosen.append(m)
        if m.name == to:
            break
    return chosen


def parse_for_plan(migrations: list[Migration]) -> dict[str, ParsedFile]:
    """Each migration the plan runs, parsed once; one that cannot be deployed as written refuses the
    plan (naming the `--to` that deploys the migrations before it)."""
    parsed: dict[str, ParsedFile] = {}
    for i, m in enumerate(migrations):
        try:
            parsed[m.name] = parse_migration_file(m)
        except MigrationFileError as exc:
            raise PendingMigrationInvalid(m.name, exc, migrations[i - 1].name if i else None) from None
    return parsed


def plan_warnings(bundle: Bundle, status: Status, chosen: list[Migration], to: str | None) -> list[str]:
    """Problems the plan does not stop for: pending files after `--to`, and applied files whose bytes
    are refused now (read-time problems only: applied files are not parsed again)."""
    warnings = []
    chosen_names = {m.name for m in chosen}
    pending = {s.name for s in status.states if s.state in (PENDING, INTERRUPTED)}
    for m in bundle.migrations:
        if m.name in chosen_names:
            continue
        if m.name in pending:  # not chosen, so after --to
            problem = migration_problem(m)
            if problem is not None:
                warnings.append(f"{m.name} is pending but not part of this run (--to {to}), and it cannot be "
                                f"deployed as written: {problem.message}")
        elif m.problem is not None:
            warnings.append(f"{m.name} is applied; its file would be refused now, which does not stop this run: "
                            f"{m.problem.message}")
    return warnings


def referenced_tables(parsed: dict[str, ParsedFile]) -> set[str]:
    """Every table the parsed migrations lock or create (for existence checks)."""
    return {t for f in parsed.values() for s in f.statements for t in (*s.locks, *s.creates)}


def build_plan(bundle: Bundle, status: Status, interrupted_rows: dict[str, Resumable] | None = None,
               to: str | None = None, existing: set[str] | None = None, created: set[str] | None = None,
               parsed: dict[str, ParsedFile] | None = None) -> Plan:
    """Plan every pending or interrupted migration of `bundle`, in order (up to `to`, inclusive).

    `existing` (the tables that exist in the target) turns on online mode. `parsed`: the
    migrations to run, already parsed (`parse_for_plan`).

    Refuses (LedgerBlocked) when the ledger has failed migrations or drift:
    applying on top of either would make the history lie.
    """
    check_applyable(status, bundle)
    chosen = to_plan(bundle, status, to)
    parsed = parsed if parsed is not None else parse_for_plan(chosen)
    interrupted_rows = interrupted_rows or {}
    todo = {s.name: s.state for s in status.states if s.state in (PENDING, INTERRUPTED)}
    plans = []
    created = set(created or ())  # tables this deployment created (keep their plain forms, as at preflight)
    for m in chosen:
        mp = plan_migration(m, created, existing, parsed[m.name])
        if todo[m.name] == INTERRUPTED and m.name in interrupted_rows:
            mp.resume_row_id, mp.resume_from, mp.resume_digest, mp.resume_lock_retries = interrupted_rows[m.name]
        plans.append(mp)
    return Plan(migrations=plans, warnings=plan_warnings(bundle, status, chosen, to))


def plan_for(conn: psycopg.Connection, bundle: Bundle, status: Status,
             interrupted_rows: dict[str, Resumable] | None = None, *, to: str | None = None,
             online: bool = False, created: set[str] | None = None) -> Plan:
    """Build the plan against a live target: online rewrites need to know which tables exist.

    `created`: tables that earlier migrations of the same deployment created (a retry after some
    of them committed): they are planned as created by the plan, as they were the first time.
    """
    check_applyable(status, bundle)
    parsed = parse_for_plan(to_plan(bundle, status, to))
    existing = db.existing_relations(conn, referenced_tables(parsed)) if online else None
    plan = build_plan(bundle, status, interrupted_rows, to=to, existing=existing, created=created, parsed=parsed)
    plan.online = online
    plan.backfill_writes = backfill_writes(conn, bundle, [mp.migration.name for mp in plan.migrations],
                                           set(plan.tables()))
    return plan


def backfill_writes(conn: psycopg.Connection, bundle: Bundle, pending: list[str],
                    touched: set[str]) -> list[tuple[int, str, str]]:
    """(position in `pending`, table, label) of each declared backfill that runs before a pending migration:
    one declared by a pending migration (it runs right after it), or by an applied one with rows still to do
    here (the expand phase applied its migration; the backfill phase runs it before the contract). The rows
    are counted only for a table the pending migrations touch (`touched`): no other check can need it."""
    from schema_deploy.backfill.contract import rows_left
    from schema_deploy.backfill.spec import load_spec

    declared = [m for m in bundle.migrations if m.backfill_raw is not None]
    if not declared or not pending:
        return []
    names = [m.name for m in bundle.migrations]
    before = set(names[:names.index(pending[0])])
    out = []
    for m in declared:
        spec = load_spec(m.name, m.backfill_path, m.backfill_raw)
        label = f"backfill {spec.id} ({spec.path})"
        if m.name in pending:
            out.append((pending.index(m.name) + 1, spec.table, label))
        elif m.name in before and names_of(spec.table) & touched and rows_left(conn, spec):
            out.append((0, spec.table, label))
    return out


def names_of(table: str) -> set[str]:
    """A table as statements may name it: with or without the public schema."""
    bare = table.removeprefix("public.")
    return {table, bare, bare if "." in bare else f"public.{bare}"}


def check_applyable(status: Status, bundle: Bundle) -> None:
    files = bundle.by_name()
    problems = []
    for s in status.failed:
        problems.append(
            f"- {s.name} failed in an earlier run (after {s.applied_steps} step(s)); ledger logs: "
            f"{(s.logs or '').strip()[:300]}\n  Fix the cause. If nothing of it persisted, mark it with "
            f"`python -m schema_deploy resolve --rolled-back {s.name}` and apply again; if you completed it "
            f"by hand, `resolve --applied {s.name}`."
        )
    for s in status.drift:
        if s.state == "edited-after-apply":
            problems.append(
                f"- {s.name} was edited after it was applied (ledger checksum {s.ledger_checksum[:12]}…, "
                f"file {s.checksum[:12]}…). Restore the applied version of the file from version control; "
                "put further changes in a new migration."
            )
        else:
            problems.append(
                f"- {s.name} is applied in the database but missing from the bundle. Deploy from a bundle "
                "that contains it (are you on an old branch?)."
            )
    for s in status.states:
        if (s.state == INTERRUPTED and s.ledger_checksum and s.name in files
                and not checksum_matches(s.ledger_checksum, files[s.name].raw)):
            problems.append(
                f"- {s.name} was interrupted after {s.applied_steps} step(s) and its file has changed since "
                f"then. Restore the file it started with, or finish/undo those steps by hand and run "
                f"`resolve --rolled-back {s.name}`."
            )
    if problems:
        raise LedgerBlocked("refusing to apply: the ledger is not in a state to build on.\n" + "\n".join(problems))


def table_sizes(conn: psycopg.Connection, tables: list[str]) -> dict[str, dict[str, int]]:
    """Estimated rows and total bytes of each existing table (for plans and window estimates)."""
    sizes: dict[str, dict[str, int]] = {}
    for table in tables:
        row = conn.execute(
            "SELECT greatest(c.reltuples, 0)::bigint, pg_total_relation_size(c.oid) "
            "FROM pg_class c WHERE c.oid = to_regclass(%s)", (db.quoted(table),)).fetchone()
        if row:
            sizes[table] = {"rows_estimate": int(row[0]), "bytes": int(row[1])}
    return sizes


# The lint rules whose findings online mode's rewrites remove. Another finding at a rewritten
# statement (DROP COLUMN beside a foreign key in one ALTER TABLE) still stands.
FIXED_BY_ONLINE = frozenset({"require-concurrent-index", "adding-foreign-key-constraint",
                             "constraint-missing-not-valid", "adding-not-nullable-field",
                             "disallowed-unique-constraint", "adding-serial-primary-key-field"})


def unfixed_findings(findings: list, plan: Plan) -> list:
    """Blocking lint findings the plan leaves as they are.

    In online mode a finding at a statement the plan rewrites (a plain CREATE INDEX
    built CONCURRENTLY, a foreign key added NOT VALID then validated, …) is fixed
    by the plan when its rule is one the rewrite addresses; every other blocking
    finding still stands. Findings in migrations the plan does not run (applied long
    ago) are history, not a reason to stop.
    """
    planned = {mp.migration.name for mp in plan.migrations}
    rewritten = {(str(ps.source.path), ps.source.line) for mp in plan.migrations for step in mp.steps
                 for ps in step.statements if ps.reason}
    return [f for f in findings if f.blocking and f.migration in planned
            and not (f.rule in FIXED_BY_ONLINE and (str(f.path), f.line) in rewritten)]
