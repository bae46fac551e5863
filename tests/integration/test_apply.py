"""Applying bundles to real PostgreSQL: objects, Prisma's ledger, drift, lock retries and failures.

Every test gets a fresh empty database owned by the non-superuser `migrator`.
"""
from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from engine_support import (BASELINE, CONTRACT, EPIC5, EXPAND, FAST, SHIPPED, MIGRATIONS, copy_bundle, ledger, plain_bundle, rows, scalar,
                            table_exists)

from schema_deploy.bundle.discover import load_bundle, sha256_hex
from schema_deploy.engine.apply import apply, load_state
from schema_deploy.engine.errors import LockRetriesExhausted, MigrationFailed
from schema_deploy.pg.db import connect
from schema_deploy.state.errors import AdvisoryLockTimeout, LedgerBlocked
from schema_deploy.state.ledger import LEDGER_DDL, PRISMA_LOCK_KEY, RETRYABLE_MARK
from schema_deploy.state.status import APPLIED, EDITED, MISSING, PENDING

PLAN_INDEXES = {
    "study_schedule_recommendations_appliedAt_idx": ("study_schedule_recommendations", ["appliedAt"]),
    "behavioral_events_userId_eventType_timestamp_idx": ("behavioral_events", ["userId", "eventType", "timestamp"]),
    "behavioral_events_userId_dayOfWeek_idx": ("behavioral_events", ["userId", "dayOfWeek"]),
    "behavioral_events_userId_timeOfDay_idx": ("behavioral_events", ["userId", "timeOfDay"]),
    "behavioral_patterns_userId_patternType_confidence_idx": ("behavioral_patterns",
                                                              ["userId", "patternType", "confidence"]),
    "behavioral_patterns_userId_lastSeenAt_idx": ("behavioral_patterns", ["userId", "lastSeenAt"]),
    "struggle_predictions_userId_predictionStatus_predictedStrug_idx": (
        "struggle_predictions", ["userId", "predictionStatus", "predictedStruggleProbability"]),
    "struggle_predictions_userId_topicId_predictionDate_idx": ("struggle_predictions",
                                                               ["userId", "topicId", "predictionDate"]),
    "recommendations_userId_status_priorityScore_idx": ("recommendations", ["userId", "status", "priorityScore"]),
    "recommendations_userId_createdAt_idx": ("recommendations", ["userId", "createdAt"]),
    "personalization_configs_userId_context_isActive_idx": ("personalization_configs",
                                                            ["userId", "context", "isActive"]),
    "personalization_configs_userId_avgReward_idx": ("personalization_configs", ["userId", "avgReward"]),
}


def status_of(url: str, bundle):
    with connect(url) as conn:
        status, _ = load_state(conn, bundle)
    return status


def states(url: str, bundle) -> dict[str, str]:
    return {s.name: s.state for s in status_of(url, bundle).states}


@pytest.fixture
def bundle():
    return load_bundle(MIGRATIONS)


# --- the committed bundle on an empty database ------------------------------------------

def test_baseline_and_epic5_on_an_empty_database_create_every_planned_object(fresh_db: str, bundle) -> None:
    result = apply(fresh_db, bundle, FAST)
    assert [m.name for m in result.applied] == SHIPPED  # on no rows, the example's backfill has nothing to do

    indexes = {r["index"]: r for r in rows(fresh_db, """
        SELECT i.relname AS index, t.relname AS table, ix.indisvalid AS valid,
               array_agg(a.attname ORDER BY k.ord) AS columns
        FROM pg_index ix JOIN pg_class i ON i.oid = ix.indexrelid JOIN pg_class t ON t.oid = ix.indrelid
        CROSS JOIN LATERAL unnest(ix.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
        GROUP BY 1, 2, 3""")}
    for name, (table, columns) in PLAN_INDEXES.items():
        assert (indexes[name]["table"], indexes[name]["columns"], indexes[name]["valid"]) == (table, columns, True)

    (fk,) = rows(fresh_db, """
        SELECT conrelid::regclass::text AS child, confrelid::regclass::text AS parent, confdeltype, convalidated,
               pg_get_constraintdef(oid) AS definition
        FROM pg_constraint WHERE conname = 'experiment_assignments_experimentId_fkey'""")
    assert (fk["child"], fk["parent"], fk["confdeltype"], fk["convalidated"]) == (
        "experiment_assignments", "personalization_experiments", "c", True)
    assert fk["definition"] == ('FOREIGN KEY ("experimentId") REFERENCES personalization_experiments(id) '
                                "ON DELETE CASCADE")

    columns = {(r["table_name"], r["column_name"]): r for r in rows(fresh_db, """
        SELECT table_name, column_name, data_type, is_nullable, datetime_precision
        FROM information_schema.columns WHERE table_schema = 'public'""")}
    metrics = columns[("experiment_assignments", "metrics")]
    applied_at = columns[("study_schedule_recommendations", "appliedAt")]
    assert (metrics["data_type"], metrics["is_nullable"]) == ("jsonb", "YES")
    assert (applied_at["data_type"], applied_at["is_nullable"], applied_at["datetime_precision"]) == (
        "timestamp without time zone", "YES", 3)


