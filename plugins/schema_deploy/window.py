"""Maintenance windows: when may production change, and is there time enough.

A window is a cron expression for its start, a duration and an IANA time zone
(so "02:00 Europe/Berlin" stays 02:00 across daylight-saving changes). Several
windows may be configured; the earliest slot that fits wins.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from schema_deploy.errors import UsageError


@dataclass(frozen=True)
class Window:
    """A recurring maintenance window."""

    cron: str
    duration: timedelta
    timezone: str = "UTC"
    name: str = ""

    def __post_init__(self) -> None:
        if not croniter.is_valid(self.cron):
            raise UsageError(f"maintenance window {self.label}: {self.cron!r} is not a cron expression "
                             "(five fields: minute hour day-of-month month day-of-week, e.g. '0 2 * * *').")
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise UsageError(f"maintenance window {self.label}: unknown time zone {self.timezone!r}; "
                             "use an IANA name such as 'UTC' or 'Europe/Berlin'.") from None
        if self.duration <= timedelta(0):
            raise UsageError(f"maintenance window {self.label}: duration must be positive.")

    @property
    def label(self) -> str:
        return self.name or self.cron

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Window:
        """A window from its spec as deploy.yaml (and the timetable's serialized form) writes it:
        `{cron, duration, timezone?, name?}`; the caller checks that cron and duration are there."""
        return cls(str(spec["cron"]), parse_duration(str(spec["duration"])), str(spec.get("timezone", "UTC")),
                   str(spec.get("name", "")))

    def spec(self) -> dict[str, str]:
        """The inverse of `from_spec`, durations as text ('2h')."""
        return {"cron": self.cron, "duration": format_duration(self.duration), "timezone": self.timezone,
                "name": self.name}

    def occurrence_at_or_before(self, moment: datetime) -> datetime:
        local = moment.astimezone(ZoneInfo(self.timezone))
        # croniter counts in whole seconds: one second later, so an occurrence exactly at `moment` counts;
        # in the last second before an occurrence that reaches the next one, which has not begun yet.
        start = croniter(self.cron, local + timedelta(seconds=1)).get_prev(datetime)
        if start > local:
            start = croniter(self.cron, start).get_prev(datetime)
        return start

    def occurrence_after(self, moment: datetime) -> datetime:
        local = moment.astimezone(ZoneInfo(self.timezone))
        return croniter(self.cron, local).get_next(datetime)


@dataclass(frozen=True)
class Slot:
    """When production may start, and when the window it belongs to closes."""

    start: datetime
    end: datetime
    window: Window

    def open_at(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


def parse_duration(text: str) -> timedelta:
    """'90m', '2h', '1h30m', '45s' → timedelta."""
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0, ""
    for ch in text.strip():
        if ch.isdigit():
            number += ch
        elif ch in units and number:
            total += int(number) * units[ch]
            number = ""
        else:
            raise UsageError(f"duration {text!r}: use hours, minutes and seconds such as '2h', '90m', '1h30m'.")
    if number:
        raise UsageError(f"duration {text!r}: add a unit (h, m or s) after {number}.")
    return timedelta(seconds=total)


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


def fmt(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def format_duration(delta: timedelta) -> str:
    """timedelta → '2h', '1h30m', '45s': the inverse of parse_duration, in whole seconds."""
    hours, rest = divmod(int(delta.total_seconds()), 3600)
    minutes, seconds = divmod(rest, 60)
    return "".join(f"{n}{unit}" for n, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if n) or "0s"


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
