"""How the fleet's steps end when no exception of theirs says it, and what the run's record and
its approval say about the members: a part that failed or halted the run, the start and the end of
the members that waited for their window (a dry run's verdict is given there), why members no step
reached were not attempted, the record's outcome as the run ended, the approval's text after the
canary. The orchestrator only maps its task states in and turns a `Verdict` into its own failure or
skip, with the message given here.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from schema_deploy.pipeline.fleet.parts import FleetPart, WindowProgress
from schema_deploy.pipeline.results import MemberOutcome

DRY_RUN = "a dry run changes no member"
NOT_APPROVED = "not approved after the canary wave"
STOPPED = "the run stopped before them"
# The steps that reach members, as `unreached_reason` reads their states: the canary wave, the
# approval after it, the waves after that.
MEMBER_STEPS = ("canary", "approval", "waves")
RETRY_HINT = "Fix them, then clear this task: members at the release already are skipped as 'already'."


@dataclass(frozen=True)
class Verdict:
    """How a step that raised nothing ends all the same: failed (else skipped), with the message."""

    failed: bool
    message: str


def _named(failed: Sequence[MemberOutcome]) -> str:
    return "; ".join(f"{o.member}: {o.error}" for o in failed[:5])


def part_verdict(fleet: str, part: FleetPart, dry_run: bool) -> Verdict | None:
    """The canary's or the waves' end: failed when a member failed or the brake halted the run (its
    outcomes are kept first, so the record lists every member); a dry run only checks, and the
    verdict of its checks is given once every member was checked (`before_window`)."""
    failed, halted = part.failed, part.halted
    if dry_run or not (failed or halted):
        return None
    return Verdict(True, f"fleet {fleet}: {len(failed)} member(s) failed ({_named(failed)})"
                   + (". The brake halted the run: the later members are not attempted" if halted else "")
                   + f". {RETRY_HINT}")


def before_window(fleet: str, parts: Sequence[FleetPart | None], waves_state: str, dry_run: bool) -> Verdict | None:
    """Whether the step of the members waiting for their window ends before it starts, from the
    canary's and the waves' parts and the waves' state (`success`, `failed`, `skipped`,
    `upstream_failed`, …): it is the run's last step, so its state is the run's. A dry run's verdict
    is given here: failed when a member failed its checks, else skipped."""
    if waves_state == "upstream_failed":
        return Verdict(True, "waves did not run (upstream_failed): the run failed before them (see the failed "
                             "task's log); no member waits for its window")
    if dry_run:
        failed = [o for p in parts if p for o in p.failed]
        if failed or waves_state == "failed":
            return Verdict(True, f"dry run of fleet {fleet}: {len(failed)} member(s) failed their checks "
                                 f"({_named(failed)}); nothing was changed anywhere")
        return Verdict(False, "dry run: every member was checked in its wave; no member is changed")
    if waves_state not in ("success", "failed"):
        return Verdict(False, f"waves did not run ({waves_state}): no member waits for its window")
    return None


def windowed_verdict(fleet: str, progress: WindowProgress) -> Verdict | None:
    """The end of the members that waited for their window, once nobody waits: failed when one of
    them failed or the brake halted the run, or when the waves had failed."""
    failed = [o for o in progress.done if o.failed]
    if failed or any(b.halt for b in progress.brakes):
        return Verdict(True, f"fleet {fleet}: {len(failed)} member(s) failed after their window opened "
                             f"({_named(failed)}). {RETRY_HINT}")
    if progress.waves_failed:
        return Verdict(True, f"fleet {fleet}: members failed in the waves (see the waves task's log and the fleet "
                             "record); every member waiting for its window was handled.")
    return None


def unreached_reason(dry_run: bool, states: Mapping[str, str | None], task_of: Mapping[str, str]) -> str:
    """Why the members no step reached were not attempted: a dry run; the approval after the canary
    refused (it succeeded, and the waves were skipped); else how far the member steps got (`states`
    by `MEMBER_STEPS` name, each shown as `task_of` names it)."""
    if dry_run:
        return DRY_RUN
    if states.get("approval") == "success" and states.get("waves") == "skipped":
        return NOT_APPROVED
    seen = ", ".join(f"{t} {s}" for t, s in sorted((task_of.get(step, step), s) for step, s in states.items()
                                                  if step in MEMBER_STEPS and s))
    return f"{STOPPED} ({seen or 'no member task ran'})"


def record_outcome(outcome: str, dry_run: bool, outcomes: Sequence[MemberOutcome], reason: str) -> str:
    """The fleet record's outcome as the run ended: `outcome` (fleet_outcome's, from the members'
    states), except that a dry run says so, and a run that stopped before any member, or around the
    approval without a refusal (`reason` says it stopped), stopped before the members."""
    if dry_run:
        return "dry run"
    if not outcomes or (outcome == "not approved" and reason.startswith(STOPPED)):
        return "stopped before the members"  # a step before or around them failed: see its log
    return outcome


def canary_body(fleet: str, canary: FleetPart) -> str:
    """The approval's text after the canary wave: what each canary member did."""
    lines = "".join(f"\n* {o.member}: {o.state}" + (f" ({o.error})" if o.error else "") + "\n"
                    for o in canary.outcomes)
    return (f"Canary wave of fleet {fleet}:\n{lines}\n"
            "Approve to deploy the other waves; Reject leaves them not attempted.")