def test_ledger_rows_are_the_ones_prisma_writes(fresh_db: str, bundle) -> None:
    apply(fresh_db, bundle, FAST)
    got = ledger(fresh_db)
    assert [r["migration_name"] for r in got] == SHIPPED
    for row in got:
        path = MIGRATIONS / row["migration_name"] / "migration.sql"
        assert row["checksum"] == sha256_hex(path.read_bytes())
        assert row["finished_at"] >= row["started_at"]
        assert row["applied_steps_count"] == 1
        assert row["logs"] is None
        assert row["rolled_back_at"] is None
        assert uuid.UUID(row["id"]).version == 4 and len(row["id"]) == 36


def test_ledger_table_ddl_is_prismas_exactly(fresh_db: str, bundle) -> None:
    apply(fresh_db, bundle, FAST)
    columns = [tuple(r.values()) for r in rows(fresh_db, """
        SELECT column_name, data_type, character_maximum_length, is_nullable, column_default
        FROM information_schema.columns
        WHERE table_schema = 'public' AND table_name = '_prisma_migrations' ORDER BY ordinal_position""")]
    assert columns == [
        ("id", "character varying", 36, "NO", None),
        ("checksum", "character varying", 64, "NO", None),
        ("finished_at", "timestamp with time zone", None, "YES", None),
        ("migration_name", "character varying", 255, "NO", None),
        ("logs", "text", None, "YES", None),
        ("rolled_back_at", "timestamp with time zone", None, "YES", None),
        ("started_at", "timestamp with time zone", None, "NO", "now()"),
        ("applied_steps_count", "integer", None, "NO", "0"),
    ]
    constraints = [tuple(r.values()) for r in rows(fresh_db, """
        SELECT tc.constraint_name, tc.constraint_type, array_agg(k.column_name::text ORDER BY k.ordinal_position)
        FROM information_schema.table_constraints tc
        JOIN information_schema.key_column_usage k USING (constraint_schema, constraint_name)
        WHERE tc.table_schema = 'public' AND tc.table_name = '_prisma_migrations'
        GROUP BY 1, 2""")]
    assert constraints == [("_prisma_migrations_pkey", "PRIMARY KEY", ["id"])]
    indexes = scalar(fresh_db, "SELECT count(*) FROM pg_indexes WHERE tablename = '_prisma_migrations'")
    assert indexes == 1


def test_second_apply_is_a_no_op(fresh_db: str, bundle) -> None:
    apply(fresh_db, bundle, FAST)
    before = ledger(fresh_db)
    messages: list[str] = []
    result = apply(fresh_db, bundle, FAST, log=messages.append)
    assert result.applied == []
    assert "nothing to apply: every migration is applied" in messages
    assert ledger(fresh_db) == before
    assert status_of(fresh_db, bundle).clean


def test_status_is_pending_before_and_clean_after(fresh_db: str, bundle) -> None:
    assert states(fresh_db, bundle) == dict.fromkeys(SHIPPED, PENDING)
    apply(fresh_db, bundle, FAST, to=BASELINE)
    assert states(fresh_db, bundle) == {BASELINE: APPLIED, EPIC5: PENDING, EXPAND: PENDING, CONTRACT: PENDING}
    apply(fresh_db, bundle, FAST)
    assert status_of(fresh_db, bundle).clean


# --- drift ------------------------------------------------------------------------------

