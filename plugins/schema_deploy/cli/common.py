"""What the verbs share: the database URL, the bundle or release to work on, deploy.yaml, output."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from schema_deploy.bundle.discover import Bundle, load_bundle
from schema_deploy.errors import UsageError
from schema_deploy.redact import scrub

if TYPE_CHECKING:
    from schema_deploy.pg.retry import Settings

# The database driver, the engine and the planner are imported by the verbs that use them, not here:
# `lint` on one file (a pre-commit hook) must not pay for psycopg (bench/lint_call.py).

DEFAULT_MIGRATIONS = "sql/migrations"


def connect(url: str):
    """A session on `url` (db.connect, imported when a verb first needs the database)."""
    from schema_deploy.pg.db import connect as open_session

    return open_session(url)


def load_state(conn, bundle: Bundle):
    """The ledger's view of `bundle` (apply.load_state)."""
    from schema_deploy.engine.apply import load_state as ledger_state

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
    from schema_deploy.pg.retry import Settings

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
    from schema_deploy.bundle.errors import SymlinkOutsideBundle

    folder = Path(folder or args.migrations or DEFAULT_MIGRATIONS)
    bundle = load_bundle(folder)
    if any(isinstance(m.problem, SymlinkOutsideBundle) for m in bundle.migrations):
        allowed, name = deploy_yaml(args).symlinks_allowed(folder)
        bundle = load_bundle(folder, allow_symlinks=allowed, name=name)
    return bundle


def release_of(uri: str):
    from schema_deploy.backups.store import default_s3_client
    from schema_deploy.ops import release

    found = release.load(default_s3_client(), uri)
    say(f"release {found.short}: {len(found.files)} migrations of bundle {found.bundle}, from {uri}")
    return found


def deploy_yaml(args: argparse.Namespace):
    """deploy.yaml's settings: --config (which must exist), else ./deploy.yaml when the current folder has
    one, else $SCHEMA_DEPLOY_CONFIG or the project's."""
    from schema_deploy.config import settings

    if getattr(args, "config", None):
        return settings.load(args.config, must_exist=True)
    return settings.load(Path("deploy.yaml") if Path("deploy.yaml").is_file() else None)


def lint_config(args: argparse.Namespace):
    """deploy.yaml's lint settings, found as `deploy_yaml` finds the file, reading only what lint needs."""
    from schema_deploy.config import settings

    if getattr(args, "config", None):
        return settings.load_lint(args.config, must_exist=True)
    return settings.load_lint(Path("deploy.yaml") if Path("deploy.yaml").is_file() else None)
