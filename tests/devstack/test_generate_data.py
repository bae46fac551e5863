"""Integration tests for devstack/generate_data.py against the staging cluster.

Each test applies the baseline migration to a fresh database and generates the
`small` preset into it.
"""
from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.conftest import drop_database

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "devstack" / "generate_data.py"
MIGRATIONS = REPO / "sql" / "migrations"
BASELINE = MIGRATIONS / "20250915090000_baseline" / "migration.sql"
EPIC5 = MIGRATIONS / "20251017120000_epic5_schema_completion" / "migration.sql"
EVENT_TYPES = {"MISSION_STARTED", "MISSION_COMPLETED", "CARD_REVIEWED", "VALIDATION_COMPLETED",
               "SESSION_STARTED", "SESSION_ENDED", "LECTURE_UPLOADED", "SEARCH_PERFORMED"}
ORPHANS_SQL = """SELECT count(*) FROM experiment_assignments a
                 LEFT JOIN personalization_experiments e ON e.id = a."experimentId" WHERE e.id IS NULL"""
EPIC5_FK = """ALTER TABLE "experiment_assignments" ADD CONSTRAINT "experiment_assignments_experimentId_fkey"
              FOREIGN KEY ("experimentId") REFERENCES "personalization_experiments"("id") ON DELETE CASCADE"""


def _load_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_data", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


gd = _load_module()


def _apply(url: str, path: Path) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(path.read_text())


def _scalar(url: str, query: str) -> object:
    with psycopg.connect(url) as conn:
        return conn.execute(query).fetchone()[0]


def _apply_baseline(url: str) -> None:
    """Apply the baseline; switch off autovacuum on its (throwaway) tables."""
    _apply(url, BASELINE)
    with psycopg.connect(url, autocommit=True) as conn:
        for table in gd.TABLES:
            conn.execute(f'ALTER TABLE "{table}" SET (autovacuum_enabled = off, toast.autovacuum_enabled = off)')


@pytest.fixture
def make_db(stack_env: dict[str, str]) -> Iterator[Callable[[], str]]:
    """Factory for extra empty databases (like `fresh_db`), all dropped afterwards."""
    base = stack_env["STAGING_DATABASE_URL"]
    created: list[str] = []

    def make() -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return urlunsplit(urlsplit(base)._replace(path="/" + name))

    yield make
    for name in created:
        drop_database(base, name)


@pytest.fixture
def settled_db(fresh_db: str) -> str:
    """`fresh_db` (kept as a name for the tests below)."""
    return fresh_db


@pytest.fixture
def baseline_db(settled_db: str) -> str:
    """`fresh_db` with the baseline migration applied (tables empty)."""
    _apply_baseline(settled_db)
    return settled_db


@pytest.fixture
def small_db(baseline_db: str) -> str:
    """`baseline_db` filled with the clean small preset, seed 42."""
    gd.generate(baseline_db, seed=42, scale="small")
    return baseline_db


def _table_counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in gd.TABLES}


@pytest.mark.slow
def test_same_seed_gives_identical_data_in_two_databases(baseline_db: str, make_db: Callable[[], str]) -> None:
    other = make_db()
    _apply_baseline(other)
    counts_a = gd.generate(baseline_db, seed=42, scale="small")
    counts_b = gd.generate(other, seed=42, scale="small")
    assert counts_a == counts_b == _table_counts(baseline_db)
    assert all(rows > 0 for rows in counts_a.values())
    assert 2_000 <= sum(counts_a.values()) <= 10_000
    assert gd.content_checksum(baseline_db) == gd.content_checksum(other)


@pytest.mark.slow
def test_truncate_then_same_seed_reproduces_checksums(small_db: str) -> None:
    before = gd.content_checksum(small_db)
    counts = gd.generate(small_db, seed=42, scale="small", truncate=True)
    assert counts == _table_counts(small_db)
    assert gd.content_checksum(small_db) == before


