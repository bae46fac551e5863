"""deploy_fleet's task bodies: the fleet's members from connections, one step of
`schema_deploy.pipeline.fleet` per task, its result as XCom.

Members travel between tasks as names and attributes only: every task that opens members looks
their URLs up again on its own worker (the fleet's queue), so no URL or password is in XCom.
A member's failure is an outcome, not an exception: the canary and waves tasks push what every
member did (XCom key `fleet_run`) and only then fail, so the fleet record lists it all.
"""
from __future__ import annotations

import os
import re
from typing import Any

from schema_deploy.config import settings
from schema_deploy.errors import SchemaDeployError, UsageError
from schema_deploy_airflow import connections
from schema_deploy_airflow.steps import PREFLIGHT, current_context, deployment, fail_fast, notify, pulled, task_log

RUN_KEY = "fleet_run"  # the canary's, the waves' and windowed's outcomes, pushed before the task may fail
WINDOW_KEY = "fleet_window"  # windowed's progress, read again when it resumes after a deferral
CONN_ENV = "AIRFLOW_CONN_"


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
    from airflow.sdk import Param

    names = fleet_names()
    if not names:  # nullable: the form still submits, and preflight_bundle says what to declare
        return Param(None, type=["null", "string"], title="Fleet",
                     description="deploy.yaml declares no fleets: (see docs/fleets.md).")
    return Param(names[0], type="string", enum=names, title="Fleet", description="One of deploy.yaml's fleets:.")


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


def chosen(spec, members: list, only: list[str]) -> list:
    """`members` cut to `only` (empty: all); a name the fleet does not have is refused with its names."""
    if not only:
        return members
    names = [m.name for m in members]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UsageError(f"only_targets names {', '.join(unknown)}, which fleet {spec.name} does not have; "
                         f"its members: {', '.join(names)}.")
    return [m for m in members if m.name in only]


def frozen_members(ctx: dict[str, Any]) -> list:
    """The run's members as fleet_members froze them, with their URLs looked up again here."""
    spec = spec_of(ctx)
    frozen = ctx["ti"].xcom_pull(task_ids="fleet_members") or {}
    names = [m["name"] for m in frozen.get("members", [])]
    found = {m.name: m for m in resolve(spec)}
    missing = [n for n in names if n not in found]
    if missing:
        raise UsageError(f"fleet {spec.name}: {', '.join(missing)} no longer defined on this worker (connection or "
                         "catalog row gone since fleet_members); restore them, or run again with only_targets.")
    return [found[n] for n in names]


# --- task bodies -------------------------------------------------------------------------------

@fail_fast
def preflight_bundle() -> dict[str, Any]:
    from schema_deploy_airflow import steps

    check_form(dict(current_context().get("params") or {}), settings.load_current())
    return steps.preflight_bundle()


@fail_fast
def fleet_release() -> dict[str, Any]:
    """The fleet's release from staging's survey, with no database (fleet.fleet_preflight)."""
    from schema_deploy.pipeline import BundleCheck, TargetSurvey, fleet

    ctx = current_context()
    return fleet.fleet_preflight(deployment(ctx), pulled(ctx, "preflight_bundle", BundleCheck),
                                 pulled(ctx, "preflight_staging", TargetSurvey)).to_xcom()


@fail_fast
def fleet_members() -> dict[str, Any]:
    """The members (names and attributes, never URLs) and the wave plan, frozen for the run."""
    from schema_deploy.pipeline import fleet

    ctx = current_context()
    spec = spec_of(ctx)
    members = chosen(spec, resolve(spec), only_targets((ctx.get("params") or {}).get("only_targets")))
    if not deployment(ctx).params.skip_window:
        members = fleet.canary_first(spec, members, fleet.now_utc())
    waves = fleet.plan_waves(members, spec.waves)
    task_log().info("fleet %s: %d members in %d waves: %s", spec.name, len(members), len(waves),
                    " | ".join(", ".join(m.name for m in w) for w in waves))
    return {"fleet": spec.name, "members": [{"name": m.name, "attributes": m.attrs} for m in members],
            "waves": [[m.name for m in w] for w in waves]}


