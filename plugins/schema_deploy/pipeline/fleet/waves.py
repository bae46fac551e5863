"""Waves: canary first, sizes and parallelism from deploy.yaml, the brake that halts a run after
too many failures, and running them (`run_waves`, `run_fleet`; `run_windowed` for members that waited
for their window). Run apart, as the DAG's tasks do: the members frozen (`freeze_members`), the canary
wave or the waves after it (`run_part`), the waiting members once more (`window_step`), each telling
Slack one message per wave (`wave_facts`)."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from schema_deploy.config.fleets import FleetSpec, WavesSpec
from schema_deploy.pipeline.fleet.members import Member, deploy_member, failed_outcome, first_line, now_utc
from schema_deploy.pipeline.fleet.parts import FleetMembers, FleetPart, WindowProgress, chosen
from schema_deploy.pipeline.fleet.verdicts import NOT_APPROVED
from schema_deploy.pipeline.fleet.windows import split_by_window, waiting_outcomes
from schema_deploy.pipeline.results import BrakeDecision, MemberOutcome, PreflightResult
from schema_deploy.pipeline.target import Deployment


def canary_first(spec: FleetSpec, members: Sequence[Member], now: datetime) -> list[Member]:
    """`members` with the canary picked among those whose window is open now (the first by name),
    so a canary is not left waiting while the waves after it run; unchanged without a canary or
    when no window is open."""
    if not spec.waves.canary:
        return list(members)
    open_now, _ = split_by_window(spec, members, now)
    picked = open_now[:spec.waves.canary] if open_now else []
    return picked + [m for m in members if m not in picked]


def plan_waves(members: Sequence[Member], waves: WavesSpec) -> list[list[Member]]:
    """The canary wave (the first `canary` members; none when 0), then chunks of `size` (a percentage
    of the whole fleet is rounded up, and a wave holds at least one member)."""
    members = list(members)
    canary = min(waves.canary, len(members))
    size = max(1, waves.size.of(len(members), round_up=True))
    rest = members[canary:]
    return ([members[:canary]] if canary else []) + [rest[i:i + size] for i in range(0, len(rest), size)]


def halt_limit(waves: WavesSpec, fleet_size: int) -> int:
    """How many failed members the run tolerates: `halt_after`, a percentage of the fleet rounded
    down (5% of 30 is 1), so a percentage never tolerates more than it says."""
    return waves.halt_after.of(fleet_size, round_up=False)


def wave_limit(waves: WavesSpec, fleet_size: int, index: int) -> int:
    """The brake's limit after wave `index`: 0 after the canary (a failed canary stops the run), else halt_limit."""
    return 0 if index == 0 and waves.canary else halt_limit(waves, fleet_size)


def brake(outcomes: Sequence[MemberOutcome], limit: int, wave: int = 0) -> BrakeDecision:
    """Go on or halt, from every outcome so far: the run halts when more than `limit` members failed."""
    states = Counter(o.state for o in outcomes)
    failed = [o for o in outcomes if o.failed]
    halt = len(failed) > limit
    names = "; ".join(f"{o.member}: {o.error}" for o in failed[:5]) + ("; …" if len(failed) > 5 else "")
    reason = (f"{len(failed)} member(s) failed so far, more than the limit of {limit}: the run stops ({names})"
              if halt else f"{len(failed)} member(s) failed so far, within the limit of {limit}: the run goes on"
              + (f" ({names})" if failed else ""))
    return BrakeDecision(wave=wave, halt=halt, failed=len(failed), done=states["done"], already=states["already"],
                         limit=limit, reason=reason)


def not_attempted(members: Sequence[Member], reason: str, wave: int = 0) -> list[MemberOutcome]:
    """Outcomes for members the run did not reach (a halt, a refused approval), with the reason."""
    return [MemberOutcome(member=m.name, state="not_attempted", wave=wave, attributes=m.attrs, reason=reason)
            for m in members]


