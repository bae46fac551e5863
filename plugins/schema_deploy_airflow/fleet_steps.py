"""deploy_fleet's task bodies: the fleet's members from connections, one step of
`schema_deploy.pipeline.fleet` per task, taking the values its upstream tasks returned (typed with
`from_xcom` first) and returning its result as XCom.

Members travel between tasks as names and attributes only (`FleetMembers`): every task that opens
members looks their URLs up again on its own worker (the fleet's queue), so no URL or password is
in XCom. A member's failure is an outcome, not an exception: the canary and waves tasks return
their part (`FleetPart`) under the XCom key `fleet_run` (multiple_outputs), and push it there
themselves before they fail, so windowed and the fleet record see what every member did. How a
task ends is the pipeline's verdict (`fleet.*_verdict`); this module raises Airflow's failure or
skip with its message (`ended`). Reads by task id: only the record's (`run_outcomes`) and windowed's
own progress after a deferral.
"""
from __future__ import annotations

import os
import re
from typing import Any

from schema_deploy.config import settings
from schema_deploy.errors import SchemaDeployError, UsageError
from schema_deploy_airflow import connections, task_ids
from schema_deploy_airflow.steps import current_context, deployment, fail_fast, run_states, task_log, typed

CONN_ENV = "AIRFLOW_CONN_"
# The tasks that reach members -> the fleet pipeline's step names (fleet.unreached_reason).
MEMBER_STEPS = {task_ids.CANARY: "canary", task_ids.APPROVE_CANARY: "approval", task_ids.WAVES: "waves"}


def _cfg() -> settings.DeployConfig:
    try:
        return settings.load_current()
    except SchemaDeployError:  # the DAG still loads; preflight_bundle reports the broken file
        return settings.DeployConfig()


def fleet_names() -> list[str]:
    """The fleets deploy.yaml declares, in its order (read at parse time)."""
    return [f.name for f in _cfg().fleets]


def fleet_param():
    """The trigger form's fleet: one of the declared names, the first by default (a free string when
    none is declared, so the DAG still parses; preflight_bundle then refuses it naming the fix)."""
    from schema_deploy_airflow.defaults import param

    names = fleet_names()
    if not names:  # nullable: the form still submits, and preflight_bundle says what to declare
        return param(None, type=["null", "string"], title="Fleet",
                     description="deploy.yaml declares no fleets: (see docs/fleets.md).")
    return param(names[0], type="string", enum=names, title="Fleet", description="One of deploy.yaml's fleets:.")


def member_queue() -> str:
    """The queue of the tasks that open members: the default (first) fleet's `queue:`, read at parse
    time; a run of another fleet uses the same queue, so give fleets of other networks their own DAG."""
    cfg, names = _cfg(), fleet_names()
    try:
        return cfg.fleet_queue(names[0]) if names else cfg.queue(None)
    except SchemaDeployError:
        return settings.DEFAULT_QUEUE


def only_targets(value: Any) -> list[str]:
    """The form's only_targets: a list of member names or one comma-separated string; empty (None, as
    the form sends an empty field) = all."""
    if value in (None, "", []):
        return []
    if isinstance(value, str):
        return [n for n in (p.strip() for p in re.split(r"[,\s]+", value)) if n]
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return [v.strip() for v in value if v.strip()]
    raise UsageError(f"'Only these members' (only_targets) must be member names, comma-separated, or a list of "
                     f"them (got {value!r}); leave it empty for the whole fleet.")


def check_form(params: dict[str, Any], cfg: settings.DeployConfig) -> None:
    """The fleet-only fields of the form: a declared fleet, a well-formed only_targets (the names are
    checked against the members by fleet_members, which can see them); the rules across fields that
    Airflow's form cannot check (it validates each field alone), named as the fleet's form names
    them. RunParams.check then checks what the fleet shares with deploy_schema."""
    cfg.fleet(str(params.get("fleet") or ""))
    only_targets(params.get("only_targets"))
    skip, reason = bool(params.get("skip_window")), str(params.get("skip_window_reason") or "").strip()
    if skip and not reason:
        raise UsageError("'Skip the members' maintenance windows' (skip_window) is on but 'Why skip the windows' "
                         "(skip_window_reason) is empty: say there why the members may change outside their "
                         "maintenance windows (it is recorded in the fleet record), or turn skip_window off. "
                         "Nothing was changed.")
    if skip and bool(params.get("dry_run")):
        raise UsageError("'Dry run' (dry_run) changes no member, so 'Skip the members' maintenance windows' "
                         "(skip_window) makes no sense with it; turn one of them off. Nothing was changed.")


def spec_of(ctx: dict[str, Any]):
    return settings.load_current().fleet(str((ctx.get("params") or {}).get("fleet") or ""))


