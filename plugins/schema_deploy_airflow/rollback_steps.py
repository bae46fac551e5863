"""rollback_schema's task bodies: the target from its connection, one pipeline step each, its result as XCom.

The domain (confirmation, backup choice, the down migrations from a frozen release,
verification, the outcome and the record) is in `schema_deploy.pipeline.rollback`;
this module only adapts it to Airflow: the form's `environment` picks the task group
to run, the running task's group (`staging.…`, `production.…`) becomes a `Target` from
that environment's connection only, earlier results come back from XCom of the same
group with `from_xcom`, the stock approval's answer becomes an `Approval`, and a
non-transient error a failure that is not retried.
"""
from __future__ import annotations

from typing import Any

from schema_deploy_airflow import connections, steps
from schema_deploy_airflow.steps import (current_context, deployment, fail_fast, group_of, in_group,
                                         pulled, run_results, target)

PREFLIGHT = "preflight"
# Task id inside an environment's group -> the rollback pipeline's step name, for the audit record.
TASK_STEPS = {"preflight": "preflight", "approval_needed": "approval_needed", "approve_rollback": "approval",
              "safety_backup": "safety_backup", "rollback": "rollback", "verify_rollback": "verify"}


def environment(context: dict[str, Any]) -> str:
    """The running task's environment (its group's id), which must be the form's: a task of the other
    group (cleared by hand) is refused before it reads any connection."""
    from schema_deploy.pipeline.rollback import chosen_environment

    return chosen_environment(dict(context.get("params") or {}), group_of(context) or None)


def rollback_target(context: dict[str, Any]):
    """The Target of the running task's environment, from that environment's connection only."""
    return target(environment(context), context)


def request(context: dict[str, Any]):
    from schema_deploy.pipeline.rollback import RollbackRequest

    return RollbackRequest.from_mapping(dict(context.get("params") or {}))


def approval(context: dict[str, Any]):
    """The stock ApprovalOperator's answer (its XCom) as the pipeline's Approval, with the reason the
    responder typed; None if unanswered."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator
    from schema_deploy.pipeline import Approval
    from schema_deploy_airflow.operators import approval_reason

    task_id = in_group(context, "approve_rollback")
    # RecordedApprovalOperator keeps the answer apart: on Reject Airflow pushes no return value.
    answer = context["ti"].xcom_pull(task_ids=task_id, key="answer") or context["ti"].xcom_pull(task_ids=task_id)
    if not answer:
        return None
    user = answer.get("responded_by_user") or {}
    return Approval(approved=list(answer.get("chosen_options") or [])[:1] == [ApprovalOperator.APPROVE],
                    approver=user.get("name") or user.get("id") or "?", approver_id=user.get("id"),
                    responded_at=str(answer.get("responded_at")),
                    triggered_by=getattr(context.get("dag_run"), "triggering_user_name", None),
                    reason=approval_reason(answer))


# --- task bodies -----------------------------------------------------------------------

@fail_fast
def choose_environment() -> str:
    """The form's environment: the id of the task group to run; the other group is skipped whole.
    The form's rules across fields (RollbackRequest.check) are checked here first, so a run the form
    let through with a missing confirmation or a field of the other method fails at once, not
    retried, before any group runs."""
    from schema_deploy.pipeline.rollback import RollbackRequest, chosen_environment

    params = dict(current_context().get("params") or {})
    env = chosen_environment(params)
    RollbackRequest.from_mapping(params).check(env)
    return env


@fail_fast
def check_environment() -> str:
    """This group is the form's environment (opens no connection); logs where its tasks run."""
    ctx = current_context()
    env = environment(ctx)
    steps.task_log().info("rolling back %s: its database tasks run on queue %s, whose workers hold %s", env,
                          steps.queue(env), connections.DB_CONNECTIONS[env])
    return env


def after_preflight(summary: dict[str, Any]) -> str:
    """approval_needed's branch: this group's approval when preflight says it is needed, else its safety backup."""
    return in_group(current_context(), "approve_rollback" if summary["needs_approval"] else "safety_backup")


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
                                  pulled(ctx, in_group(ctx, PREFLIGHT), RollbackPlan)).to_xcom()


@fail_fast
def run_rollback() -> dict[str, Any]:
    from schema_deploy.pipeline import RollbackPlan, rollback

    ctx = current_context()
    return rollback.rollback(deployment(ctx), rollback_target(ctx),
                             pulled(ctx, in_group(ctx, PREFLIGHT), RollbackPlan)).to_xcom()


@fail_fast
def verify() -> dict[str, Any]:
    from schema_deploy.pipeline import RollbackPlan, rollback

    ctx = current_context()
    return rollback.verify(deployment(ctx), rollback_target(ctx),
                           pulled(ctx, in_group(ctx, PREFLIGHT), RollbackPlan)).to_xcom()


@fail_fast
def record() -> dict[str, Any]:
    from schema_deploy.pipeline import rollback

    ctx = current_context()
    task_steps = {in_group(ctx, t): step for t, step in TASK_STEPS.items()}
    results, states = run_results(ctx, task_steps)
    answer = approval(ctx)
    results["approval"] = answer.to_xcom() if answer else None
    results["approval_error"] = ctx["ti"].xcom_pull(task_ids=in_group(ctx, "approve_rollback"), key="approval_error")
    return rollback.record(deployment(ctx), rollback_target(ctx), request(ctx), results, states,
                           {step: task for task, step in task_steps.items()}).to_xcom()


@fail_fast
def record_attempt() -> dict[str, Any] | None:
    """The DAG's last teardown: when no group's audit_record kept the run's record (the environment or
    the form's fields were refused before a group ran), the attempt's record in S3 (no database is
    opened, nothing changed); else nothing."""
    from schema_deploy.pipeline import rollback

    ctx = current_context()
    params = dict(ctx.get("params") or {})
    env = params.get("environment") if params.get("environment") in rollback.ENVIRONMENTS else None
    groups = [env] if env else list(rollback.ENVIRONMENTS)
    task_steps = {"choose_environment": "choose_environment",
                  **{f"{g}.check_environment": "check_environment" for g in groups},
                  **{f"{g}.{t}": step for g in groups for t, step in TASK_STEPS.items()},
                  **{f"{g}.audit_record": "audit_record" for g in groups}}
    results, states = run_results(ctx, task_steps)
    if states.pop("audit_record", None) == "success":
        steps.task_log().info("audit: %s.audit_record kept this run's record; nothing more to keep", env)
        return None
    try:
        req = rollback.RollbackRequest.from_mapping(params)
    except (TypeError, ValueError):  # a field the form would not have let through: recorded as the defaults
        req = rollback.RollbackRequest()
    return rollback.record_attempt(deployment(ctx), env or str(params.get("environment")), req, results, states,
                                   {step: task for task, step in task_steps.items()}).to_xcom()


def notify_failure(context: Any) -> None:
    """on_failure_callback of rollback_schema's tasks: one 'rollback FAILED' message per run
    (callbacks.notify_failure); never raises."""
    from schema_deploy_airflow.callbacks import notify_failure as notify_run_failure

    notify_run_failure(context, event="rollback_failed")