def run_wave(ctx: Deployment, members: Sequence[Member], *, parallel: int,
             fn: Callable[[Member], MemberOutcome], wave: int = 0) -> list[MemberOutcome]:
    """`fn` for each member on `parallel` threads, outcomes in the members' order; an exception in
    `fn` is that member's failed outcome, and never stops the others."""
    def guarded(m: Member) -> MemberOutcome:
        started = now_utc()
        try:
            return fn(m)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            ctx.log.error("%s failed: %s", m.name, first_line(exc))
            return failed_outcome(m, exc, started, wave)

    if not members:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(members))), thread_name_prefix="fleet") as pool:
        return list(pool.map(guarded, members))


@dataclass(frozen=True)
class FleetRun:
    """What `run_fleet` did: every member's outcome, the waves (member names) and the brake decisions."""

    outcomes: list[MemberOutcome]
    waves: list[list[str]]
    brakes: list[BrakeDecision]


def run_waves(ctx: Deployment, spec: FleetSpec, members: Sequence[Member], pre: PreflightResult, *,
              start: int = 0, stop: int | None = None, prior: Sequence[MemberOutcome] = (),
              now: Callable[[], datetime] = now_utc, sleep: Callable[[float], None] = time.sleep,
              on_wave: Callable[[int, list[MemberOutcome], BrakeDecision], None] | None = None) -> FleetRun:
    """Waves `start` to `stop` (exclusive; None: the last) of the fleet's wave plan, in this process:
    `pause` before each wave but the first of the fleet, then its members whose window is open (all of
    them with skip_window), the others waiting; then the brake over `prior` (earlier waves' outcomes,
    e.g. the canary's from another task) and these. A halt lists every later member, beyond `stop`
    too, as not attempted. `on_wave(index, its outcomes, the brake)` is told after each wave (Slack).
    Returns only the outcomes of these waves; `waves` is the whole plan."""
    waves = plan_waves(members, spec.waves)
    stop = len(waves) if stop is None else min(stop, len(waves))
    outcomes: list[MemberOutcome] = []
    brakes: list[BrakeDecision] = []
    for i in range(start, stop):
        if i > 0 and spec.waves.pause and not ctx.params.dry_run:
            sleep(spec.waves.pause.total_seconds())
        if ctx.params.skip_window or ctx.params.dry_run:  # a dry run checks every member, window or not
            open_now, waiting = list(waves[i]), []
        else:
            open_now, waiting = split_by_window(spec, waves[i], now())
        done = waiting_outcomes(spec, waiting, i) + run_wave(
            ctx, open_now, parallel=spec.waves.parallel, wave=i, fn=lambda m, i=i: deploy_member(
                ctx, m, pre, fleet=spec.name, backup=spec.backup, dry_run=ctx.params.dry_run, wave=i))
        outcomes += done
        brakes.append(brake([*prior, *outcomes], wave_limit(spec.waves, len(members), i), i))
        if i == 0 and spec.waves.canary and waiting and not ctx.params.dry_run and not brakes[-1].halt:
            brakes[-1] = replace(brakes[-1], halt=True, reason=(
                f"the canary could not run: {', '.join(m.name for m, _ in waiting)} wait(s) for a closed window "
                f"(opens {min(at for _, at in waiting).isoformat()}); trigger the fleet again while a window is "
                "open (its canary is then a member whose window is open), or with skip_window and a reason"))
        if ctx.params.dry_run and brakes[-1].halt:  # a dry run checks every member: the brake only says
            brakes[-1] = replace(brakes[-1], halt=False, reason=f"dry run, every member is checked; a real run "
                                 f"would stop here: {brakes[-1].reason}")
        ctx.log.info("fleet %s wave %d: %s", spec.name, i, brakes[-1].reason)
        if on_wave is not None:
            on_wave(i, done, brakes[-1])
        if brakes[-1].halt:
            later = [m for w in waves[i + 1:] for m in w]
            outcomes += not_attempted(later, f"the brake halted the run after wave {i}: {brakes[-1].reason}", i + 1)
            break
    return FleetRun(outcomes=outcomes, waves=[[m.name for m in w] for w in waves], brakes=brakes)


