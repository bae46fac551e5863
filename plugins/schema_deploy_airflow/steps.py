"""deploy_schema's task bodies: targets from connections, one pipeline step each, its result as XCom.

The domain is in `schema_deploy.pipeline`; this module only adapts it to Airflow:
connections become `Target`s, the task's logger and Slack become the deployment's
log and notifier, each task's inputs are the values its upstream tasks returned (the DAG
passes them as XComArgs; `typed` reads them with `from_xcom` at the body's first line), and a
non-transient error becomes a failure that is not retried. No task body here pulls another task's
XCom by id: only the audit composer reads the whole run (`run_results`), by its job.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from schema_deploy.config import settings
from schema_deploy.errors import SchemaDeployError, is_transient
from schema_deploy.redact import scrub
from schema_deploy_airflow import connections, task_ids

def fail_fast(step: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a non-transient SchemaDeployError into Airflow's no-retry failure, message kept whole;
    'nothing to deploy' into a skip.

    The Task SDK logs an AirflowFailException with its whole traceback (task_runner: `log.exception`),
    a dozen frames of Airflow's own that no setting removes. So the message comes first, as an ERROR
    block wrapped at 100 columns (`failure_text`), and the exception carries the same wrapped text:
    the trace's last lines are the message again, not one line running off the screen."""

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        from schema_deploy.pipeline.errors import NothingToDeploy

        try:
            return step(*args, **kwargs)
        except NothingToDeploy as exc:
            from airflow.sdk.exceptions import AirflowSkipException

            raise AirflowSkipException(str(exc)) from None
        except SchemaDeployError as exc:
            if is_transient(exc):
                raise
            from airflow.sdk.exceptions import AirflowFailException

            task_id = getattr(current_context().get("ti"), "task_id", None)
            task_id = task_id if isinstance(task_id, str) else step.__name__
            task_log().error("%s", failure_text(task_id, exc))
            failure = AirflowFailException(failure_message(exc))
            failure.unwrapped = f"{type(exc).__name__}: {exc}"  # for Slack (callbacks.failure_facts)
            raise failure from None

    return run


# What Airflow's trace prints before the exception's message, on the same line.
TRACE_PREFIX = "airflow.sdk.exceptions.AirflowFailException: "


def failure_message(exc: BaseException) -> str:
    """`Type: message`, wrapped so that the trace's last lines (`TRACE_PREFIX` + this) fit 100 columns."""
    from schema_deploy.errors import wrapped

    return wrapped(f"{type(exc).__name__}: {exc}", first_offset=len(TRACE_PREFIX))


def failure_text(task_id: str, exc: BaseException) -> str:
    """The ERROR block a failed task logs before Airflow's trace: which task, then the message
    (what failed, where, and how to fix it), indented and wrapped."""
    import textwrap

    from schema_deploy.errors import wrapped

    # The trailing newline puts the log renderer's `[logger] loc=…` on a line of its own.
    return (f"{task_id} failed (not retried: it would fail the same way):\n"
            + wrapped(textwrap.indent(f"{type(exc).__name__}: {exc}", "  ")) + "\n")


def task_log() -> logging.Logger:
    """The logger whose records land in the running task's log."""
    return logging.getLogger("schema_deploy")


def current_context() -> dict[str, Any]:
    """The running task's context, or {} outside a task (unit tests, callbacks after the fact)."""
    try:
        from airflow.sdk import get_current_context

        return get_current_context()
    except Exception:  # noqa: BLE001 - no task is running
        return {}


def run_info(context: dict[str, Any]):
    """Who and what, from the DAG run."""
    from urllib.parse import quote

    from schema_deploy.pipeline.target import RunInfo

    dag_run, ti = context.get("dag_run"), context.get("ti")
    if dag_run is None:
        return RunInfo(run_id="manual")
    run_type = str(getattr(dag_run, "run_type", "") or "").split(".")[-1].lower()
    base = (getattr(ti, "log_url", "") or "").split("/dags/")[0]
    run_id = getattr(dag_run, "run_id", None) or "manual"
    url = f"{base}/dags/{getattr(ti, 'dag_id', '')}/runs/{quote(run_id, safe='')}" if base else ""
    return RunInfo(run_id=run_id, run_type=run_type,
                   triggered_by=getattr(dag_run, "triggering_user_name", None) or "schedule", url=url,
                   started=str(getattr(dag_run, "start_date", "") or ""))


