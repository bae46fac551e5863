"""The fleet run's record: the outcome of every member, kept in the store and chained into the audit
record; when the run's parts ran apart (`record_run`), joined from them, the members no part reached
listed as not attempted, and Slack told once."""
from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from schema_deploy.backups.store import parse_s3_uri
from schema_deploy.config.fleets import FleetSpec
from schema_deploy.pipeline.fleet.members import RECORD_VERSION, fleet_prefix
from schema_deploy.pipeline.fleet.parts import FleetMembers, FleetPart, brakes_of, latest_outcomes, unreached
from schema_deploy.pipeline.fleet.verdicts import record_outcome
from schema_deploy.pipeline.fleet.waves import FleetRun
from schema_deploy.pipeline.record import put_document
from schema_deploy.pipeline.results import BrakeDecision, MemberOutcome, PreflightResult, Result
from schema_deploy.pipeline.target import Deployment


@dataclass(frozen=True)
class FleetRecordRef(Result):
    """Where the run's fleet record was kept, its digest, the run's outcome and the members per state."""

    uri: str
    sha256: str
    outcome: str
    counts: dict[str, int] = field(default_factory=dict)


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


def done_facts(spec: FleetSpec, outcome: str, outcomes: Sequence[MemberOutcome], reason: str, uri: str
               ) -> dict[str, Any]:
    """The run's one Slack summary: its outcome, the members per state, the failed ones with their
    first error line, why the others were not attempted, and where the record is."""
    failed = [o for o in outcomes if o.failed]
    return {"fleet": spec.name, "outcome": outcome,
            "members": ", ".join(f"{s} {n}" for s, n in sorted(Counter(o.state for o in outcomes).items())),
            "failed": "\n".join(f"{o.member}: {o.error}" for o in failed[:10]),
            "not attempted": reason if any(o.state == "not_attempted" for o in outcomes) else "", "record": uri}


def record_run(ctx: Deployment, spec: FleetSpec, pre: PreflightResult | None, frozen: FleetMembers | None,
               parts: Sequence[FleetPart | None], reason: str) -> FleetRecordRef | None:
    """The fleet record of a run whose parts ran apart (the canary's, the waves', the waiting
    members', in that order: a member's latest outcome counts), every frozen member no part reached
    not attempted with `reason`; kept in the store, then one Slack summary. None, and nothing kept,
    when the run has no release (no member was touched)."""
    if pre is None:
        ctx.log.info("no fleet release (preflight did not finish): no member was touched, nothing to record")
        return None
    outcomes = latest_outcomes(parts)
    outcomes += unreached(frozen, outcomes, reason)
    document = fleet_record(ctx, spec, pre, FleetRun(outcomes=outcomes, waves=frozen.waves if frozen else [],
                                                     brakes=brakes_of(parts)))
    document["outcome"] = record_outcome(document["outcome"], ctx.params.dry_run, outcomes, reason)
    uri, digest = keep_fleet_record(ctx, spec, document)
    ctx.notify("fleet_done", done_facts(spec, document["outcome"], outcomes, reason, uri))
    return FleetRecordRef(uri=uri, sha256=digest, outcome=document["outcome"], counts=document["counts"])
