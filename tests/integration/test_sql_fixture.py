"""The committed SQL, applied with plain psql, yields what the Epic 5 plan describes.

This checks the fixture itself (the baseline and the plan's SQL), independent
of our engine: `psql -1 -f` is what a person would run by hand.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "sql" / "migrations"
BASELINE = MIGRATIONS / "20250915090000_baseline" / "migration.sql"
EPIC5 = MIGRATIONS / "20251017120000_epic5_schema_completion" / "migration.sql"

PLAN_INDEXES = {
    "study_schedule_recommendations_appliedAt_idx": ("study_schedule_recommendations", ["appliedAt"]),
    "behavioral_events_userId_eventType_timestamp_idx": ("behavioral_events", ["userId", "eventType", "timestamp"]),
    "behavioral_events_userId_dayOfWeek_idx": ("behavioral_events", ["userId", "dayOfWeek"]),
    "behavioral_events_userId_timeOfDay_idx": ("behavioral_events", ["userId", "timeOfDay"]),
    "behavioral_patterns_userId_patternType_confidence_idx": ("behavioral_patterns", ["userId", "patternType", "confidence"]),
    "behavioral_patterns_userId_lastSeenAt_idx": ("behavioral_patterns", ["userId", "lastSeenAt"]),
    "struggle_predictions_userId_predictionStatus_predictedStrug_idx": (
        "struggle_predictions", ["userId", "predictionStatus", "predictedStruggleProbability"]),
    "struggle_predictions_userId_topicId_predictionDate_idx": ("struggle_predictions", ["userId", "topicId", "predictionDate"]),
    "recommendations_userId_status_priorityScore_idx": ("recommendations", ["userId", "status", "priorityScore"]),
    "recommendations_userId_createdAt_idx": ("recommendations", ["userId", "createdAt"]),
    "personalization_configs_userId_context_isActive_idx": ("personalization_configs", ["userId", "context", "isActive"]),
    "personalization_configs_userId_avgReward_idx": ("personalization_configs", ["userId", "avgReward"]),
}


def psql_file(url: str, path: Path, stack_env: dict[str, str]) -> None:
    psql = Path(stack_env["PG_BINDIR"]) / "psql"
    subprocess.run([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-1", "-f", str(path), url],
                   check=True, capture_output=True, env={**os.environ, "PGCONNECT_TIMEOUT": "5"})


def index_columns(conn: psycopg.Connection) -> dict[str, tuple[str, list[str], bool]]:
    rows = conn.execute(
        """
        SELECT i.relname, t.relname,
               array_agg(a.attname ORDER BY k.ord), ix.indisvalid
        FROM pg_index ix
        JOIN pg_class i ON i.oid = ix.indexrelid
        JOIN pg_class t ON t.oid = ix.indrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
        CROSS JOIN LATERAL unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
        GROUP BY i.relname, t.relname, ix.indisvalid
        """
    ).fetchall()
    return {name: (table, list(cols), valid) for name, table, cols, valid in rows}


def test_plan_sql_names_twelve_indexes_and_only_one_is_single_column() -> None:
    composite = [n for n, (_, cols) in PLAN_INDEXES.items() if len(cols) > 1]
    assert len(PLAN_INDEXES) == 12 and len(composite) == 11
    text = EPIC5.read_text()
    for name in PLAN_INDEXES:
        assert f'CREATE INDEX "{name}"' in text


def test_longest_plan_index_name_is_exactly_postgres_identifier_limit() -> None:
    assert len("struggle_predictions_userId_predictionStatus_predictedStrug_idx".encode()) == 63


def test_baseline_has_no_epic5_objects(fresh_db: str, stack_env: dict[str, str]) -> None:
    psql_file(fresh_db, BASELINE, stack_env)
    with psycopg.connect(fresh_db) as conn:
        indexes = index_columns(conn)
        assert not set(PLAN_INDEXES) & set(indexes)
        cols = {r[0] for r in conn.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name IN ('experiment_assignments', 'study_schedule_recommendations')")}
        assert "metrics" not in cols and "appliedAt" not in cols and "experimentId" in cols
        fks = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'").fetchone()[0]
        assert fks == 0


def test_baseline_then_epic5_yields_every_planned_object(fresh_db: str, stack_env: dict[str, str]) -> None:
    psql_file(fresh_db, BASELINE, stack_env)
    psql_file(fresh_db, EPIC5, stack_env)
    with psycopg.connect(fresh_db) as conn:
        indexes = index_columns(conn)
        for name, (table, cols) in PLAN_INDEXES.items():
            assert indexes.get(name) == (table, cols, True), name

        fk = conn.execute(
            """
            SELECT conrelid::regclass::text, confrelid::regclass::text, confdeltype, convalidated,
                   pg_get_constraintdef(oid)
            FROM pg_constraint WHERE conname = 'experiment_assignments_experimentId_fkey'
            """
        ).fetchone()
        assert fk is not None
        assert fk[:4] == ("experiment_assignments", "personalization_experiments", "c", True)
        assert '("experimentId")' in fk[4] and "ON DELETE CASCADE" in fk[4]

        def column(table: str, name: str) -> tuple[str, str, int | None]:
            return conn.execute(
                "SELECT data_type, is_nullable, datetime_precision FROM information_schema.columns "
                "WHERE table_schema = 'public' AND table_name = %s AND column_name = %s",
                (table, name),
            ).fetchone()

        assert column("experiment_assignments", "metrics")[:2] == ("jsonb", "YES")
        assert column("study_schedule_recommendations", "appliedAt") == ("timestamp without time zone", "YES", 3)


@pytest.mark.parametrize("path", [BASELINE, EPIC5], ids=["baseline", "epic5"])
def test_migration_files_are_utf8_with_lf_endings(path: Path) -> None:
    data = path.read_bytes()
    data.decode("utf-8")
    assert b"\r" not in data
