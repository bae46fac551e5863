"""The plan's success criteria: one verdict each (met / not met / not measurable, with the reason),
from what verification gathered, and the one summary line every report shows."""
from __future__ import annotations

import pytest

from schema_deploy.engine.criteria import (FOREIGN_KEYS, INDEXES, MET, NOT_MEASURABLE, NOT_MET, NO_DATA_LOSS,
                                           PERFORMANCE, Criterion, Verdicts, judge, summary_of)
from schema_deploy.engine.verify import CheckResult, performance_facts

PLAN_MB = (50.0, 100.0)
PLAN_SPEEDUP = (20.0, 40.0)
FK = "constraint experiment_assignments_experimentId_fkey"
INDEX = "index behavioral_events_userId_dayOfWeek_idx"
EXPLAIN = "planner uses behavioral_events_userId_dayOfWeek_idx"
BIG, SMALL = "behavioral_events_userId_dayOfWeek_idx", "study_schedule_recommendations_appliedAt_idx"
TABLES = {BIG: "behavioral_events", SMALL: "study_schedule_recommendations"}


def check(name: str, ok: bool = True, unmeasured: str = "") -> CheckResult:
    return CheckResult(name, ok, "valid, ready" if ok else "missing", "migration.sql:3", unmeasured=unmeasured)


def perf(mb: float = 70.0, before: dict[str, float] | None = None, after: dict[str, float] | None = None) -> dict:
    return performance_facts({BIG: int(mb * 1e6)}, before if before is not None else {BIG: 10.0, SMALL: 1.0},
                             after if after is not None else {BIG: 2.0, SMALL: 0.9}, PLAN_MB, PLAN_SPEEDUP)


def verdicts(checks: list[CheckResult] | None = None, rows: dict[str, int] | None = None,
             lost: dict | None = None, facts: dict | None = None, measurable_rows: int = 100_000) -> Verdicts:
    rows = rows if rows is not None else {"behavioral_events": 2_000_000, "study_schedule_recommendations": 200}
    return judge(checks if checks is not None else [check(FK), check(INDEX), check(EXPLAIN)], rows, lost or {},
                 facts or perf(), TABLES, PLAN_MB, PLAN_SPEEDUP, measurable_rows)


def by_name(v: Verdicts) -> dict[str, tuple[str, str]]:
    return {c.name: (c.verdict, c.detail) for c in v.criteria}


# --- each rule ------------------------------------------------------------------------------

def test_every_criterion_is_met_at_scale_with_passing_checks_equal_rows_and_fast_queries() -> None:
    v = verdicts()

    assert [c.name for c in v.criteria] == [FOREIGN_KEYS, INDEXES, NO_DATA_LOSS, PERFORMANCE]
    assert by_name(v) == {
        FOREIGN_KEYS: (MET, "1/1 constraint checks passed"),
        INDEXES: (MET, "2/2 index and EXPLAIN checks passed"),
        NO_DATA_LOSS: (MET, "exact row counts equal before and after in 2 tables"),
        PERFORMANCE: (MET, "1/1 queries on tables of 100,000+ rows at least 20% faster; index storage 70.0 MB, "
                           "within the plan's 50-100 MB; 1 queries on smaller tables not judged"),
    }
    assert v.all_met and v.summary() == "4/4 success criteria met"


@pytest.mark.parametrize("checks, verdict, detail", [
    ([check(FK, ok=False), check("foreign key orders_userId_fkey")], NOT_MET,
     "1/2 constraint checks passed; failed: " + FK),
    ([check(INDEX)], NOT_MEASURABLE, "no constraint check ran: this run adds no constraint"),
], ids=["a-failed-constraint-check", "no-constraint-checks"])
def test_foreign_keys_are_not_met_by_a_failed_check_and_not_measurable_without_one(
        checks: list[CheckResult], verdict: str, detail: str) -> None:
    assert by_name(verdicts(checks))[FOREIGN_KEYS] == (verdict, detail)


@pytest.mark.parametrize("checks, verdict, detail", [
    ([check(INDEX), check(EXPLAIN, ok=False)], NOT_MET, "1/2 index and EXPLAIN checks passed; failed: " + EXPLAIN),
    ([check("02_epic5_indexes", ok=False)], NOT_MET, "0/1 index and EXPLAIN checks passed; failed: 02_epic5_indexes"),
    ([check(INDEX), check(EXPLAIN, unmeasured="t has 10 rows, fewer than 1,000")], NOT_MEASURABLE,
     "1/1 index and EXPLAIN checks passed; 1 not measurable: t has 10 rows, fewer than 1,000"),
    ([check(INDEX, ok=False), check(EXPLAIN, unmeasured="t has 10 rows")], NOT_MET,
     "0/1 index and EXPLAIN checks passed; failed: " + INDEX),
    ([check(FK)], NOT_MEASURABLE, "no index check ran: this run creates no index"),
], ids=["planner-skips-the-index", "index-sql-check-failed-to-run", "table-too-small-for-the-planner",
        "a-failure-outweighs-a-small-table", "no-index-checks"])
