"""`python -m schema_deploy <verb>`: one small function per verb.

Exit codes: 0 success; 1 findings, pending/failed migrations or a failed
deployment; 2 bad input or configuration. Data goes to stdout (text, or JSON
with --json); messages go to stderr. Passwords never appear in either.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from schema_deploy.bundle import Bundle, load_bundle
from schema_deploy.errors import MigrationFileError, SchemaDeployError, UsageError, scrub

if TYPE_CHECKING:
    from schema_deploy.apply import Settings
    from schema_deploy.plan import Plan
    from schema_deploy.status import Status

# The database driver, the engine and the planner are imported by the verbs that use them, not here:
# `lint` on one file (a pre-commit hook) must not pay for psycopg (bench/lint_call.py).

DEFAULT_MIGRATIONS = "sql/migrations"


def connect(url: str):
    """A session on `url` (db.connect, imported when a verb first needs the database)."""
    from schema_deploy.db import connect as open_session

    return open_session(url)


def load_state(conn, bundle: Bundle):
    """The ledger's view of `bundle` (apply.load_state)."""
    from schema_deploy.apply import load_state as ledger_state

    return ledger_state(conn, bundle)


def say(message: str) -> None:
    if os.environ.get("SCHEMA_DEPLOY_LOG_TIME"):  # wall-clock prefix, for aligning with other logs
        message = f"{time.time():.3f} {message}"
    print(scrub(message), file=sys.stderr, flush=True)


def emit(args: argparse.Namespace, data: object, text: str) -> None:
    if args.json:
        print(json.dumps(data, indent=2, default=str))
    else:
        print(scrub(text))


def database_url(args: argparse.Namespace) -> str:
    url = args.db or os.environ.get("DATABASE_URL")
    if not url:
        raise UsageError("no database given: pass --db postgresql://user:password@host:port/dbname "
                         "or set DATABASE_URL.")
    if not url.startswith(("postgresql://", "postgres://")):
        raise UsageError(f"--db {scrub(url)!r} is not a PostgreSQL URL; expected postgresql://user:password@host:port/dbname.")
    return url


def settings_from(args: argparse.Namespace) -> Settings:
    from schema_deploy.apply import Settings

    fields = {}
    for name in ("lock_timeout_ms", "max_lock_timeout_ms", "lock_retries", "statement_timeout_ms",
                 "advisory_lock_timeout_s", "precheck_timeout_ms"):
        value = getattr(args, name, None)
        if value is not None:
            if value < 0:
                raise UsageError(f"--{name.replace('_', '-')} must not be negative (got {value}).")
            if value == 0 and name in ("lock_timeout_ms", "max_lock_timeout_ms", "precheck_timeout_ms"):
                # 0 means "wait forever" to PostgreSQL: every query on the table would queue behind us.
                raise UsageError(f"--{name.replace('_', '-')} 0 would wait for locks forever, blocking "
                                 "every query on the table meanwhile; give a positive number of milliseconds.")
            fields[name] = value
    return Settings(**fields)


def bundle_of(args: argparse.Namespace) -> Bundle:
    """The migrations to work on: the release's (--release URI, loaded and proven by its sha256), or
    the folder's (--migrations DIR, default sql/migrations)."""
    return release_and_bundle(args)[1]


def release_and_bundle(args: argparse.Namespace):
    """(the release or None, the bundle to work on); see `bundle_of`."""
    uri = getattr(args, "release", None)
    if not uri:
        return None, folder_bundle(args)
    if args.migrations:
        raise UsageError("--release and --migrations both name the migrations; pass one of them (a release "
                         "carries its own migrations).")
    found = release_of(uri)
    return found, found.to_bundle()


def folder_bundle(args: argparse.Namespace, folder: Path | None = None) -> Bundle:
    """The bundle in --migrations DIR (default sql/migrations). Links out of it are followed only when
    deploy.yaml declares that folder as a bundle with allow_symlinks: true (read only when there are)."""
    from schema_deploy.errors import SymlinkOutsideBundle

    folder = Path(folder or args.migrations or DEFAULT_MIGRATIONS)
    bundle = load_bundle(folder)
    if any(isinstance(m.problem, SymlinkOutsideBundle) for m in bundle.migrations):
        allowed, name = deploy_yaml(args).symlinks_allowed(folder)
        bundle = load_bundle(folder, allow_symlinks=allowed, name=name)
    return bundle


def release_of(uri: str):
    from schema_deploy import release
    from schema_deploy.backup_store import default_s3_client

    found = release.load(default_s3_client(), uri)
    say(f"release {found.short}: {len(found.files)} migrations of bundle {found.bundle}, from {uri}")
    return found