def test_crlf_copy_of_an_applied_migration_is_not_drift(fresh_db: str, bundle, tmp_path: Path) -> None:
    apply(fresh_db, bundle, FAST)
    root = copy_bundle(tmp_path)
    path = root / EPIC5 / "migration.sql"
    path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
    crlf = load_bundle(root)
    assert crlf.by_name()[EPIC5].checksum != bundle.by_name()[EPIC5].checksum
    assert status_of(fresh_db, crlf).clean
    assert apply(fresh_db, crlf, FAST).applied == []


def test_one_byte_edit_after_apply_is_drift_and_apply_refuses_with_how_to_resolve(
        fresh_db: str, bundle, tmp_path: Path) -> None:
    apply(fresh_db, bundle, FAST)
    root = copy_bundle(tmp_path)
    path = root / EPIC5 / "migration.sql"
    path.write_bytes(path.read_bytes().replace(b"-- AlterTable", b"-- AlterTablf", 1))
    edited = load_bundle(root)
    assert states(fresh_db, edited) == {BASELINE: APPLIED, EPIC5: EDITED, EXPAND: APPLIED, CONTRACT: APPLIED}
    with pytest.raises(LedgerBlocked, match=rf"refusing to apply.*\n- {EPIC5} was edited after it was applied "
                                            r"\(ledger checksum [0-9a-f]{12}…, file [0-9a-f]{12}…\)\. Restore the "
                                            r"applied version of the file from version control; put further "
                                            r"changes in a new migration\."):
        apply(fresh_db, edited, FAST)


def test_ledger_row_without_a_file_is_missing_from_bundle(fresh_db: str, bundle, tmp_path: Path) -> None:
    apply(fresh_db, bundle, FAST)
    root = copy_bundle(tmp_path)
    for item in (root / EPIC5).iterdir():
        item.unlink()
    (root / EPIC5).rmdir()
    old_branch = load_bundle(root)
    status = status_of(fresh_db, old_branch)
    assert {s.name: s.state for s in status.states} == {BASELINE: APPLIED, EPIC5: MISSING, EXPAND: APPLIED,
                                                        CONTRACT: APPLIED}
    assert [s.name for s in status.drift] == [EPIC5]
    with pytest.raises(LedgerBlocked, match=rf"- {EPIC5} is applied in the database but missing from the bundle"):
        apply(fresh_db, old_branch, FAST)


# --- table locks: retries -------------------------------------------------------------

def hold_table_lock(url: str, table: str) -> psycopg.Connection:
    """A session in an open transaction holding ACCESS EXCLUSIVE on `table`, recognisable in pg_stat_activity."""
    holder = psycopg.connect(url, application_name="lock-holder")
    holder.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
    holder.execute("SELECT 'holder-marker'")
    return holder


@pytest.mark.slow
def test_apply_retries_a_lock_timeout_until_the_holder_lets_go(fresh_db: str, bundle) -> None:
    apply(fresh_db, bundle, FAST, to=BASELINE)
    holder = hold_table_lock(fresh_db, "behavioral_events")
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["result"] = apply(fresh_db, bundle, FAST)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    try:
        time.sleep(1.0)
        assert thread.is_alive(), outcome
    finally:
        holder.rollback()
        holder.close()
    thread.join(timeout=30)
    assert "error" not in outcome, outcome.get("error")
    epic5, *after = outcome["result"].applied
    assert epic5.name == EPIC5 and epic5.lock_retries > 0 and [m.name for m in after] == [EXPAND, CONTRACT]
    assert [r["finished_at"] is not None for r in ledger(fresh_db, EPIC5)] == [True]
    assert status_of(fresh_db, bundle).clean