def run_fleet(ctx: Deployment, spec: FleetSpec, members: Sequence[Member], pre: PreflightResult, *,
              now: Callable[[], datetime] = now_utc, sleep: Callable[[float], None] = time.sleep,
              approve: Callable[[list[MemberOutcome]], bool] | None = None) -> FleetRun:
    """The waves in one process (the `deploy` command's and the tests' orchestrator; the DAG runs the
    same `run_waves` as tasks: the canary, the approval, the rest): the canary wave, then the approval
    when the fleet asks for one, then the other waves."""
    if not ctx.params.skip_window:
        members = canary_first(spec, members, now())
    if not spec.waves.canary:
        return run_waves(ctx, spec, members, pre, now=now, sleep=sleep)
    canary = run_waves(ctx, spec, members, pre, stop=1, now=now, sleep=sleep)
    later = [m for w in plan_waves(members, spec.waves)[1:] for m in w]
    if canary.brakes[-1].halt or not later:
        return canary
    if spec.waves.approve_after_canary and not ctx.params.dry_run and (approve is None or not approve(canary.outcomes)):
        return replace(canary, outcomes=canary.outcomes + not_attempted(later, NOT_APPROVED, 1))
    rest = run_waves(ctx, spec, members, pre, start=1, prior=canary.outcomes, now=now, sleep=sleep)
    return FleetRun(outcomes=canary.outcomes + rest.outcomes, waves=canary.waves, brakes=canary.brakes + rest.brakes)


def run_windowed(ctx: Deployment, spec: FleetSpec, members: Sequence[Member], pre: PreflightResult,
                 waiting: Sequence[MemberOutcome], *, prior: Sequence[MemberOutcome] = (),
                 now: Callable[[], datetime] = now_utc) -> tuple[FleetRun, datetime | None]:
    """The members the waves left waiting for their window (`waiting`, their outcomes), once: those
    whose window is open now are deployed, `parallel` at a time, each keeping its wave number; then
    the brake over `prior` (every outcome so far) and these. Returns these outcomes, the ones still
    waiting included, and when the next of their windows opens: None when nobody waits any more, or
    when the brake halted the run (the waiting ones are then not attempted, with its reason)."""
    by_name = {m.name: m for m in members}
    wave_of = {o.member: o.wave for o in waiting}
    open_now, still = split_by_window(spec, [by_name[o.member] for o in waiting], now())
    done = run_wave(ctx, open_now, parallel=spec.waves.parallel, fn=lambda m: deploy_member(
        ctx, m, pre, fleet=spec.name, backup=spec.backup, dry_run=False, wave=wave_of[m.name]))
    brakes: list[BrakeDecision] = []
    if done:
        brakes.append(brake([*prior, *done], halt_limit(spec.waves, len(members)), max(o.wave for o in done)))
        ctx.log.info("fleet %s, members whose window opened (%s): %s", spec.name,
                     ", ".join(o.member for o in done), brakes[-1].reason)
    if brakes and brakes[-1].halt:
        reason = f"the brake halted the run: {brakes[-1].reason}"
        return FleetRun(outcomes=done + [replace(o, state="not_attempted", reason=reason, next_window="")
                                         for o in waiting if o.member in {m.name for m, _ in still}],
                        waves=[], brakes=brakes), None
    later = [replace(o, next_window=at.astimezone(timezone.utc).isoformat())
             for o in waiting for m, at in still if m.name == o.member]
    return FleetRun(outcomes=done + later, waves=[], brakes=brakes), min((at for _, at in still), default=None)


# --- run apart, one part per task --------------------------------------------------------------

def freeze_members(ctx: Deployment, spec: FleetSpec, members: list[Member], only: list[str], *,
                   now: Callable[[], datetime] = now_utc) -> FleetMembers:
    """The run's members (cut to `only`; the canary picked among those whose window is open, unless
    the windows are skipped) and their wave plan, frozen for the steps after."""
    members = chosen(spec, members, only)
    if not ctx.params.skip_window:
        members = canary_first(spec, members, now())
    waves = plan_waves(members, spec.waves)
    ctx.log.info("fleet %s: %d members in %d waves: %s", spec.name, len(members), len(waves),
                 " | ".join(", ".join(m.name for m in w) for w in waves))
    return FleetMembers.of(spec.name, members, waves)