def run_facts(context: dict[str, Any]) -> dict[str, str]:
    """Who and what, for Slack messages: run, run type, triggered by."""
    if context.get("dag_run") is None:
        return {}
    info = run_info(context)
    return {"run": info.run_id, "run type": info.run_type, "triggered by": info.triggered_by}


def group_of(context: dict[str, Any]) -> str:
    """The task group of the running task ("staging" for `staging.preflight`; "" outside a group)."""
    return (getattr(context.get("ti"), "task_id", "") or "").rpartition(".")[0]


def in_group(context: dict[str, Any], task_id: str) -> str:
    """`task_id` in the running task's group (rollback_schema's per-environment groups), else as is."""
    group = group_of(context)
    return f"{group}.{task_id}" if group else task_id


def notify(event: str, facts: dict[str, object], log, links: dict[str, str] | None = None, *,
           thread: str | None = None, release: Any = None) -> dict[str, object]:
    """Post to Slack through the `slack_deploys` connection, threaded under `thread` (the run's first
    message, when the connection is a Web API one) and naming `release` (every message of the run
    names its release). Never raises: a deployment never waits on Slack."""
    from schema_deploy.ops.notify import Delivery, deliver, message
    from schema_deploy.pipeline.deploy import naming_release

    try:
        channel = settings.load_current().slack_channel
    except SchemaDeployError:  # a broken deploy.yaml is reported by the task; Slack still hears of it
        channel = settings.DeployConfig().slack_channel
    facts = naming_release(facts, release)
    try:
        poster = connections.slack_poster(channel, thread)
    except Exception as exc:  # noqa: BLE001 - a missing Slack connection must not stop a deployment
        log.warning("Slack connection unusable (%s); notification '%s' not sent", scrub(str(exc)), event)
        return Delivery(event=event, ok=False, attempts=0, errors=[scrub(str(exc))]).as_dict()
    outcome = deliver(poster, message(event, facts, links), event, log=log.warning).as_dict()
    if outcome["ok"]:
        log.info("Slack: '%s' delivered", event)
    return outcome


def thread_of(pre: Any) -> dict[str, Any]:
    """notify's `thread` and `release` from the run's preflight result (deploy_schema's and
    deploy_fleet's PreflightResult, rollback_schema's RollbackPlan; None before it exists)."""
    return {"thread": getattr(pre, "slack_ts", None), "release": getattr(pre, "release", None)}


def deployment(context: dict[str, Any] | None = None, *, store: bool = True, pre: Any = None,
               health: tuple[Any, float, str, str] | None = None):
    """The run's Deployment: deploy.yaml, the store behind `backup_s3` (unless `store` is off, for
    steps that write nothing there), Slack threaded under the run's first message (from `pre`, the
    run's preflight result the task received), the form's params; `health`: production's health-gate
    deferral (`health_deferral`)."""
    from schema_deploy.pipeline.target import Deployment, RunParams, Store

    context = context if context is not None else current_context()
    cfg, log, thread = settings.load_current(), task_log(), thread_of(pre)
    defer, waited, reason, what = health or (None, 0.0, "", "")
    return Deployment(cfg=cfg, store=Store.from_config(connections.s3_client() if store else None, cfg),
                      run=run_info(context),
                      params=RunParams.from_mapping(dict(context.get("params") or {})),
                      notify=lambda event, facts, links=None: notify(event, facts, log, links, **thread), log=log,
                      defer=defer, health_waited_s=waited, health_wait_reason=reason, health_wait_what=what)


def worker_place(context: dict[str, Any] | None = None) -> tuple[str, str]:
    """(this worker's hostname as Airflow records it, the queue the running task came from)."""
    from airflow.sdk.api.client import get_hostname

    context = context if context is not None else current_context()
    task = getattr(context.get("ti"), "task", None)
    return get_hostname(), str(getattr(task, "queue", None) or settings.DEFAULT_QUEUE)


