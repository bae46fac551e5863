"""The fleet run's record: the outcome of every member, kept in the store and chained into the audit record."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from schema_deploy.backups.store import parse_s3_uri
from schema_deploy.config.fleets import FleetSpec
from schema_deploy.pipeline.fleet.members import RECORD_VERSION, fleet_prefix
from schema_deploy.pipeline.fleet.waves import FleetRun
from schema_deploy.pipeline.record import put_document
from schema_deploy.pipeline.results import BrakeDecision, MemberOutcome, PreflightResult
from schema_deploy.pipeline.target import Deployment


def fleet_outcome(outcomes: Sequence[MemberOutcome], brakes: Sequence[BrakeDecision], dry_run: bool) -> str:
    states = Counter(o.state for o in outcomes)
    return ("halted" if any(b.halt for b in brakes) else "failed" if states["failed"]
            else "not approved" if states["not_attempted"] else "dry run" if dry_run
            else "waiting for windows" if states["waiting_window"] else "done")


def fleet_record(ctx: Deployment, spec: FleetSpec, pre: PreflightResult, run: FleetRun) -> dict[str, Any]:
    """One JSON document for the run: the release, the settings, the waves, the brake's decisions
    and every member's outcome (not attempted and waiting ones too, with the reason)."""
    release = pre.release
    w = spec.waves
    return {"record_version": RECORD_VERSION, "kind": "fleet", "fleet": spec.name,
            "run": {**ctx.run.facts(), "url": ctx.run.url, "started": ctx.run.started},
            "parameters": ctx.params.__dict__,
            "release": {k: release.get(k) for k in ("uri", "sha256", "short", "bundle")},
            "settings": {"canary": w.canary, "size": str(w.size), "parallel": w.parallel,
                         "halt_after": str(w.halt_after), "pause_s": w.pause.total_seconds(),
                         "approve_after_canary": w.approve_after_canary, "backup": "each" if spec.backup else "none"},
            "outcome": fleet_outcome(run.outcomes, run.brakes, ctx.params.dry_run),
            "counts": dict(sorted(Counter(o.state for o in run.outcomes).items())),
            "waves": run.waves, "brakes": [b.to_xcom() for b in run.brakes],
            "members": [o.to_xcom() for o in sorted(run.outcomes, key=lambda o: (o.wave, o.member))]}


def keep_fleet_record(ctx: Deployment, spec: FleetSpec, document: dict[str, Any]) -> tuple[str, str]:
    """The fleet record in the store at PREFIX/fleets/<fleet>/runs/<run id>/fleet.json; (uri, sha256)."""
    bucket, key = parse_s3_uri(f"{fleet_prefix(ctx, spec.name)}/fleet.json")
    uri, digest = put_document(ctx, bucket, key, document)
    ctx.log.info("fleet record of %s kept at %s sha256 %s", quote(ctx.run.run_id), uri, digest)
    return uri, digest
