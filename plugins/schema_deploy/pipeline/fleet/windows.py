"""Members with maintenance windows of their own: a wave is split into the members whose window is
open and those that wait for it."""
from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

from schema_deploy.config.fleets import FleetSpec
from schema_deploy.config.windows import Window
from schema_deploy.errors import UsageError
from schema_deploy.ops.window import next_slot
from schema_deploy.pipeline.results import MemberOutcome

if TYPE_CHECKING:
    from schema_deploy.pipeline.fleet.members import Member


def member_window(spec: FleetSpec, member: Member) -> Window | None:
    """The window `member` changes in: by its `window.by` attribute, else the fleet's default; None
    when the fleet has no window. A member whose value has no window and no default is refused."""
    fw = spec.window
    if fw.by is None:
        return fw.default
    value = member.attrs.get(fw.by)
    found = dict(fw.windows).get(value) if value is not None else None
    if found is None and fw.default is None:
        raise UsageError(f"fleet {spec.name}: member {member.name} has {fw.by}={value!r}, which "
                         f"fleets.{spec.name}.window.windows does not name, and there is no default: add "
                         f"{value!r} there or a window.default.")
    return found or fw.default


def check_windows(spec: FleetSpec, members: Sequence[Member]) -> None:
    """Every member has a window (or the fleet has none): refused before the canary, all at once."""
    problems = []
    for m in members:
        try:
            member_window(spec, m)
        except UsageError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("\n".join(problems))


def split_by_window(spec: FleetSpec, members: Sequence[Member], now: datetime
                    ) -> tuple[list[Member], list[tuple[Member, datetime]]]:
    """The members whose window is open now (or who have none), and those waiting, with when their
    window opens next. Kept simple: open now is enough, however little of it is left."""
    open_now: list[Member] = []
    waiting: list[tuple[Member, datetime]] = []
    for m in members:
        window = member_window(spec, m)
        if window is None:
            open_now.append(m)
            continue
        slot = next_slot([window], now, timedelta(0))
        if slot.start <= now:
            open_now.append(m)
        else:
            waiting.append((m, slot.start))
    return open_now, waiting


def waiting_outcomes(spec: FleetSpec, waiting: Sequence[tuple[Member, datetime]], wave: int = 0) -> list[MemberOutcome]:
    """Outcomes for members whose window is closed: the window, and when it opens next (UTC)."""
    outcomes = []
    for m, at in waiting:
        label = getattr(member_window(spec, m), "label", "?")
        outcomes.append(MemberOutcome(member=m.name, state="waiting_window", wave=wave, attributes=m.attrs,
                                      reason=f"its maintenance window {label} is closed",
                                      next_window=at.astimezone(timezone.utc).isoformat()))
    return outcomes