def run_part(canary: bool) -> dict[str, Any]:
    """The canary wave, or every wave after it, in this process (fleet.run_waves), one Slack
    message per wave; the outcomes pushed, then the task fails if a member failed."""
    from airflow.sdk.exceptions import AirflowFailException

    from schema_deploy.pipeline import MemberOutcome, PreflightResult, fleet

    ctx = current_context()
    run, spec = deployment(ctx), spec_of(ctx)
    members = frozen_members(ctx)
    pre = pulled(ctx, PREFLIGHT, PreflightResult)
    has_canary = bool(spec.waves.canary)
    if canary and not has_canary:
        task_log().info("fleet %s has no canary wave (waves.canary: 0)", spec.name)
        result = {"outcomes": [], "brakes": []}
    else:
        prior = [] if canary else [MemberOutcome.from_xcom(o) for o in
                                   ((ctx["ti"].xcom_pull(task_ids="canary", key=RUN_KEY) or {}).get("outcomes") or [])]
        waves = fleet.plan_waves(members, spec.waves)
        start, stop = (0, 1) if canary else (1 if has_canary else 0, None)

        def told(i: int, done: list, decision) -> None:
            wave_message(spec, waves, i, done, decision, canary)

        got = fleet.run_waves(run, spec, members, pre, start=start, stop=stop, prior=prior, on_wave=told)
        result = {"outcomes": [o.to_xcom() for o in got.outcomes], "brakes": [b.to_xcom() for b in got.brakes]}
    ctx["ti"].xcom_push(key=RUN_KEY, value=result)
    failed = [o for o in result["outcomes"] if o["state"] == "failed"]
    halted = any(b["halt"] for b in result["brakes"])
    if run.params.dry_run:  # checks only: every member is checked, windowed gives the verdict
        return result
    if failed or halted:
        names = "; ".join(f"{o['member']}: {o['error']}" for o in failed[:5])
        raise AirflowFailException(f"fleet {spec.name}: {len(failed)} member(s) failed ({names})"
                                   + (". The brake halted the run: the later members are not attempted"
                                      if halted else "") + ". Fix them, then clear this task: members at the "
                                   "release already are skipped as 'already'.")
    return result


def wave_message(spec, waves: list, i: int, done: list, decision, canary: bool) -> None:
    """One Slack message for a wave: its counts, the failed members with their first error line, and
    what comes next."""
    from datetime import datetime, timedelta, timezone

    if decision.halt:
        nxt = "none: the brake halted the run"
    elif i + 1 >= len(waves):
        nxt = "none (the last wave)"
    elif canary and spec.waves.approve_after_canary:
        nxt = "after the approval (approve_canary)"
    else:
        at = datetime.now(timezone.utc) + timedelta(seconds=spec.waves.pause.total_seconds())
        nxt = f"{at.isoformat(timespec='seconds')} (pause {spec.waves.pause})"
    tell_wave(spec, f"{i + 1} of {len(waves)}" + (" (canary)" if canary else ""), done, decision, nxt)


def tell_wave(spec, label: str, done: list, decision, nxt: str) -> None:
    """The Slack message of one wave (or one batch of members whose window opened)."""
    from collections import Counter

    counts = Counter(o.state for o in done)
    failed = [o for o in done if o.failed]
    notify("fleet_wave", {
        "fleet": spec.name, "wave": label,
        "members": ", ".join(f"{s} {n}" for s, n in sorted(counts.items())),
        "failed": "\n".join(f"{o.member}: {o.error}" for o in failed[:10]) + ("\n…" if len(failed) > 10 else ""),
        "brake": decision.reason if decision.halt or failed else "", "next wave": nxt}, task_log())


@fail_fast
def canary() -> dict[str, Any]:
    return run_part(canary=True)


@fail_fast
def waves() -> dict[str, Any]:
    return run_part(canary=False)


def task_states(ctx: dict[str, Any]) -> dict[str, str]:
    """This run's task states by task id, as plain words (success, failed, skipped, …)."""
    ti, run_id = ctx["ti"], ctx["dag_run"].run_id
    states = (ti.get_task_states(dag_id=ti.dag_id, run_ids=[run_id]) or {}).get(run_id, {})
    return {t: str(s).rsplit(".", 1)[-1].lower() for t, s in states.items() if s}


def outcomes_of(values) -> list:
    from schema_deploy.pipeline import MemberOutcome

    return [MemberOutcome.from_xcom(o) for o in values or []]


