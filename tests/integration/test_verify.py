"""Verification catches what the Epic 5 plan's own queries miss."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from engine_support import backfilling

from generate_data import generate
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.bundle.parse import parse_migration
from schema_deploy.engine.apply import apply
from schema_deploy.engine.verify import verify

REPO = Path(__file__).resolve().parents[2]
BUNDLE = load_bundle(REPO / "sql" / "migrations")
EPIC5 = "20251017120000_epic5_schema_completion"
VERIFY_DIR = REPO / "sql" / "verify"

# The plan's "Check New Indexes" query, verbatim.
PLAN_INDEX_QUERY = """
SELECT tablename, indexname, indexdef FROM pg_indexes
WHERE schemaname = 'public'
  AND indexname LIKE '%behavioral_events%'
   OR indexname LIKE '%behavioral_patterns%'
   OR indexname LIKE '%struggle_predictions%'
   OR indexname LIKE '%recommendations%'
   OR indexname LIKE '%personalization_configs%'
"""


@pytest.fixture(scope="module")
def epic5_db(stack_env: dict[str, str]):
    """One database at Epic 5 with demo data, shared by the read-only tests of this module."""
    from tests.conftest import drop_database, with_database

    base = stack_env["STAGING_DATABASE_URL"]
    name = "t_verify_module"
    drop_database(base, name)
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(base, name)
    apply(url, BUNDLE, to="20250915090000_baseline")
    generate(url, seed=11, scale="demo")
    apply(url, BUNDLE, backfill=backfilling(url))
    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("behavioral_events", "behavioral_patterns", "struggle_predictions", "recommendations",
                      "personalization_configs", "study_schedule_recommendations", "experiment_assignments"):
            conn.execute(f'ANALYZE "{table}"')
    yield url
    drop_database(base, name)


def epic5_statements():
    return parse_migration(BUNDLE.by_name()[EPIC5])


@pytest.mark.slow
def test_every_check_passes_after_the_epic5_migration(epic5_db: str) -> None:
    with psycopg.connect(epic5_db) as conn:
        report = verify(conn, epic5_statements(), VERIFY_DIR)
    assert report.ok, [c for c in report.checks if not c.ok]
    names = {c.name for c in report.checks}
    assert "constraint experiment_assignments_experimentId_fkey" in names
    assert "planner uses behavioral_events_userId_eventType_timestamp_idx" in names
    assert sum(n.startswith("planner uses") for n in names) == 12
    derived = [c for c in report.checks if c.name.startswith("index ") and "migration.sql" in c.source]
    assert len(derived) == 12


def test_plan_index_query_leaks_other_schemas_and_the_corrected_check_does_not(fresh_db: str) -> None:
    apply(fresh_db, BUNDLE)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA archive")
        conn.execute('CREATE TABLE archive.recommendations (id text, "userId" text)')
        conn.execute('CREATE INDEX "recommendations_userId_archive_idx" ON archive.recommendations ("userId")')
        leaked = conn.execute(f"SELECT count(*) FROM ({PLAN_INDEX_QUERY}) q WHERE indexname LIKE '%archive%'").fetchone()[0]
        rows = conn.execute((VERIFY_DIR / "02_epic5_indexes.sql").read_text()).fetchall()
    assert leaked == 1, "the plan's query (AND binds tighter than OR) should list the other schema's index"
    assert len(rows) == 12 and all(ok for _, ok, _ in rows)
    assert not any("archive" in detail for _, _, detail in rows)


def test_missing_and_invalid_indexes_fail_verification_by_name(fresh_db: str) -> None:
    apply(fresh_db, BUNDLE)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute('DROP INDEX "recommendations_userId_createdAt_idx"')
        report = verify(conn, epic5_statements(), VERIFY_DIR)
    failed = {c.name: c.detail for c in report.failed}
    assert failed["index recommendations_userId_createdAt_idx"] == "missing"
    assert "planner uses recommendations_userId_createdAt_idx" in failed
    assert not report.ok


def test_a_not_validated_foreign_key_and_a_wrong_column_type_fail(fresh_db: str) -> None:
    apply(fresh_db, BUNDLE, to="20250915090000_baseline")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute('ALTER TABLE "experiment_assignments" ADD COLUMN "metrics" JSON')
        conn.execute('ALTER TABLE "experiment_assignments" ADD CONSTRAINT "experiment_assignments_experimentId_fkey" '
                     'FOREIGN KEY ("experimentId") REFERENCES "personalization_experiments"("id") ON DELETE CASCADE NOT VALID')
        report = verify(conn, epic5_statements(), None)
    failed = {c.name: c.detail for c in report.failed}
    assert "(NOT VALIDATED)" in failed["constraint experiment_assignments_experimentId_fkey"]
    assert failed["column experiment_assignments.metrics"] == "json NULL (expected jsonb NULL)"
    assert failed["column study_schedule_recommendations.appliedAt"] == "missing"


@pytest.mark.slow
def test_verify_cli_exits_1_and_names_the_failed_check(fresh_db: str) -> None:
    apply(fresh_db, BUNDLE)
    env = {**os.environ, "PYTHONPATH": str(REPO / "plugins")}
    ok = subprocess.run([sys.executable, "-m", "schema_deploy", "verify", "--db", fresh_db, "--json",
                         "--verify-dir", str(VERIFY_DIR / "none")], cwd=REPO, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute('DROP INDEX "behavioral_events_userId_dayOfWeek_idx"')
    bad = subprocess.run([sys.executable, "-m", "schema_deploy", "verify", "--db", fresh_db,
                          "--migration", EPIC5], cwd=REPO, env=env, capture_output=True, text=True)
    assert bad.returncode == 1
    assert "FAIL  index behavioral_events_userId_dayOfWeek_idx" in bad.stdout
    password = fresh_db.split(":")[2].split("@")[0]
    assert password not in bad.stdout + bad.stderr


def test_row_counts_index_sizes_and_timings_are_reported_as_facts(epic5_db: str) -> None:
    from schema_deploy.engine.verify import index_sizes, query_timings, row_counts

    with psycopg.connect(epic5_db) as conn:
        counts = row_counts(conn, ["behavioral_events", "experiment_assignments", "no_such_table"])
        sizes = index_sizes(conn, ["behavioral_events_userId_eventType_timestamp_idx", "no_such_idx"])
        timings = query_timings(conn, VERIFY_DIR / "explain", runs=2)
    assert counts["behavioral_events"] == 20_000 and counts["experiment_assignments"] > 0
    assert "no_such_table" not in counts
    assert list(sizes) == ["behavioral_events_userId_eventType_timestamp_idx"] and sizes[
        "behavioral_events_userId_eventType_timestamp_idx"] > 8192
    assert len(timings) == 12 and all(ms >= 0 for ms in timings.values())
