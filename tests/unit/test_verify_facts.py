"""Verification's facts and the plan's success criteria: index storage and query timings against the
plan's expectations, and which criteria the gathered checks meet."""
from __future__ import annotations

import pytest

from schema_deploy.verify import CheckResult, VerifyReport, criteria, performance_facts

PLAN_MB = (50.0, 100.0)
PLAN_SPEEDUP = (20.0, 40.0)
FK = "constraint experiment_assignments_experimentId_fkey"
INDEX = "index behavioral_events_userId_eventType_timestamp_idx"
EXPLAIN = "planner uses behavioral_events_userId_eventType_timestamp_idx"


def facts(index_bytes: dict[str, int] | None = None, before: dict[str, float | None] | None = None,
          after: dict[str, float | None] | None = None) -> dict[str, object]:
    return performance_facts(index_bytes if index_bytes is not None else {"a_idx": 60_000_000},
                             before or {}, after or {}, PLAN_MB, PLAN_SPEEDUP)


def check(name: str, ok: bool = True) -> CheckResult:
    return CheckResult(name, ok, "valid, ready" if ok else "missing", "migration.sql:3")


# --- storage -------------------------------------------------------------------------------

@pytest.mark.parametrize("index_bytes, verdict, mb", [
    ({"a_idx": 30_000_000, "b_idx": 40_000_000}, "within", 70.0),
    ({"a_idx": 50_000_000}, "within", 50.0),
    ({"a_idx": 100_000_000}, "within", 100.0),
    ({"a_idx": 8_000_000, "b_idx": 4_000_000}, "below", 12.0),
    ({"a_idx": 150_000_000}, "above", 150.0),
    ({}, "below", 0.0),
], ids=["within", "at-low-end", "at-high-end", "below", "above", "no-new-indexes"])
def test_index_storage_is_reported_against_the_plans_range(index_bytes: dict[str, int], verdict: str,
                                                           mb: float) -> None:
    result = facts(index_bytes)

    assert result["storage"] == verdict and result["storage_mb"] == mb
    assert result["lines"][0] == (f"new index storage {mb:.1f} MB for {len(index_bytes)} indexes: {verdict} "
                                  "the plan's expected 50-100 MB")


# --- query timings -------------------------------------------------------------------------

@pytest.mark.parametrize("before_ms, after_ms, pct, line", [
    (10.0, 7.0, 30.0, "q: 10.000 ms -> 7.000 ms (30% faster; within the plan's 20-40% improvement)"),
    (10.0, 5.0, 50.0, "q: 10.000 ms -> 5.000 ms (50% faster; above the plan's 20-40% improvement)"),
    (10.0, 9.0, 10.0, "q: 10.000 ms -> 9.000 ms (10% faster; below the plan's 20-40% improvement)"),
    (10.0, 12.5, -25.0, "q: 10.000 ms -> 12.500 ms (25% slower; below the plan's 20-40% improvement)"),
    (0.0, 0.2, 0.0, "q: 0.000 ms -> 0.200 ms (0% faster; below the plan's 20-40% improvement)"),
], ids=["within", "above", "below", "slower", "zero-before"])
def test_each_timed_query_gets_its_speedup_and_faster_or_slower_wording(before_ms: float, after_ms: float,
                                                                        pct: float, line: str) -> None:
    result = facts(before={"q": before_ms}, after={"q": after_ms})

    assert result["speedup_pct"] == {"q": pct}
    assert result["lines"][1:] == [line]


def test_queries_at_least_as_fast_as_the_plans_low_end_count_as_meeting_it() -> None:
    result = facts(before={"within": 10.0, "above": 10.0, "below": 10.0, "slower": 10.0, "edge": 10.0},
                   after={"within": 7.0, "above": 2.0, "below": 9.0, "slower": 11.0, "edge": 8.0})

    assert result["speedup_pct"] == {"above": 80.0, "below": 10.0, "edge": 20.0, "slower": -10.0, "within": 30.0}
    assert result["speedups_meeting_plan"] == 3


def test_a_query_without_a_before_timing_is_reported_but_not_counted() -> None:
    result = facts(before={"old_query": 4.0, "new_query": None}, after={"old_query": 2.0, "new_query": 1.5,
                                                                         "brand_new": 0.8})

    assert result["speedup_pct"] == {"old_query": 50.0}
    assert result["speedups_meeting_plan"] == 1
    assert result["lines"][1:] == [
        "brand_new: 0.8 ms after; no before timing (the query needs the migration's columns)",
        "new_query: 1.5 ms after; no before timing (the query needs the migration's columns)",
        "old_query: 4.000 ms -> 2.000 ms (50% faster; above the plan's 20-40% improvement)",
    ]