@pytest.mark.slow
def test_different_seed_changes_content_not_counts(baseline_db: str, make_db: Callable[[], str]) -> None:
    other = make_db()
    _apply_baseline(other)
    assert gd.generate(baseline_db, seed=42) == gd.generate(other, seed=7)
    sums_a, sums_b = gd.content_checksum(baseline_db), gd.content_checksum(other)
    assert all(sums_a[t] != sums_b[t] for t in gd.TABLES), (sums_a, sums_b)


@pytest.mark.slow
def test_rerun_without_truncate_is_refused_and_atomic(small_db: str) -> None:
    before = gd.content_checksum(small_db)
    with pytest.raises(gd.GenerateError) as info:
        gd.generate(small_db, seed=42)
    assert info.value.code == 2 and "--truncate" in str(info.value)
    assert gd.content_checksum(small_db) == before


def test_clean_data_has_no_orphans_and_no_null_topic_ids(small_db: str) -> None:
    assert _scalar(small_db, ORPHANS_SQL) == 0
    assert _scalar(small_db, 'SELECT count(*) FROM struggle_predictions WHERE "topicId" IS NULL') == 0


def test_orphans_are_counted_and_break_the_epic5_foreign_key(baseline_db: str) -> None:
    counts = gd.generate(baseline_db, orphans=7)
    clean = gd.sizes_for(1.0).assignments
    assert counts["experiment_assignments"] == clean + 7
    assert _scalar(baseline_db, ORPHANS_SQL) == 7
    assert _scalar(baseline_db, """SELECT array_agg(DISTINCT "experimentId" ORDER BY "experimentId")
        FROM experiment_assignments WHERE "experimentId" LIKE 'exp_missing_%'""") == [
        f"exp_missing_{k:04d}" for k in range(1, 8)]
    with psycopg.connect(baseline_db) as conn:
        with pytest.raises(psycopg.errors.ForeignKeyViolation):
            conn.execute(EPIC5_FK)


def test_null_topic_ids_are_exact(baseline_db: str) -> None:
    gd.generate(baseline_db, null_topic_ids=5)
    assert _scalar(baseline_db, 'SELECT count(*) FROM struggle_predictions WHERE "topicId" IS NULL') == 5
    assert _scalar(baseline_db, ORPHANS_SQL) == 0


def test_day_of_week_and_time_of_day_match_timestamp(small_db: str) -> None:
    assert _scalar(small_db, """SELECT count(*) FROM behavioral_events
        WHERE "dayOfWeek" IS DISTINCT FROM extract(dow FROM "timestamp")::int
           OR "timeOfDay" IS DISTINCT FROM extract(hour FROM "timestamp")::int""") == 0
    with psycopg.connect(small_db) as conn:
        low, high, ref = conn.execute(f"""SELECT min("timestamp"), max("timestamp"),
            TIMESTAMP '{gd.REFERENCE_DATE}' FROM behavioral_events""").fetchone()
    assert high < ref and (ref - low).days <= 90 and (high - low).days >= 80


def test_every_event_type_is_present(small_db: str) -> None:
    present = set(_scalar(small_db, 'SELECT array_agg(DISTINCT "eventType"::text) FROM behavioral_events'))
    assert present == EVENT_TYPES
    assert set(_scalar(small_db, """SELECT enum_range(NULL::"EventType")::text[]""")) == EVENT_TYPES


def test_every_event_type_is_present_even_when_tiny(baseline_db: str) -> None:
    gd.generate(baseline_db, scale=0.01)
    assert _scalar(baseline_db, 'SELECT count(DISTINCT "eventType") FROM behavioral_events') == len(EVENT_TYPES)


