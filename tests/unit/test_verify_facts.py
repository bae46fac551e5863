"""Verification's facts: index storage and query timings against the plan's expectations, and how
a report counts its checks. The success criteria's verdicts: tests/unit/test_criteria.py."""
from __future__ import annotations

import pytest

from schema_deploy.engine.verify import CheckResult, VerifyReport, performance_facts

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
                                               "source": "migration.sql:3", "unmeasured": ""}


def test_a_check_not_measurable_at_this_scale_is_no_failure_and_is_counted_on_its_own() -> None:
    small = CheckResult(EXPLAIN, True, "t has 10 rows", "explain/q.sql", unmeasured="t has 10 rows, fewer than 1,000")
    report = VerifyReport([check(FK), small, check(INDEX)])

    assert report.ok and report.failed == [] and report.unmeasured == [small]
    assert report.counts() == "3 checks: 2 passed, 1 not measurable"
    assert small.line() == f"not measurable: {EXPLAIN}: t has 10 rows, fewer than 1,000 (explain/q.sql)"
    assert check(FK, ok=False).line() == f"FAIL: {FK}: missing (migration.sql:3)"
    assert VerifyReport([check(FK), check(INDEX, ok=False)]).counts() == "2 checks: 1 passed, 1 failed"


# --- expectations: a column as the last statement left it -----------------------------------------------

def test_a_column_added_null_then_made_not_null_is_expected_not_null_and_back_again() -> None:
    from schema_deploy.bundle.parse import parse_sql
    from schema_deploy.engine.verify import expectations

    expand = 'ALTER TABLE "events" ADD COLUMN "day" DATE;\n'
    contract = 'ALTER TABLE "events" ALTER COLUMN "day" SET NOT NULL;\n'
    relax = 'ALTER TABLE "events" ALTER COLUMN "day" DROP NOT NULL;\n'

    def columns(sql: str) -> list[tuple[str, str, bool | None]]:
        return [(kind, d.get("column"), d.get("not_null")) for kind, _, d in expectations(parse_sql(sql))]

    assert columns(expand) == [("column", "day", False)]
    assert columns(expand + contract) == [("column", "day", True), ("not-null", "day", None)]
    assert columns(expand + contract + relax) == [("column", "day", False), ("not-null", "day", None)]
    # Another table's column of the same name is not touched.
    assert columns(expand + 'ALTER TABLE "other" ALTER COLUMN "day" SET NOT NULL;\n') == [
        ("column", "day", False), ("not-null", "day", None)]
