"""The fleet view's pure parts: rows from a fleet record or from a live run's XComs, filters, CSV."""
from __future__ import annotations

import csv
import io

import pytest

from schema_deploy.views import fleet as fleet_view
from schema_deploy.views.fleet import BadFilter, NotAFleetRecord
from tests.fleet_samples import ERROR, RUN_ID, WAVES, live_members, outcomes, record

URI = "s3://bucket/prefix/fleets/tenants/runs/x/fleet.json"


@pytest.fixture
def view() -> dict:
    return fleet_view.view_of_record(record(), URI)


def states(view: dict) -> dict[str, str]:
    return {r["member"]: r["state"] for r in view["rows"]}


def test_a_record_gives_one_row_per_member_in_the_views_words(view: dict) -> None:
    assert states(view) == {"tenant_00": "done", "tenant_01": "done", "tenant_02": "failed",
                            "tenant_03": "skipped by window", "tenant_04": "not attempted",
                            "tenant_05": "not attempted", "tenant_06": "not attempted"}
    assert (view["fleet"], view["run_id"], view["source"], view["outcome"], view["uri"]) == (
        "tenants", RUN_ID, "record", "halted", URI)
    rows = {r["member"]: r for r in view["rows"]}
    assert rows["tenant_01"]["recorded_state"] == "already"
    assert (rows["tenant_00"]["wave"], rows["tenant_00"]["seconds"], rows["tenant_00"]["started"]) == (
        0, 4.25, "2026-03-01T02:00:05+00:00")
    assert rows["tenant_02"]["error"] == ERROR and "more" not in str(rows["tenant_02"])  # the first line only
    assert rows["tenant_03"]["next_window"] == "2026-03-01T07:00:00+00:00"
    assert rows["tenant_04"]["reason"].startswith("the brake halted the run after wave 1")
    assert [r["member"] for r in view["rows"]] == [n for w in WAVES for n in w]  # by wave, then name


def test_a_dry_runs_would_apply_is_dry_run_and_an_unknown_state_is_shown_as_it_is() -> None:
    assert fleet_view.row_of({"member": "a", "state": "would_apply"})["state"] == "dry run"
    assert fleet_view.row_of({"member": "a", "state": "exploded"})["state"] == "exploded"


def test_counts_list_every_view_state_zeros_too(view: dict) -> None:
    assert fleet_view.counts(view["rows"]) == {"done": 2, "failed": 1, "pending": 0, "not attempted": 3,
                                               "skipped by window": 1, "dry run": 0}


def test_a_live_run_shows_members_not_reached_yet_as_pending_in_their_planned_wave() -> None:
    canary = {"outcomes": [o.to_xcom() for o in outcomes()[:1]], "brakes": []}

    live = fleet_view.view_of_live("manual__x", live_members(), [canary, None], dag_state="running")

    assert (live["fleet"], live["source"], live["outcome"]) == ("tenants", "live", "in progress (running)")
    assert states(live) == {"tenant_00": "done", **{n: "pending" for w in WAVES[1:] for n in w}}
    assert {r["member"]: r["wave"] for r in live["rows"]}["tenant_05"] == 2
    assert fleet_view.counts(live["rows"])["pending"] == 6


def test_a_live_run_before_fleet_members_has_no_rows_and_a_halted_one_says_so() -> None:
    assert fleet_view.view_of_live("r", None, [])["rows"] == []
    halted = {"outcomes": [], "brakes": [{"wave": 0, "halt": True}]}
    assert fleet_view.view_of_live("r", live_members(), [halted])["outcome"] == "halted"


@pytest.mark.parametrize(("filters", "members"), [
    ({"state": "failed"}, ["tenant_02"]),
    ({"state": "done,skipped by window"}, ["tenant_00", "tenant_01", "tenant_03"]),
    ({"state": "not_attempted"}, ["tenant_04", "tenant_05", "tenant_06"]),
    ({"state": "Skipped-By-Window"}, ["tenant_03"]),
    ({"state": "pending"}, []),
    ({"text": "EXPERIMENT_assign"}, ["tenant_02"]),  # the error line, any case
    ({"text": "region=us"}, ["tenant_02", "tenant_03"]),  # an attribute
    ({"text": "tenant_0"}, [f"tenant_0{i}" for i in range(7)]),
    ({"text": "us_night"}, ["tenant_03"]),  # the reason
    ({"wave": "1"}, ["tenant_01", "tenant_02", "tenant_03"]),
    ({"wave": "1", "state": "done", "text": "eu"}, ["tenant_01"]),
    ({"state": "", "text": "  ", "wave": ""}, [f"tenant_0{i}" for i in range(7)]),
])
def test_filters_cut_the_rows_and_the_counts_stay_the_whole_runs(view: dict, filters: dict, members: list) -> None:
    got = fleet_view.filtered(view, **filters)
    assert [r["member"] for r in got["rows"]] == members
    assert (got["shown"], got["total"]) == (len(members), 7)
    assert got["counts"]["not attempted"] == 3