def window_start(ctx: dict[str, Any], spec, dry_run: bool) -> tuple[list, list, list, bool]:
    """What windowed starts from, from the canary's and the waves' outcomes: (prior outcomes, done
    ones, waiting ones, whether the waves failed); skips or fails itself when there is nothing to wait
    for, with the run's verdict (this task is the run's leaf: its state is the run's)."""
    from dataclasses import replace

    from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

    ti = ctx["ti"]
    waves_state = task_states(ctx).get("waves", "none")
    if waves_state == "upstream_failed":
        raise AirflowFailException("waves did not run (upstream_failed): the run failed before them (see the "
                                   "failed task's log); no member waits for its window")
    parts = [ti.xcom_pull(task_ids=t, key=RUN_KEY) or {} for t in ("canary", "waves")]
    every = [o for p in parts for o in outcomes_of(p.get("outcomes"))]
    if dry_run:  # the canary and the waves only checked; the run's verdict is given here
        failed = [o for o in every if o.failed]
        if failed or waves_state == "failed":
            raise AirflowFailException(f"dry run of fleet {spec.name}: {len(failed)} member(s) failed their checks ("
                                       + "; ".join(f"{o.member}: {o.error}" for o in failed[:5])
                                       + "); nothing was changed anywhere")
        raise AirflowSkipException("dry run: every member was checked in its wave; no member is changed")
    if waves_state not in ("success", "failed"):
        raise AirflowSkipException(f"waves did not run ({waves_state}): no member waits for its window")
    halts = [b for p in parts for b in p.get("brakes") or [] if b.get("halt")]
    prior = [o for o in every if o.state != "waiting_window"]
    waiting = [o for o in every if o.state == "waiting_window"]
    done = []
    if halts and waiting:  # the brake stopped the run: nobody is waited for
        done = [replace(o, state="not_attempted", next_window="",
                        reason=f"the brake halted the run: {halts[0]['reason']}") for o in waiting]
        waiting = []
    if not waiting:
        task_log().info("fleet %s: no member waits for its window", spec.name)
    return prior, done, waiting, waves_state == "failed"


@fail_fast
def windowed(resumed: bool) -> tuple[dict[str, Any] | None, Any]:
    """The members the canary and the waves left waiting for their window (fleet.run_windowed):
    those whose window is open are deployed, the brake decides; returns (the result, None) when
    nobody waits any more, else (None, when the next window opens) for the operator to defer to.
    What it did so far is in XCom (RUN_KEY for the record, WINDOW_KEY for the next resumption); a
    retry starts again from the waves' outcomes, and members deployed already are 'already'."""
    from airflow.sdk.exceptions import AirflowFailException

    from schema_deploy.pipeline import PreflightResult, fleet

    ctx = current_context()
    run, spec, ti = deployment(ctx), spec_of(ctx), ctx["ti"]
    if resumed:
        kept = ti.xcom_pull(task_ids=ti.task_id, key=WINDOW_KEY) or {}
        prior, done, waiting = (outcomes_of(kept.get(k)) for k in ("prior", "done", "waiting"))
        brakes, waves_failed = list(kept.get("brakes") or []), bool(kept.get("waves_failed"))
    else:
        (prior, done, waiting, waves_failed), brakes = window_start(ctx, spec, run.params.dry_run), []
    wake = None
    if waiting:
        got, wake = fleet.run_windowed(run, spec, frozen_members(ctx), pulled(ctx, PREFLIGHT, PreflightResult),
                                       waiting, prior=[*prior, *done])
        finished = [o for o in got.outcomes if o.state != "waiting_window"]
        waiting = [o for o in got.outcomes if o.state == "waiting_window"]
        done += finished
        brakes += [b.to_xcom() for b in got.brakes]
        if got.brakes:
            tell_wave(spec, "members whose window opened", finished, got.brakes[-1],
                      f"{wake.isoformat(timespec='seconds')} (the next window)" if wake else "none")
    result = {"outcomes": [o.to_xcom() for o in done + waiting], "brakes": brakes}
    ti.xcom_push(key=RUN_KEY, value=result)
    ti.xcom_push(key=WINDOW_KEY, value={"prior": [o.to_xcom() for o in prior], "done": [o.to_xcom() for o in done],
                                        "waiting": [o.to_xcom() for o in waiting], "brakes": brakes,
                                        "waves_failed": waves_failed})
    if wake is not None:
        task_log().info("fleet %s: %d member(s) wait for their window (%s), deferred until %s", spec.name,
                        len(waiting), ", ".join(o.member for o in waiting), wake.isoformat())
        return None, wake
    failed = [o for o in done if o.failed]
    if failed or any(b.get("halt") for b in brakes):
        raise AirflowFailException(f"fleet {spec.name}: {len(failed)} member(s) failed after their window opened ("
                                   + "; ".join(f"{o.member}: {o.error}" for o in failed[:5]) + "). Fix them, then "
                                   "clear this task: members at the release already are skipped as 'already'.")
    if waves_failed:
        raise AirflowFailException(f"fleet {spec.name}: members failed in the waves (see the waves task's log and "
                                   "the fleet record); every member waiting for its window was handled.")
    return result, None


