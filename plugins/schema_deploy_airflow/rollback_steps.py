"""rollback_schema's task bodies: the target from its connection, one pipeline step each, its result as XCom.

The domain (confirmation, backup choice, the down migrations from a frozen release,
verification, the outcome and the record) is in `schema_deploy.pipeline.rollback`;
this module only adapts it to Airflow: the form's `environment` picks the task group
to run, the running task's group (`staging.…`, `production.…`) becomes a `Target` from
that environment's connection only, each task's inputs are the values its upstream tasks
returned (read with `from_xcom`), the stock approval's answer becomes an `Approval`, and a
non-transient error a failure that is not retried. Only the audit tasks, which by their job read
the whole run, read other tasks' XComs by id.
"""
from __future__ import annotations

from typing import Any

from schema_deploy_airflow import connections, steps
from schema_deploy_airflow import task_ids as ids
from schema_deploy_airflow.steps import (current_context, deployment, fail_fast, group_of, in_group,
                                         run_preflight, run_results, target, typed)

TASK_STEPS = ids.ROLLBACK_STEPS


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


def approval_results(context: dict[str, Any]) -> dict[str, Any]:
    """The record's `approval` (the decision, or None) and `approval_error` (a timeout), from the group's
    approval task."""
    answer = approval(context)
    error = context["ti"].xcom_pull(task_ids=in_group(context, ids.APPROVE_ROLLBACK), key=ids.APPROVAL_ERROR_KEY)
    return {"approval": answer.to_xcom() if answer else None, "approval_error": error}


def approval(context: dict[str, Any]):
    """The group's approval answer (its XCom, read by the record) as the pipeline's Approval; None if
    unanswered."""
    from schema_deploy_airflow.operators import approval_of

    task_id = in_group(context, ids.APPROVE_ROLLBACK)
    # RecordedApprovalOperator keeps the answer apart: on Reject Airflow pushes no return value.
    answer = context["ti"].xcom_pull(task_ids=task_id, key=ids.ANSWER_KEY) or context["ti"].xcom_pull(task_ids=task_id)
    return approval_of(answer, context.get("dag_run")) if answer else None


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
    from schema_deploy.pipeline import RollbackPlan

    needed = RollbackPlan.from_xcom(summary).needs_approval
    return in_group(current_context(), ids.APPROVE_ROLLBACK if needed else ids.SAFETY_BACKUP)


@fail_fast
def preflight() -> dict[str, Any]:
    from schema_deploy.pipeline import rollback

    ctx = current_context()
    return rollback.preflight(deployment(ctx), rollback_target(ctx), request(ctx)).to_xcom()


@fail_fast
def safety_backup(summary: dict[str, Any]) -> dict[str, Any]:
    from schema_deploy.pipeline import RollbackPlan, rollback

    plan, ctx = RollbackPlan.from_xcom(summary), current_context()
    return rollback.safety_backup(deployment(ctx, pre=plan), rollback_target(ctx), plan).to_xcom()


@fail_fast
def run_rollback(summary: dict[str, Any]) -> dict[str, Any]:
    from schema_deploy.pipeline import RollbackPlan, rollback

    plan, ctx = RollbackPlan.from_xcom(summary), current_context()
    return rollback.rollback(deployment(ctx, pre=plan), rollback_target(ctx), plan).to_xcom()


@fail_fast
def verify(summary: dict[str, Any], backup: dict[str, Any] | None) -> dict[str, Any]:
    """`backup`: the safety backup's result, named by a failed verification as the way back."""
    from schema_deploy.pipeline import BackupResult, RollbackPlan, rollback

    plan, safety, ctx = RollbackPlan.from_xcom(summary), typed(BackupResult, backup), current_context()
    return rollback.verify(deployment(ctx, pre=plan), rollback_target(ctx), plan, safety).to_xcom()


@fail_fast
def record() -> dict[str, Any]:
    from schema_deploy.pipeline import rollback

    ctx = current_context()
    task_steps = {in_group(ctx, t): step for t, step in TASK_STEPS.items()}
    results, states = run_results(ctx, task_steps)
    results.update(approval_results(ctx))
    return rollback.record(deployment(ctx, pre=run_preflight(ctx)), rollback_target(ctx), request(ctx), results,
                           states, {step: task for task, step in task_steps.items()}).to_xcom()


@fail_fast
def record_attempt() -> dict[str, Any] | None:
    """The DAG's last teardown: when no group's audit_record kept the run's record (the environment or
    the form's fields were refused before a group ran), the attempt's record in S3 (no database is
    opened, nothing changed); else nothing."""
    from schema_deploy.pipeline import rollback

    ctx = current_context()
    params = dict(ctx.get("params") or {})
    results, states = run_results(ctx, task_steps := attempt_steps(env := form_environment(params)))
    if states.pop("audit_record", None) == "success":
        return kept_already(env)
    return rollback.record_attempt(deployment(ctx), env or str(params.get("environment")),
                                   rollback.RollbackRequest.or_defaults(params), results, states,
                                   {step: task for task, step in task_steps.items()}).to_xcom()


def kept_already(env: str | None) -> None:
    steps.task_log().info("audit: %s.audit_record kept this run's record; nothing more to keep", env)


def form_environment(params: dict[str, Any]) -> str | None:
    """The form's environment when it is one of the two, else None (the run was refused for it)."""
    from schema_deploy.pipeline.rollback import ENVIRONMENTS

    return params.get("environment") if params.get("environment") in ENVIRONMENTS else None


def attempt_steps(env: str | None) -> dict[str, str]:
    """Task id -> step name of every task that may have run before the attempt's record: the choice,
    and the tasks of `env`'s group (both groups' when the form named none): their audit_record tells
    whether the run's record was kept."""
    from schema_deploy.pipeline.rollback import ENVIRONMENTS

    groups = [env] if env else list(ENVIRONMENTS)
    return {ids.CHOOSE_ENVIRONMENT: "choose_environment",
            **{f"{g}.{ids.CHECK_ENVIRONMENT}": "check_environment" for g in groups},
            **{f"{g}.{t}": step for g in groups for t, step in TASK_STEPS.items()},
            **{f"{g}.{ids.ROLLBACK_AUDIT_RECORD}": "audit_record" for g in groups}}


def notify_failure(context: Any) -> None:
    """on_failure_callback of rollback_schema's tasks: one 'rollback FAILED' message per run
    (callbacks.notify_failure); never raises."""
    from schema_deploy_airflow.callbacks import notify_failure as notify_run_failure

    notify_run_failure(context, event="rollback_failed")