def deploy_yaml(args: argparse.Namespace):
    """deploy.yaml's settings: --config (which must exist), else ./deploy.yaml when the current folder has
    one, else $SCHEMA_DEPLOY_CONFIG or the project's."""
    from schema_deploy import config

    if getattr(args, "config", None):
        return config.load(args.config, must_exist=True)
    return config.load(Path("deploy.yaml") if Path("deploy.yaml").is_file() else None)


def lint_config(args: argparse.Namespace):
    """deploy.yaml's lint settings, found as `deploy_yaml` finds the file, reading only what lint needs."""
    from schema_deploy import config

    if getattr(args, "config", None):
        return config.load_lint(args.config, must_exist=True)
    return config.load_lint(Path("deploy.yaml") if Path("deploy.yaml").is_file() else None)


# --- verbs ---------------------------------------------------------------------

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
    from schema_deploy.plan import plan_for, table_sizes
    from schema_deploy.lint import lint_parsed, referenced_relations, relation_facts
    from schema_deploy.lint import render as render_lint
    from schema_deploy.prechecks import run_prechecks

    bundle = bundle_of(args)
    config = lint_config(args)
    with connect(database_url(args)) as conn:
        status, interrupted = load_state(conn, bundle)
        plan = plan_for(conn, bundle, status, interrupted, to=args.to, online=args.online)
        plan.table_sizes = table_sizes(conn, plan.tables())
        files = [(mp.migration, mp.file or mp.statements) for mp in plan.migrations]
        existing, estimates = relation_facts(conn, referenced_relations(files))
        prechecks = run_prechecks(conn, plan, settings_from(args))
    findings = lint_parsed(files, existing_tables=existing, config=config, row_estimates=estimates)
    data = {**plan.as_dict(), "lint": [f.as_dict() for f in findings],
            "prechecks": [r.as_dict() for r in prechecks]}
    text = render_plan(plan)
    if plan.migrations:
        text += "\n\nlint of the pending migrations:\n" + render_lint(findings, len(files))
        text += "\n\ndata prechecks:\n" + ("\n".join(
            f"   {'FAIL' if r.failed else 'ok  '} {r.statement.where}: {r.violations} {r.description}"
            + (f" (samples: {', '.join(r.samples)})" if r.samples else "") + (f" [{r.skipped}]" if r.skipped else "")
            for r in prechecks) or "   none needed")
    emit(args, data, text)
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    """Apply pending migrations in order, under the migration lock. With --release, exactly the
    release's migrations (and, with --target, only the plan the release froze for that target)."""
    from schema_deploy.apply import apply
    from schema_deploy.release import check_plan

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
    result = apply(url, bundle, settings_from(args), log=say, to=args.to, online=args.online, approve=approve,
                   waive_prechecks=waive)
    emit(args, result.as_dict(),
         "\n".join(f"applied {m.name} in {m.seconds:.2f} s" for m in result.applied) or "nothing to apply")
    return 0


def cmd_resolve(args: argparse.Namespace) -> int:
    """Mark a migration applied (baselining) or rolled back, as `prisma migrate resolve` does."""
    from schema_deploy.resolve import resolve_applied, resolve_rolled_back

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
    from schema_deploy.rollback import down

    bundle = folder_bundle(args)
    result = down(database_url(args), bundle, steps=args.steps, to=args.to, settings=settings_from(args),
                  online=args.online, log=say)
    emit(args, result.as_dict(),
         "\n".join(f"rolled back {m.name} in {m.seconds:.2f} s" for m in result.rolled_back) or "nothing to roll back")
    return 0


# --- lint ---------------------------------------------------------------------------

def cmd_lint(args: argparse.Namespace) -> int:
    """Check migrations for statements that block, rewrite, lose data or break the running application.
    Without a database, a table is existing unless created earlier in the same file; with one (--db or
    $DATABASE_URL), when the database has it, and its row estimate goes into the messages."""
    from schema_deploy.lint import lint_parsed, parse_bundle, referenced_relations, relation_facts, rule_table
    from schema_deploy.lint import render as render_lint

    if args.format == "json":
        args.json = True
    if args.list_rules:
        rules = rule_table()
        emit(args, rules, "\n".join(f"{r['id']:<38} {r['severity']:<8} {r['summary']}" for r in rules))
        return 0
    if args.files and args.migrations:
        raise UsageError("lint takes files or --migrations DIR, not both: files lint just those (a pre-commit hook "
                         "passes the changed ones), --migrations the whole bundle in order.")
    bundle = files_bundle(args.files) if args.files else folder_bundle(args)
    config = lint_config(args)
    files = parse_bundle(bundle)
    existing = estimates = None
    if args.db or os.environ.get("DATABASE_URL"):
        with connect(database_url(args)) as conn:
            existing, estimates = relation_facts(conn, referenced_relations(files))
    findings = lint_parsed(files, existing_tables=existing, config=config, row_estimates=estimates)
    if args.format in ("sarif", "github"):
        from schema_deploy import lint_report
        from schema_deploy.lint_rules import RULES

        text = lint_report.sarif_text(findings, RULES) if args.format == "sarif" else lint_report.github(findings)
        if text:
            print(text)
    else:
        emit(args, [f.as_dict() for f in findings], render_lint(findings, len(files)))
    return 1 if any(f.blocking for f in findings) else 0


