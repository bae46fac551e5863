"""Maintenance windows: open now with time enough, or the next one that fits."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from schema_deploy.config.durations import parse_duration
from schema_deploy.config.windows import Window
from schema_deploy.errors import UsageError
from schema_deploy.ops.window import expected_duration, next_slot

UTC = timezone.utc
NIGHTLY = Window("0 2 * * *", timedelta(hours=2), "UTC", "nightly")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_inside_an_open_window_with_time_enough_the_slot_starts_now() -> None:
    slot = next_slot([NIGHTLY], at("2026-11-26T02:30:00"), timedelta(minutes=30))
    assert slot.start == at("2026-11-26T02:30:00") and slot.end == at("2026-11-26T04:00:00")


def test_an_open_window_with_too_little_time_left_waits_for_the_next_one() -> None:
    slot = next_slot([NIGHTLY], at("2026-11-26T03:45:00"), timedelta(minutes=30))
    assert slot.start == at("2026-11-27T02:00:00")


@pytest.mark.parametrize("now, start", [
    ("2026-11-26T01:59:59.300000", "2026-11-26T02:00:00"),  # the last second before it opens: not open yet
    ("2026-11-26T02:00:00", "2026-11-26T02:00:00"),  # opening exactly now: open
    ("2026-11-26T02:00:00.500000", "2026-11-26T02:00:00.500000"),
])
def test_a_window_is_open_from_its_first_instant_and_not_a_second_before(now: str, start: str) -> None:
    # Found by a CI run: croniter counts whole seconds, and the window passed for open 0.7 s early.
    slot = next_slot([NIGHTLY], at(now), timedelta(minutes=30))
    assert slot.start == at(start) and slot.end == at("2026-11-26T04:00:00")
    every_minute = Window("* * * * *", timedelta(minutes=1), "UTC", "")
    assert every_minute.occurrence_at_or_before(at("2026-11-26T01:59:59.300000")) == at("2026-11-26T01:59:00")
    assert next_slot([every_minute], at("2026-11-26T01:59:59.300000"), timedelta(minutes=1)).start == \
        at("2026-11-26T02:00:00")


def test_outside_any_window_the_next_opening_is_chosen() -> None:
    slot = next_slot([NIGHTLY], at("2026-11-26T12:00:00"), timedelta(minutes=5))
    assert slot.start == at("2026-11-27T02:00:00")
    assert not slot.open_at(at("2026-11-26T12:00:00")) and slot.open_at(slot.start)


def test_the_earliest_of_several_windows_that_fits_wins() -> None:
    short_lunch = Window("0 12 * * *", timedelta(minutes=20), "UTC", "lunch")
    evening = Window("0 20 * * *", timedelta(hours=1), "UTC", "evening")
    slot = next_slot([NIGHTLY, short_lunch, evening], at("2026-11-26T11:00:00"), timedelta(minutes=30))
    assert slot.window.name == "evening" and slot.start == at("2026-11-26T20:00:00")


def test_windows_follow_their_time_zone_across_daylight_saving() -> None:
    berlin = Window("0 2 * * *", timedelta(hours=1), "Europe/Berlin")
    summer = next_slot([berlin], at("2026-07-01T12:00:00"), timedelta(minutes=10))
    winter = next_slot([berlin], at("2026-12-01T12:00:00"), timedelta(minutes=10))
    assert summer.start.astimezone(ZoneInfo("Europe/Berlin")).hour == 2
    assert winter.start.astimezone(ZoneInfo("Europe/Berlin")).hour == 2
    assert summer.start.astimezone(UTC).hour == 0 and winter.start.astimezone(UTC).hour == 1


def test_no_window_long_enough_is_an_error_naming_both_durations() -> None:
    with pytest.raises(UsageError, match=r"expected production duration is 3h00m.*\(nightly\) lasts 2h00m"):
        next_slot([NIGHTLY], at("2026-11-26T12:00:00"), timedelta(hours=3))


@pytest.mark.parametrize("cron, zone, message", [
    ("every night", "UTC", "is not a cron expression"),
    ("0 2 * * *", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
])
def test_bad_window_specs_are_rejected_with_the_fix(cron: str, zone: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        Window(cron, timedelta(hours=1), zone)


@pytest.mark.parametrize("text, seconds", [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("45s", 45),
                                           ("7d", 7 * 86400), ("2w", 14 * 86400), ("1d12h", 36 * 3600)])
def test_durations_parse(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text, what, message", [
    ("2 hours", "duration", "duration '2 hours': write it as numbers with units (w, d, h, m, s), such as '2h', "
                            "'90m', '1h30m', '45s', '7d' or '2w'."),
    ("h", "gate.timeout", "gate.timeout 'h': write it as numbers with units (w, d, h, m, s), such as '2h', '90m', "
                          "'1h30m', '45s', '7d' or '2w'."),
    ("90", "--older-than", "--older-than '90': add a unit (w, d, h, m or s) after 90, such as '2h', '90m', '1h30m', "
                           "'45s', '7d' or '2w'."),
    ("", "duration", "duration '': add a unit (w, d, h, m or s) after a number, such as '2h', '90m', '1h30m', "
                     "'45s', '7d' or '2w'."),
])
def test_bad_durations_say_how_to_write_them(text: str, what: str, message: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text, what)
    assert str(info.value) == message


def test_expected_duration_scales_staging_time_by_size_and_safety_factor() -> None:
    assert expected_duration(30, 1_000, 10_000, safety_factor=2.0) == timedelta(seconds=600)
    assert expected_duration(1, 1_000, 500) == timedelta(minutes=1)