@pytest.mark.slow
def test_apply_gives_up_after_its_attempts_naming_the_holder_and_a_rerun_proceeds(fresh_db: str, bundle) -> None:
    apply(fresh_db, bundle, FAST, to=BASELINE)
    holder = hold_table_lock(fresh_db, "behavioral_events")
    pid = holder.info.backend_pid
    try:
        with pytest.raises(LockRetriesExhausted) as info:
            apply(fresh_db, bundle, replace(FAST, lock_retries=2))
    finally:
        holder.rollback()
        holder.close()
    message = str(info.value)
    # The statement that waited is the first index on behavioral_events (line 25).
    assert re.match(rf"{EPIC5} \(.*{EPIC5}/migration\.sql:25\): gave up after 3 attempts: the statement could "
                    r"not get its lock within lock_timeout each time \(SQLSTATE 55P03\)\.", message), message
    assert re.search(rf"pid {pid} application 'lock-holder' state idle in transaction .*"
                     r"query: SELECT 'holder-marker'", message), message
    assert "Retry when the blocking work is done" in message
    assert info.value.attempts == 3 and info.value.exit_code == 1

    # Nothing of Epic 5 persisted; the attempt is history only, so a plain re-run proceeds.
    assert not scalar(fresh_db, "SELECT count(*) FROM pg_indexes WHERE indexname = %s",
                      ("behavioral_events_userId_dayOfWeek_idx",))
    (attempt,) = ledger(fresh_db, EPIC5)
    assert attempt["rolled_back_at"] is not None and attempt["finished_at"] is None
    assert attempt["logs"].startswith(RETRYABLE_MARK) and f"pid {pid}" in attempt["logs"]
    assert [m.name for m in apply(fresh_db, bundle, FAST).applied] == [EPIC5, EXPAND, CONTRACT]
    assert status_of(fresh_db, bundle).clean


# --- the migration lock (Prisma's advisory lock) ---------------------------------------

@pytest.mark.slow
def test_apply_times_out_on_the_migration_lock_naming_the_session_that_holds_it(fresh_db: str, bundle) -> None:
    with psycopg.connect(fresh_db, autocommit=True, application_name="other-migrator") as other:
        other.execute("SELECT pg_advisory_lock(%s)", (PRISMA_LOCK_KEY,))
        pid = other.info.backend_pid
        started = time.monotonic()
        with pytest.raises(AdvisoryLockTimeout, match=rf"another migrator holds the migration lock \(pg_advisory_lock "
                                                      rf"72707369, .*\); waited 1\.\d s\. Held by: pid {pid} "
                                                      r"\(application 'other-migrator', client "):
            apply(fresh_db, bundle, replace(FAST, advisory_lock_timeout_s=1))
        assert 1.0 <= time.monotonic() - started < 5
    assert not table_exists(fresh_db, "_prisma_migrations")


# --- failures ---------------------------------------------------------------------------

ATOMIC_BROKEN = "20250101000000_atomic"
ATOMIC_SQL = "CREATE TABLE first_table (id int);\nINSERT INTO no_such_table VALUES (1);\nCREATE TABLE third (id int);\n"


def test_failing_transactional_migration_leaves_nothing_but_a_rolled_back_row(fresh_db: str, tmp_path: Path) -> None:
    root = tmp_path / "m"
    broken = plain_bundle(root, {ATOMIC_BROKEN: ATOMIC_SQL})
    path = root / f"{ATOMIC_BROKEN}.sql"
    with pytest.raises(MigrationFailed) as info:
        apply(fresh_db, broken, FAST)
    assert str(info.value).startswith(
        f'migration {ATOMIC_BROKEN} failed at {path}:2: SQLSTATE 42P01: relation "no_such_table" does not exist\n'
        "Nothing of it was applied")
    assert (info.value.sqlstate, info.value.exit_code) == ("42P01", 1)

    assert not table_exists(fresh_db, "first_table")
    (row,) = ledger(fresh_db)
    assert row["rolled_back_at"] is not None and row["finished_at"] is None
    assert "42P01" in row["logs"] and 'relation "no_such_table" does not exist' in row["logs"]
    assert states(fresh_db, broken) == {ATOMIC_BROKEN: PENDING}

    fixed = plain_bundle(root, {ATOMIC_BROKEN: ATOMIC_SQL.replace("no_such_table", "first_table")})
    assert [m.name for m in apply(fresh_db, fixed, FAST).applied] == [ATOMIC_BROKEN]
    assert status_of(fresh_db, fixed).clean
    assert scalar(fresh_db, "SELECT count(*) FROM first_table") == 1


STEPPED_SETUP = "20250101000000_setup"
STEPPED_BROKEN = "20250102000000_stepped"
STEPPED_SQL = "CREATE INDEX CONCURRENTLY t_a_idx ON t (a);\nINSERT INTO no_such_table VALUES (1);\n"


