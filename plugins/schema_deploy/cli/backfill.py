"""`backfill run|status|pause|resume|cancel`: a migration's declared backfill (its backfill.yaml)."""
from __future__ import annotations

import argparse
import getpass
import os

from schema_deploy.cli.common import connect, database_url, deploy_yaml, emit, release_and_bundle, say
from schema_deploy.errors import UsageError


def declared(args: argparse.Namespace):
    """(the release or None, the migration whose backfill is named, its BackfillSpec)."""
    from schema_deploy.backfill.spec import load_spec

    release, bundle = release_and_bundle(args)
    with_backfill = [m for m in bundle.migrations if m.backfill_raw is not None]
    if not with_backfill:
        raise UsageError(f"{bundle.root}: no migration declares a backfill (a backfill.yaml beside its "
                         "migration.sql); see docs/backfills.md.")
    if args.name:
        found = [m for m in with_backfill if m.name == args.name]
        if not found:
            raise UsageError(f"--name {args.name}: no such migration with a backfill.yaml in {bundle.root}; those "
                             f"with one: {', '.join(m.name for m in with_backfill)}.")
        m = found[0]
    elif len(with_backfill) == 1:
        m = with_backfill[0]
    else:
        raise UsageError(f"{len(with_backfill)} migrations declare a backfill: name one with --name "
                         f"({', '.join(m.name for m in with_backfill)}).")
    return release, bundle, m, load_spec(m.name, m.backfill_path, m.backfill_raw)


def cmd_backfill(args: argparse.Namespace) -> int:
    """Run a migration's declared backfill (after its migration.sql is applied), or show, pause, resume or
    cancel it. `run` resumes from the checkpoint in the target's schema_deploy.backfills."""
    from schema_deploy.backfill import checkpoint

    url = database_url(args)
    if args.action == "status":
        with connect(url) as conn:
            rows = checkpoint.read(conn, args.name)
        text = "\n".join(f"{c.id}: {c.state}{' (' + c.requested + ' requested)' if c.requested else ''}, "
                         f"{c.rows_done} of ~{c.rows_estimated} rows, {c.batches} batches, last key {c.last_key}, "
                         f"{len(c.pauses)} pause(s){'; ' + c.message if c.message else ''}" for c in rows)
        emit(args, [c.as_dict() for c in rows], text or "no backfill has run on this database")
        return 0
    if args.action in ("pause", "resume", "cancel"):
        if not args.name:
            raise UsageError(f"backfill {args.action}: name the backfill with --name MIGRATION.")
        who = args.by or os.environ.get("USER") or getpass.getuser()
        with connect(url) as conn:
            point = checkpoint.request(conn, args.name, None if args.action == "resume" else args.action, who)
        if point is None:
            raise UsageError(f"backfill {args.name}: no checkpoint on this database (it has not run here).")
        emit(args, point.as_dict(), f"{point.id}: {point.state}"
             + (f", {point.requested} requested: the running backfill stops at its next batch" if point.requested
                else ""))
        return 0
    return run(args, url)


def run(args: argparse.Namespace, url: str) -> int:
    from schema_deploy.backfill.engine import Runner
    from schema_deploy.backfill.errors import BackfillRefused

    release, _bundle, m, spec = declared(args)
    from schema_deploy.state.ledger import read_rows

    with connect(url) as conn:
        applied = {r.migration_name for r in read_rows(conn) if r.applied}
    if m.name not in applied:
        raise BackfillRefused(spec.id, f"its migration {m.name} is not applied on this database",
                              "Apply it first (python -m schema_deploy apply --to " + m.name + ").")
    gate = None
    if args.health:
        from schema_deploy.health.gate import HealthGate

        gate = HealthGate(url, deploy_yaml(args).health, log=say)
        gate.require_privileges()
    try:
        result = Runner(url, spec, release=release.digest if release else None, gate=gate, log=say).run()
    finally:
        if gate is not None:
            gate.close()
    emit(args, result.as_dict(), result.describe())
    return 0 if result.state == "done" else 1