def approval_needed() -> str:
    """approve_canary when the fleet asks for an approval after the canary and waves follow (not on a
    dry run, which changes nothing), else waves."""
    ctx = current_context()
    spec = spec_of(ctx)
    frozen = ctx["ti"].xcom_pull(task_ids="fleet_members") or {}
    return ("approve_canary" if spec.waves.approve_after_canary and len(frozen.get("waves") or []) > 1
            and not deployment(ctx).params.dry_run else "waves")


def unless_dry_run(step, what: str) -> dict[str, Any] | None:
    """`step()`, except on a dry run, which changes nothing anywhere, staging included: then `what`
    is logged and the task succeeds without touching staging (its members are still all checked)."""
    if deployment(current_context()).params.dry_run:
        task_log().info("dry run: %s; staging is not changed", what)
        return {"dry_run": True, "skipped": what}
    return step()


def unreached_reason(ctx: dict[str, Any], dry_run: bool) -> str:
    if dry_run:
        return "a dry run changes no member"
    states = task_states(ctx)
    if states.get("approve_canary") == "success" and states.get("waves") == "skipped":  # Reject skips waves
        return "not approved after the canary wave"
    seen = ", ".join(f"{t} {s}" for t, s in sorted(states.items()) if t in ("canary", "approve_canary", "waves") and s)
    return f"the run stopped before them ({seen or 'no member task ran'})"


@fail_fast
def fleet_record() -> dict[str, Any] | None:
    """The fleet record in S3 (fleet.fleet_record / keep_fleet_record): every frozen member's outcome,
    the ones no task reached as not attempted with the reason; then one Slack summary."""
    from collections import Counter

    from schema_deploy.pipeline import BrakeDecision, MemberOutcome, PreflightResult, fleet

    ctx = current_context()
    run, spec = deployment(ctx), spec_of(ctx)
    pre = pulled(ctx, PREFLIGHT, PreflightResult)
    if pre is None:
        task_log().info("no fleet release (preflight did not finish): no member was touched, nothing to record")
        return None
    ti = ctx["ti"]
    frozen = ti.xcom_pull(task_ids="fleet_members") or {}
    parts = [ti.xcom_pull(task_ids=t, key=RUN_KEY) or {} for t in ("canary", "waves", "windowed")]
    latest = {o["member"]: o for p in parts for o in p.get("outcomes") or []}  # windowed's after the waves'
    outcomes = [MemberOutcome.from_xcom(o) for o in latest.values()]
    brakes = [BrakeDecision.from_xcom(b) for p in parts for b in p.get("brakes") or []]
    seen = {o.member for o in outcomes}
    wave_of = {n: i for i, w in enumerate(frozen.get("waves") or []) for n in w}
    reason = unreached_reason(ctx, run.params.dry_run)
    outcomes += [MemberOutcome(member=m["name"], state="not_attempted", wave=wave_of.get(m["name"], 0),
                               attributes=m.get("attributes") or {}, reason=reason)
                 for m in frozen.get("members") or [] if m["name"] not in seen]
    result = fleet.FleetRun(outcomes=outcomes, waves=frozen.get("waves") or [], brakes=brakes)
    document = fleet.fleet_record(run, spec, pre, result)
    if run.params.dry_run:
        document["outcome"] = "dry run"
    elif not outcomes or (document["outcome"] == "not approved" and reason.startswith("the run stopped")):
        document["outcome"] = "stopped before the members"  # a task before or around them failed: see its log
    uri, digest = fleet.keep_fleet_record(run, spec, document)
    failed = [o for o in outcomes if o.failed]
    notify("fleet_done", {
        "fleet": spec.name, "outcome": document["outcome"],
        "members": ", ".join(f"{s} {n}" for s, n in sorted(Counter(o.state for o in outcomes).items())),
        "failed": "\n".join(f"{o.member}: {o.error}" for o in failed[:10]),
        "not attempted": reason if any(o.state == "not_attempted" for o in outcomes) else "",
        "record": uri}, task_log())
    return {"uri": uri, "sha256": digest, "outcome": document["outcome"], "counts": document["counts"]}
