"""What our stepped migrations keep in `_prisma_migrations.logs` so that a resume knows where it stands."""
from __future__ import annotations

from datetime import datetime, timezone

from schema_deploy.state.ledger import IN_PROGRESS_MARK, RETRYABLE_MARK, LedgerRow, Resumable, progress_logs


def row(logs: str | None, steps: int = 2) -> LedgerRow:
    return LedgerRow(id="r1", checksum="c" * 64, finished_at=None, migration_name="20260101000000_m", logs=logs,
                     rolled_back_at=None, started_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                     applied_steps_count=steps)


def test_the_plan_and_the_applied_steps_lock_retries_round_trip_through_the_rows_logs() -> None:
    logs = progress_logs(RETRYABLE_MARK, "0123abcd", 3, "\nhealth gate: step 3/4 (index build): waiting")
    assert logs == f"{RETRYABLE_MARK} plan=0123abcd retries=3\nhealth gate: step 3/4 (index build): waiting"
    assert row(logs).resumable and row(logs).resumable_at == Resumable("r1", 2, "0123abcd", 3)


def test_a_row_of_a_version_that_did_not_count_retries_resumes_with_none_counted() -> None:
    assert row(f"{IN_PROGRESS_MARK} plan=0123abcd steps=16", 5).resumable_at == Resumable("r1", 5, "0123abcd", 0)


def test_only_the_first_line_is_read_not_a_failures_account_after_it() -> None:
    logs = f"{RETRYABLE_MARK} plan=0123abcd\nstatement: UPDATE t SET retries=9 WHERE plan=x"
    assert row(logs).resumable_at == Resumable("r1", 2, "0123abcd", 0)


def test_a_row_not_of_ours_has_no_plan_and_no_count() -> None:
    assert row("Database error: deadlock detected", 1).resumable_at == Resumable("r1", 1, None, 0)
