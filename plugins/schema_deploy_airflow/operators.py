"""Operators of deploy_schema that need more than a @task: the maintenance-window wait."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator


class WaitForWindowOperator(BaseOperator):
    """Defer (no worker slot held) until a maintenance window is open with time enough left.

    The expected production duration is staging's measured apply time scaled by
    the size ratio of the touched tables, times deploy.yaml's safety factor.
    `skip_window` (with a reason, checked by preflight) proceeds at once.
    """

    template_fields = ("skip_window", "skip_reason")

    def __init__(self, *, staging_task_id: str, preflight_task_id: str, skip_window: Any = False,
                 skip_reason: Any = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staging_task_id = staging_task_id
        self.preflight_task_id = preflight_task_id
        self.skip_window = skip_window
        self.skip_reason = skip_reason

    def execute(self, context: Any) -> dict[str, Any]:
        from schema_deploy import config
        from schema_deploy.window import expected_duration, next_slot

        if str(self.skip_window).lower() in ("true", "1"):
            self.log.warning("maintenance window skipped: %s", self.skip_reason)
            return {"skipped": True, "reason": str(self.skip_reason)}
        ti = context["ti"]
        staging = ti.xcom_pull(task_ids=self.staging_task_id) or {}
        summary = ti.xcom_pull(task_ids=self.preflight_task_id) or {}
        cfg = config.load()
        needed = expected_duration(float(staging.get("seconds", 60)), int(staging.get("table_bytes", 0) or 0),
                                   int(summary.get("production_table_bytes", 0) or 0), cfg.window_safety_factor)
        now = datetime.now(timezone.utc)
        slot = next_slot(list(cfg.windows), now, needed)
        facts = {"window": slot.window.label, "opens": slot.start.isoformat(), "closes": slot.end.isoformat(),
                 "needed": str(needed)}
        if slot.start <= now:
            self.log.info("window %s is open until %s; %s needed", slot.window.label, slot.end, needed)
            return {"skipped": False, **facts}
        from schema_deploy_airflow.steps import notify

        notify("waiting_window", {"until": slot.start.isoformat(), "window": slot.window.label,
                                  "expected duration": str(needed)}, self.log)
        self.log.info("waiting for window %s at %s (%s needed)", slot.window.label, slot.start, needed)
        self.defer(trigger=DateTimeTrigger(moment=slot.start + timedelta(seconds=1)),
                   method_name="execute_complete", kwargs={"facts": facts})

    def execute_complete(self, context: Any, event: Any = None, facts: dict[str, Any] | None = None) -> dict[str, Any]:
        self.log.info("maintenance window open: %s", facts)
        return {"skipped": False, **(facts or {})}
