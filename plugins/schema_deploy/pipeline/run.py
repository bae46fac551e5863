"""The whole deploy pipeline in one process, in order: what `python -m schema_deploy deploy` runs.

The same steps as the `deploy_schema` DAG, with the orchestration Airflow does there
done here: each step's result feeds the next, a failure stops the run (the audit
record is written whatever happened, as the DAG's teardown does), the approval is
the name given on the command line, and the window wait is a sleep.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from schema_deploy.ops.release import Release
from schema_deploy.pipeline import deploy, record
from schema_deploy.pipeline.errors import NothingToDeploy
from schema_deploy.pipeline.results import Approval
from schema_deploy.pipeline.target import Deployment, Target


@dataclass
class RunOutcome:
    """Each step's result (to_xcom form), state and seconds, by step name."""

    results: dict[str, Any] = field(default_factory=dict)
    states: dict[str, str | None] = field(default_factory=dict)
    seconds: dict[str, float | None] = field(default_factory=dict)
    stopped: str = ""  # why the run stopped before production, when it did

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        try:
            value = fn()
        except NothingToDeploy:
            self.states[name] = "skipped"
            raise
        except BaseException:
            self.states[name] = "failed"
            raise
        finally:
            self.seconds[name] = round(time.monotonic() - t0, 3)
        self.states[name] = "success"
        self.results[name] = value.to_xcom() if hasattr(value, "to_xcom") else value
        return value


def run(ctx: Deployment, staging: Target, production: Target, *, source: Release | None = None,
        approved_by: str | None = None, sleep: Callable[[float], None] = time.sleep) -> RunOutcome:
    """Preflight → backup → staging → gate → (approval by `approved_by`) → window → production →
    verification, then the audit record. Without `approved_by` (or on a dry run) it stops after the
    gate with `stopped` saying why; production is untouched then."""
    out = RunOutcome()
    try:
        pre = out.step("preflight", lambda: deploy.preflight(ctx, staging, production, source))
        notify = ctx.notify
        ctx = replace(ctx, notify=lambda event, facts, links=None: notify(
            event, deploy.naming_release(facts, pre.release), links))
        backup = out.step("backup", lambda: deploy.backup(ctx, production, pre))
        staged = out.step("apply_staging", lambda: deploy.apply(ctx, staging, pre))
        gated = out.step("gate", lambda: deploy.staging_gate(ctx, staging, pre, backup, staged))
        if ctx.params.dry_run:
            ctx.notify("dry_run_done", deploy.dry_run_facts(gated), None)
            out.stopped = "dry run: staging migrated and verified, production untouched"
            return out
        if not approved_by:
            ctx.notify("awaiting_approval", {"migrations": ", ".join(m["name"] for m in pre.migrations),
                                             "backup": backup.uri}, None)
            out.stopped = "awaiting approval: production untouched"
            return out
        approval = Approval(approved=True, approver=approved_by, responded_at=datetime.now(timezone.utc).isoformat(),
                            triggered_by=ctx.run.triggered_by, via="command line")
        out.step("approval", lambda: approve(ctx, approval))
        out.step("window", lambda: wait_for_window(ctx, pre, staged, sleep))
        applied = out.step("apply_production", lambda: deploy.apply(ctx, production, pre))
        verified = out.step("verification", lambda: deploy.verify(ctx, production, pre, applied, backup))
        deploy.production_done(ctx, applied, verified, backup, pre)
        return out
    except NothingToDeploy:
        out.stopped = "nothing to deploy"
        return out
    finally:
        targets = {"apply_staging": staging, "apply_production": production}
        try:
            out.step("record", lambda: record.record(ctx, targets, out.results, dict(out.states)))
        except Exception as exc:  # noqa: BLE001 - the deployment's own error, if any, is the one to see
            ctx.log.error("audit record not written: %s", exc)


def approve(ctx: Deployment, approval: Approval) -> Approval:
    """The command line's approval, under deploy.yaml's approval rules."""
    record.check_approval(ctx, approval)
    return approval


def wait_for_window(ctx: Deployment, pre: Any, staged: Any, sleep: Callable[[float], None]) -> Any:
    """The window slot, after sleeping until it opens when it is not open now."""
    slot, wake_at = deploy.window(ctx, pre, staged)
    if wake_at is None:
        return slot
    started = time.monotonic()
    while (left := (wake_at - datetime.now(timezone.utc)).total_seconds()) > 0:
        sleep(min(left, 30.0))
    return replace(slot, waited_s=round(time.monotonic() - started, 1))
