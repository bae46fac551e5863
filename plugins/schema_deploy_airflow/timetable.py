"""A timetable that runs a DAG a lead time before each maintenance window opens.

The scheduling arithmetic is `schema_deploy.ops.window.next_run_before_windows`; this module adapts it
to Airflow's Timetable API. The class must be registered by a plugin
(`plugins/schema_deploy_plugin.py`): Airflow serializes a timetable by its import path and
refuses one that no plugin registers.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pendulum
from airflow.exceptions import AirflowTimetableInvalid
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction, Timetable
from pendulum import DateTime

from schema_deploy.config import settings
from schema_deploy.config.durations import format_duration, parse_duration
from schema_deploy.config.windows import Window
from schema_deploy.ops.window import next_run_before_windows, next_slot, utc_instant


class MaintenanceWindowTimetable(Timetable):
    """Run `lead` before each maintenance window opens; with several windows, before each of them.

    `windows` are specs as in deploy.yaml: `{"cron": "0 2 * * *", "duration": "2h",
    "timezone": "UTC", "name": "nightly"}` (timezone and name optional). Cron is read in the
    window's IANA zone, so a 02:00 Europe/Berlin window opens at 02:00 local all year (once on
    the night clocks go back, at 03:00 on the night they jump); `lead` is elapsed time before the
    opening. Windows opening at the same moment get one run, for the one that closes last.

    Data interval: a scheduled run's interval starts at its run time and ends when the window it
    prepares for closes, so tasks know their window: `data_interval_end` is the moment production
    changes must be finished by. A manual run's interval ends when the window open at trigger
    time closes, or else the next one. The logical date is the run time.

    catchup=False skips run times already past: the next run is the first one from now on.
    The windows are part of the serialized DAG; edit deploy.yaml and the next parse picks them up.
    """

    def __init__(self, windows: Sequence[Mapping[str, Any]], lead: str | timedelta = "1h") -> None:
        self.windows = tuple(_window(spec) for spec in windows)
        self.lead = lead if isinstance(lead, timedelta) else parse_duration(lead)
        self.description = self.summary

    @classmethod
    def from_config(cls, lead: str | timedelta = "1h") -> MaintenanceWindowTimetable:
        """The windows of deploy.yaml (or `$SCHEMA_DEPLOY_CONFIG`), `lead` before each."""
        return cls([w.spec() for w in settings.load_current().windows], lead=lead)

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> MaintenanceWindowTimetable:
        """Rebuild from `serialize`'s dict (stored in the serialized DAG)."""
        return cls(data["windows"], lead=data["lead"])

    def serialize(self) -> dict[str, Any]:
        """The windows and lead as JSON-ready specs, durations as text ('2h')."""
        return {"windows": [w.spec() for w in self.windows], "lead": format_duration(self.lead)}

    def validate(self) -> None:
        """Called by the DagBag: no window, or a negative lead, is an import error that says the fix."""
        if not self.windows:
            raise AirflowTimetableInvalid(
                "MaintenanceWindowTimetable has no maintenance window, so it would never schedule a run: "
                "add one under windows: in deploy.yaml (cron, duration, timezone, name) or pass "
                "windows=[{'cron': '0 2 * * *', 'duration': '2h', 'timezone': 'UTC'}]; "
                "for manual runs only, use schedule=None."
            )
        if self.lead < timedelta(0):
            raise AirflowTimetableInvalid(f"MaintenanceWindowTimetable: lead {self.lead} is negative; "
                                          "give the time before the window opens, such as '1h'.")

    @property
    def summary(self) -> str:
        """For the UI: '1h before nightly (0 2 * * * UTC, 2h)'."""
        if not self.windows:
            return "no maintenance window"
        described = ", ".join(
            f"{w.name + ' ' if w.name else ''}({w.cron} {w.timezone}, {format_duration(w.duration)})"
            for w in self.windows
        )
        return f"{format_duration(self.lead)} before {described}"

    def infer_manual_data_interval(self, *, run_after: DateTime) -> DataInterval:
        """From the trigger time to the close of the window open then, or else of the next one."""
        slot = next_slot(list(self.windows), utc_instant(run_after), timedelta(0))
        return DataInterval(run_after, _utc(slot.end))

    def next_dagrun_info(self, *, last_automated_data_interval: DataInterval | None,
                         restriction: TimeRestriction) -> DagRunInfo | None:
        """The next run `lead` before a window opens, after the last one and within the DAG's dates."""
        after = last_automated_data_interval.start if last_automated_data_interval else None
        earliest = restriction.earliest
        if not restriction.catchup or (earliest is None and after is None):
            now = pendulum.now("UTC")
            earliest = max(earliest, now) if earliest else now
        run = next_run_before_windows(self.windows, self.lead, after, earliest=earliest)
        if run is None or (restriction.latest is not None and run.at > restriction.latest):
            return None
        return DagRunInfo(run_after=_utc(run.at), data_interval=DataInterval(_utc(run.at), _utc(run.slot.end)))


def _window(spec: Mapping[str, Any]) -> Window:
    if not {"cron", "duration"} <= set(spec):
        raise AirflowTimetableInvalid(f"maintenance window {dict(spec)!r} needs 'cron' and 'duration': "
                                      "write it like {'cron': '0 2 * * *', 'duration': '2h', 'timezone': 'UTC'}.")
    return Window.from_spec(spec)


def _utc(moment: datetime) -> DateTime:
    return pendulum.instance(moment.astimezone(timezone.utc))


def deploy_schedule() -> MaintenanceWindowTimetable | None:
    """deploy_schema's schedule from deploy.yaml: `schedule.lead` before each window, else manual only."""
    lead = settings.load_current().schedule_lead
    return MaintenanceWindowTimetable.from_config(lead=lead) if lead is not None else None