# --- members ---------------------------------------------------------------------------------

def env_conn_ids() -> list[str]:
    """Connection ids defined as AIRFLOW_CONN_<ID> in this worker's environment (a prefix fleet's
    members). A secrets backend or the metadata database cannot be listed: declare those by list."""
    return sorted(k[len(CONN_ENV):].lower() for k in os.environ if k.startswith(CONN_ENV) and len(k) > len(CONN_ENV))


def resolve(spec) -> list:
    """Every member of `spec`, with its URL, from this worker's connections."""
    from schema_deploy.pipeline import fleet

    return fleet.resolve_members(
        spec, url_of=connections.database_url, conn_ids=env_conn_ids,
        catalog=lambda conn_id, query: fleet.catalog_rows(connections.database_url(conn_id), query))


def members_here(spec, frozen) -> list:
    """The run's members as fleet_members froze them, with their URLs looked up again here."""
    from schema_deploy.pipeline import fleet

    return fleet.refound(frozen, resolve(spec))


def ended(verdict) -> None:
    """The task ends as the pipeline's verdict says: Airflow's failure (not retried) or skip, with its
    message; nothing when there is no verdict."""
    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    if verdict is not None:
        raise (AirflowFailException if verdict.failed else AirflowSkipException)(verdict.message)


def task_states(ctx: dict[str, Any]) -> dict[str, str]:
    """This run's task states by task id, as plain words (success, failed, skipped, …)."""
    return {t: str(s).rsplit(".", 1)[-1].lower() for t, s in run_states(ctx["ti"]).items() if s}


def run_outcomes(ctx: dict[str, Any]) -> tuple[list, dict[str, str]]:
    """The one read of the whole run, for its record: the canary's, the waves' and windowed's parts
    as each pushed them (failed or not; None when it pushed none), and the member steps' states."""
    from schema_deploy.pipeline import fleet

    ti = ctx["ti"]
    parts = [typed(fleet.FleetPart, ti.xcom_pull(task_ids=t, key=task_ids.FLEET_RUN_KEY))
             for t in (task_ids.CANARY, task_ids.WAVES, task_ids.WINDOWED)]
    return parts, {MEMBER_STEPS[t]: s for t, s in task_states(ctx).items() if t in MEMBER_STEPS}


def windowed_progress(ctx: dict[str, Any], spec, dry_run: bool, parts: list, resumed: bool):
    """Where windowed stands: its own progress when it resumes after a deferral; else from the
    canary's and the waves' parts, unless the pipeline's verdict ends it first (nothing waits, a
    dry run's verdict)."""
    from schema_deploy.pipeline import fleet

    ti = ctx["ti"]
    if resumed:
        kept = ti.xcom_pull(task_ids=ti.task_id, key=task_ids.FLEET_WINDOW_KEY)
        return typed(fleet.WindowProgress, kept) or fleet.WindowProgress()
    waves_state = task_states(ctx).get(task_ids.WAVES, "none")
    ended(fleet.before_window(spec.name, parts, waves_state, dry_run))
    return fleet.window_start(parts, waves_failed=waves_state == "failed")


def keep_progress(ti, progress) -> None:
    """windowed's progress so far: its part for the record and the live view (fleet_run), the whole
    of it for its next resumption (fleet_window)."""
    ti.xcom_push(key=task_ids.FLEET_RUN_KEY, value=progress.part.to_xcom())
    ti.xcom_push(key=task_ids.FLEET_WINDOW_KEY, value=progress.to_xcom())


def unless_dry_run(step, what: str) -> dict[str, Any] | None:
    """`step()`, except on a dry run, which changes nothing anywhere, staging included: then `what`
    is logged and the task succeeds without touching staging (its members are still all checked)."""
    if deployment(current_context(), store=False).params.dry_run:
        task_log().info("dry run: %s; staging is not changed", what)
        return {"dry_run": True, "skipped": what}
    return step()


# --- task bodies: each takes the values its upstream tasks returned --------------------------------

@fail_fast
def preflight_bundle() -> dict[str, Any]:
    from schema_deploy_airflow import steps

    check_form(dict(current_context().get("params") or {}), settings.load_current())
    return steps.preflight_bundle()


@fail_fast
def fleet_release(checked: dict[str, Any], survey: dict[str, Any]) -> dict[str, Any]:
    """The fleet's release from staging's survey, with no database (fleet.fleet_preflight)."""
    from schema_deploy.pipeline import BundleCheck, TargetSurvey, fleet

    bundle, staging = BundleCheck.from_xcom(checked), TargetSurvey.from_xcom(survey)
    return fleet.fleet_preflight(deployment(), bundle, staging).to_xcom()