def target(name: str, context: dict[str, Any] | None = None):
    """The Target of an environment, from its connection. A worker without that connection (the task
    was routed to another environment's queue) gets a message naming the connection, queue and fix."""
    from schema_deploy.pipeline.errors import ConnectionNotOnWorker
    from schema_deploy.pipeline.target import Target

    conn_id = connections.DB_CONNECTIONS[name]
    try:
        return Target(name=name, role=name, url=connections.database_url(conn_id))
    except connections.ConnectionMissing:
        host, queue = worker_place(context)
        try:
            wanted = settings.load_current().queue(name)
        except SchemaDeployError:
            wanted = None
        raise ConnectionNotOnWorker(conn_id, queue=queue, host=host, wanted=wanted,
                                    setting=f"queues.{name}") from None


def queue(env: str | None) -> str:
    """The queue for a task of `env` (None: a task that opens no database), read at DAG-parse time."""
    try:
        return settings.load_current().queue(env)
    except SchemaDeployError:  # the DAG still loads; preflight reports the broken file
        return settings.DEFAULT_QUEUE


def typed(result_type, data: Any):
    """An upstream task's value (its XComArg, resolved), as its result type; None when that task
    returned nothing (skipped, or not in this DAG)."""
    return None if data is None else result_type.from_xcom(data)


# --- run-wide reads: the audit composer and the failure callback, which by their job read the whole run ---

def run_results(context: dict[str, Any], task_steps: dict[str, str]) -> tuple[dict[str, Any], dict[str, str | None]]:
    """Each task's XCom and state in this run, keyed by the pipeline's step names (for the record)."""
    ti = context["ti"]
    states = {task_steps[t]: (str(s) if s else None) for t, s in run_states(ti).items() if t in task_steps}
    return {step: ti.xcom_pull(task_ids=t) for t, step in task_steps.items()}, states


def run_states(ti: Any) -> dict[str, Any]:
    """This run's task states by task id, as the API answers them (None for a task not run yet)."""
    return (ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id]) or {}).get(ti.run_id, {})


def run_preflight(context: dict[str, Any]):
    """The run's preflight result (in the running task's group: PreflightResult, or rollback_schema's
    RollbackPlan), read by the tasks and callbacks that look at the whole run, to thread their Slack
    message under the run's first one; None when there is none."""
    from schema_deploy.pipeline import PreflightResult, RollbackPlan

    try:
        data = context["ti"].xcom_pull(task_ids=in_group(context, task_ids.PREFLIGHT))
        kind = {cls.__name__: cls for cls in (PreflightResult, RollbackPlan)}[data["type"]]
        return kind.from_xcom(data)
    except Exception:  # noqa: BLE001 - no preflight result (it failed, or a task before it): no thread then
        return None


def bundle_param():
    """The trigger form's bundle choice: the names deploy.yaml declares, the default first."""
    from schema_deploy_airflow.defaults import param

    try:
        cfg = settings.load_current()
    except SchemaDeployError:  # the DAG still loads; preflight reports the broken file
        cfg = settings.DeployConfig()
    names = [cfg.default_bundle] + [n for n in cfg.bundle_names if n != cfg.default_bundle]
    return param(cfg.default_bundle, type="string", enum=names, title="Migration bundle",
                 description="One of the bundles declared in deploy.yaml (bundles:); a path is not accepted.")


# --- task bodies: each takes the values its upstream tasks returned -------------------------

@fail_fast
def preflight_bundle() -> dict[str, Any]:
    from schema_deploy.pipeline import deploy

    return deploy.preflight_bundle(deployment()).to_xcom()


@fail_fast
def preflight_target(env: str, checked: dict[str, Any]) -> dict[str, Any]:
    """One target's survey, on the worker of its queue (it opens that target's database only)."""
    from schema_deploy.pipeline import BundleCheck, deploy

    bundle, ctx = BundleCheck.from_xcom(checked), current_context()
    survey = deploy.preflight_staging if env == "staging" else deploy.preflight_production
    return survey(deployment(ctx), target(env, ctx), bundle).to_xcom()


@fail_fast
def preflight(checked: dict[str, Any], staging: dict[str, Any], production: dict[str, Any]) -> dict[str, Any]:
    from schema_deploy.pipeline import BundleCheck, TargetSurvey, deploy

    bundle, surveys = BundleCheck.from_xcom(checked), [TargetSurvey.from_xcom(s) for s in (staging, production)]
    return deploy.preflight_release(deployment(), bundle, *surveys).to_xcom()


