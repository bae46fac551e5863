"""The gate suite itself: passes on a database at Epic 5, names what fails on one without it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from engine_support import backfilling

from generate_data import generate
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply

REPO = Path(__file__).resolve().parents[2]
BUNDLE = load_bundle(REPO / "sql" / "migrations")


def run_gate(url: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "tests/gate", "-q", "-p", "no:cacheprovider",
                           "-p", "no:hypothesispytest"],
                          cwd=REPO, env={**os.environ, "DATABASE_URL": url}, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_the_gate_passes_at_epic5_and_leaves_the_data_as_it_was(fresh_db: str) -> None:
    apply(fresh_db, BUNDLE, to="20250915090000_baseline")
    generate(fresh_db, seed=3, scale="demo")
    apply(fresh_db, BUNDLE, online=True, backfill=backfilling(fresh_db))
    with psycopg.connect(fresh_db) as conn:
        before = conn.execute("SELECT (SELECT count(*) FROM experiment_assignments), "
                              "(SELECT count(*) FROM personalization_experiments), "
                              "(SELECT count(*) FROM study_schedule_recommendations WHERE \"appliedAt\" IS NOT NULL)"
                              ).fetchone()
    run = run_gate(fresh_db)
    assert run.returncode == 0, run.stdout[-3000:]
    assert "18 passed" in run.stdout
    with psycopg.connect(fresh_db) as conn:
        after = conn.execute("SELECT (SELECT count(*) FROM experiment_assignments), "
                             "(SELECT count(*) FROM personalization_experiments), "
                             "(SELECT count(*) FROM study_schedule_recommendations WHERE \"appliedAt\" IS NOT NULL)"
                             ).fetchone()
    assert after == before


@pytest.mark.slow
def test_the_gate_fails_on_a_database_without_epic5_naming_the_tests(fresh_db: str) -> None:
    apply(fresh_db, BUNDLE, to="20250915090000_baseline")
    generate(fresh_db, seed=3, scale="small")
    run = run_gate(fresh_db)
    assert run.returncode == 1
    assert "FAILED tests/gate/test_epic5.py::test_the_foreign_key_rejects_an_orphan_assignment" in run.stdout
    assert "FAILED tests/gate/test_epic5.py::test_metrics_jsonb_round_trips_and_is_queryable" in run.stdout