def files_bundle(paths: list[Path]) -> Bundle:
    """Migration files named one by one (what a pre-commit hook passes): each is linted as its own
    migration, named by its folder (`<name>/migration.sql`) or its stem (`<name>.sql`), in that order."""
    from schema_deploy.bundle import Migration, content_problem, read_sql_bytes

    migrations = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise UsageError(f"{path}: no such file; pass migration files (…/migration.sql or …/<name>.sql), or "
                             "--migrations DIR for a whole bundle.")
        raw = read_sql_bytes(path)
        name = path.parent.name if path.name == "migration.sql" else path.stem
        migrations.append(Migration(name=name, path=path, raw=raw, problem=content_problem(path, raw)))
    return Bundle(root=Path("."), layout="files", migrations=tuple(migrations))


def cmd_config(args: argparse.Namespace) -> int:
    """`config check [FILE]`: validate deploy.yaml (FILE, else --config, else ./deploy.yaml, else
    $SCHEMA_DEPLOY_CONFIG or the project's) against its typed model and print the settings in effect,
    defaults included. Exit 2 on an invalid file, naming the key and the fix."""
    from schema_deploy import config

    path = args.file or getattr(args, "config", None)
    if path is None:
        path = Path("deploy.yaml") if Path("deploy.yaml").is_file() else config.config_path()
    settings = config.load(path, must_exist=True)
    effective = config.effective(settings)
    say(f"{path}: valid")
    emit(args, effective, "\n".join(f"{key}: {json.dumps(value, default=str)}" for key, value in effective.items()))
    return 0


# --- backups (boto3 is imported only by these verbs) -------------------------------

def _duration(text: str):
    """'7d', '12h', '30m', '2w' -> timedelta."""
    from datetime import timedelta

    units = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit():
        raise UsageError(f"--older-than {text!r}: expected a number and a unit, e.g. 30m, 12h, 7d or 2w.")
    return timedelta(**{units[text[-1]]: int(text[:-1])})


def _rows_text(counts: dict[str, int], how: str) -> list[str]:
    lines = [f"rows     {sum(counts.values()):,} in {len(counts)} tables ({how})"]
    lines += [f"  {table:<50} {n:>14,}" for table, n in sorted(counts.items())]
    return lines


def cmd_backup(args: argparse.Namespace) -> int:
    """Stream pg_dump -Fc of --db to S3 (multipart, SSE, sha256, manifest), then verify it."""
    from schema_deploy.backup import backup
    from schema_deploy.backup_store import default_s3_client
    from schema_deploy.restore import verify_backup

    url, s3 = database_url(args), default_s3_client()
    result = backup(s3, url, args.to, environment=args.environment, run_id=args.run_id, sse=args.sse,
                    kms_key_id=args.kms_key_id, log=say)
    check = None
    if not args.no_verify:
        check = verify_backup(s3, result.uri, restore_check=args.restore_check,
                              admin_url=url if args.restore_check else None, log=say)
    how = ("exact, in the dump's snapshot; equal after a test restore" if args.restore_check
           else "exact, in the dump's snapshot")
    lines = [f"backup   {result.uri}", f"manifest s3://{result.bucket}/{result.manifest_key}",
             f"size     {result.size:,} bytes in {result.parts} part(s)", f"sha256   {result.sha256}",
             f"sse      {result.manifest['sse']['mode']}" + (f" ({result.manifest['sse']['kms_key_id']})"
                                                            if result.manifest["sse"]["kms_key_id"] else ""),
             f"verified {check.method + ' ok' if check else 'no (--no-verify)'}"]
    emit(args, {**result.as_dict(), "verification": check.record if check else None},
         "\n".join(lines + _rows_text(result.row_counts, how)))
    return 0