@fail_fast
def backup_production(summary: dict[str, Any]) -> dict[str, Any]:
    from schema_deploy.pipeline import PreflightResult, deploy

    pre, ctx = PreflightResult.from_xcom(summary), current_context()
    return deploy.backup(deployment(ctx, pre=pre), target("production", ctx), pre).to_xcom()


@fail_fast
def apply_to(env: str, summary: dict[str, Any]) -> dict[str, Any]:
    from schema_deploy.pipeline import PreflightResult, deploy

    pre, ctx = PreflightResult.from_xcom(summary), current_context()
    run = deployment(ctx, pre=pre, health=health_deferral(ctx) if env == "production" else None)
    return deploy.apply(run, target(env, ctx), pre).to_xcom()


@fail_fast
def production_phase(phase: str, summary: dict[str, Any], expanded: dict[str, Any] | None = None,
                     backfilled: dict[str, Any] | None = None) -> dict[str, Any]:
    """Production's expand, backfill or contract phase (deploy.expand/backfill/contract), each gated by
    the database's health and deferred while it says wait."""
    from schema_deploy.pipeline import ApplyResult, BackfillPhase, PreflightResult, deploy

    pre, ctx = PreflightResult.from_xcom(summary), current_context()
    run, production = deployment(ctx, pre=pre, health=health_deferral(ctx)), target("production", ctx)
    if phase == "expand":
        return deploy.expand(run, production, pre).to_xcom()
    earlier = ApplyResult.from_xcom(expanded)
    if phase == "backfill":
        return deploy.backfill(run, production, pre, earlier).to_xcom()
    return deploy.contract(run, production, pre, earlier, BackfillPhase.from_xcom(backfilled)).to_xcom()


def health_deferral(context: dict[str, Any]) -> tuple[Any, float, str, str]:
    """Production's health gate in Airflow: a wait defers the task on a DateTimeTrigger (no worker slot held;
    the triggerer holds no database credentials) and the task runs again, resuming the migration at its
    step. When the first wait began, and why, is the task's own progress (its XCom task_ids.HEALTH_WAIT_KEY),
    so max_wait counts every deferral of one wait; the latest wait's reason is there too, for the page.
    A wait for another step (or another backfill pause) starts its own count. Returns (the gate's defer
    hook, seconds waited by earlier deferrals, the first wait's reason, what was waiting)."""
    from datetime import datetime, timedelta, timezone

    from airflow.providers.standard.triggers.temporal import DateTimeTrigger
    from airflow.sdk.exceptions import TaskDeferred

    ti, now = context["ti"], datetime.now(timezone.utc)
    since = ti.xcom_pull(task_ids=ti.task_id, key=task_ids.HEALTH_WAIT_KEY, map_indexes=ti.map_index)
    since = since if isinstance(since, dict) else {}  # none yet (or not this shape): no earlier wait

    def defer(waiting: Any) -> None:
        # The first deferral of this wait keeps its start and reason; the latest reason is what the page
        # shows meanwhile. A wait the gate starts afresh (nothing waited before it: another step, or a later
        # pause of a backfill after it went on) is a new one.
        first = since if waiting.waited_s > 0 and since.get("what", waiting.what) == waiting.what else {}
        ti.xcom_push(task_ids.HEALTH_WAIT_KEY, {"since": first.get("since", now.isoformat()),
                                              "reason": first.get("reason", waiting.reason),
                                              "latest": waiting.reason, "what": waiting.what})
        wake = datetime.now(timezone.utc) + timedelta(seconds=waiting.retry_in_s)  # a poll from this check
        raise TaskDeferred(trigger=DateTimeTrigger(moment=wake), method_name="execute_complete")

    waited = (now - datetime.fromisoformat(since["since"])).total_seconds() if since else 0.0
    return defer, waited, since.get("reason", ""), since.get("what", "")