def test_failing_stepped_migration_is_failed_in_the_ledger_until_resolved(fresh_db: str, tmp_path: Path) -> None:
    root = tmp_path / "m"
    broken = plain_bundle(root, {STEPPED_SETUP: "CREATE TABLE t (a int);\nINSERT INTO t VALUES (1), (2);\n",
                                 STEPPED_BROKEN: STEPPED_SQL})
    path = root / f"{STEPPED_BROKEN}.sql"
    with pytest.raises(MigrationFailed, match=rf"^migration {STEPPED_BROKEN} failed at step 2 of 2, "
                                              rf"{re.escape(str(path))}:2: SQLSTATE 42P01: relation \"no_such_table\" "
                                              rf"does not exist\nSteps 1\.\.1 were applied and remain"):
        apply(fresh_db, broken, FAST)

    (row,) = ledger(fresh_db, STEPPED_BROKEN)
    assert row["finished_at"] is None and row["rolled_back_at"] is None
    assert row["applied_steps_count"] == 1
    assert "42P01" in row["logs"]
    assert scalar(fresh_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_a_idx'::regclass") is True
    assert states(fresh_db, broken)[STEPPED_BROKEN] == "failed"

    with pytest.raises(LedgerBlocked, match=rf"(?s)- {STEPPED_BROKEN} failed in an earlier run \(after 1 step\(s\)\).*"
                                            rf"`python -m schema_deploy resolve --rolled-back {STEPPED_BROKEN}`"):
        apply(fresh_db, broken, FAST)

    from schema_deploy.engine.resolve import resolve_rolled_back
    assert resolve_rolled_back(fresh_db, broken, STEPPED_BROKEN, FAST) == 1
    fixed = plain_bundle(root, {STEPPED_BROKEN: STEPPED_SQL.replace("no_such_table", "t")})
    (result,) = apply(fresh_db, fixed, FAST).applied
    assert result.steps[0].skipped  # the index from the failed run is valid: not built twice
    assert status_of(fresh_db, fixed).clean
    assert [(r["rolled_back_at"] is not None, r["applied_steps_count"]) for r in ledger(fresh_db, STEPPED_BROKEN)] == [
        (True, 1), (False, 2)]
    assert scalar(fresh_db, "SELECT count(*) FROM t") == 3


def test_finished_at_minus_started_at_is_how_long_a_one_transaction_migration_took(
        fresh_db: str, tmp_path: Path) -> None:
    slow = plain_bundle(tmp_path / "m", {ATOMIC_BROKEN: "CREATE TABLE a (id int);\nSELECT pg_sleep(0.3);\n"})
    apply(fresh_db, slow, FAST)
    (row,) = ledger(fresh_db)
    assert (row["finished_at"] - row["started_at"]).total_seconds() >= 0.3


# --- interrupted migrations resume -------------------------------------------------------

@pytest.mark.slow
def test_stepped_migration_out_of_lock_retries_is_interrupted_and_a_rerun_resumes_at_that_step(
        fresh_db: str, tmp_path: Path) -> None:
    bundle = plain_bundle(tmp_path / "m", {
        STEPPED_SETUP: "CREATE TABLE t (a int);\nCREATE TABLE u (b int);\n",
        STEPPED_BROKEN: "CREATE INDEX CONCURRENTLY t_a_idx ON t (a);\nALTER TABLE u ADD COLUMN c int;\n"})
    apply(fresh_db, bundle, FAST, to=STEPPED_SETUP)
    holder = hold_table_lock(fresh_db, "u")
    try:
        with pytest.raises(LockRetriesExhausted, match=rf"{STEPPED_BROKEN}\.sql:2\): gave up after 3 attempts"):
            apply(fresh_db, bundle, replace(FAST, lock_retries=2))
    finally:
        holder.rollback()
        holder.close()
    (row,) = ledger(fresh_db, STEPPED_BROKEN)
    assert (row["finished_at"], row["rolled_back_at"], row["applied_steps_count"]) == (None, None, 1)
    assert row["logs"].startswith(RETRYABLE_MARK)
    assert states(fresh_db, bundle)[STEPPED_BROKEN] == "interrupted"

    messages: list[str] = []
    apply(fresh_db, bundle, FAST, log=messages.append)
    assert f"{STEPPED_BROKEN}: resuming at step 2 of 2 (an earlier run stopped there)" in messages
    (row,) = ledger(fresh_db, STEPPED_BROKEN)
    assert row["finished_at"] is not None and row["applied_steps_count"] == 2 and row["logs"] is None
    assert status_of(fresh_db, bundle).clean


@pytest.mark.slow
def test_concurrent_index_stopped_by_an_old_snapshot_leaves_an_invalid_index_that_the_rerun_replaces(
        fresh_db: str, tmp_path: Path) -> None:
    bundle = plain_bundle(tmp_path / "m", {
        STEPPED_SETUP: "CREATE TABLE t (a int);\nINSERT INTO t SELECT generate_series(1, 100);\n",
        STEPPED_BROKEN: "CREATE INDEX CONCURRENTLY t_a_idx ON t (a);\nCREATE TABLE after_index (id int);\n"})
    apply(fresh_db, bundle, FAST, to=STEPPED_SETUP)
    # A long transaction with a snapshot: CREATE INDEX CONCURRENTLY must wait it out.
    reader = psycopg.connect(fresh_db, application_name="long-report")
    reader.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
    reader.execute("SELECT txid_current(), count(*) FROM t")
    try:
        with pytest.raises(LockRetriesExhausted, match=rf"(?s){STEPPED_BROKEN}\.sql:1\): gave up after 3 attempts"
                                                       r".*statement: CREATE INDEX CONCURRENTLY t_a_idx ON t \(a\)\n"
                                                       r".*application 'long-report'"):
            apply(fresh_db, bundle, replace(FAST, lock_retries=2, concurrent_lock_timeout_ms=100))
        assert scalar(fresh_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_a_idx'::regclass") is False
    finally:
        reader.rollback()
        reader.close()
    apply(fresh_db, bundle, FAST)
    assert scalar(fresh_db, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
    assert scalar(fresh_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = 't_a_idx'::regclass") is True
    assert status_of(fresh_db, bundle).clean


def test_row_left_by_a_killed_prisma_deploy_is_failed_and_apply_asks_for_resolve(fresh_db: str, bundle) -> None:
    # `prisma migrate deploy` inserts the row, then runs the script; killed in between, it leaves
    # a row with finished_at, rolled_back_at and logs all NULL, and whatever statements ran before
    # the kill persist. Re-running the file could apply them twice: Prisma says P3009, so do we.
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(LEDGER_DDL.format(table='"_prisma_migrations"'))
        conn.execute("INSERT INTO _prisma_migrations (id, checksum, migration_name) VALUES (%s, %s, %s)",
                     (str(uuid.uuid4()), bundle.by_name()[BASELINE].checksum, BASELINE))
    assert states(fresh_db, bundle)[BASELINE] == "failed"
    with pytest.raises(LedgerBlocked, match=rf"(?s){BASELINE} failed in an earlier run.*resolve --rolled-back {BASELINE}"):
        apply(fresh_db, bundle, FAST)


@pytest.mark.slow
def test_the_blocker_watch_names_a_blocker_and_stops_without_waiting_out_its_pause(fresh_db: str) -> None:
    from schema_deploy.engine.apply import BlockerWatch

    with psycopg.connect(fresh_db, autocommit=True) as setup:
        setup.execute("CREATE TABLE watch_probe (id int)")
    blocker = psycopg.connect(fresh_db)
    blocker.execute("LOCK TABLE watch_probe IN ACCESS EXCLUSIVE MODE")
    blocker_pid = blocker.info.backend_pid
    waiter = psycopg.connect(fresh_db, autocommit=True)
    waiting = threading.Thread(target=lambda: waiter.execute("SELECT count(*) FROM watch_probe"), daemon=True)
    watch = BlockerWatch(fresh_db, waiter.info.backend_pid, interval_s=30)
    try:
        waiting.start()
        deadline = time.monotonic() + 10
        watch.start()  # samples at once, then pauses 30 s; restarted until the waiter is seen queued
        while not watch.last and time.monotonic() < deadline:
            watch.stop()
            time.sleep(0.1)
            watch.start()
        t0 = time.monotonic()
        found = watch.stop()
        stopped_in = time.monotonic() - t0
    finally:
        blocker.rollback()
        blocker.close()
        waiting.join(10)
        waiter.close()
        watch.close()
    assert [session.pid for session in found] == [blocker_pid]
    assert stopped_in < 5, f"stop() took {stopped_in:.1f} s: it waited out the 30 s pause between samples"