def cmd_verify_backup(args: argparse.Namespace) -> int:
    """Check a backup's size, sha256 and table of contents against its manifest; with
    --restore-check, restore it into a scratch database on --db's server and compare row counts."""
    from schema_deploy.backup_store import default_s3_client
    from schema_deploy.restore import verify_backup

    url = database_url(args) if args.restore_check else None
    check = verify_backup(default_s3_client(), args.uri, restore_check=args.restore_check, admin_url=url, log=say)
    lines = [f"verified {check.uri}: {check.method} ok"]
    if check.row_counts is not None:
        lines += _rows_text(check.row_counts, "restored into a scratch database, equal to the manifest")
    emit(args, check.as_dict(), "\n".join(lines))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    """Restore a backup into an existing database, streaming from S3 in one transaction."""
    from schema_deploy.backup_store import default_s3_client
    from schema_deploy.restore import restore

    result = restore(default_s3_client(), args.source, database_url(args), clean=args.clean, jobs=args.jobs,
                     force=args.force, confirm_production=args.confirm_production,
                     environment=args.environment, log=say, allow_other_source=args.allow_other_source)
    crossed = [f"{result.other_source['fact']} (--allow-other-source)"] if result.other_source else []
    emit(args, result.as_dict(), "\n".join([f"restored {result.uri} into {result.database} in {result.seconds:.1f} s"]
                                           + crossed + _rows_text(result.row_counts, "equal to the manifest")))
    return 0


def cmd_backups(args: argparse.Namespace) -> int:
    """List the backups under --to (complete or not, verified or not), or prune old ones."""
    from schema_deploy.backup_store import default_s3_client, list_backups, prune

    s3 = default_s3_client()
    if args.action == "list":
        entries = list_backups(s3, args.to)
        lines = [f"{'created (UTC)':<20} {'state':<24} {'verified':<9} {'size':>14}  uri"]
        lines += [f"{e.created.strftime('%Y-%m-%d %H:%M:%S'):<20} {e.state:<24} {'yes' if e.verified else 'no':<9} "
                  f"{(e.as_dict()['size'] or 0):>14,}  {e.uri}" for e in entries]
        emit(args, [e.as_dict() for e in entries], "\n".join(lines) if entries else "no backups")
        return 0
    if args.keep is None:
        raise UsageError("backups prune needs --keep N (how many of the newest complete backups to keep).")
    older = _duration(args.older_than) if args.older_than else None
    decisions = prune(s3, args.to, keep=args.keep, older_than=older, dry_run=args.dry_run)
    verb_ = "would delete" if args.dry_run else "deleted"
    emit(args, [d.as_dict() for d in decisions],
         "\n".join(f"{verb_ if d.delete else 'keep':<12} {d.entry.uri}  ({d.reason})" for d in decisions)
         or "no backups")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Check that the database has everything its applied migrations promise, plus sql/verify checks."""
    from schema_deploy import verify as verification
    from schema_deploy.parse import parse_migration

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


# --- audit trail ---------------------------------------------------------------------

def _since(text: str) -> datetime:
    """--since: an ISO date or date-time; UTC unless it carries an offset."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r} is not an ISO date or time; expected e.g. 2026-11-01, "
                         "2026-11-01T09:30 or 2026-11-01T09:30:00+01:00 (UTC unless an offset is given).") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def cmd_audit(args: argparse.Namespace) -> int:
    """`audit verify` walks the hash chain of the database's audit trail (schema_deploy.audit_events)
    and names the first row whose hash does not hold; `audit export` prints the rows recorded since a
    date, with their hashes, as JSON or CSV. Neither changes anything."""
    from schema_deploy import audit

    if args.action == "verify":
        if args.since or args.format:
            raise UsageError("--since and --format belong to `audit export`; `audit verify` always walks the "
                             "whole chain.")
        with connect(database_url(args)) as conn:
            report = audit.verify_chain(conn)
        emit(args, report.as_dict(), report.message)
        return 0 if report.ok else 1
    fmt = args.format or "json"
    if args.json and fmt != "json":
        raise UsageError(f"--json and --format {fmt} contradict each other; pass one of them.")
    since = _since(args.since) if args.since else None
    with connect(database_url(args)) as conn:
        text = audit.export(conn, since, fmt)
    sys.stdout.write(text)  # as stored: payloads were scrubbed when appended, and must match their hashes
    return 0


# --- releases and the whole pipeline -------------------------------------------------

