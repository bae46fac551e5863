"""A fleet run with a member in every state, made by the real pipeline functions (fleet_record), for
the fleet view's unit tests and its routes' integration tests."""
from __future__ import annotations

from typing import Any

from schema_deploy.config.fleets import FleetSpec, Share, WavesSpec
from schema_deploy.config.settings import DeployConfig
from schema_deploy.pipeline import fleet
from schema_deploy.pipeline.results import BrakeDecision, MemberOutcome, PreflightResult
from schema_deploy.pipeline.target import Deployment, RunInfo, Store

RUN_ID = "manual__2026-03-01T02:00:00+00:00"
ERROR = "data prechecks failed; nothing was changed: - 3 rows of experiment_assignments"
WAVES = [["tenant_00"], ["tenant_01", "tenant_02", "tenant_03"], ["tenant_04", "tenant_05", "tenant_06"]]


def spec(name: str = "tenants") -> FleetSpec:
    return FleetSpec(name, "prefix", prefix="tenant_", waves=WavesSpec(canary=1, size=Share(3), halt_after=Share(1)),
                     backup=False)


def context(root: str = "s3://bucket/prefix", run_id: str = RUN_ID, s3: Any = None) -> Deployment:
    return Deployment(cfg=DeployConfig(), store=Store(s3, root),
                      run=RunInfo(run_id=run_id, triggered_by="ops", url="http://airflow/dags/deploy_fleet/runs/x",
                                  started="2026-03-01T02:00:01+00:00"))


def outcomes() -> list[MemberOutcome]:
    """tenant_00 done (canary), 01 already, 02 failed, 03 waiting for its window, 04-06 not attempted."""
    attrs = {"region": "eu"}
    return [
        MemberOutcome(member="tenant_00", state="done", wave=0, attributes=attrs, tries=1, seconds=4.25,
                      started="2026-03-01T02:00:05+00:00", ended="2026-03-01T02:00:09.250000+00:00"),
        MemberOutcome(member="tenant_01", state="already", wave=1, attributes=attrs, tries=1, seconds=0.5),
        MemberOutcome(member="tenant_02", state="failed", wave=1, attributes={"region": "us"}, tries=1,
                      seconds=1.5, error=ERROR, detail=ERROR + "\nmore"),
        MemberOutcome(member="tenant_03", state="waiting_window", wave=1, attributes={"region": "us"},
                      reason="its maintenance window us_night is closed", next_window="2026-03-01T07:00:00+00:00"),
        *fleet.not_attempted([fleet.Member(f"tenant_0{i}", "member", "postgresql://x/y") for i in (4, 5, 6)],
                             "the brake halted the run after wave 1: 1 member(s) failed so far", 2),
    ]


def brakes() -> list[BrakeDecision]:
    return [BrakeDecision(wave=0, halt=False, failed=0, done=1, already=0, limit=0, reason="go on"),
            BrakeDecision(wave=1, halt=True, failed=1, done=1, already=1, limit=0, reason="halt")]


def preflight() -> PreflightResult:
    return PreflightResult(release={"uri": "s3://bucket/prefix/releases/abc.json", "sha256": "ab" * 32,
                                    "short": "abababababab", "bundle": "main"},
                           migrations=[], online=True, pending={}, lint={}, prechecks=[], table_sizes={},
                           production_table_bytes=0)


def record(ctx: Deployment | None = None, name: str = "tenants") -> dict[str, Any]:
    """The fleet record deploy_fleet's fleet_record task writes for this run."""
    ctx = ctx or context()
    run = fleet.FleetRun(outcomes=outcomes(), waves=WAVES, brakes=brakes())
    return fleet.fleet_record(ctx, spec(name), preflight(), run)


def live_members(name: str = "tenants") -> dict[str, Any]:
    """fleet_members' return value for the same fleet."""
    return {"fleet": name, "members": [{"name": n, "attributes": {"region": "eu"}} for w in WAVES for n in w],
            "waves": WAVES}
