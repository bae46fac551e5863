"""apply's log, read as a person reads it: one line per step saying what ran, under which locks, how
long it took and how many lock retries it needed (real PostgreSQL, a fresh database per test)."""
from __future__ import annotations

import re
import threading
import time

import psycopg
import pytest
from engine_support import BASELINE, EPIC5, FAST, MIGRATIONS

from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply

STEP = re.compile(r"^(?P<migration>\S+): step (?P<n>\d+)/(?P<total>\d+): (?P<what>.+?) \| (?P<locks>[^|]+) \| "
                  r"(?P<seconds>\d+\.\d\d) s \| (?P<retries>\d+) lock retr(?:y|ies)(?: \| skipped: .+)?$")


def step_lines(messages: list[str], migration: str) -> list[re.Match]:
    return [m for m in (STEP.match(line) for line in messages) if m and m["migration"] == migration]


@pytest.fixture
def bundle():
    return load_bundle(MIGRATIONS)


def test_each_step_of_a_stepped_migration_logs_its_statement_locks_duration_and_lock_retries(
        fresh_db: str, bundle) -> None:
    apply(fresh_db, bundle, FAST, to=BASELINE)
    messages: list[str] = []
    apply(fresh_db, bundle, FAST, online=True, log=messages.append)

    lines = step_lines(messages, EPIC5)
    assert [int(m["n"]) for m in lines] == list(range(1, 17)) and {m["total"] for m in lines} == {"16"}, messages
    first, index = lines[0], lines[4]
    assert first["what"] == 'ALTER TABLE "experiment_assignments" ADD COLUMN "metrics" JSONB'  # lines joined
    assert first["locks"] == "ACCESS EXCLUSIVE on experiment_assignments"
    assert index["what"].startswith('CREATE INDEX CONCURRENTLY "study_schedule_recommendations_appliedAt_idx" ON ')
    assert index["what"].endswith("…") and len(index["what"]) == 80  # cut, not running off the screen
    assert index["locks"] == "SHARE UPDATE EXCLUSIVE on study_schedule_recommendations"
    # Two tables under two modes: the strongest first.
    assert lines[2]["locks"] == ("SHARE UPDATE EXCLUSIVE on experiment_assignments; "
                                 "ROW SHARE on personalization_experiments")
    assert all(m["retries"] == "0" for m in lines)
    # The old "done in" line without the statement is gone; the SQL is in the line itself.
    assert not any(" done in " in line for line in messages)


def test_a_one_transaction_migration_logs_one_step_naming_its_first_statement_and_how_many_more(
        fresh_db: str, bundle) -> None:
    messages: list[str] = []
    apply(fresh_db, bundle, FAST, to=BASELINE, log=messages.append)

    (line,) = step_lines(messages, BASELINE)
    assert (line["n"], line["total"]) == ("1", "1")
    assert line["what"].startswith('CREATE TYPE "EventType" AS ENUM (') and line["what"].endswith(
        "… (+20 more statements)")
    assert line["locks"] == "no lock on existing tables"  # it only creates


@pytest.mark.slow
def test_a_step_that_waited_for_a_lock_counts_its_lock_retries_in_its_line(fresh_db: str, bundle) -> None:
    apply(fresh_db, bundle, FAST, to=BASELINE)
    holder = psycopg.connect(fresh_db, application_name="lock-holder")
    holder.execute('SELECT 1 FROM "experiment_assignments" LIMIT 1')  # a long read: ACCESS SHARE until rollback
    messages: list[str] = []
    thread = threading.Thread(target=lambda: apply(fresh_db, bundle, FAST, online=True, log=messages.append))
    thread.start()
    try:
        time.sleep(1.0)
    finally:
        holder.rollback()
        holder.close()
    thread.join(timeout=60)

    lines = step_lines(messages, EPIC5)
    retried = [line for line in messages if line.startswith("lock not granted within")]
    assert retried and int(lines[0]["retries"]) == len(retried) > 1, messages
    assert lines[0].group(0).endswith(f"| {len(retried)} lock retries")

