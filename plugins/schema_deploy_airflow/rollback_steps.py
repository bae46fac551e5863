"""rollback_schema's task bodies: the target from its connection, one pipeline step each, its result as XCom.

The domain (confirmation, backup choice, the down migrations from a frozen release,
verification, the outcome and the record) is in `schema_deploy.pipeline.rollback`;
this module only adapts it to Airflow: the form's `environment` becomes a `Target`,
earlier results come back from XCom with `from_xcom`, the stock approval's answer
becomes an `Approval`, and a non-transient error a failure that is not retried.
"""
from __future__ import annotations

from typing import Any

from schema_deploy.errors import UsageError
from schema_deploy_airflow import connections
from schema_deploy_airflow.steps import current_context, deployment, fail_fast, notify, pulled, run_results, target

PREFLIGHT = "preflight"
# Task id -> the rollback pipeline's step name, for the audit record.
TASK_STEPS = {"preflight": "preflight", "approval_needed": "approval_needed", "approve_rollback": "approval",
              "safety_backup": "safety_backup", "rollback": "rollback", "verify_rollback": "verify"}


def rollback_target(context: dict[str, Any]):
    """The Target of the form's environment, from its connection."""
    env = (context.get("params") or {}).get("environment")
    if env not in connections.DB_CONNECTIONS:
        raise UsageError(f"environment {env!r} is not one of {', '.join(connections.DB_CONNECTIONS)}.")
    return target(env)


def request(context: dict[str, Any]):
    from schema_deploy.pipeline.rollback import RollbackRequest

    return RollbackRequest.from_mapping(dict(context.get("params") or {}))


def approval(context: dict[str, Any]):
    """The stock ApprovalOperator's answer (its XCom) as the pipeline's Approval; None if unanswered."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from schema_deploy.pipeline import Approval

    answer = context["ti"].xcom_pull(task_ids="approve_rollback")
    if not answer:
        return None
    user = answer.get("responded_by_user") or {}
    return Approval(approved=list(answer.get("chosen_options") or [])[:1] == [ApprovalOperator.APPROVE],
                    approver=user.get("name") or user.get("id") or "?", approver_id=user.get("id"),
                    responded_at=str(answer.get("responded_at")),
                    triggered_by=getattr(context.get("dag_run"), "triggering_user_name", None))


# --- task bodies -----------------------------------------------------------------------

@fail_fast
def preflight() -> dict[str, Any]:
    from schema_deploy.pipeline import rollback

    ctx = current_context()
    return rollback.preflight(deployment(ctx), rollback_target(ctx), request(ctx)).to_xcom()


@fail_fast
def safety_backup() -> dict[str, Any]:
    from schema_deploy.pipeline import RollbackPlan, rollback

    ctx = current_context()
    return rollback.safety_backup(deployment(ctx), rollback_target(ctx),
                                  pulled(ctx, PREFLIGHT, RollbackPlan)).to_xcom()


@fail_fast
def run_rollback() -> dict[str, Any]:
    from schema_deploy.pipeline import RollbackPlan, rollback

    ctx = current_context()
    return rollback.rollback(deployment(ctx), rollback_target(ctx), pulled(ctx, PREFLIGHT, RollbackPlan)).to_xcom()


@fail_fast
def verify() -> dict[str, Any]:
    from schema_deploy.pipeline import RollbackPlan, rollback

    ctx = current_context()
    return rollback.verify(deployment(ctx), rollback_target(ctx), pulled(ctx, PREFLIGHT, RollbackPlan)).to_xcom()


@fail_fast
def record() -> dict[str, Any]:
    from schema_deploy.pipeline import rollback

    ctx = current_context()
    results, states = run_results(ctx, TASK_STEPS)
    answer = approval(ctx)
    results["approval"] = answer.to_xcom() if answer else None
    return rollback.record(deployment(ctx), rollback_target(ctx), request(ctx), results, states).to_xcom()


def notify_failure(context: Any) -> None:
    """on_failure_callback of rollback_schema's tasks; never raises."""
    from schema_deploy.errors import scrub
    from schema_deploy_airflow.steps import task_log

    ti = context.get("ti") or context.get("task_instance")
    error = context.get("exception")
    facts = {"task": getattr(ti, "task_id", "?"), "try": getattr(ti, "try_number", "?"),
             "error": scrub(str(error))[:600] if error else "see the log"}
    log_url = getattr(ti, "log_url", "")
    try:
        notify("rollback_failed", facts, task_log(), links={"Task log": log_url} if log_url else None, context=context)
    except Exception:  # noqa: BLE001 - a callback must never raise
        pass
