"""Maintenance windows in time: when may production change, and is there time enough.

Several windows may be configured (`config.windows.Window`); the earliest slot that fits wins.
`next_run_before_windows` is what the scheduled deploy's timetable asks.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from schema_deploy.config.durations import fmt
from schema_deploy.config.windows import Window
from schema_deploy.errors import UsageError


@dataclass(frozen=True)
class Slot:
    """When production may start, and when the window it belongs to closes."""

    start: datetime
    end: datetime
    window: Window

    def open_at(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def next_slot(windows: list[Window], now: datetime, needed: timedelta, horizon_days: int = 400) -> Slot:
    """The earliest moment from `now` inside a window with at least `needed` left in it.

    If the open window has too little time left, the next one that is long
    enough is chosen. Raises UsageError when no window is ever long enough.
    """
    if not windows:
        raise UsageError("no maintenance window configured: add one under windows: in deploy.yaml, "
                         "or skip the wait with a recorded reason.")
    fitting = [w for w in windows if w.duration >= needed]
    if not fitting:
        longest = max(windows, key=lambda w: w.duration)
        raise UsageError(
            f"no maintenance window is long enough: the expected production duration is {fmt(needed)}, "
            f"the longest window ({longest.label}) lasts {fmt(longest.duration)}. Lengthen a window or split "
            "the deployment."
        )
    best: Slot | None = None
    for w in fitting:
        start = w.occurrence_at_or_before(now)
        if start + w.duration - needed >= now:
            candidate = Slot(now, start + w.duration, w)  # open now, with time enough left
        else:
            start = w.occurrence_after(now)  # a whole window: long enough, since w fits
            candidate = Slot(start, start + w.duration, w)
        if best is None or candidate.start < best.start:
            best = candidate
    if best.start - now > timedelta(days=horizon_days):
        raise UsageError(f"no maintenance window opens within {horizon_days} days of {now.isoformat()}.")
    return best


def expected_duration(staging_seconds: float, staging_bytes: int, production_bytes: int,
                      safety_factor: float = 2.0, minimum: timedelta = timedelta(minutes=1)) -> timedelta:
    """Staging's measured time scaled by the size ratio of the touched tables, times a safety factor."""
    ratio = production_bytes / staging_bytes if staging_bytes > 0 else 1.0
    return max(minimum, timedelta(seconds=staging_seconds * max(ratio, 1.0) * safety_factor))


@dataclass(frozen=True)
class PlannedRun:
    """A run at `at` (UTC) that prepares for the window `slot` (its opening and closing)."""

    at: datetime
    slot: Slot


def next_run_before_windows(windows: Sequence[Window], lead: timedelta, after: datetime | None, *,
                            earliest: datetime | None = None) -> PlannedRun | None:
    """The next run `lead` before a window opens: strictly after `after`, never before `earliest`.

    Of several windows the soonest run wins; on a tie, the window that closes last. Openings are
    cron times in each window's own zone and `lead` is elapsed time. When clocks go back, a
    repeated wall-clock opening counts once (the first), so a nightly window gets one run that
    night; an opening that falls in the spring-forward gap moves to the jump (02:00 → 03:00).
    The window closes `duration` after opening on its local clock, as in `next_slot`. None when
    there is no window, or neither `after` nor `earliest` to start from.
    """
    if not windows or (after is None and earliest is None):
        return None
    if after is not None and (earliest is None or after >= earliest):
        threshold, inclusive = utc_instant(after) + lead, False  # in UTC: lead is elapsed time
    else:
        threshold, inclusive = utc_instant(earliest) + lead, True
    runs = []
    for w in windows:
        opening = _first_opening(w, threshold, inclusive)
        runs.append(PlannedRun(opening.astimezone(timezone.utc) - lead, Slot(opening, opening + w.duration, w)))
    return min(runs, key=lambda run: (run.at, -run.slot.end.timestamp()))


def utc_instant(moment: datetime) -> datetime:
    """`moment` as a plain UTC datetime: croniter drops the zone of subclasses such as pendulum's."""
    utc = moment.astimezone(timezone.utc)
    return datetime.combine(utc.date(), utc.time(), timezone.utc)


def _first_opening(window: Window, moment: datetime, inclusive: bool) -> datetime:
    """The window's first opening after `moment` (or at it, when `inclusive`), skipping DST repeats."""
    opening = window.occurrence_at_or_before(moment)
    if not (inclusive and opening == moment):
        opening = window.occurrence_after(moment)
    while opening.fold and opening.replace(fold=0).utcoffset() != opening.utcoffset():
        opening = window.occurrence_after(opening.astimezone(timezone.utc))
    return opening