def test_a_query_that_failed_after_is_reported_with_a_question_mark() -> None:
    result = facts(before={"q": 3.0}, after={"q": None})

    assert result["speedup_pct"] == {}
    assert result["lines"][1] == "q: ? ms after; no before timing (the query needs the migration's columns)"


# --- VerifyReport --------------------------------------------------------------------------

def test_a_report_is_ok_only_with_checks_that_all_passed() -> None:
    assert VerifyReport([check(FK), check(INDEX)]).ok
    assert not VerifyReport([]).ok
    failing = VerifyReport([check(FK), check(INDEX, ok=False)])
    assert not failing.ok and failing.failed == [check(INDEX, ok=False)]
    assert failing.as_dict()["checks"][1] == {"name": INDEX, "ok": False, "detail": "missing",
                                               "source": "migration.sql:3"}


# --- criteria ------------------------------------------------------------------------------

def met(report: VerifyReport, lost: dict[str, object] | None = None,
        perf: dict[str, object] | None = None) -> dict[str, tuple[bool, str]]:
    return criteria(report, lost or {}, perf or facts(before={"q": 10.0}, after={"q": 7.0}))


def test_every_criterion_is_met_with_passing_checks_equal_rows_and_fast_queries() -> None:
    outcome = met(VerifyReport([check(FK), check(INDEX), check(EXPLAIN), check("column t.c")]))

    assert outcome == {
        "foreign key constraints enforced": (True, "1/1 constraint checks ok"),
        "new indexes created and used by queries": (True, "2/2 index and EXPLAIN checks ok"),
        "no data loss or corruption": (True, "exact row counts equal before and after"),
        "query performance meets expectations": (
            True, "1/1 timed queries at least as fast as the plan expects; index storage 60.0 MB "
                  "(within the plan's range)"),
    }


@pytest.mark.parametrize("checks, detail", [
    ([check(FK, ok=False), check("foreign key orders_userId_fkey")], "1/2 constraint checks ok"),
    ([check(INDEX)], "0/0 constraint checks ok"),
], ids=["a-failed-constraint-check", "no-constraint-checks"])
def test_foreign_key_criterion_is_not_met_by_a_failed_or_missing_check(checks: list[CheckResult],
                                                                       detail: str) -> None:
    assert met(VerifyReport(checks))["foreign key constraints enforced"] == (False, detail)


@pytest.mark.parametrize("checks, detail", [
    ([check(INDEX), check(EXPLAIN, ok=False)], "1/2 index and EXPLAIN checks ok"),
    ([check("02_epic5_indexes", ok=False)], "0/1 index and EXPLAIN checks ok"),
    ([check(FK)], "0/0 index and EXPLAIN checks ok"),
], ids=["planner-skips-the-index", "index-sql-check-failed-to-run", "no-index-checks"])
def test_index_criterion_is_not_met_by_a_failed_or_missing_check(checks: list[CheckResult], detail: str) -> None:
    assert met(VerifyReport(checks))["new indexes created and used by queries"] == (False, detail)


def test_changed_row_counts_do_not_meet_the_no_data_loss_criterion() -> None:
    outcome = met(VerifyReport([check(FK)]), lost={"behavioral_events": (1200, 1199)})

    assert outcome["no data loss or corruption"] == (False, "row counts changed: {'behavioral_events': (1200, 1199)}")


def test_a_query_slower_than_the_plan_expects_does_not_meet_the_performance_criterion() -> None:
    perf = facts({"a_idx": 120_000_000}, before={"fast": 10.0, "slow": 10.0}, after={"fast": 6.0, "slow": 9.5})

    ok, detail = met(VerifyReport([check(FK)]), perf=perf)["query performance meets expectations"]

    assert not ok
    assert detail == ("1/2 timed queries at least as fast as the plan expects; index storage 120.0 MB "
                      "(above the plan's range)")


def test_performance_is_not_claimed_met_when_no_query_could_be_timed_before_and_after() -> None:
    perf = facts(before={"q": None}, after={"q": 1.0})

    ok, detail = met(VerifyReport([check(FK)]), perf=perf)["query performance meets expectations"]

    assert not ok and detail.startswith("0/0 timed queries")
