"""Operators of deploy_schema that need more than a @task: the approval and the window wait."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator

from schema_deploy.errors import SchemaDeployError


class ApproverRefused(SchemaDeployError):
    exit_code = 1

    def __init__(self, user: str) -> None:
        super().__init__(f"{user} approved their own deployment, but deploy.yaml sets approval.approver_must_differ: "
                         "a second person must approve. Production was not touched; trigger a new run and ask "
                         "a colleague to approve it.")


class ProductionApprovalOperator(ApprovalOperator):
    """Airflow's human-in-the-loop approval, showing the plan, the backup and the gate result.

    Slack hears that a decision is awaited (with the link to the "Required actions"
    page), who decided, and, on Reject, that production is skipped. The approver and
    the time are this task's XCom (the audit record). With
    `approval.approver_must_differ`, the user who triggered the run cannot approve it.
    """

    def __init__(self, *, preflight_task_id: str, backup_task_id: str, gate_task_id: str, **kwargs: Any) -> None:
        super().__init__(subject="Apply the pending migrations to production?", body="", **kwargs)
        self.preflight_task_id, self.backup_task_id, self.gate_task_id = preflight_task_id, backup_task_id, gate_task_id

    def execute(self, context: Any) -> Any:
        from schema_deploy_airflow.steps import notify

        ti = context["ti"]
        summary = ti.xcom_pull(task_ids=self.preflight_task_id) or {}
        backup = ti.xcom_pull(task_ids=self.backup_task_id) or {}
        gate = ti.xcom_pull(task_ids=self.gate_task_id) or {}
        names = [m["name"] for m in summary.get("migrations", [])]
        self.subject = f"Apply {', '.join(names) or 'nothing'} to production?"
        self.body = approval_body(summary, backup, gate)
        try:
            link = self.generate_link_to_ui_from_context(context=context)
        except ValueError:
            link = ""
        notify("awaiting_approval", {"migrations": ", ".join(names), "triggered by": summary.get("triggered by", "?"),
                                     "backup": backup.get("uri", "?")}, self.log,
               links={"Approve or reject": link} if link else None)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Record and announce the decision, then let ApprovalOperator act on it.

        The record is pushed first under the XCom key `approval`: on Reject the base class
        skips the downstream tasks by raising, so nothing after it would run.
        """
        from schema_deploy import config
        from schema_deploy_airflow.steps import notify

        if "error" in event:  # a timeout or trigger error: the base class raises the right exception
            return super().execute_complete(context=context, event=event)
        user = event.get("responded_by_user") or {}
        approver = user.get("name") or user.get("id") or "?"
        approved = list(event.get("chosen_options") or [])[:1] == [self.APPROVE]
        triggered_by = getattr(context.get("dag_run"), "triggering_user_name", None)
        record = {"approved": approved, "approver": approver, "approver_id": user.get("id"),
                  "responded_at": str(event.get("responded_at")), "triggered_by": triggered_by}
        self.log.info("approval record: %s", record)
        context["ti"].xcom_push(key="approval", value=record)
        if approved and config.load().approver_must_differ and triggered_by and approver == triggered_by:
            notify("rejected", {"by": approver, "why": "the approver must differ from who triggered the run"},
                   self.log)
            raise ApproverRefused(approver)
        notify("approved" if approved else "rejected",
               {"by": approver, "at": record["responded_at"],
                "production": "next: the maintenance window" if approved else "skipped, untouched"}, self.log)
        super().execute_complete(context=context, event=event)  # on Reject: skips downstream, raising
        return record


def approval_body(summary: dict[str, Any], backup: dict[str, Any], gate: dict[str, Any]) -> str:
    """Markdown for the approval page: what will run, where the backup is, what the gate found."""
    from schema_deploy.parse import LOCK_MODES

    lines = ["### Plan"]
    for m in summary.get("migrations", []):
        rewritten = sum(bool(s["rewritten"]) for s in m["steps"])
        steps = len(m["steps"])
        lines.append(f"* **{m['name']}** — sha256 `{m['checksum'][:16]}…`, {steps} step{'s' if steps != 1 else ''}, "
                     f"{rewritten} rewritten for online mode")
    strongest: dict[str, str] = {}
    for m in summary.get("migrations", []):
        for s in m["steps"]:
            for table, mode in s["locks"].items():
                if table not in strongest or LOCK_MODES.index(mode) > LOCK_MODES.index(strongest[table]):
                    strongest[table] = mode
    if strongest:
        lines.append("\n**Strongest lock per table**: " + "; ".join(f"{t}: {m}" for t, m in sorted(strongest.items())))
    sizes = summary.get("table_sizes", {})
    if sizes:
        lines.append("\n**Tables** (production): " + ", ".join(
            f"{t} ~{v.get('rows_estimate', '?')} rows / {v['bytes'] / 1e6:.1f} MB" for t, v in sorted(sizes.items())))
    lines += ["\n### Backup", f"`{backup.get('uri', 'none')}` sha256 `{backup.get('sha256', '?')}`, "
              f"verified by {backup.get('verified', '?')}"]
    cmds = gate.get("gate", {}).get("commands", [])
    verification = gate.get("verification", {})
    lines += ["\n### Staging gate", f"{sum(c['exit_code'] == 0 for c in cmds)}/{len(cmds)} commands passed, "
              f"{gate.get('gate', {}).get('tests', 0)} tests; verification {verification.get('checks', 0)} checks ok"]
    return "\n".join(lines)


class WaitForWindowOperator(BaseOperator):
    """Defer (no worker slot held) until a maintenance window is open with time enough left.

    The expected production duration is staging's apply time scaled by the size
    ratio of the touched tables, times deploy.yaml's safety factor. A window too
    short for it is passed over for the next one. `skip_window` (with a reason,
    checked by preflight) proceeds at once and says so in the log and XCom.
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
        from schema_deploy_airflow.steps import notify

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
                 "needed": str(needed), "staging_seconds": staging.get("seconds")}
        if slot.start <= now:
            self.log.info("window %s is open until %s; %s needed", slot.window.label, slot.end, needed)
            return {"skipped": False, "waited_s": 0, **facts}
        notify("waiting_window", {"until": slot.start.isoformat(), "window": slot.window.label,
                                  "expected duration": str(needed)}, self.log)
        self.log.info("waiting for window %s at %s (%s needed); deferred, no worker slot held",
                      slot.window.label, slot.start, needed)
        # The plan of the wait goes to XCom rather than into defer()'s kwargs, which not every
        # executor path hands back to execute_complete (dag.test() does not).
        ti.xcom_push(key="window_wait", value={**facts, "deferred_at": now.isoformat()})
        self.defer(trigger=DateTimeTrigger(moment=slot.start + timedelta(seconds=1)), method_name="execute_complete")

    def execute_complete(self, context: Any, event: Any = None) -> dict[str, Any]:
        facts = context["ti"].xcom_pull(task_ids=self.task_id, key="window_wait") or {}
        deferred_at = facts.pop("deferred_at", None)
        waited = (datetime.now(timezone.utc) - datetime.fromisoformat(deferred_at)).total_seconds() \
            if deferred_at else None
        self.log.info("maintenance window open after waiting %s s: %s", waited, facts)
        return {"skipped": False, "waited_s": waited, **facts}
