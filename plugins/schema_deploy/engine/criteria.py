"""The plan's success criteria: one verdict each, computed once, said the same way everywhere.

A verdict is exactly one of **met**, **not met** or **not measurable** (with the reason). The
verification step computes the verdicts once (`judge`), the results carry them (`Verdicts.as_list()`
in `Verification.criteria`), and every place that shows them (the approval page, Slack, the
report, the audit record) renders them with `Verdicts.summary()` and `Verdicts.lines()`: the same
words and the same counts. A count always names the criteria behind it that were not met or not
measurable; "not measurable" is counted on its own, never as met.

The rules (deterministic: the same plan on the same data gives the same verdicts):

* **foreign key constraints enforced**: met when every constraint check passed; not met when one
  failed; not measurable when none ran (this run adds no constraint).
* **new indexes created and used by queries**: not met when an index check failed or the planner
  did not use an index on a table of at least `PLANNER_MIN_ROWS` rows; not measurable when an
  EXPLAIN check was on a smaller table (a sequential scan is the planner's right choice there, so
  its choice proves nothing) or no index check ran; else met.
* **no data loss or corruption**: met when the exact row counts of every touched table are equal
  before and after; not met when one changed; not measurable when no table existed to count.
* **query performance meets expectations**: judged only on the representative queries whose table
  had at least `measurable_rows` rows before the change (deploy.yaml
  `expectations.measurable_from_rows`, default 100,000): below that, timings are fractions of a
  millisecond whose noise decides the speedup, and the new indexes' storage says nothing about the
  plan's estimate, so the criterion is not measurable at this scale. At scale it is met when every
  judged query is at least the plan's low end faster AND the new indexes' storage is within the
  plan's range; a storage outside the range (below or above) is not met: the plan's estimate of
  the overhead did not hold.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

MET, NOT_MET, NOT_MEASURABLE = "met", "not met", "not measurable"
VERDICTS = (MET, NOT_MET, NOT_MEASURABLE)

FOREIGN_KEYS = "foreign key constraints enforced"
INDEXES = "new indexes created and used by queries"
NO_DATA_LOSS = "no data loss or corruption"
PERFORMANCE = "query performance meets expectations"

# Under this many rows a table fits in a few pages: a sequential scan is the planner's right choice.
PLANNER_MIN_ROWS = 1_000
# From this many rows (in a timed query's table) timings and index sizes are judged against the plan.
MEASURABLE_ROWS = 100_000


class Check(Protocol):
    """What a verdict needs of a verification check (`verify.CheckResult`)."""

    name: str
    ok: bool
    detail: str
    unmeasured: str  # why the check could not be judged at this scale ("" = it was)


@dataclass(frozen=True)
class Criterion:
    """One success criterion's verdict, with its evidence (met, not met) or its reason (not measurable)."""

    name: str
    verdict: str
    detail: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"criterion {self.name!r}: verdict {self.verdict!r} is not one of {', '.join(VERDICTS)}")

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "verdict": self.verdict, "detail": self.detail}

    def line(self) -> str:
        """`verdict  name: detail`, verdicts aligned."""
        return f"{self.verdict.upper():<14} {self.name}: {self.detail}"


@dataclass(frozen=True)
class Verdicts:
    """The verdicts of one verification, in the plan's order."""

    criteria: tuple[Criterion, ...]

    @classmethod
    def from_list(cls, items: Iterable[Criterion | Mapping[str, Any]] | None) -> Verdicts:
        """From `as_list()` as it travels (the record, an XCom), or a result's criteria."""
        return cls(tuple(c if isinstance(c, Criterion) else Criterion(str(c["name"]), str(c["verdict"]),
                                                                      str(c.get("detail", ""))) for c in items or ()))

    def as_list(self) -> list[dict[str, str]]:
        return [c.as_dict() for c in self.criteria]

    def having(self, verdict: str) -> list[Criterion]:
        return [c for c in self.criteria if c.verdict == verdict]

    @property
    def all_met(self) -> bool:
        return bool(self.criteria) and not self.having(NOT_MET) and not self.having(NOT_MEASURABLE)

    def summary(self) -> str:
        """One line, the same everywhere: the count met, then the ones not met and not measurable, named.

        `2/4 success criteria met; not met: query performance meets expectations (…); not measurable: …`
        """
        if not self.criteria:
            return "no success criteria judged"
        text = f"{len(self.having(MET))}/{len(self.criteria)} success criteria met"
        for verdict in (NOT_MET, NOT_MEASURABLE):
            named = self.having(verdict)
            if named:
                text += f"; {verdict}: " + ", ".join(f"{c.name} ({c.detail})" for c in named)
        return text

    def lines(self) -> list[str]:
        """One line per criterion: verdict, name, evidence or reason."""
        return [c.line() for c in self.criteria]


def check_counts(total: int, passed: int, failed: int, unmeasured: int) -> str:
    """How every report counts verification checks: `42 checks: 40 passed, 2 not measurable`."""
    return (f"{total} checks: {passed} passed" + (f", {failed} failed" if failed else "")
            + (f", {unmeasured} not measurable" if unmeasured else ""))


def summary_of(criteria: Iterable[Criterion | Mapping[str, Any]] | None) -> str:
    """`Verdicts.summary()` of criteria as they travel (a result's or a record's list)."""
    return Verdicts.from_list(criteria).summary()