@fail_fast
def test_gate(summary: dict[str, Any], backup: dict[str, Any] | None, staged: dict[str, Any]) -> dict[str, Any]:
    """The gate on staging; `backup` is None in deploy_fleet, which takes none (its JUnit XML then
    goes under the release)."""
    from schema_deploy.pipeline import ApplyResult, BackupResult, PreflightResult, deploy

    pre, saved, applied = PreflightResult.from_xcom(summary), typed(BackupResult, backup), typed(ApplyResult, staged)
    ctx = current_context()
    return deploy.staging_gate(deployment(ctx, pre=pre), target("staging", ctx), pre, saved, applied).to_xcom()


def production_requested(summary: dict[str, Any], gate: dict[str, Any], dry_run: bool) -> bool:
    """production_requested's verdict: a dry run stops here (Slack hears what staging got)."""
    from schema_deploy.pipeline import PreflightResult
    from schema_deploy.pipeline.deploy import dry_run_facts

    if dry_run:
        deployment(pre=PreflightResult.from_xcom(summary), store=False).notify("dry_run_done", dry_run_facts(gate))
    return not dry_run


def approval_branch(params: dict[str, Any], run_type: str) -> str:
    """approval_needed's branch: the approval when deploy.yaml's policy or the form asks, else the window."""
    from schema_deploy.pipeline.target import RunParams

    needed = RunParams.from_mapping(params).approval_required(settings.load_current(), run_type)
    return task_ids.APPROVE_PRODUCTION if needed else task_ids.WAIT_FOR_WINDOW


@fail_fast
def verify_production(summary: dict[str, Any], backup: dict[str, Any], applied: dict[str, Any]) -> dict[str, Any]:
    from schema_deploy.pipeline import ApplyResult, BackupResult, PreflightResult, deploy

    pre, saved, done = PreflightResult.from_xcom(summary), typed(BackupResult, backup), ApplyResult.from_xcom(applied)
    ctx = current_context()
    run = deployment(ctx, pre=pre)
    verified = deploy.verify(run, target("production", ctx), pre, done, saved)
    deploy.production_done(run, done, verified, saved, pre)
    return verified.to_xcom()


@fail_fast
def compose_audit() -> dict[str, Any]:
    """The run's record, once, on a worker without database connections: every chain row and the
    document carry these bytes (no task computes its own). The one task that reads the whole run."""
    from schema_deploy.pipeline import record

    ctx = current_context()
    results, states = run_results(ctx, task_ids.DEPLOY_STEPS)
    for key in (task_ids.APPROVAL_KEY, task_ids.APPROVAL_ERROR_KEY):
        results[key] = ctx["ti"].xcom_pull(task_ids=task_ids.APPROVE_PRODUCTION, key=key)
    return record.compose(deployment(ctx), task_ids.APPLIES, results, states,
                          {step: task for task, step in task_ids.DEPLOY_STEPS.items()}).to_xcom()


@fail_fast
def chain_audit(env: str, composed: dict[str, Any] | None) -> dict[str, Any] | None:
    """The composed record chained into `env`'s audit table when the run changed it or its decision
    concerned it (a rejection is in production's chain); the connection is looked up only then."""
    from schema_deploy.pipeline import RunRecord, record

    run_record, ctx = recorded(composed, RunRecord), current_context()
    if env not in run_record.chained:
        task_log().info("audit: %s was not changed by this run, nor concerned by its decision; nothing to chain",
                        env)
        return None
    link = record.chain(deployment(ctx, store=False), target(env, ctx), run_record)
    return link.to_xcom() if link else None


@fail_fast
def record_audit(composed: dict[str, Any] | None, *links: dict[str, Any] | None) -> dict[str, Any]:
    """The record and the chain rows `links` (audit_staging's, audit_production's) kept in S3."""
    from schema_deploy.pipeline import AuditLink, RunRecord, record

    run_record, chained = recorded(composed, RunRecord), [typed(AuditLink, link) for link in links]
    return record.keep(deployment(), run_record, [link for link in chained if link is not None]).to_xcom()


def recorded(composed: dict[str, Any] | None, result_type):
    """audit_compose's record; a failed audit_compose left none, and the audit tasks after it say so."""
    from schema_deploy.errors import UsageError

    if composed is None:
        raise UsageError("audit_compose left no record (it failed: see its log); clear audit_compose, which clears "
                         "the audit tasks after it.")
    return result_type.from_xcom(composed)