@pytest.mark.parametrize(("filters", "message"), [
    ({"state": "succeeded"}, "filter state='succeeded' is not valid: a state is one of done, failed, pending, "
                             "not attempted, skipped by window, dry run (several separated by commas)."),
    ({"state": "done,,"}, "filter state='' is not valid: a state is one of done"),
    ({"wave": "two"}, "filter wave='two' is not valid: a wave is a whole number from 0 to 2 (0 is the first wave)."),
    ({"wave": "3"}, "filter wave='3' is not valid: a wave is a whole number from 0 to 2"),
    ({"wave": "-1"}, "filter wave='-1' is not valid"),
])
def test_a_bad_filter_is_refused_naming_the_valid_values(view: dict, filters: dict, message: str) -> None:
    with pytest.raises(BadFilter, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as caught:
        fleet_view.filtered(view, **filters)
    assert caught.value.status == 400


def test_a_wave_filter_on_a_run_without_waves_says_it_has_none() -> None:
    with pytest.raises(BadFilter, match="this run has no waves planned"):
        fleet_view.filtered(fleet_view.view_of_live("r", None, []), wave="0")


@pytest.mark.parametrize(("document", "message"), [
    ({"kind": "deploy"}, "kind is 'deploy', not 'fleet'"),
    ([], "kind is None, not 'fleet'"),
    ({"kind": "fleet", "record_version": 2}, "record_version 2; this page reads 1"),
])
def test_a_document_that_is_not_a_fleet_record_is_refused(document, message: str) -> None:
    with pytest.raises(NotAFleetRecord, match=f"^{URI} is not a fleet record this page can read \\({message}\\)"):
        fleet_view.view_of_record(document, URI)


def test_the_csv_has_a_header_and_one_line_per_row_shown(view: dict) -> None:
    text = fleet_view.to_csv(fleet_view.filtered(view, state="failed,done"))
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == list(fleet_view.CSV_COLUMNS)
    assert [ln[2] for ln in lines[1:]] == ["tenant_00", "tenant_01", "tenant_02"]
    failed = dict(zip(lines[0], lines[3]))
    assert failed == {"fleet": "tenants", "run_id": RUN_ID, "member": "tenant_02", "state": "failed",
                      "recorded_state": "failed", "wave": "1", "seconds": "1.5", "started": "", "ended": "",
                      "tries": "1", "error": ERROR, "reason": "", "next_window": "", "attributes": "region=us"}
    assert text.endswith("\r\n")


def test_a_csv_cell_that_a_spreadsheet_would_run_as_a_formula_is_quoted_as_text(view: dict) -> None:
    view["rows"][0] = {**view["rows"][0], "error": '=HYPERLINK("http://evil")', "member": "-m"}
    line = list(csv.reader(io.StringIO(fleet_view.to_csv(view))))[1]
    assert (line[2], line[10]) == ("'-m", "'=HYPERLINK(\"http://evil\")")


def test_the_csv_filename_is_safe_in_a_header() -> None:
    assert fleet_view.csv_filename("tenants", RUN_ID) == "fleet-tenants-manual__2026-03-01T02-00-00-00-00.csv"
    assert fleet_view.csv_filename('a"b', "x\r\ny") == "fleet-a-b-x-y.csv"


@pytest.mark.parametrize(("root", "expected"), [
    ("s3://bucket/prefix", ("bucket", "prefix/fleets/")), ("s3://bucket", ("bucket", "fleets/")),
    ("s3://bucket/a/b/", ("bucket", "a/b/fleets/"))])
def test_records_are_looked_for_under_the_stores_fleets_prefix(root: str, expected: tuple) -> None:
    assert fleet_view.fleets_root(root) == expected


def test_a_member_done_in_windowed_after_waiting_in_its_wave_is_shown_once_as_done() -> None:
    waiting = {"member": "tenant_01", "state": "waiting_window", "wave": 1, "next_window": "2026-03-03T07:00:00+00:00"}
    done = {"member": "tenant_01", "state": "done", "wave": 1}

    live = fleet_view.view_of_live("r", live_members(), [None, {"outcomes": [waiting]}, {"outcomes": [done]}])

    assert [r["state"] for r in live["rows"] if r["member"] == "tenant_01"] == ["done"]
    assert states(fleet_view.view_of_live("r", live_members(), [None, {"outcomes": [waiting]}]))["tenant_01"] \
        == "skipped by window"
