"""Runs scheduled a lead time before maintenance windows open: soonest window, time zones, DST."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pendulum
import pytest

from schema_deploy.config.durations import format_duration, parse_duration
from schema_deploy.config.windows import Window
from schema_deploy.ops.window import PlannedRun, next_run_before_windows, next_slot

UTC = timezone.utc
HOUR = timedelta(hours=1)
NIGHTLY = Window("0 2 * * *", timedelta(hours=2), "UTC", "nightly")
BERLIN = Window("0 2 * * *", timedelta(hours=2), "Europe/Berlin", "berlin")
NEW_YORK = Window("0 22 * * *", timedelta(hours=3), "America/New_York", "new-york")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def runs(windows: list[Window], lead: timedelta, after: datetime, count: int) -> list[PlannedRun]:
    """The next `count` runs, each strictly after the one before, as a scheduler would ask."""
    planned = []
    for _ in range(count):
        run = next_run_before_windows(windows, lead, after)
        assert run is not None
        planned.append(run)
        after = run.at
    return planned


def test_the_first_run_is_lead_before_the_first_opening_from_earliest() -> None:
    run = next_run_before_windows([NIGHTLY], HOUR, None, earliest=at("2026-11-26T00:00:00"))
    assert run is not None
    assert run.at == at("2026-11-26T01:00:00")
    assert run.slot.start == at("2026-11-26T02:00:00") and run.slot.end == at("2026-11-26T04:00:00")
    assert run.slot.window is NIGHTLY and run.at.tzinfo is UTC


def test_the_next_run_is_strictly_after_the_last_one() -> None:
    run = next_run_before_windows([NIGHTLY], HOUR, at("2026-11-26T01:00:00"))
    assert run is not None and run.at == at("2026-11-27T01:00:00")


def test_times_given_in_another_zone_are_read_as_instants() -> None:
    berlin_two_am = datetime(2026, 11, 26, 2, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # = 01:00Z, the last run
    run = next_run_before_windows([NIGHTLY], HOUR, berlin_two_am)
    assert run is not None and run.at == at("2026-11-27T01:00:00")


def test_pendulum_datetimes_keep_their_zone() -> None:
    # croniter drops the zone of datetime subclasses; Airflow hands timetables pendulum DateTimes.
    run = next_run_before_windows([BERLIN], HOUR, None, earliest=pendulum.datetime(2026, 11, 27, 0))
    assert run is not None and run.at == at("2026-11-27T00:00:00") and run.slot.end == at("2026-11-27T03:00:00")


def test_a_run_exactly_at_earliest_is_allowed() -> None:
    run = next_run_before_windows([NIGHTLY], HOUR, None, earliest=at("2026-11-26T01:00:00"))
    assert run is not None and run.at == at("2026-11-26T01:00:00")


def test_a_run_time_before_earliest_is_skipped_even_if_its_window_opens_later() -> None:
    run = next_run_before_windows([NIGHTLY], HOUR, None, earliest=at("2026-11-26T01:30:00"))
    assert run is not None and run.at == at("2026-11-27T01:00:00")


def test_earliest_later_than_the_last_run_wins() -> None:
    run = next_run_before_windows([NIGHTLY], HOUR, at("2026-11-01T01:00:00"), earliest=at("2026-11-26T00:00:00"))
    assert run is not None and run.at == at("2026-11-26T01:00:00")


def test_a_lead_longer_than_a_day_runs_the_day_before() -> None:
    run = next_run_before_windows([NIGHTLY], timedelta(hours=26), at("2026-11-26T12:00:00"))
    assert run is not None
    assert run.at == at("2026-11-27T00:00:00") and run.slot.start == at("2026-11-28T02:00:00")


def test_two_windows_in_different_time_zones_take_turns_soonest_first() -> None:
    # Berlin 02:00 CET = 01:00Z; New York 22:00 EST = 03:00Z the next day. Lead 2h.
    planned = runs([NEW_YORK, BERLIN], timedelta(hours=2), at("2026-11-26T12:00:00"), 3)
    assert [(run.at, run.slot.window.name) for run in planned] == [
        (at("2026-11-26T23:00:00"), "berlin"),
        (at("2026-11-27T01:00:00"), "new-york"),
        (at("2026-11-27T23:00:00"), "berlin"),
    ]
    assert planned[1].slot.start == at("2026-11-27T03:00:00") and planned[1].slot.end == at("2026-11-27T06:00:00")


def test_of_two_windows_opening_together_the_longer_is_targeted() -> None:
    short = Window("0 2 * * *", timedelta(minutes=30), "UTC", "short")
    run = next_run_before_windows([short, NIGHTLY], HOUR, at("2026-11-26T12:00:00"))
    assert run is not None and run.slot.window is NIGHTLY and run.at == at("2026-11-27T01:00:00")


def test_spring_forward_moves_the_missing_opening_to_the_jump() -> None:
    # 2026-03-29: Berlin clocks jump from 02:00 CET to 03:00 CEST; 02:00 does not exist that night.
    planned = runs([BERLIN], HOUR, at("2026-03-27T12:00:00"), 3)
    assert [run.at for run in planned] == [
        at("2026-03-28T00:00:00"),  # opens 02:00 CET = 01:00Z
        at("2026-03-29T00:00:00"),  # opens 03:00 CEST = 01:00Z
        at("2026-03-29T23:00:00"),  # opens 02:00 CEST = 00:00Z
    ]


def test_fall_back_opens_a_nightly_window_once() -> None:
    # 2026-10-25: Berlin clocks go back from 03:00 CEST to 02:00 CET; 02:00 happens twice.
    planned = runs([BERLIN], HOUR, at("2026-10-23T12:00:00"), 3)
    assert [run.at for run in planned] == [
        at("2026-10-23T23:00:00"),  # opens 02:00 CEST = 00:00Z
        at("2026-10-24T23:00:00"),  # opens the first 02:00 (CEST) = 00:00Z; the repeat at 01:00Z is skipped
        at("2026-10-26T00:00:00"),  # opens 02:00 CET = 01:00Z
    ]


def test_the_targeted_window_closes_when_next_slot_says_it_does() -> None:
    # On the fall-back night 02:00-04:00 local lasts three hours: 00:00Z to 03:00Z.
    run = next_run_before_windows([BERLIN], HOUR, at("2026-10-24T12:00:00"))
    assert run is not None and run.slot.end == at("2026-10-25T03:00:00")
    assert next_slot([BERLIN], run.slot.start, timedelta(0)).end == run.slot.end


def test_a_lead_is_elapsed_time_not_wall_clock_time() -> None:
    # Opening 03:00 CEST (01:00Z) on the spring-forward night; three hours earlier is 22:00Z, not 00:00 local.
    run = next_run_before_windows([Window("0 3 * * *", HOUR, "Europe/Berlin")], timedelta(hours=3),
                                  at("2026-03-28T12:00:00"))
    assert run is not None and run.at == at("2026-03-28T22:00:00")


@pytest.mark.parametrize(("windows", "after", "earliest"), [
    ([], at("2026-11-26T00:00:00"), None),
    ([NIGHTLY], None, None),
])
def test_no_window_or_no_starting_point_means_no_run(windows: list[Window], after: datetime | None,
                                                     earliest: datetime | None) -> None:
    assert next_run_before_windows(windows, HOUR, after, earliest=earliest) is None


@pytest.mark.parametrize(("delta", "text"), [
    (timedelta(hours=2), "2h"),
    (timedelta(minutes=90), "1h30m"),
    (timedelta(seconds=45), "45s"),
    (timedelta(hours=1, seconds=5), "1h5s"),
    (timedelta(hours=30), "30h"),
    (timedelta(0), "0s"),
])
def test_format_duration_is_the_inverse_of_parse_duration(delta: timedelta, text: str) -> None:
    assert format_duration(delta) == text
    assert parse_duration(text) == delta
