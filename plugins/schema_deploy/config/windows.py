"""Maintenance windows as deploy.yaml declares them.

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

from schema_deploy.config.durations import format_duration, parse_duration
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
