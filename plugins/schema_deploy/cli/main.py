"""`python -m schema_deploy <verb>`: the parser and `main`; one small function per verb, in a module per verb family
(`database`, `checks`, `backups`, `audit`, `deploy`; `common` holds what they share).

Exit codes: 0 success; 1 findings, pending/failed migrations or a failed
deployment; 2 bad input or configuration. Data goes to stdout (text, or JSON
with --json); messages go to stderr. Passwords never appear in either.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from schema_deploy.cli.audit import cmd_audit
from schema_deploy.cli.backfill import cmd_backfill
from schema_deploy.cli.backups import cmd_backup, cmd_backups, cmd_restore, cmd_verify_backup
from schema_deploy.cli.checks import cmd_config, cmd_lint
from schema_deploy.cli.common import DEFAULT_MIGRATIONS, say
from schema_deploy.cli.database import cmd_apply, cmd_plan, cmd_resolve, cmd_rollback, cmd_status, cmd_verify
from schema_deploy.cli.deploy import cmd_deploy, cmd_release
from schema_deploy.errors import SchemaDeployError


def add_plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", metavar="NAME", help="stop after this migration")
    p.add_argument("--precheck-timeout-ms", type=int, help="statement_timeout of each data precheck (default 60000)")
    p.add_argument("--online", action=argparse.BooleanOptionalAction, default=True,
                   help="rewrite lock-heavy statements on existing tables into online forms (default: on)")


class _Unbuilt:
    """Stands in for the parser of a verb not being run: building all of them costs a `lint` call (a
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
    p.add_argument("--no-backfill", action="store_true",
                   help="refuse a migration whose backfill has rows left, instead of running the backfill first")
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
    p = verb("backfill", cmd_backfill, "run, show, pause, resume or cancel a migration's declared backfill")
    config_option(p)
    release_option(p)
    p.add_argument("action", choices=("run", "status", "pause", "resume", "cancel"))
    p.add_argument("--name", metavar="MIGRATION", help="the migration whose backfill.yaml it is (default: the only one)")
    p.add_argument("--health", action="store_true",
                   help="run: wait between batches while deploy.yaml's health gate says so (as production does)")
    p.add_argument("--by", metavar="WHO", help="pause/resume/cancel: who asks (default: $USER)")
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
         "backups", "release", "deploy", "audit", "config", "backfill")


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
