"""Operators of deploy_schema that need more than a @task: the approval and the window wait."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator


def reason_param():
    """The approval form's optional reason (Airflow's HITL `params`: filled by the responder, empty
    allowed): said in Slack, on the page and in the audit record with the decision."""
    from airflow.sdk import Param

    # source "task": HITLOperator shows only the task's own params, never the DAG's.
    return {"reason": Param(None, type=["null", "string"], title="Reason (optional)", source="task",
                            description="Why you approve or reject: recorded with your decision in the audit "
                                        "trail, shown on the Schema deployments page and said in Slack.")}


def approval_reason(event: dict[str, Any] | None) -> str:
    """The reason the responder typed, from the HITL answer (its `params_input`), or ""."""
    return str(((event or {}).get("params_input") or {}).get("reason") or "").strip()


class RecordedApprovalOperator(ApprovalOperator):
    """Airflow's ApprovalOperator (rollback_schema's), whose answer is kept as the XCom `answer`
    (chosen option, who, when, the form's params: the reason) before the base class acts on it.

    On Reject the base class skips the downstream tasks by raising, and Airflow 3.3 then pushes no
    return value: without this, the audit record could not tell who rejected, when, or why.
    """

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if "error" in event:  # a timeout or trigger error: the record says "timed out" when it was one
            context["ti"].xcom_push(key="approval_error", value=str(event.get("error_type") or "error"))
        else:
            context["ti"].xcom_push(key="answer", value={
                "chosen_options": list(event.get("chosen_options") or []),
                "params_input": dict(event.get("params_input") or {}),
                "responded_at": str(event.get("responded_at")),
                "responded_by_user": event.get("responded_by_user")})
        return super().execute_complete(context=context, event=event)


class ProductionApprovalOperator(ApprovalOperator):
    """Airflow's human-in-the-loop approval, showing the plan, the backup and the gate result.

    Slack hears that a decision is awaited (with the link to the "Required actions"
    page), who decided and why ("rejected by X: reason"), and, on Reject, that
    production is skipped. The approver, the time and the optional reason are this
    task's XCom (the audit record). With `approval.approver_must_differ`, the user who
    triggered the run cannot approve it.
    """

    def __init__(self, *, preflight_task_id: str, backup_task_id: str, gate_task_id: str, **kwargs: Any) -> None:
        # Airflow hands the DAG's params in here too; HITLOperator would drop them (it keeps the task's
        # own only), so the form's fields are just the reason.
        kwargs["params"] = reason_param()
        super().__init__(subject="Apply the pending migrations to production?", body="", **kwargs)
        self.preflight_task_id, self.backup_task_id, self.gate_task_id = preflight_task_id, backup_task_id, gate_task_id

    def execute(self, context: Any) -> Any:
        from schema_deploy.pipeline.record import approval_body
        from schema_deploy_airflow.steps import notify

        ti = context["ti"]
        summary = ti.xcom_pull(task_ids=self.preflight_task_id) or {}
        backup = ti.xcom_pull(task_ids=self.backup_task_id) or {}
        gate = ti.xcom_pull(task_ids=self.gate_task_id) or {}
        names = [m["name"] for m in summary.get("migrations", [])]
        release = (summary.get("release") or {}).get("short", "?")
        self.subject = f"Apply {', '.join(names) or 'nothing'} (release {release}) to production?"
        self.body = approval_body(summary, backup, gate)
        try:
            link = self.generate_link_to_ui_from_context(context=context)
        except ValueError:
            link = ""
        notify("awaiting_approval", {"migrations": ", ".join(names),
                                     "triggered by": (summary.get("run") or {}).get("triggered_by", "?"),
                                     "backup": backup.get("uri", "?")}, self.log,
               links={"Approve or reject": link} if link else None)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Record and announce the decision, then let ApprovalOperator act on it.

        The record is pushed first under the XCom key `approval`: on Reject the base class
        skips the downstream tasks by raising, so nothing after it would run.
        """
        from schema_deploy.pipeline import Approval
        from schema_deploy.pipeline.record import check_approval
        from schema_deploy_airflow.steps import deployment

        if "error" in event:  # a timeout or trigger error: the base class raises the right exception
            # The record says "timed out" rather than only "failed at task approve_production".
            context["ti"].xcom_push(key="approval_error", value=str(event.get("error_type") or "error"))
            return super().execute_complete(context=context, event=event)
        user = event.get("responded_by_user") or {}
        approval = Approval(approved=list(event.get("chosen_options") or [])[:1] == [self.APPROVE],
                            approver=user.get("name") or user.get("id") or "?", approver_id=user.get("id"),
                            responded_at=str(event.get("responded_at")),
                            triggered_by=getattr(context.get("dag_run"), "triggering_user_name", None),
                            reason=approval_reason(event))
        record = approval.to_xcom()
        self.log.info("decision: %s", approval.decision)
        context["ti"].xcom_push(key="approval", value=record)
        check_approval(deployment(context, store=False), approval)
        super().execute_complete(context=context, event=event)  # on Reject: skips downstream, raising
        return record


class WaitForWindowOperator(BaseOperator):
    """Defer (no worker slot held) until a maintenance window is open with time enough left.

    The expected production duration is staging's apply time scaled by the size
    ratio of the touched tables, times deploy.yaml's safety factor. A window too
    short for it is passed over for the next one. `skip_window` (with a reason,
    checked by preflight) proceeds at once and says so in the log and XCom.
    """

    def __init__(self, *, staging_task_id: str, preflight_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staging_task_id = staging_task_id
        self.preflight_task_id = preflight_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        from schema_deploy.pipeline import ApplyResult, PreflightResult
        from schema_deploy.pipeline.deploy import window
        from schema_deploy_airflow.steps import deployment, pulled

        slot, wake_at = window(deployment(context), pulled(context, self.preflight_task_id, PreflightResult),
                               pulled(context, self.staging_task_id, ApplyResult))
        if wake_at is None:
            return slot.to_xcom()
        self.log.info("deferred until %s, no worker slot held", wake_at)
        # The plan of the wait goes to XCom rather than into defer()'s kwargs, which not every
        # executor path hands back to execute_complete (dag.test() does not).
        context["ti"].xcom_push(key="window_wait", value={**slot.to_xcom(),
                                                          "deferred_at": datetime.now(timezone.utc).isoformat()})
        self.defer(trigger=DateTimeTrigger(moment=wake_at), method_name="execute_complete")

    def execute_complete(self, context: Any, event: Any = None) -> dict[str, Any]:
        from schema_deploy.pipeline import WindowSlot

        facts = context["ti"].xcom_pull(task_ids=self.task_id, key="window_wait") or {}
        deferred_at = facts.pop("deferred_at", None)
        waited = (datetime.now(timezone.utc) - datetime.fromisoformat(deferred_at)).total_seconds() \
            if deferred_at else None
        slot = WindowSlot.from_xcom({**facts, "waited_s": waited})
        self.log.info("%s", slot.describe())
        return slot.to_xcom()


class FleetWindowOperator(BaseOperator):
    """A fleet's members whose maintenance window was closed when their wave ran: deferred (no
    worker slot held) until the next of their windows opens, then those members deployed, the
    brake deciding after each batch; again until no member waits (fleet_steps.windowed)."""

    def execute(self, context: Any) -> dict[str, Any] | None:
        return self._step(resumed=False)

    def execute_complete(self, context: Any, event: Any = None) -> dict[str, Any] | None:
        return self._step(resumed=True)

    def _step(self, resumed: bool) -> dict[str, Any] | None:
        from schema_deploy_airflow import fleet_steps

        result, wake_at = fleet_steps.windowed(resumed)
        if wake_at is None:
            return result
        self.defer(trigger=DateTimeTrigger(moment=wake_at), method_name="execute_complete")