def test_data_looks_realistic(small_db: str) -> None:
    with psycopg.connect(small_db) as conn:
        def one(query: str) -> object:
            return conn.execute(query).fetchone()[0]
        for table in gd.TABLES:
            assert one(f"""SELECT bool_and(id ~ '^c[0-9a-f]{{24}}$') FROM "{table}" """), table
            if table != "personalization_experiments":
                assert one(f"""SELECT bool_and("userId" ~ '^user_[0-9]{{6}}$') FROM "{table}" """), table
        users, top_share = conn.execute("""SELECT count(*), max(n)::float8 / sum(n) FROM
            (SELECT count(*) AS n FROM behavioral_events GROUP BY "userId") s""").fetchone()
        assert users >= 100 and top_share < 0.05  # many users, none dominates the composite indexes
        evening = one('SELECT count(*) FROM behavioral_events WHERE "timeOfDay" BETWEEN 18 AND 22')
        night = one('SELECT count(*) FROM behavioral_events WHERE "timeOfDay" BETWEEN 1 AND 5')
        assert evening > 5 * night
        assert 12 <= one("SELECT count(*) FROM personalization_experiments") <= 60
        assert one("SELECT array_agg(DISTINCT context ORDER BY context) FROM personalization_experiments") == [
            "ASSESSMENT", "CONTENT", "MISSION", "SESSION"]
        assert one("SELECT array_agg(DISTINCT variant ORDER BY variant) FROM experiment_assignments") == ["A", "B"]
        assert one('SELECT array_agg(DISTINCT "predictionStatus" ORDER BY "predictionStatus") FROM struggle_predictions') == [
            "CONFIRMED", "FALSE_POSITIVE", "MISSED", "PENDING"]
        assert one("SELECT array_agg(DISTINCT status ORDER BY status) FROM recommendations") == [
            "APPLIED", "DISMISSED", "PENDING", "VIEWED"]
        assert one("""SELECT bool_and(confidence BETWEEN 0 AND 1 AND "lastSeenAt" >= "detectedAt")
            FROM behavioral_patterns""")
        assert one('SELECT count(*) FROM personalization_configs WHERE "updatedAt" IS NULL') == 0
        # ANALYZE ran in the generator's transaction: every table has planner statistics.
        assert one("SELECT count(DISTINCT tablename) FROM pg_stats WHERE schemaname = 'public'") == len(gd.TABLES)


def test_epic5_migration_applies_cleanly_after_generation(small_db: str) -> None:
    _apply(small_db, EPIC5)
    assert _scalar(small_db, """SELECT count(*) FROM pg_constraint
        WHERE conname = 'experiment_assignments_experimentId_fkey' AND contype = 'f'""") == 1
    assert _scalar(small_db, """SELECT count(*) FROM pg_indexes
        WHERE indexname = 'behavioral_events_userId_eventType_timestamp_idx'""") == 1


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_cli_refuses_database_without_baseline(settled_db: str) -> None:
    password = urlsplit(settled_db).password
    assert password
    result = _run_cli("--db", settled_db)
    assert result.returncode == 2, result.stderr
    assert "apply the baseline migration first" in result.stderr
    assert urlsplit(settled_db).path.lstrip("/") in result.stderr  # names the database...
    assert password not in result.stderr + result.stdout  # ...without its password


@pytest.mark.slow
def test_cli_prints_json_counts_and_masked_summary(baseline_db: str) -> None:
    result = _run_cli("--db", baseline_db, "--preset", "small", "--seed", "3", "--orphans", "2", "--json")
    assert result.returncode == 0, result.stderr
    counts = json.loads(result.stdout)
    assert counts == _table_counts(baseline_db)
    assert counts["experiment_assignments"] == gd.sizes_for(1.0).assignments + 2
    assert urlsplit(baseline_db).password not in result.stderr + result.stdout
    assert all(table in result.stderr for table in gd.TABLES)
    assert re.search(r"total.*\d+\.\d+ s", result.stderr)


@pytest.mark.parametrize("url, expected", [
    ("postgresql://migrator:s3cret@db:5432/app", "postgresql://migrator:***@db:5432/app"),
    ("postgresql://migrator@db/app", "postgresql://migrator@db/app"),
    ("host=db user=migrator password=s3cret dbname=app", "host=db user=migrator password=*** dbname=app"),
])
def test_mask_url(url: str, expected: str) -> None:
    assert gd.mask_url(url) == expected
