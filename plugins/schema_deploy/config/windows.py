"""Maintenance windows as deploy.yaml declares them, and the duration grammar ('2h', '1h30m').

A window is a cron expression for its start, a duration and an IANA time zone (so "02:00
Europe/Berlin" stays 02:00 across daylight-saving changes). Which slot a run takes is
`ops.window`'s arithmetic; this module owns the spec and its validation.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
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
