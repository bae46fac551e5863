"""The fleet pipeline's pure parts: members, waves, halt limits, the brake, windows by attribute."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from schema_deploy.config.fleets import FleetSpec, FleetWindow, Share, WavesSpec
from schema_deploy.config.windows import Window
from schema_deploy.errors import UsageError
from schema_deploy.pipeline.fleet.members import Member, resolve_members
from schema_deploy.pipeline.fleet.waves import brake, halt_limit, not_attempted, plan_waves, wave_limit
from schema_deploy.pipeline.fleet.windows import split_by_window, waiting_outcomes
from schema_deploy.pipeline.results import MemberOutcome

URLS = {f"tenant_{i:02d}": f"postgresql://u:pw@db/t{i}" for i in range(10)}


def members(n: int) -> list[Member]:
    return [Member(f"m{i:02d}", "member", f"postgresql://u:pw@db/m{i}") for i in range(n)]


def sizes(waves: list[list[Member]]) -> list[int]:
    return [len(w) for w in waves]


@pytest.mark.parametrize(("n", "spec", "expected"), [
    (10, WavesSpec(), [1, 3, 3, 3]),  # canary 1, then 25% of 10 = 2.5 -> 3
    (10, WavesSpec(canary=0, size=Share(4)), [4, 4, 2]),
    (10, WavesSpec(canary=2, size=Share(10, True)), [2, 1, 1, 1, 1, 1, 1, 1, 1]),
    (3, WavesSpec(canary=5), [3]),
    (200, WavesSpec(canary=1, size=Share(20)), [1] + [20] * 9 + [19]),
    (7, WavesSpec(canary=1, size=Share(100, True)), [1, 6]),
    (1, WavesSpec(size=Share(1, True)), [1]),
])
def test_waves_are_the_canary_then_chunks_of_size_a_percentage_rounding_up(n, spec, expected) -> None:
    waves = plan_waves(members(n), spec)
    assert sizes(waves) == expected and [m for w in waves for m in w] == members(n)


@pytest.mark.parametrize(("halt_after", "n", "expected"), [
    (Share(0), 50, 0), (Share(3), 50, 3), (Share(5, True), 30, 1), (Share(5, True), 19, 0),
    (Share(5, True), 200, 10), (Share(100, True), 7, 7), (Share(10, True), 10, 1),
])
def test_the_halt_limit_is_a_count_or_a_percentage_of_the_fleet_rounding_down(halt_after, n, expected) -> None:
    assert halt_limit(WavesSpec(halt_after=halt_after), n) == expected


def test_after_the_canary_the_limit_is_zero_whatever_halt_after_says() -> None:
    spec = WavesSpec(canary=1, halt_after=Share(5))
    assert [wave_limit(spec, 20, i) for i in range(3)] == [0, 5, 5]
    assert wave_limit(WavesSpec(canary=0, halt_after=Share(5)), 20, 0) == 5


def outcome(name: str, state: str, error: str = "") -> MemberOutcome:
    return MemberOutcome(member=name, state=state, error=error)


def test_the_brake_goes_on_within_the_limit_and_halts_past_it_naming_the_failures() -> None:
    outcomes = [outcome("a", "done"), outcome("b", "failed", "cannot connect"), outcome("c", "already")]

    go = brake(outcomes, 1, wave=2)
    assert (go.halt, go.failed, go.done, go.already, go.limit, go.wave) == (False, 1, 1, 1, 1, 2)
    assert go.reason == "1 member(s) failed so far, within the limit of 1: the run goes on (b: cannot connect)"
    halt = brake(outcomes + [outcome("d", "failed", "precheck")], 1)
    assert halt.halt and halt.reason == ("2 member(s) failed so far, more than the limit of 1: the run stops "
                                         "(b: cannot connect; d: precheck)")
    assert not brake([outcome("a", "done")], 0).halt and brake([outcome("a", "failed", "x")], 0).halt


def test_members_not_attempted_carry_the_reason_and_their_wave() -> None:
    [o] = not_attempted(members(1), "the brake halted the run after wave 0", wave=1)
    assert (o.member, o.state, o.wave, o.reason) == ("m00", "not_attempted", 1, "the brake halted the run after wave 0")
    assert MemberOutcome.from_xcom(o.to_xcom()) == o


def fake_lookups(rows: list[dict] | None = None):
    return {"url_of": URLS.__getitem__, "conn_ids": lambda: [*URLS, "staging_db"],
            "catalog": lambda conn, query: rows or []}


def test_members_come_from_a_list_a_prefix_or_a_catalog_sorted_by_name() -> None:
    listed = resolve_members(FleetSpec("f", "targets", targets=("tenant_03", "tenant_01")), **fake_lookups())
    assert [m.name for m in listed] == ["tenant_01", "tenant_03"] and listed[0].url == URLS["tenant_01"]
    assert len(resolve_members(FleetSpec("f", "prefix", prefix="tenant_"), **fake_lookups())) == 10
    rows = [{"conn_id": "tenant_02", "region": "eu"}, {"conn_id": "postgresql://u:pw@h:5433/shard", "region": None}]
    found = resolve_members(FleetSpec("f", "catalog", catalog_conn="c", catalog_query="q"), **fake_lookups(rows))
    assert [(m.name, m.attrs, m.role) for m in found] == [("h:5433/shard", {"region": ""}, "member"),
                                                         ("tenant_02", {"region": "eu"}, "member")]


def test_duplicates_and_an_empty_fleet_are_refused() -> None:
    rows = [{"conn_id": "tenant_02"}, {"conn_id": "tenant_02"}]
    with pytest.raises(UsageError, match="fleet f: tenant_02 listed more than once by its catalog"):
        resolve_members(FleetSpec("f", "catalog", catalog_conn="c", catalog_query="q"), **fake_lookups(rows))
    with pytest.raises(UsageError, match="fleet f has no members: no connection id starts with 'shard_'"):
        resolve_members(FleetSpec("f", "prefix", prefix="shard_"), **fake_lookups())
    with pytest.raises(UsageError, match="first column must be a connection id or a postgresql:// URL"):
        resolve_members(FleetSpec("f", "catalog", catalog_conn="c", catalog_query="q"), **fake_lookups([{"id": 3}]))


EU = Window("0 1 * * *", timedelta(hours=2), "Europe/Berlin", "eu_night")
US = Window("0 2 * * *", timedelta(hours=2), "America/New_York", "us_night")


def regional(default: Window | None = None) -> FleetSpec:
    return FleetSpec("f", "targets", targets=("a",), window=FleetWindow(by="region", windows=(("eu", EU), ("us", US)),
                                                                        default=default))


def test_members_split_by_their_regions_window_open_now_or_waiting_for_its_next_opening() -> None:
    eu, us = (Member(r, "member", "postgresql://x/y", (("region", r),)) for r in ("eu", "us"))
    now = datetime(2026, 3, 3, 0, 30, tzinfo=timezone.utc)  # 01:30 in Berlin, 19:30 in New York
    open_now, waiting = split_by_window(regional(), [eu, us], now)

    assert open_now == [eu] and [(m, at.isoformat()) for m, at in waiting] == [(us, "2026-03-03T02:00:00-05:00")]
    [w] = waiting_outcomes(regional(), waiting, wave=1)
    assert (w.state, w.reason, w.next_window) == ("waiting_window", "its maintenance window us_night is closed",
                                                 "2026-03-03T07:00:00+00:00")


def test_a_member_whose_region_has_no_window_and_no_default_is_refused_before_anything_runs() -> None:
    ap = Member("tenant_ap", "member", "postgresql://x/y", (("region", "ap"),))
    with pytest.raises(UsageError, match="member tenant_ap has region='ap', which fleets.f.window.windows does not "
                                         "name, and there is no default"):
        split_by_window(regional(), [ap], datetime.now(timezone.utc))
    assert split_by_window(regional(default=EU), [ap], datetime(2026, 3, 3, 0, 30, tzinfo=timezone.utc))[0] == [ap]
