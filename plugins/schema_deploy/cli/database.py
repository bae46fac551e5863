"""Verbs on one database's migrations: status, plan, apply, resolve, rollback, verify."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from schema_deploy.bundle.errors import MigrationFileError
from schema_deploy.cli.common import (bundle_of, connect, database_url, deploy_yaml, emit, folder_bundle, lint_config,
                                      load_state, release_and_bundle, say, settings_from)
from schema_deploy.errors import UsageError

if TYPE_CHECKING:
    from schema_deploy.plan.planner import Plan
    from schema_deploy.state.status import Status


def cmd_status(args: argparse.Namespace) -> int:
    """Applied, pending, failed and drifted migrations of the bundle against the database."""
    bundle = bundle_of(args)
    with connect(database_url(args)) as conn:
        status, _ = load_state(conn, bundle)
    emit(args, status.as_dict(), render_status(status))
    return 0 if status.clean else 1


def cmd_plan(args: argparse.Namespace) -> int:
    """What `apply` would do: steps, SQL, transactions, locks, table sizes, lint findings
    and data prechecks of the pending migrations. Changes nothing."""
    from schema_deploy.backfill.contract import phases, render_phases
    from schema_deploy.lint.engine import lint_parsed, referenced_relations, relation_facts, render as render_lint
    from schema_deploy.plan.planner import plan_for, table_sizes
    from schema_deploy.plan.prechecks import run_prechecks

    bundle = bundle_of(args)
    config = lint_config(args)
    with connect(database_url(args)) as conn:
        status, interrupted = load_state(conn, bundle)
        plan = plan_for(conn, bundle, status, interrupted, to=args.to, online=args.online)
        plan.table_sizes = table_sizes(conn, plan.tables())
        files = [(mp.migration, mp.file or mp.statements) for mp in plan.migrations]
        existing, estimates = relation_facts(conn, referenced_relations(files))
        prechecks = run_prechecks(conn, plan, settings_from(args))
        steps = phases(conn, bundle.migrations, [mp.migration.name for mp in plan.migrations])
    findings = lint_parsed(files, existing_tables=existing, config=config, row_estimates=estimates)
    health = deploy_yaml(args).health
    data = {**plan.as_dict(), "lint": [f.as_dict() for f in findings],
            "prechecks": [r.as_dict() for r in prechecks], "health": health.__dict__, "phases": steps}
    text = render_plan(plan)
    if steps:
        text += "\n\nphases (a migration after a backfill is applied only once the backfill is done):\n" + \
            render_phases(steps)
    if plan.migrations:
        text += "\n\nlint of the pending migrations:\n" + render_lint(findings, len(files))
        text += "\n\ndata prechecks:\n" + ("\n".join(
            f"   {'FAIL' if r.failed else 'ok  '} {r.statement.where}: {r.violations} {r.description}"
            + (f" (samples: {', '.join(r.samples)})" if r.samples else "") + (f" [{r.skipped}]" if r.skipped else "")
            for r in prechecks) or "   none needed")
    if any(step.online_kind for mp in plan.migrations for step in mp.steps):
        text += f"\n\nin production, the {health.describe()}"
    emit(args, data, text)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Apply pending migrations in order, under the migration lock. With --release, exactly the
    release's migrations (and, with --target, only the plan the release froze for that target). A declared
    backfill runs before the migration after it (from its checkpoint; not gated: `backfill run --health`
    runs one gated first), or, with --no-backfill, that migration is refused while the backfill has rows left."""
    from schema_deploy.backfill.engine import Runner, run_to_done
    from schema_deploy.engine.apply import apply
    from schema_deploy.ops.release import check_plan

    url, approve = database_url(args), None
    if args.target and not args.release:
        raise UsageError("--target names a plan frozen in a release; pass --release URI with it.")
    found, bundle = release_and_bundle(args)
    if args.target:
        approve = lambda plan: check_plan(found, args.target, plan)  # noqa: E731 - called under apply's lock
    waive = (args.waive_prechecks or "").strip() or None
    if args.waive_prechecks is not None and not waive:
        raise UsageError("--waive-prechecks needs the reason the failed prechecks may be ignored for this run "
                         "(it is printed and kept with the result), e.g. --waive-prechecks 'rows fixed by hand, ticket 123'.")
    backfill = None if args.no_backfill else (
        lambda spec: run_to_done(Runner(url, spec, release=found.digest if found else None, log=say)).as_dict())
    result = apply(url, bundle, settings_from(args), log=say, to=args.to, online=args.online, approve=approve,
                   waive_prechecks=waive, backfill=backfill)
    emit(args, result.as_dict(),
         "\n".join(f"applied {m.name} in {m.seconds:.2f} s" for m in result.applied) or "nothing to apply")
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    """Mark a migration applied (baselining) or rolled back, as `prisma migrate resolve` does."""
    from schema_deploy.engine.resolve import resolve_applied, resolve_rolled_back

    bundle = folder_bundle(args)
    url = database_url(args)
    if args.applied:
        resolve_applied(url, bundle, args.applied)
        say(f"marked {args.applied} as applied")
    else:
        count = resolve_rolled_back(url, bundle, args.rolled_back)
        say(f"marked {count} failed row(s) of {args.rolled_back} as rolled back")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    """Undo the newest applied migrations with their down.sql (newest first) and mark them rolled back
    in _prisma_migrations, as `prisma migrate resolve --rolled-back` writes it: pending again."""
    from schema_deploy.engine.down import down

    bundle = folder_bundle(args)
    result = down(database_url(args), bundle, steps=args.steps, to=args.to, settings=settings_from(args),
                  online=args.online, log=say)
    emit(args, result.as_dict(),
         "\n".join(f"rolled back {m.name} in {m.seconds:.2f} s" for m in result.rolled_back) or "nothing to roll back")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check that the database has everything its applied migrations promise, plus sql/verify checks."""
    from schema_deploy.bundle.parse import parse_migration
    from schema_deploy.engine import verify as verification

    bundle = bundle_of(args)
    with connect(database_url(args)) as conn:
        status, _ = load_state(conn, bundle)
        applied = set(status.names("applied"))
        names = [args.migration] if args.migration else [m.name for m in bundle.migrations if m.name in applied]
        unknown = [n for n in names if n not in applied]
        if unknown:
            raise UsageError(f"--migration {unknown[0]} is not applied to this database; "
                             f"applied: {', '.join(sorted(applied)) or 'none'}.")
        statements = []
        for m in bundle.migrations:
            if m.name not in names:
                continue
            try:
                statements.extend(parse_migration(m))
            except MigrationFileError as exc:  # applied long ago: a warning, never a reason to stop
                say(f"warning: {m.name} is applied but its file cannot be read as SQL now, so what it promises "
                    f"is not checked: {exc.message}")
        report = verification.verify(conn, statements, args.verify_dir)
    emit(args, report.as_dict(), verification.render(report))
    return 0 if report.ok else 1


def render_status(status: Status) -> str:
    lines = [f"{'migration':<50} {'state':<20} {'applied at':<26} checksum"]
    for s in status.states:
        lines.append(f"{s.name:<50} {s.state:<20} {(s.applied_at or '-')[:25]:<26} {(s.checksum or s.ledger_checksum or '')[:12]}")
    pending, failed, drift = status.pending, status.failed, status.drift
    if status.clean:
        lines.append("database is up to date")
    else:
        summary = f"{len(pending)} pending, {len(failed)} failed, {len(drift)} drifted"
        interrupted = status.names("interrupted")
        if interrupted:  # not clean, and none of the above: say why
            summary += f", {len(interrupted)} interrupted (apply resumes where it stopped)"
        lines.append(summary)
    return "\n".join(lines)


def render_plan(plan: Plan) -> str:
    if not plan.migrations:
        return "\n".join(["nothing to apply: every migration is applied"] + [f"warning: {w}" for w in plan.warnings])
    lines = []
    for mp in plan.migrations:
        mode = "one transaction with its ledger row" if mp.atomic else f"{len(mp.steps)} steps, each committed on its own"
        lines.append(f"== {mp.migration.name}  (sha256 {mp.migration.checksum[:12]}…; {mode})")
        if mp.resume_from:
            lines.append(f"   resumes at step {mp.resume_from + 1}: steps 1..{mp.resume_from} were applied by an earlier run")
        lines.extend(f"   note: {note}" for note in mp.notes)
        shown: set[int] = set()
        for step in mp.steps:
            kind = "transaction" if step.transactional else "autocommit"
            locks = ", ".join(f"{mode} on {table}" for table, mode in sorted(step.locks.items())) or "no table locks"
            gated = f"; health-gated in production ({step.online_kind})" if step.online_kind else ""
            lines.append(f"   step {step.number} [{kind}] {locks}{gated}")
            for ps in step.statements:
                if ps.reason and id(ps.source) not in shown:
                    shown.add(id(ps.source))
                    lines.append(f"      {ps.where}: as written: {' '.join(ps.source.sql.split())[:140]}")
                    scan = (f", reading all of {', '.join(sorted(ps.source.scans))} while holding it"
                            if ps.source.scans else "")
                    lines.append(f"         (would take {ps.source.strongest_lock()} on "
                                 f"{', '.join(sorted(ps.source.locks))}{scan}); rewritten to:")
                first = " ".join(ps.sql.split())
                prefix = "         " if ps.reason else f"      {ps.where}: "
                lines.append(f"{prefix}{first[:140]}")
                if ps.reason:
                    lines.append(f"           why: {ps.reason}")
    lines.extend(f"warning: {w}" for w in plan.warnings)
    if plan.table_sizes:
        lines.append("tables touched:")
        for table, size in sorted(plan.table_sizes.items()):
            lines.append(f"   {table:<40} ~{size['rows_estimate']:>12,} rows  {size['bytes'] / 1e6:>10.1f} MB")
    return "\n".join(lines)