def cmd_release(args: argparse.Namespace) -> int:
    """`release create` freezes the migrations folder (exact bytes, checksums, source, lint, and with
    --plan-for the plan per target) into s3://BUCKET/PREFIX/releases/<sha256>.json; `release show`
    prints what a release holds. The sha256 is the release's name."""
    from schema_deploy import release
    from schema_deploy.backup_store import Sse, default_s3_client

    s3 = default_s3_client()
    if args.action == "show":
        if not args.uri or args.to or args.plan_for:
            raise UsageError("release show takes the release's URI only: release show s3://BUCKET/PREFIX/releases/"
                             "<sha256>.json")
        found = release.load(s3, args.uri)
        emit(args, {**found.summary(), "lint": found.lint, "prechecks": list(found.prechecks), "plans": found.plans},
             render_release(found))
        return 0
    if args.uri or not args.to:
        raise UsageError("release create needs --to s3://BUCKET/PREFIX (and no URI): "
                         "release create --migrations DIR --to s3://BUCKET/PREFIX")
    from schema_deploy.lint import lint_bundle
    from schema_deploy.plan import plan_for

    folder = Path(args.migrations or DEFAULT_MIGRATIONS)
    bundle = folder_bundle(args, folder)
    findings = lint_bundle(bundle, config=lint_config(args))
    lint = {"errors": sum(f.blocking for f in findings),
            "warnings": sum(f.severity == "warning" and not f.suppressed for f in findings)}
    plans = {}
    for spec in args.plan_for or []:
        name, _, url = spec.partition("=")
        if not name or not url.startswith(("postgresql://", "postgres://")):
            raise UsageError(f"--plan-for {scrub(spec)!r}: expected NAME=postgresql://user:password@host:port/db.")
        with connect(url) as conn:
            status, interrupted = load_state(conn, bundle)
            plans[name] = release.plan_summary(plan_for(conn, bundle, status, interrupted, online=args.online))
    cfg = deploy_yaml(args)
    frozen = release.store(s3, release.freeze(bundle, args.name or folder.resolve().name, lint=lint, plans=plans,
                                              verify=release.verify_files(args.verify_dir)),
                           args.to, Sse(cfg.backup_sse, cfg.backup_kms_key_id).put_args())
    say(f"release {frozen.short} of {len(frozen.files)} migrations ({lint['errors']} lint errors, "
        f"{lint['warnings']} warnings)" + (f", planned for {', '.join(plans)}" if plans else ""))
    emit(args, frozen.summary(), f"{frozen.uri}\nsha256 {frozen.digest}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """The whole pipeline without Airflow: preflight (freezing a release, or from --release), backup of
    production, staging, the test gate; then, with --approved-by, the maintenance window (or
    --skip-window REASON), production and its verification; the audit record in either case. Without
    --approved-by it stops after the gate and prints the command that goes on."""
    from schema_deploy.backup_store import default_s3_client
    from schema_deploy.pipeline import Deployment, RunInfo, RunParams, Store, Target
    from schema_deploy.pipeline.report import render
    from schema_deploy.pipeline.run import run

    for flag, url in (("--staging", args.staging), ("--production", args.production)):
        if not url.startswith(("postgresql://", "postgres://")):
            raise UsageError(f"{flag} {scrub(url)!r} is not a PostgreSQL URL; expected "
                             "postgresql://user:password@host:port/dbname.")
    if args.staging == args.production:
        raise UsageError("--staging and --production are the same database: the staging rehearsal would change "
                         "production before its approval. Give two databases.")
    cfg = deploy_yaml(args)
    if args.migrations:  # a folder named on the command line is a bundle of its own, for this run
        if args.bundle or args.release:
            raise UsageError("--migrations, --bundle and --release each name the migrations; pass one of them.")
        from dataclasses import replace

        cfg = replace(cfg, bundles=(("cli", args.migrations.resolve()),), default_bundle="cli")
    params = RunParams(bundle=args.bundle or "", dry_run=args.dry_run, online=args.online, require_approval=True,
                       skip_window=bool(args.skip_window), skip_window_reason=args.skip_window or "",
                       lock_retries=args.lock_retries, waive_prechecks=(args.waive_prechecks or "").strip())
    store = Store.from_config(default_s3_client(), cfg)
    store = Store(store.s3, args.to.rstrip("/"), store.sse)
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or "command line"
    info = RunInfo(run_id=f"cli__{datetime.now(timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}", run_type="manual",
                   triggered_by=user, started=datetime.now(timezone.utc).isoformat())
    ctx = Deployment(cfg=cfg, store=store, run=info, params=params, notify=cli_notifier(cfg), log=cli_logger())
    source = release_of(args.release) if args.release else None
    outcome = run(ctx, Target("staging", "staging", args.staging), Target("production", "production", args.production),
                  source=source, approved_by=args.approved_by)
    lines = render(f"deploy {info.run_id}: {outcome.stopped or 'production migrated and verified'}",
                   outcome.results, outcome.states, outcome.seconds,
                   notes={"approval": "given on the command line with --approved-by"} if args.approved_by else None)
    release = (outcome.results.get("preflight") or {}).get("release") or {}
    if outcome.stopped.startswith("awaiting approval"):
        lines += ["", "next: production, once someone approves this release:",
                  f"  python -m schema_deploy deploy --staging URL --production URL --to {args.to} "
                  f"--release {release.get('uri')} --approved-by NAME"]
    emit(args, {"results": outcome.results, "states": outcome.states, "seconds": outcome.seconds,
                "stopped": outcome.stopped}, "\n".join(lines))
    return 0


def cli_notifier(cfg):
    """Slack through $SLACK_WEBHOOK_URL when it is set; otherwise each notification is a log line."""
    from schema_deploy.notify import deliver, message, webhook_poster

    webhook = os.environ.get("SLACK_WEBHOOK_URL")

    def notify(event: str, facts: dict, links: dict | None = None) -> dict:
        if not webhook:
            say(f"notification {event}: " + "; ".join(f"{k}: {v}" for k, v in facts.items() if v not in (None, "")))
            return {"event": event, "ok": False, "attempts": 0, "errors": ["SLACK_WEBHOOK_URL is not set"]}
        from slack_sdk.webhook import WebhookClient

        return deliver(webhook_poster(WebhookClient(webhook)), message(event, facts, links), event, log=say).as_dict()

    return notify


def cli_logger():
    """The pipeline's log on stderr, scrubbed, like every other message of the CLI."""
    import logging

    class Say(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            say(record.getMessage())

    log = logging.getLogger("schema_deploy.cli")
    log.handlers[:] = [Say()]
    log.setLevel(logging.INFO)
    log.propagate = False
    return log


def render_release(found) -> str:
    lines = [f"release  {found.uri}", f"sha256   {found.digest}", f"bundle   {found.bundle} ({found.layout} layout)",
             f"source   {found.source.get('folder')}" + (f" at git {found.source['git_commit'][:12]}"
                                                         + (" (with uncommitted changes)" if found.source.get("git_dirty")
                                                            else "") if found.source.get("git_commit") else ""),
             f"lint     {found.lint}", "migrations"]
    lines += [f"  {f.name:<50} {f.checksum[:12]}{'  + down.sql' if f.down_sql is not None else ''}" for f in found.files]
    for target, plan in sorted(found.plans.items()):
        lines.append(f"plan for {target}: " + (", ".join(f"{m['name']} ({len(m['steps'])} steps)"
                                                         for m in plan["migrations"]) or "nothing pending"))
    return "\n".join(lines)


# --- rendering -------------------------------------------------------------------

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
            lines.append(f"   step {step.number} [{kind}] {locks}")
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


# --- wiring --------------------------------------------------------------------

def add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", metavar="NAME", help="stop after this migration")
    p.add_argument("--precheck-timeout-ms", type=int, help="statement_timeout of each data precheck (default 60000)")
    p.add_argument("--online", action=argparse.BooleanOptionalAction, default=True,
                   help="rewrite lock-heavy statements on existing tables into online forms (default: on)")


class _Unbuilt:
    """Stands in for the parser of a verb not being run: building all fourteen costs a `lint` call (a
    pre-commit hook's) about 10 ms, so `main` builds only the one named."""

    def add_argument(self, *args: object, **kwargs: object) -> None:
        return None

    def add_mutually_exclusive_group(self, *args: object, **kwargs: object) -> _Unbuilt:
        return self


def parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only` (a verb's name), only that verb's options are built."""
    top = argparse.ArgumentParser(prog="python -m schema_deploy", description="PostgreSQL schema deployments.")
    sub = top.add_subparsers(dest="verb", required=True)

    def verb(name: str, func, help_: str) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return _Unbuilt()  # type: ignore[return-value]
        p = sub.add_parser(name, help=help_, description=func.__doc__)
        p.set_defaults(func=func)
        p.add_argument("--migrations", type=Path, default=None,
                       help=f"migrations folder (default {DEFAULT_MIGRATIONS})")
        p.add_argument("--db", help="postgresql:// URL of the target (default: $DATABASE_URL)")
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        return p

    def config_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--config", type=Path, help="deploy.yaml (its bundles: say which folders may hold links "
                                                   "out of them; default: ./deploy.yaml if present)")

    def release_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--release", metavar="s3://BUCKET/PREFIX/releases/SHA256.json",
                       help="work from this release's migrations instead of a folder")

    p = verb("status", cmd_status, "compare the bundle with the database's ledger")
    config_option(p)
    release_option(p)
    p = verb("plan", cmd_plan, "show what apply would do")
    add_plan_options(p)
    release_option(p)
    p.add_argument("--config", type=Path,
                   help="deploy.yaml with lint.severity overrides (default: ./deploy.yaml if present)")
    p = verb("apply", cmd_apply, "apply pending migrations")
    config_option(p)
    add_plan_options(p)
    release_option(p)
    p.add_argument("--target", metavar="NAME", help="with --release: refuse a plan other than the one the release "
                                                    "froze for this target (e.g. production)")
    p.add_argument("--lock-timeout-ms", type=int, help="lock_timeout of the first attempt (default 100)")
    p.add_argument("--max-lock-timeout-ms", type=int, help="lock_timeout cap as retries grow (default 2000)")
    p.add_argument("--lock-retries", type=int, help="retries after a lock timeout (default 10)")
    p.add_argument("--statement-timeout-ms", type=int, help="statement_timeout (default 3600000; 0 = none)")
    p.add_argument("--advisory-lock-timeout-s", type=float, help="wait for another migrator (default 60)")
    p.add_argument("--waive-prechecks", metavar="REASON",
                   help="go on although data prechecks fail, for this run only; the reason is printed with each")
    p = verb("verify", cmd_verify, "check the database against its applied migrations")
    config_option(p)
    p.add_argument("--migration", metavar="NAME", help="only this migration's expectations")
    release_option(p)
    p.add_argument("--verify-dir", type=Path, default=Path("sql/verify"),
                   help="folder of SQL checks and explain/ queries (default sql/verify)")
    p = verb("resolve", cmd_resolve, "mark a migration applied or rolled back")
    config_option(p)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--applied", metavar="NAME")
    group.add_argument("--rolled-back", metavar="NAME")
    p = verb("rollback", cmd_rollback, "undo the newest applied migrations with their down.sql")
    config_option(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--steps", type=int, help="how many applied migrations to undo, newest first (default 1)")
    group.add_argument("--to", metavar="NAME", help="undo NAME and every applied migration after it")
    p.add_argument("--online", action=argparse.BooleanOptionalAction, default=True,
                   help="rewrite lock-heavy statements on existing tables into online forms (default: on)")
    p.add_argument("--lock-timeout-ms", type=int, help="lock_timeout of the first attempt (default 100)")
    p.add_argument("--lock-retries", type=int, help="retries after a lock timeout (default 10)")
    p.add_argument("--advisory-lock-timeout-s", type=float, help="wait for another migrator (default 60)")
    p = verb("lint", cmd_lint, "check migrations for locking, rewriting and destructive statements")
    p.add_argument("files", nargs="*", type=Path, metavar="FILE",
                   help="lint just these migration files (what a pre-commit hook passes) instead of --migrations DIR")
    p.add_argument("--format", choices=("text", "json", "sarif", "github"), default="text",
                   help="text (default), json (as --json), sarif (SARIF 2.1.0 for code scanning) or github "
                        "(workflow annotations on the pull request)")
    p.add_argument("--config", type=Path,
                   help="deploy.yaml with lint.severity overrides (default: ./deploy.yaml if present)")
    p.add_argument("--list-rules", action="store_true", help="print every rule's id, default severity and summary")
    p = verb("config", cmd_config, "check deploy.yaml and print the settings in effect")
    p.add_argument("action", choices=("check",))
    p.add_argument("file", nargs="?", type=Path, metavar="FILE", help="the deploy.yaml to check (default: as the "
                                                                        "other verbs find it)")
    config_option(p)
    p = verb("backup", cmd_backup, "back the database up to S3 (pg_dump -Fc, streamed)")
    p.add_argument("--to", required=True, metavar="s3://BUCKET/PREFIX")
    p.add_argument("--environment", default="default", help="environment name in the key layout (default: default)")
    p.add_argument("--run-id", help="run id in the key (default: random)")
    p.add_argument("--sse", choices=("AES256", "aws:kms"), default="AES256", help="server-side encryption")
    p.add_argument("--kms-key-id", help="KMS key for --sse aws:kms (default: the bucket's/account's)")
    p.add_argument("--restore-check", action="store_true", help="verify by restoring into a scratch database")
    p.add_argument("--no-verify", action="store_true", help="skip the verification after the backup")
    p = verb("verify-backup", cmd_verify_backup, "check a backup against its manifest")
    p.add_argument("uri", metavar="s3://BUCKET/.../X.dump")
    p.add_argument("--restore-check", action="store_true", help="restore into a scratch database on --db's server")
    p = verb("restore", cmd_restore, "restore a backup into a database")
    p.add_argument("--from", dest="source", required=True, metavar="s3://BUCKET/.../X.dump")
    p.add_argument("--clean", action="store_true", help="drop the backup's objects first (--clean --if-exists)")
    p.add_argument("--force", action="store_true", help="restore even with other sessions connected")
    p.add_argument("--confirm-production", metavar="DBNAME", help="the target's name, to restore into production")
    p.add_argument("--environment", help="the target's environment (default: default, as backup's); 'production' "
                                         "requires --confirm-production")
    p.add_argument("--allow-other-source", action="store_true",
                   help="restore a backup taken of another environment or database than the target "
                        "(refused without it)")
    p.add_argument("--jobs", type=int, default=1, help="must be 1: a streamed restore cannot run in parallel")
    p = verb("backups", cmd_backups, "list or prune backups")
    p.add_argument("action", choices=("list", "prune"))
    p.add_argument("--to", required=True, metavar="s3://BUCKET/PREFIX")
    p.add_argument("--keep", type=int, help="prune: newest complete backups to keep per database")
    p.add_argument("--older-than", metavar="AGE", help="prune: only delete backups older than this (30m, 12h, 7d, 2w)")
    p.add_argument("--dry-run", action="store_true", help="prune: show what would be deleted")
    p = verb("release", cmd_release, "freeze the migrations into a release in S3, or show one")
    p.add_argument("action", choices=("create", "show"))
    p.add_argument("uri", nargs="?", metavar="URI", help="show: the release's s3:// URI")
    p.add_argument("--to", metavar="s3://BUCKET/PREFIX", help="create: where releases/<sha256>.json goes")
    p.add_argument("--name", help="create: the bundle's name in the release (default: the folder's name)")
    p.add_argument("--plan-for", action="append", metavar="NAME=URL",
                   help="create: freeze the plan for this target too (repeatable)")
    p.add_argument("--online", action=argparse.BooleanOptionalAction, default=True,
                   help="create: plan with online rewrites (default: on)")
    p.add_argument("--config", type=Path, help="deploy.yaml (lint severities, SSE; default ./deploy.yaml)")
    p.add_argument("--verify-dir", type=Path, default=Path("sql/verify"),
                   help="create: the verification queries frozen with the release (default sql/verify)")
    p = verb("deploy", cmd_deploy, "the whole pipeline without Airflow: staging, gate, then production")
    p.add_argument("--staging", required=True, metavar="URL", help="postgresql:// URL of staging")
    p.add_argument("--production", required=True, metavar="URL", help="postgresql:// URL of production")
    p.add_argument("--to", required=True, metavar="s3://BUCKET/PREFIX", help="the store: backups, releases, audit")
    p.add_argument("--release", metavar="URI", help="deploy this release instead of freezing the folder")
    p.add_argument("--bundle", metavar="NAME", help="a bundle declared in deploy.yaml (default: its default_bundle)")
    p.add_argument("--dry-run", action="store_true", help="staging and its gate only; production untouched")
    p.add_argument("--approved-by", metavar="NAME", help="who approves production (recorded as given on the "
                                                         "command line); without it the run stops after the gate")
    p.add_argument("--waive-prechecks", metavar="REASON",
                   help="go on although data prechecks fail; the reason goes into the audit record")
    p.add_argument("--skip-window", metavar="REASON", help="change production now, outside the maintenance window "
                                                           "(the reason is recorded)")
    p.add_argument("--online", action=argparse.BooleanOptionalAction, default=True,
                   help="rewrite lock-heavy statements into online forms (default: on)")
    p.add_argument("--lock-retries", type=int, help="retries after a lock timeout (default: deploy.yaml's)")
    p.add_argument("--config", type=Path, help="deploy.yaml (default: $SCHEMA_DEPLOY_CONFIG or the project's)")
    p = verb("audit", cmd_audit, "check or export the audit trail (schema_deploy.audit_events)")
    p.add_argument("action", choices=("verify", "export"),
                   help="verify: check the hash chain (exit 1 at the first broken row); export: print the rows")
    p.add_argument("--since", metavar="ISO-DATE",
                   help="export: only rows recorded at or after this date or time (UTC unless an offset is given)")
    p.add_argument("--format", choices=("json", "csv"), help="export: output format (default json)")
    return top


VERBS = ("status", "plan", "apply", "verify", "resolve", "rollback", "lint", "backup", "verify-backup", "restore",
         "backups", "release", "deploy", "audit", "config")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser(argv[0] if argv and argv[0] in VERBS else None).parse_args(argv)
    try:
        return args.func(args)
    except SchemaDeployError as exc:
        say(f"error: {exc}")
        return exc.exit_code
    except Exception as exc:  # noqa: BLE001 - only the database driver's errors are ours to word
        driver = sys.modules.get("psycopg")
        if driver is None or not isinstance(exc, driver.Error):
            raise
        # An error we did not anticipate from the database: its message, scrubbed, not a traceback.
        say(f"error: the database answered {type(exc).__name__}"
            f"{f' (SQLSTATE {exc.sqlstate})' if exc.sqlstate else ''}: {str(exc).strip()}")
        return 1
    except KeyboardInterrupt:
        say("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
