"""Operators of deploy_schema that need more than a @task: the approval, the window wait and production's
apply (which defers while the health gate says wait)."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.providers.standard.triggers.temporal import DateTimeTrigger
from airflow.sdk import BaseOperator

from schema_deploy_airflow import task_ids as ids
from schema_deploy_airflow.steps import deployment, production_phase, typed


def reason_param():
    """The approval form's optional reason (Airflow's HITL `params`: filled by the responder, empty
    allowed): said in Slack, on the page and in the audit record with the decision."""
    from schema_deploy_airflow.defaults import param

    # source "task": HITLOperator shows only the task's own params, never the DAG's.
    return {"reason": param(None, type=["null", "string"], title="Reason (optional)", source="task",
                            description="Why you approve or reject: recorded with your decision in the audit "
                                        "trail, shown on the Schema deployments page and said in Slack.")}


def approval_reason(event: dict[str, Any] | None) -> str:
    """The reason the responder typed, from the HITL answer (its `params_input`), or ""."""
    return str(((event or {}).get("params_input") or {}).get("reason") or "").strip()


def approval_of(answer: dict[str, Any], dag_run: Any):
    """Airflow's HITL answer (chosen option, who, when, the form's reason) as the pipeline's Approval:
    the one reader of an approval, for deploy_schema's and rollback_schema's alike."""
    from schema_deploy.pipeline import Approval

    user = answer.get("responded_by_user") or {}
    return Approval(approved=list(answer.get("chosen_options") or [])[:1] == [ApprovalOperator.APPROVE],
                    approver=user.get("name") or user.get("id") or "?", approver_id=user.get("id"),
                    responded_at=str(answer.get("responded_at")),
                    triggered_by=getattr(dag_run, "triggering_user_name", None), reason=approval_reason(answer))


def answer_of(event: dict[str, Any]) -> dict[str, Any]:
    """The part of the HITL event an Approval is read from, JSON-safe (the rollback's XCom `answer`)."""
    return {"chosen_options": list(event.get("chosen_options") or []),
            "params_input": dict(event.get("params_input") or {}),
            "responded_at": str(event.get("responded_at")), "responded_by_user": event.get("responded_by_user")}


class RecordedApprovalOperator(ApprovalOperator):
    """Airflow's ApprovalOperator (rollback_schema's), asking about `plan` (the group's preflight
    value, an XComArg resolved when this task renders), whose answer is kept as the XCom `answer`
    (chosen option, who, when, the form's params: the reason) before the base class acts on it.

    On Reject the base class skips the downstream tasks by raising, and Airflow 3.3 then pushes no
    return value: without this, the audit record could not tell who rejected, when, or why.
    """

    template_fields = (*ApprovalOperator.template_fields, "plan")

    def __init__(self, *, plan: Any, **kwargs: Any) -> None:
        super().__init__(subject="Roll back?", body="", **kwargs)
        self.plan = plan

    def execute(self, context: Any) -> Any:
        from schema_deploy.pipeline import RollbackPlan

        plan = RollbackPlan.from_xcom(self.plan)
        self.subject = f"Roll back {plan.environment} database {plan.database} ({plan.method})?"
        self.body = plan.approval_body
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        if not kept_error(context, event):
            context["ti"].xcom_push(key=ids.ANSWER_KEY, value=answer_of(event))
        return super().execute_complete(context=context, event=event)


def kept_error(context: Any, event: dict[str, Any]) -> bool:
    """A timeout or trigger error instead of an answer, kept as the XCom `approval_error` (the record
    then says "timed out" rather than only "failed at task approve_…"); the base class raises it."""
    if "error" not in event:
        return False
    context["ti"].xcom_push(key=ids.APPROVAL_ERROR_KEY, value=str(event.get("error_type") or "error"))
    return True


class ProductionApprovalOperator(ApprovalOperator):
    """Airflow's human-in-the-loop approval, showing the plan, the backup and the gate result.

    `preflight`, `backup` and `gate` are those tasks' values (XComArgs, resolved when this task
    renders). Slack hears that a decision is awaited (with the link to the "Required actions"
    page), who decided and why ("rejected by X: reason"), and, on Reject, that production is
    skipped. The approver, the time and the optional reason are this task's XCom (the audit
    record). With `approval.approver_must_differ`, the user who triggered the run cannot approve it.
    """

    template_fields = (*ApprovalOperator.template_fields, "preflight", "backup", "gate")

    def __init__(self, *, preflight: Any, backup: Any, gate: Any, **kwargs: Any) -> None:
        # Airflow hands the DAG's params in here too; HITLOperator would drop them (it keeps the task's
        # own only), so the form's fields are just the reason.
        kwargs["params"] = reason_param()
        super().__init__(subject="Apply the pending migrations to production?", body="", **kwargs)
        self.preflight, self.backup, self.gate = preflight, backup, gate

    def execute(self, context: Any) -> Any:
        from schema_deploy.pipeline import BackupResult, PreflightResult, StagingGate
        from schema_deploy.pipeline.record import approval_request

        pre = PreflightResult.from_xcom(self.preflight)
        saved, gated = BackupResult.from_xcom(self.backup), StagingGate.from_xcom(self.gate)
        self.subject, self.body, facts = approval_request(pre, saved, gated)
        link = ui_link(self, context)
        deployment(context, store=False, pre=pre).notify("awaiting_approval", facts,
                                                         {"Approve or reject": link} if link else None)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        """Record and announce the decision, then let ApprovalOperator act on it.

        The record is pushed first under the XCom key `approval`: on Reject the base class
        skips the downstream tasks by raising, so nothing after it would run."""
        from schema_deploy.pipeline import PreflightResult, record

        if kept_error(context, event):
            return super().execute_complete(context=context, event=event)
        approval = approval_of(event, context.get("dag_run"))
        context["ti"].xcom_push(key=ids.APPROVAL_KEY, value=approval.to_xcom())
        run = deployment(context, store=False, pre=typed(PreflightResult, self.preflight))
        record.check_approval(run, approval)
        super().execute_complete(context=context, event=event)  # on Reject: skips downstream, raising
        return approval.to_xcom()


def ui_link(operator: ApprovalOperator, context: Any) -> str:
    """The "Required actions" page of this approval, or "" when Airflow cannot make one (no base URL)."""
    try:
        return operator.generate_link_to_ui_from_context(context=context)
    except ValueError:
        return ""


class WaitForWindowOperator(BaseOperator):
    """Defer (no worker slot held) until a maintenance window is open with time enough left.

    The expected production duration is staging's apply time scaled by the size
    ratio of the touched tables, times deploy.yaml's safety factor. A window too
    short for it is passed over for the next one. `skip_window` (with a reason,
    checked by preflight) proceeds at once and says so in the log and XCom.
    `preflight` and `staging` are those tasks' values (XComArgs, resolved when this task renders).
    """

    template_fields = ("preflight", "staging")

    def __init__(self, *, preflight: Any, staging: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preflight, self.staging = preflight, staging

    def execute(self, context: Any) -> dict[str, Any]:
        """The slot now, or a deferral until it opens. The wait's plan goes to XCom rather than into
        defer()'s kwargs, which not every executor path hands back to execute_complete (dag.test())."""
        from schema_deploy.pipeline import ApplyResult, PreflightResult, deploy

        pre, staged = PreflightResult.from_xcom(self.preflight), ApplyResult.from_xcom(self.staging)
        slot, wake_at = deploy.window(deployment(context, pre=pre), pre, staged)
        if wake_at is None:
            return slot.to_xcom()
        self.log.info("deferred until %s, no worker slot held", wake_at)
        context["ti"].xcom_push(key=ids.WINDOW_WAIT_KEY, value={**slot.to_xcom(), "deferred_at": now_iso()})
        self.defer(trigger=DateTimeTrigger(moment=wake_at), method_name="execute_complete")

    def execute_complete(self, context: Any, event: Any = None) -> dict[str, Any]:
        """Its own progress (the plan of the wait, pushed before deferring) with the time it waited."""
        from schema_deploy.pipeline import WindowSlot

        facts = context["ti"].xcom_pull(task_ids=self.task_id, key=ids.WINDOW_WAIT_KEY) or {}
        deferred_at = facts.pop("deferred_at", None)
        waited = (datetime.now(timezone.utc) - datetime.fromisoformat(deferred_at)).total_seconds() \
            if deferred_at else None
        slot = WindowSlot.from_xcom({**facts, "waited_s": waited})
        self.log.info("%s", slot.describe())
        return slot.to_xcom()


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


class ApplyProductionOperator(BaseOperator):
    """One of production's three phases (`phase`): "expand" applies the release up to the first migration
    that needs a backfill done, "backfill" runs those backfills, "contract" applies the rest (and returns
    production's whole result). While the health gate says wait (before an online step, between a
    backfill's batches), the task defers on a DateTimeTrigger (no worker slot held; the triggerer holds no
    database credentials) and, when it fires, runs again on a worker: the migration resumes at its step,
    the backfill at its checkpoint (`steps.health_deferral`). `preflight`, `expanded` and `backfilled` are
    the earlier tasks' values (XComArgs, resolved when this task renders)."""

    template_fields = ("preflight", "expanded", "backfilled")

    def __init__(self, *, preflight: Any, phase: str = "expand", expanded: Any = None, backfilled: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.preflight, self.phase, self.expanded, self.backfilled = preflight, phase, expanded, backfilled

    def execute(self, context: Any) -> dict[str, Any]:
        return production_phase(self.phase, self.preflight, self.expanded, self.backfilled)

    def execute_complete(self, context: Any, event: Any = None) -> dict[str, Any]:
        """The trigger fired: check the database's health again, and go on if it allows."""
        return production_phase(self.phase, self.preflight, self.expanded, self.backfilled)
