"""Releases and the whole pipeline without Airflow: release, deploy."""
from __future__ import annotations

import argparse
import os
from datetime import datetime, timezone
from pathlib import Path

from schema_deploy.cli.common import (DEFAULT_MIGRATIONS, connect, deploy_yaml, emit, folder_bundle, lint_config,
                                      load_state, release_of, say)
from schema_deploy.errors import UsageError
from schema_deploy.redact import scrub


def cmd_release(args: argparse.Namespace) -> int:
    """`release create` freezes the migrations folder (exact bytes, checksums, source, lint, and with
    --plan-for the plan per target) into s3://BUCKET/PREFIX/releases/<sha256>.json; `release show`
    prints what a release holds. The sha256 is the release's name."""
    from schema_deploy.backups.store import Sse, default_s3_client
    from schema_deploy.ops import release

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
    from schema_deploy.lint.engine import lint_bundle
    from schema_deploy.plan.planner import plan_for

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


def cmd_deploy(args: argparse.Namespace) -> int:
    """The whole pipeline without Airflow: preflight (freezing a release, or from --release), backup of
    production, staging, the test gate; then, with --approved-by, the maintenance window (or
    --skip-window REASON), production and its verification; the audit record in either case. Without
    --approved-by it stops after the gate and prints the command that goes on."""
    from schema_deploy.backups.store import default_s3_client
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
    from schema_deploy.ops.notify import deliver, message, webhook_poster

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