# --- the rules --------------------------------------------------------------------------------

def _group(checks: list[Check], *words: str) -> list[Check]:
    return [c for c in checks if any(w in c.name.lower() for w in words)]


def _counted(checks: list[Check], what: str) -> str:
    judged = [c for c in checks if not c.unmeasured]
    return f"{sum(c.ok for c in judged)}/{len(judged)} {what} passed"


def foreign_keys(checks: list[Check]) -> Criterion:
    fk = _group(checks, "foreign", "fkey", "constraint")
    if not fk:
        return Criterion(FOREIGN_KEYS, NOT_MEASURABLE, "no constraint check ran: this run adds no constraint")
    failed = [c for c in fk if not c.ok]
    if failed:
        return Criterion(FOREIGN_KEYS, NOT_MET, _counted(fk, "constraint checks") + "; failed: "
                         + ", ".join(c.name for c in failed))
    return Criterion(FOREIGN_KEYS, MET, _counted(fk, "constraint checks"))


def indexes(checks: list[Check]) -> Criterion:
    idx = _group(checks, "index", "explain", "uses ")
    if not idx:
        return Criterion(INDEXES, NOT_MEASURABLE, "no index check ran: this run creates no index")
    failed = [c for c in idx if not c.ok]
    unmeasured = [c for c in idx if c.unmeasured]
    counted = _counted(idx, "index and EXPLAIN checks")
    if failed:
        return Criterion(INDEXES, NOT_MET, f"{counted}; failed: " + ", ".join(c.name for c in failed))
    if unmeasured:
        return Criterion(INDEXES, NOT_MEASURABLE, f"{counted}; {len(unmeasured)} not measurable: "
                         + "; ".join(c.unmeasured for c in unmeasured))
    return Criterion(INDEXES, MET, counted)


def no_data_loss(rows_before: Mapping[str, int], lost_rows: Mapping[str, tuple[Any, Any]]) -> Criterion:
    if lost_rows:
        return Criterion(NO_DATA_LOSS, NOT_MET, "row counts changed: " + ", ".join(
            f"{t} {b} -> {a}" for t, (b, a) in sorted(lost_rows.items())))
    if not rows_before:
        return Criterion(NO_DATA_LOSS, NOT_MEASURABLE, "no table existed before the change to count")
    return Criterion(NO_DATA_LOSS, MET, f"exact row counts equal before and after in {len(rows_before)} tables")


def performance(perf: Mapping[str, Any], index_tables: Mapping[str, str], rows_before: Mapping[str, int],
                expect_mb: tuple[float, float], expect_speedup_pct: tuple[float, float],
                measurable_rows: int = MEASURABLE_ROWS) -> Criterion:
    """`perf`: `verify.performance_facts`; `index_tables`: each new index's table; `rows_before`:
    the exact row counts before the change."""
    speedups: Mapping[str, float] = perf.get("speedup_pct") or {}
    at_scale = {name: pct for name, pct in speedups.items()
                if rows_before.get(index_tables.get(name, ""), 0) >= measurable_rows}
    if not at_scale:
        sizes = sorted(((rows_before.get(t, 0), t) for t in set(index_tables.values()) if t in rows_before),
                       reverse=True)
        largest = f"the largest, {sizes[0][1]}, had {sizes[0][0]:,} rows" if sizes else "no table was counted"
        why = ("no timed query before and after" if not speedups
               else f"no timed query reads a table of {measurable_rows:,} rows or more")
        return Criterion(PERFORMANCE, NOT_MEASURABLE, f"{why} ({largest}): at this scale timings are noise "
                         "and index storage says nothing about the plan's estimate")
    low, high = expect_speedup_pct
    lo_mb, hi_mb = expect_mb
    slow = sorted(name for name, pct in at_scale.items() if pct < low)
    storage, mb = perf.get("storage"), perf.get("storage_mb")
    parts = [f"{len(at_scale) - len(slow)}/{len(at_scale)} queries on tables of {measurable_rows:,}+ rows at least "
             f"{low:g}% faster" + (" (slower than planned: " + ", ".join(f"{n} {at_scale[n]:g}%" for n in slow) + ")"
                                   if slow else ""),
             f"index storage {mb} MB, {storage} the plan's {lo_mb:g}-{hi_mb:g} MB"]
    skipped = len(speedups) - len(at_scale)
    if skipped:
        parts.append(f"{skipped} queries on smaller tables not judged")
    met = not slow and storage == "within"
    return Criterion(PERFORMANCE, MET if met else NOT_MET, "; ".join(parts))


def judge(checks: list[Check], rows_before: Mapping[str, int], lost_rows: Mapping[str, tuple[Any, Any]],
          perf: Mapping[str, Any], index_tables: Mapping[str, str], expect_mb: tuple[float, float],
          expect_speedup_pct: tuple[float, float], measurable_rows: int = MEASURABLE_ROWS) -> Verdicts:
    """Every success criterion's verdict from what verification gathered, in the plan's order."""
    return Verdicts((foreign_keys(checks), indexes(checks), no_data_loss(rows_before, lost_rows),
                     performance(perf, index_tables, rows_before, expect_mb, expect_speedup_pct, measurable_rows)))