def next_wave(spec: FleetSpec, waves: int, index: int, decision: BrakeDecision, canary: bool, now: datetime) -> str:
    """When the wave after wave `index` (of `waves`) starts, as Slack says it."""
    if decision.halt:
        return "none: the brake halted the run"
    if index + 1 >= waves:
        return "none (the last wave)"
    if canary and spec.waves.approve_after_canary:
        return "after the approval (approve_canary)"
    at = now + timedelta(seconds=spec.waves.pause.total_seconds())
    return f"{at.isoformat(timespec='seconds')} (pause {spec.waves.pause})"


def wave_facts(spec: FleetSpec, label: str, done: Sequence[MemberOutcome], decision: BrakeDecision,
               nxt: str) -> dict[str, Any]:
    """The Slack message of one wave (or one batch of members whose window opened): its counts, the
    failed members with their first error line, the brake when it matters, and what comes next."""
    counts = Counter(o.state for o in done)
    failed = [o for o in done if o.failed]
    return {"fleet": spec.name, "wave": label, "members": ", ".join(f"{s} {n}" for s, n in sorted(counts.items())),
            "failed": "\n".join(f"{o.member}: {o.error}" for o in failed[:10]) + ("\n…" if len(failed) > 10 else ""),
            "brake": decision.reason if decision.halt or failed else "", "next wave": nxt}


def run_part(ctx: Deployment, spec: FleetSpec, members: Sequence[Member], pre: PreflightResult, *, canary: bool,
             prior: FleetPart | None = None, now: Callable[[], datetime] = now_utc,
             sleep: Callable[[float], None] = time.sleep) -> FleetPart:
    """The canary wave (`canary`), or every wave after it with the brake counting `prior` (the
    canary's part), in this process, one Slack message per wave. A fleet without a canary wave has
    an empty canary part."""
    has_canary = bool(spec.waves.canary)
    if canary and not has_canary:
        ctx.log.info("fleet %s has no canary wave (waves.canary: 0)", spec.name)
        return FleetPart()
    count = len(plan_waves(members, spec.waves))
    start, stop = (0, 1) if canary else (1 if has_canary else 0, None)

    def told(i: int, done: list[MemberOutcome], decision: BrakeDecision) -> None:
        label = f"{i + 1} of {count}" + (" (canary)" if canary else "")
        nxt = next_wave(spec, count, i, decision, canary, now())
        ctx.notify("fleet_wave", wave_facts(spec, label, done, decision, nxt))

    got = run_waves(ctx, spec, members, pre, start=start, stop=stop, prior=prior.outcomes if prior else [],
                    now=now, sleep=sleep, on_wave=told)
    return FleetPart(outcomes=got.outcomes, brakes=got.brakes)


def window_step(ctx: Deployment, spec: FleetSpec, members: Callable[[], Sequence[Member]], pre: PreflightResult,
                progress: WindowProgress, *, now: Callable[[], datetime] = now_utc
                ) -> tuple[WindowProgress, datetime | None]:
    """The members still waiting for their window, once (`run_windowed`): those whose window opened
    are deployed and Slack hears of them; returns the progress, and when the next window opens (None:
    nobody waits any more). `members` gives the run's members with their URLs, asked only when
    someone waits."""
    if not progress.waiting:
        ctx.log.info("fleet %s: no member waits for its window", spec.name)
        return progress, None
    got, wake = run_windowed(ctx, spec, members(), pre, progress.waiting, prior=[*progress.prior, *progress.done],
                             now=now)
    finished = [o for o in got.outcomes if o.state != "waiting_window"]
    progress = replace(progress, done=[*progress.done, *finished], brakes=[*progress.brakes, *got.brakes],
                       waiting=[o for o in got.outcomes if o.state == "waiting_window"])
    if got.brakes:
        nxt = f"{wake.isoformat(timespec='seconds')} (the next window)" if wake else "none"
        ctx.notify("fleet_wave", wave_facts(spec, "members whose window opened", finished, got.brakes[-1], nxt))
    if wake is not None:
        ctx.log.info("fleet %s: %d member(s) wait for their window (%s), deferred until %s", spec.name,
                     len(progress.waiting), ", ".join(o.member for o in progress.waiting), wake.isoformat())
    return progress, wake
