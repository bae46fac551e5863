"""What the fleet's steps hand each other when they run apart (as the DAG's tasks do), and how those
values are joined again.

`FleetMembers` is the run's members as frozen when it starts (names and attributes, never a URL: each
step that opens a member looks its URL up again where it runs, `refound`) with the wave plan;
`FleetPart` is what one part of the run did (the canary wave, the waves after it, the members that
waited for their window): every outcome and brake decision in it; `WindowProgress` is where the
members waiting for their window stand between two waits. The run's outcome of a member is its
latest over the parts (`latest_outcomes`), and a member no part reached is not attempted
(`unreached`).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from schema_deploy.config.fleets import FleetSpec
from schema_deploy.errors import UsageError
from schema_deploy.pipeline.fleet.members import Member
from schema_deploy.pipeline.results import BrakeDecision, MemberOutcome, Record, Result


@dataclass(frozen=True)
class FleetMember(Record):
    """A member as it travels between steps: its name and its catalog attributes."""

    name: str
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetMembers(Result):
    """The run's members, frozen when it starts: the fleet, its members in their order (the canary
    first) and the wave plan as member names."""

    fleet: str
    members: list[FleetMember] = field(default_factory=list)
    waves: list[list[str]] = field(default_factory=list)

    @classmethod
    def of(cls, fleet: str, members: Sequence[Member], waves: Sequence[Sequence[Member]]) -> FleetMembers:
        return cls(fleet=fleet, members=[FleetMember(m.name, m.attrs) for m in members],
                   waves=[[m.name for m in w] for w in waves])

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]


@dataclass(frozen=True)
class FleetPart(Result):
    """What one part of the run did: the outcome of every member it reached (waiting and not
    attempted ones too) and the brake's decisions."""

    outcomes: list[MemberOutcome] = field(default_factory=list)
    brakes: list[BrakeDecision] = field(default_factory=list)

    @property
    def failed(self) -> list[MemberOutcome]:
        return [o for o in self.outcomes if o.failed]

    @property
    def halted(self) -> bool:
        return any(b.halt for b in self.brakes)


@dataclass(frozen=True)
class WindowProgress(Result):
    """The members that waited for their window, between two of their waits: the outcomes before
    them (`prior`), the ones handled since (`done`), the ones still waiting, the brake's decisions
    since, and whether the waves had failed (the run then fails once nobody waits)."""

    prior: list[MemberOutcome] = field(default_factory=list)
    done: list[MemberOutcome] = field(default_factory=list)
    waiting: list[MemberOutcome] = field(default_factory=list)
    brakes: list[BrakeDecision] = field(default_factory=list)
    waves_failed: bool = False

    @property
    def part(self) -> FleetPart:
        """What the waiting members' part did so far (for the record and the live view)."""
        return FleetPart(outcomes=[*self.done, *self.waiting], brakes=list(self.brakes))


def chosen(spec: FleetSpec, members: list[Member], only: list[str]) -> list[Member]:
    """`members` cut to `only` (empty: all); a name the fleet does not have is refused with its names."""
    if not only:
        return members
    names = [m.name for m in members]
    unknown = [n for n in only if n not in names]
    if unknown:
        raise UsageError(f"only_targets names {', '.join(unknown)}, which fleet {spec.name} does not have; "
                         f"its members: {', '.join(names)}.")
    return [m for m in members if m.name in only]


def refound(frozen: FleetMembers, found: Sequence[Member]) -> list[Member]:
    """The frozen members, in their order, from `found` (the members as this worker resolves them,
    with their URLs); one no longer found is refused, naming the fix."""
    by_name = {m.name: m for m in found}
    missing = [n for n in frozen.names if n not in by_name]
    if missing:
        raise UsageError(f"fleet {frozen.fleet}: {', '.join(missing)} no longer defined on this worker (connection "
                         "or catalog row gone since fleet_members); restore them, or run again with only_targets.")
    return [by_name[n] for n in frozen.names]


def asks_approval(spec: FleetSpec, frozen: FleetMembers, dry_run: bool) -> bool:
    """Whether a person approves the waves after the canary: the fleet asks for it and waves follow
    the canary, and the run changes members (a dry run changes none)."""
    return bool(spec.waves.approve_after_canary and len(frozen.waves) > 1 and not dry_run)


def latest_outcomes(parts: Sequence[FleetPart | None]) -> list[MemberOutcome]:
    """Each member's latest outcome over the run's parts given in their order (a member waiting for
    its window in the waves and done once it opened is done), in the order members first appear."""
    latest: dict[str, MemberOutcome] = {}
    for part in parts:
        for o in part.outcomes if part else []:
            latest[o.member] = o
    return list(latest.values())


def brakes_of(parts: Sequence[FleetPart | None]) -> list[BrakeDecision]:
    """Every brake decision of the run's parts, in their order."""
    return [b for p in parts if p for b in p.brakes]


def unreached(frozen: FleetMembers | None, outcomes: Sequence[MemberOutcome], reason: str) -> list[MemberOutcome]:
    """Not attempted, with `reason`, for each frozen member no outcome names, in its planned wave."""
    seen = {o.member for o in outcomes}
    if frozen is None:
        return []
    wave_of = {n: i for i, w in enumerate(frozen.waves) for n in w}
    return [MemberOutcome(member=m.name, state="not_attempted", wave=wave_of.get(m.name, 0),
                          attributes=dict(m.attributes), reason=reason)
            for m in frozen.members if m.name not in seen]


def window_start(parts: Sequence[FleetPart | None], *, waves_failed: bool) -> WindowProgress:
    """Where the members left waiting for their window start from, after the canary's and the waves'
    parts: the others' outcomes are `prior`; when the brake halted the run, nobody is waited for and
    the waiting ones are not attempted, with the brake's reason."""
    every = [o for p in parts if p for o in p.outcomes]
    halts = [b for b in brakes_of(parts) if b.halt]
    prior = [o for o in every if o.state != "waiting_window"]
    waiting = [o for o in every if o.state == "waiting_window"]
    if halts and waiting:
        reason = f"the brake halted the run: {halts[0].reason}"
        done = [replace(o, state="not_attempted", next_window="", reason=reason) for o in waiting]
        return WindowProgress(prior=prior, done=done, waiting=[], waves_failed=waves_failed)
    return WindowProgress(prior=prior, waiting=waiting, waves_failed=waves_failed)