def test_indexes_are_not_met_by_a_failure_and_not_measurable_on_a_table_too_small_for_the_planner(
        checks: list[CheckResult], verdict: str, detail: str) -> None:
    assert by_name(verdicts(checks))[INDEXES] == (verdict, detail)


def test_changed_row_counts_do_not_meet_no_data_loss_and_no_table_is_not_measurable() -> None:
    lost = by_name(verdicts(lost={"behavioral_events": (1200, 1199)}))[NO_DATA_LOSS]
    nothing = by_name(verdicts(rows={}))[NO_DATA_LOSS]

    assert lost == (NOT_MET, "row counts changed: behavioral_events 1200 -> 1199")
    assert nothing == (NOT_MEASURABLE, "no table existed before the change to count")


# --- query performance: the scale rule and the storage rule ---------------------------------------

def test_performance_on_tables_below_the_measurable_size_is_not_measurable_whatever_the_timings() -> None:
    rows = {"behavioral_events": 20_000, "study_schedule_recommendations": 200}
    fast, slow = (perf(mb=3.01, after={BIG: 1.0, SMALL: 0.1}),
                  perf(mb=3.01, after={BIG: 9.9, SMALL: 1.5}))  # noise at this size: either can happen

    verdict_fast, verdict_slow = (by_name(verdicts(rows=rows, facts=f))[PERFORMANCE] for f in (fast, slow))

    assert verdict_fast == verdict_slow == (
        NOT_MEASURABLE, "no timed query reads a table of 100,000 rows or more (the largest, behavioral_events, had "
                        "20,000 rows): at this scale timings are noise and index storage says nothing about the "
                        "plan's estimate")


@pytest.mark.parametrize("mb, word", [(3.01, "below"), (180.0, "above")])
def test_index_storage_outside_the_plans_range_is_not_met_at_scale(mb: float, word: str) -> None:
    verdict, detail = by_name(verdicts(facts=perf(mb=mb)))[PERFORMANCE]

    assert verdict == NOT_MET
    assert f"index storage {round(mb, 2)} MB, {word} the plan's 50-100 MB" in detail


def test_a_query_slower_than_the_plans_low_end_at_scale_is_not_met_and_named() -> None:
    verdict, detail = by_name(verdicts(facts=perf(before={BIG: 10.0}, after={BIG: 9.0})))[PERFORMANCE]

    assert verdict == NOT_MET
    assert detail.startswith(f"0/1 queries on tables of 100,000+ rows at least 20% faster (slower than planned: "
                             f"{BIG} 10%)")


def test_the_measurable_size_is_a_setting() -> None:
    rows = {"behavioral_events": 20_000}

    assert by_name(verdicts(rows=rows, facts=perf(mb=3.01), measurable_rows=10_000))[PERFORMANCE][0] == NOT_MET
    assert by_name(verdicts(rows=rows, facts=perf(mb=3.01)))[PERFORMANCE][0] == NOT_MEASURABLE


def test_no_query_timed_before_and_after_is_not_measurable() -> None:
    verdict, detail = by_name(verdicts(facts=perf(before={BIG: None}, after={BIG: 1.0})))[PERFORMANCE]

    assert verdict == NOT_MEASURABLE and detail.startswith("no timed query before and after")


def test_the_same_facts_give_the_same_verdicts() -> None:
    assert verdicts().as_list() == verdicts().as_list()


# --- one summary, everywhere --------------------------------------------------------------------

def test_the_summary_counts_met_and_names_every_criterion_not_met_or_not_measurable() -> None:
    v = Verdicts((Criterion(FOREIGN_KEYS, MET, "1/1 constraint checks passed"),
                  Criterion(INDEXES, NOT_MEASURABLE, "t has 10 rows"),
                  Criterion(NO_DATA_LOSS, MET, "equal"),
                  Criterion(PERFORMANCE, NOT_MET, "index storage 3.01 MB, below the plan's 50-100 MB")))

    assert v.summary() == (f"2/4 success criteria met; not met: {PERFORMANCE} (index storage 3.01 MB, below the "
                           f"plan's 50-100 MB); not measurable: {INDEXES} (t has 10 rows)")
    assert not v.all_met
    assert v.lines()[1] == f"NOT MEASURABLE {INDEXES}: t has 10 rows"
    assert v.lines()[3] == f"NOT MET        {PERFORMANCE}: index storage 3.01 MB, below the plan's 50-100 MB"
    assert Verdicts.from_list(v.as_list()) == v and summary_of(v.as_list()) == v.summary()


def test_not_measurable_is_never_counted_as_met() -> None:
    v = Verdicts((Criterion(FOREIGN_KEYS, MET, "ok"), Criterion(PERFORMANCE, NOT_MEASURABLE, "small")))

    assert v.summary().startswith("1/2 success criteria met; not measurable: ")
    assert not v.all_met


def test_a_verdict_outside_the_three_is_refused() -> None:
    with pytest.raises(ValueError, match="criterion 'x': verdict 'passed' is not one of met, not met, not measurable"):
        Criterion("x", "passed", "")
