"""Verbs that check files without a deployment: lint, config."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from schema_deploy.bundle.discover import Bundle
from schema_deploy.cli.common import connect, database_url, emit, folder_bundle, lint_config, say
from schema_deploy.errors import UsageError


def cmd_lint(args: argparse.Namespace) -> int:
    """Check migrations for statements that block, rewrite, lose data or break the running application.
    Without a database, a table is existing unless created earlier in the same file; with one (--db or
    $DATABASE_URL), when the database has it, and its row estimate goes into the messages."""
    from schema_deploy.lint.engine import (lint_parsed, parse_bundle, referenced_relations, relation_facts,
                                           render as render_lint, rule_table)

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
        from schema_deploy.lint import report as lint_report
        from schema_deploy.lint.registry import RULES

        text = lint_report.sarif_text(findings, RULES) if args.format == "sarif" else lint_report.github(findings)
        if text:
            print(text)
    else:
        emit(args, [f.as_dict() for f in findings], render_lint(findings, len(files)))
    return 1 if any(f.blocking for f in findings) else 0


def files_bundle(paths: list[Path]) -> Bundle:
    """Migration files named one by one (what a pre-commit hook passes): each is linted as its own
    migration, named by its folder (`<name>/migration.sql`) or its stem (`<name>.sql`), in that order."""
    from schema_deploy.bundle.discover import Migration, content_problem, read_sql_bytes

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
    from schema_deploy.config import settings as config

    path = args.file or getattr(args, "config", None)
    if path is None:
        path = Path("deploy.yaml") if Path("deploy.yaml").is_file() else config.config_path()
    settings = config.load(path, must_exist=True)
    effective = config.effective(settings)
    say(f"{path}: valid")
    emit(args, effective, "\n".join(f"{key}: {json.dumps(value, default=str)}" for key, value in effective.items()))
    return 0