@fail_fast
def fleet_members(summary: dict[str, Any]) -> dict[str, Any]:
    """The members (names and attributes, never URLs) and the wave plan, frozen for the run."""
    from schema_deploy.pipeline import PreflightResult, fleet

    pre, ctx = PreflightResult.from_xcom(summary), current_context()
    spec, only = spec_of(ctx), only_targets((ctx.get("params") or {}).get("only_targets"))
    return fleet.freeze_members(deployment(ctx, pre=pre), spec, resolve(spec), only).to_xcom()


def run_part(summary: dict[str, Any], members: dict[str, Any], prior: dict[str, Any] | None,
             canary: bool) -> dict[str, Any]:
    """The canary wave, or every wave after it (fleet.run_part); its part pushed, then the task
    fails when the pipeline's verdict says so. Returns {fleet_run: the part} (multiple_outputs)."""
    from schema_deploy.pipeline import PreflightResult, fleet

    pre, frozen, ctx = PreflightResult.from_xcom(summary), fleet.FleetMembers.from_xcom(members), current_context()
    run, spec = deployment(ctx, pre=pre), spec_of(ctx)
    part = fleet.run_part(run, spec, members_here(spec, frozen), pre, canary=canary,
                          prior=typed(fleet.FleetPart, prior))
    verdict = fleet.part_verdict(spec.name, part, run.params.dry_run)
    if verdict is not None:  # a failed task returns nothing: the record still reads what every member did
        ctx["ti"].xcom_push(key=task_ids.FLEET_RUN_KEY, value=part.to_xcom())
    ended(verdict)
    return {task_ids.FLEET_RUN_KEY: part.to_xcom()}


@fail_fast
def canary(summary: dict[str, Any], members: dict[str, Any]) -> dict[str, Any]:
    return run_part(summary, members, None, canary=True)


@fail_fast
def waves(summary: dict[str, Any], members: dict[str, Any], first: dict[str, Any] | None) -> dict[str, Any]:
    """The waves after the canary, the brake counting `first` (the canary's part)."""
    return run_part(summary, members, first, canary=False)


def approval_needed(members: dict[str, Any]) -> str:
    """approve_canary when the fleet asks for an approval after the canary (fleet.asks_approval), else waves."""
    from schema_deploy.pipeline import fleet

    ctx = current_context()
    asks = fleet.asks_approval(spec_of(ctx), fleet.FleetMembers.from_xcom(members),
                               deployment(ctx, store=False).params.dry_run)
    return task_ids.APPROVE_CANARY if asks else task_ids.WAVES


@fail_fast
def windowed(summary: dict[str, Any] | None, members: dict[str, Any] | None, parts: list,
             resumed: bool) -> tuple[dict[str, Any] | None, Any]:
    """The members the canary and the waves (`parts`) left waiting for their window (fleet.window_step):
    those whose window is open are deployed, the brake decides; returns (the result, None) when
    nobody waits any more, else (None, when the next window opens) for the operator to defer to.
    What it did so far is in XCom (fleet_run for the record, fleet_window for the next resumption); a
    retry starts again from the waves' part, and members deployed already are 'already'."""
    from schema_deploy.pipeline import PreflightResult, fleet

    pre, frozen, ctx = typed(PreflightResult, summary), typed(fleet.FleetMembers, members), current_context()
    run, spec = deployment(ctx, pre=pre), spec_of(ctx)
    progress = windowed_progress(ctx, spec, run.params.dry_run, [typed(fleet.FleetPart, p) for p in parts], resumed)
    progress, wake = fleet.window_step(run, spec, lambda: members_here(spec, frozen), pre, progress)
    keep_progress(ctx["ti"], progress)
    if wake is None:
        ended(fleet.windowed_verdict(spec.name, progress))
    return (progress.part.to_xcom() if wake is None else None), wake


@fail_fast
def fleet_record(summary: dict[str, Any] | None, members: dict[str, Any] | None) -> dict[str, Any] | None:
    """The fleet record in S3 (fleet.record_run): every frozen member's outcome, the ones no task
    reached as not attempted with the reason; then one Slack summary."""
    from schema_deploy.pipeline import PreflightResult, fleet

    pre, frozen, ctx = typed(PreflightResult, summary), typed(fleet.FleetMembers, members), current_context()
    run, spec = deployment(ctx, pre=pre), spec_of(ctx)
    parts, states = run_outcomes(ctx)
    reason = fleet.unreached_reason(run.params.dry_run, states, {s: t for t, s in MEMBER_STEPS.items()})
    kept = fleet.record_run(run, spec, pre, frozen, parts, reason)
    return kept.to_xcom() if kept is not None else None
