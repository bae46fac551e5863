"""Operators of deploy_fleet that need more than a @task: the approval after the canary wave, and
the members waiting for their maintenance window (deferred, no worker slot held).

Each takes its upstream tasks' values as XComArgs in `template_fields`: Airflow resolves them when
the task renders (again when it resumes after a deferral), so no body pulls another task's XCom.
"""
from __future__ import annotations

from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator


class CanaryApprovalOperator(ApprovalOperator):
    """Airflow's ApprovalOperator after a fleet's canary wave, showing what each canary member did
    (`canary`: the canary's part, `fleet_run`); Approve deploys the other waves, Reject leaves them
    not attempted (the base class skips `waves`)."""

    template_fields = (*ApprovalOperator.template_fields, "canary")

    def __init__(self, *, canary: Any, **kwargs: Any) -> None:
        super().__init__(subject="Deploy the rest of fleet {{ params.fleet }}?", body="", **kwargs)
        self.canary = canary

    def execute(self, context: Any) -> Any:
        from schema_deploy.pipeline import fleet
        from schema_deploy_airflow.steps import typed

        part = typed(fleet.FleetPart, self.canary) or fleet.FleetPart()
        self.body = fleet.canary_body(str((context.get("params") or {}).get("fleet")), part)
        return super().execute(context)


class FleetWindowOperator(BaseOperator):
    """A fleet's members whose maintenance window was closed when their wave ran: deferred (no
    worker slot held) until the next of their windows opens, then those members deployed, the
    brake deciding after each batch; again until no member waits (fleet_steps.windowed).

    `summary` (preflight's), `members` (fleet_members') and `canary` / `waves` (their parts, XCom
    key `fleet_run`; None for a task that never ran) are the upstream values it works from."""

    template_fields = ("summary", "members", "canary", "waves")

    def __init__(self, *, summary: Any, members: Any, canary: Any, waves: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.summary, self.members, self.canary, self.waves = summary, members, canary, waves

    def execute(self, context: Any) -> dict[str, Any] | None:
        return self._step(resumed=False)

    def execute_complete(self, context: Any, event: Any = None) -> dict[str, Any] | None:
        return self._step(resumed=True)

    def _step(self, resumed: bool) -> dict[str, Any] | None:
        from schema_deploy_airflow import fleet_steps

        result, wake_at = fleet_steps.windowed(self.summary, self.members, [self.canary, self.waves], resumed)
        if wake_at is None:
            return result
        self.defer(trigger=DateTimeTrigger(moment=wake_at), method_name="execute_complete")
