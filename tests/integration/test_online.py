"""Online mode ends where the SQL as written ends, and data prechecks stop bad deployments early."""
from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from engine_support import backfilling

from generate_data import generate
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply
from schema_deploy.engine.errors import LockRetriesExhausted
from schema_deploy.pg.fingerprint import diff_fingerprints, schema_fingerprint
from schema_deploy.pg.retry import Settings
from schema_deploy.plan.errors import PrecheckFailed
from schema_deploy.state.errors import LedgerBlocked
from schema_deploy.state.ledger import read_rows
from tests.conftest import drop_database, with_database

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS = REPO / "sql" / "migrations"
BASELINE = "20250915090000_baseline"
FAST = Settings(lock_timeout_ms=200, lock_retries=5, backoff_s=0.05, backoff_cap_s=0.2, advisory_lock_timeout_s=10)


@pytest.fixture
def second_db(stack_env: dict[str, str]):
    """Another fresh database beside `fresh_db`, for side-by-side comparisons."""
    base = stack_env["STAGING_DATABASE_URL"]
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(base, name)
    drop_database(base, name)


def fingerprint(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return schema_fingerprint(conn)


def write_bundle(root: Path, migrations: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, sql in migrations.items():
        (root / f"{name}.sql").write_text(sql)
    return root


@pytest.mark.slow
def test_epic5_online_ends_with_the_same_schema_as_written(fresh_db: str, second_db: str) -> None:
    bundle = load_bundle(MIGRATIONS)
    for url in (fresh_db, second_db):
        apply(url, bundle, FAST, to=BASELINE)
        generate(url, seed=7, scale="small")
    # The example after Epic 5 too: its backfill between the expand and the contract, NOT NULL and an index.
    written = apply(fresh_db, bundle, FAST, online=False, backfill=backfilling(fresh_db))
    online = apply(second_db, bundle, FAST, online=True, backfill=backfilling(second_db))
    assert [len(m.steps) for m in written.applied] == [1, 1, 1]
    assert [len(m.steps) for m in online.applied][1:] == [1, 5]  # the contract: a validated CHECK, the index
    assert len(online.applied[0].steps) == 16
    assert any("CONCURRENTLY" in s for s in online.applied[0].sql)
    assert any("NOT VALID" in s for s in online.applied[0].sql)
    assert diff_fingerprints(fingerprint(fresh_db), fingerprint(second_db), "as written", "online") == []
    with psycopg.connect(second_db) as conn:
        row = [r for r in read_rows(conn) if r.migration_name.endswith("epic5_schema_completion")][0]
        assert row.checksum == bundle.by_name()[row.migration_name].checksum
        assert row.applied_steps_count == 16 and row.finished_at is not None


EXISTING = """
CREATE TABLE parent (id TEXT PRIMARY KEY);
CREATE TABLE child (id TEXT PRIMARY KEY, parent_id TEXT, qty INTEGER, code TEXT);
INSERT INTO parent SELECT 'p' || g FROM generate_series(1, 50) g;
INSERT INTO child SELECT 'c' || g, 'p' || (1 + g % 50), g, 'code' || g FROM generate_series(1, 2000) g;
"""

REWRITES = {
    "create-index": 'CREATE INDEX "child_qty_idx" ON child (qty);',
    "create-unique-index": 'CREATE UNIQUE INDEX "child_code_key" ON child (code);',
    "foreign-key": 'ALTER TABLE child ADD CONSTRAINT "child_parent_fkey" FOREIGN KEY (parent_id) '
                   "REFERENCES parent (id) ON DELETE CASCADE;",
    "check": 'ALTER TABLE child ADD CONSTRAINT "child_qty_positive" CHECK (qty > 0);',
    "set-not-null": "ALTER TABLE child ALTER COLUMN parent_id SET NOT NULL;",
    "add-unique": 'ALTER TABLE child ADD CONSTRAINT "child_code_uniq" UNIQUE (code);',
    "mixed-alter": 'ALTER TABLE child ADD COLUMN note TEXT, ADD CONSTRAINT "child_qty_check" CHECK (qty < 100000);',
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(REWRITES))
def test_each_online_rewrite_is_equivalent_to_the_statement_as_written(
        case: str, fresh_db: str, second_db: str, tmp_path: Path) -> None:
    bundle = load_bundle(write_bundle(tmp_path / "b", {
        "20250101000000_existing": EXISTING, "20250102000000_change": REWRITES[case]}))
    for url in (fresh_db, second_db):
        apply(url, bundle, FAST, to="20250101000000_existing")
    apply(fresh_db, bundle, FAST, online=False)
    result = apply(second_db, bundle, FAST, online=True)
    executed = result.applied[0].sql
    assert executed != [REWRITES[case].rstrip(";")], "the statement was not rewritten"
    assert any("CONCURRENTLY" in s or "NOT VALID" in s for s in executed)
    assert diff_fingerprints(fingerprint(fresh_db), fingerprint(second_db), "as written", "online") == []


def test_plan_keeps_plain_forms_for_tables_created_in_the_same_deployment(fresh_db: str, tmp_path: Path) -> None:
    bundle = load_bundle(write_bundle(tmp_path / "b", {
        "20250101000000_new": EXISTING + 'CREATE INDEX "child_qty_idx" ON child (qty);'}))
    result = apply(fresh_db, bundle, FAST, online=True)
    assert len(result.applied[0].steps) == 1
    assert not any("CONCURRENTLY" in s for s in result.applied[0].sql)


@pytest.mark.slow
def test_orphan_rows_stop_apply_before_any_change_with_count_and_samples(fresh_db: str) -> None:
    bundle = load_bundle(MIGRATIONS)
    apply(fresh_db, bundle, FAST, to=BASELINE)
    generate(fresh_db, seed=3, scale="small", orphans=7)
    before = fingerprint(fresh_db)
    with pytest.raises(PrecheckFailed, match=r"(?s)nothing was changed.*migration\.sql:10: 7 rows of "
                       r"experiment_assignments whose \(experimentId\) has no row in personalization_experiments"
                       r".*samples: exp_missing_0001, .*fix: delete or re-point"):
        apply(fresh_db, bundle, FAST, online=True)
    assert fingerprint(fresh_db) == before
    with psycopg.connect(fresh_db) as conn:
        assert [r.migration_name for r in read_rows(conn)] == [BASELINE]


PRECHECK_CASES = {
    "duplicates": ("INSERT INTO child VALUES ('dup1', 'p1', 1, 'code7'), ('dup2', 'p1', 1, 'code7');",
                   'CREATE UNIQUE INDEX "child_code_key" ON child (code);',
                   r"1 duplicate \(code\) groups in child.*samples: code7"),
    "nulls": ("UPDATE child SET parent_id = NULL WHERE id IN ('c1', 'c2', 'c3');",
              "ALTER TABLE child ALTER COLUMN parent_id SET NOT NULL;",
              r"3 rows of child where parent_id IS NULL.*fix: backfill child.parent_id"),
    "check": ("UPDATE child SET qty = -1 WHERE id IN ('c1', 'c2');",
              'ALTER TABLE child ADD CONSTRAINT "child_qty_positive" CHECK (qty > 0);',
              r"2 rows of child violating CHECK \(qty > 0\)"),
    "orphans": ("INSERT INTO child VALUES ('o1', 'nope', 1, 'x');",
                'ALTER TABLE child ADD CONSTRAINT "child_parent_fkey" FOREIGN KEY (parent_id) REFERENCES parent (id);',
                r"1 rows of child whose \(parent_id\) has no row in parent \(id\).*samples: nope"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PRECHECK_CASES))
def test_each_precheck_reports_the_violating_rows(case: str, fresh_db: str, tmp_path: Path) -> None:
    anomaly, change, message = PRECHECK_CASES[case]
    bundle = load_bundle(write_bundle(tmp_path / "b", {
        "20250101000000_existing": EXISTING, "20250102000000_change": change}))
    apply(fresh_db, bundle, FAST, to="20250101000000_existing")
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(anomaly)
    for online in (False, True):
        with pytest.raises(PrecheckFailed, match=f"(?s){message}"):
            apply(fresh_db, bundle, FAST, online=online)


@pytest.mark.slow
def test_terminated_concurrent_build_leaves_invalid_index_that_retry_rebuilds(fresh_db: str, tmp_path: Path) -> None:
    bundle = load_bundle(write_bundle(tmp_path / "b", {
        "20250101000000_existing": EXISTING,
        "20250102000000_index": 'CREATE INDEX "child_qty_idx" ON child (qty);\nALTER TABLE child ADD COLUMN extra TEXT;'}))
    apply(fresh_db, bundle, FAST, to="20250101000000_existing")
    errors: list[BaseException] = []
    # An open transaction with a snapshot makes the concurrent build wait in its
    # "waiting for old snapshots" phase, with the index already in the catalog as INVALID.
    with psycopg.connect(fresh_db) as blocker:
        blocker.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        blocker.execute("SELECT count(*) FROM parent").fetchone()

        def run() -> None:
            try:
                apply(fresh_db, bundle, Settings(lock_timeout_ms=60_000, lock_retries=0), online=True)
            except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
                errors.append(exc)

        worker = threading.Thread(target=run)
        worker.start()
        with psycopg.connect(fresh_db, autocommit=True) as watcher:
            deadline = time.monotonic() + 20
            pid = None
            while time.monotonic() < deadline and pid is None:
                # The cluster is shared with the other test worker: only this database's build.
                row = watcher.execute("SELECT pid FROM pg_stat_progress_create_index "
                                      "WHERE datname = current_database()").fetchone()
                pid = row[0] if row else None
                time.sleep(0.05)
            assert pid, f"the concurrent build never started: {errors}"
            watcher.execute("SELECT pg_terminate_backend(%s)", (pid,))
            worker.join(30)
            assert not worker.is_alive(), "apply did not notice its terminated connection within 30 s"
            invalid = watcher.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0]
        blocker.rollback()
    assert errors and "lost the connection" in str(errors[0])
    assert invalid == 1
    result = apply(fresh_db, bundle, FAST, online=True)
    assert result.applied[0].resumed_from == 0
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0] == 0
        assert conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'child_qty_idx'::regclass").fetchone()[0]
        row = [r for r in read_rows(conn) if r.migration_name == "20250102000000_index"]
        assert len(row) == 1 and row[0].applied and row[0].applied_steps_count == 2


@pytest.mark.slow
def test_an_interrupted_online_run_cannot_be_resumed_with_a_different_plan(fresh_db: str, tmp_path: Path) -> None:
    bundle = load_bundle(write_bundle(tmp_path / "b", {
        "20250101000000_existing": EXISTING,
        "20250102000000_change": 'CREATE INDEX "child_qty_idx" ON child (qty);\nALTER TABLE child ADD COLUMN extra TEXT;'}))
    apply(fresh_db, bundle, FAST, to="20250101000000_existing")
    # Simulate a crash of an online run after its first step (the concurrent index).
    with psycopg.connect(fresh_db, autocommit=True) as blocker:
        blocker.execute("BEGIN")
        blocker.execute("LOCK TABLE child IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(LockRetriesExhausted):
            apply(fresh_db, bundle, Settings(lock_timeout_ms=50, lock_retries=1, backoff_s=0.01,
                                             concurrent_lock_timeout_ms=50), online=True)
        blocker.execute("ROLLBACK")
    with psycopg.connect(fresh_db) as conn:
        [row] = [r for r in read_rows(conn) if r.migration_name == "20250102000000_change"]
    assert row.resumable and row.plan_digest
    with pytest.raises(LedgerBlocked, match=r"interrupted after 0 step\(s\) of a different plan .*resume with the "
                                            r"same mode it started with"):
        apply(fresh_db, bundle, FAST, online=False)
    result = apply(fresh_db, bundle, FAST, online=True)
    assert result.applied[0].name == "20250102000000_change"
    with psycopg.connect(fresh_db) as conn:
        [row] = [r for r in read_rows(conn) if r.migration_name == "20250102000000_change"]
        assert row.applied and row.logs is None and row.applied_steps_count == 2


def test_an_existing_not_valid_constraint_is_validated_not_added_again(fresh_db: str, tmp_path: Path) -> None:
    bundle = load_bundle(write_bundle(tmp_path / "b", {
        "20250101000000_existing": EXISTING, "20250102000000_change": REWRITES["foreign-key"]}))
    apply(fresh_db, bundle, FAST, to="20250101000000_existing")
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # as an earlier attempt or a person left it
        conn.execute('ALTER TABLE child ADD CONSTRAINT "child_parent_fkey" FOREIGN KEY (parent_id) '
                     "REFERENCES parent (id) ON DELETE CASCADE NOT VALID")
    result = apply(fresh_db, bundle, FAST, online=True)
    assert result.applied[0].steps[0].skipped == [
        "ALTER TABLE child ADD CONSTRAINT child_parent_fkey FOREIGN KEY (parent_id) REFER"]
    with psycopg.connect(fresh_db) as conn:
        assert conn.execute("SELECT convalidated FROM pg_constraint WHERE conname = 'child_parent_fkey'").fetchone()[0]


def test_null_topic_ids_planted_by_the_generator_stop_a_set_not_null(fresh_db: str, tmp_path: Path) -> None:
    bundle = load_bundle(MIGRATIONS)
    apply(fresh_db, bundle, FAST, to=BASELINE)
    generate(fresh_db, seed=5, scale="small", null_topic_ids=5)
    extra = write_bundle(tmp_path / "b", {})
    import shutil
    shutil.copytree(MIGRATIONS, extra, dirs_exist_ok=True)
    (extra / "20251101000000_topic_required").mkdir()
    (extra / "20251101000000_topic_required" / "migration.sql").write_text(
        'ALTER TABLE "struggle_predictions" ALTER COLUMN "topicId" SET NOT NULL;\n')
    with pytest.raises(PrecheckFailed, match=r"5 rows of struggle_predictions where topicId IS NULL"):
        apply(fresh_db, load_bundle(extra), FAST, online=True)


@pytest.mark.parametrize("sql", [
    "CREATE INDEX ON child (qty);",
    'ALTER TABLE child ADD CONSTRAINT "u" UNIQUE (code) DEFERRABLE INITIALLY DEFERRED;',
    'ALTER TABLE child ADD CONSTRAINT "u" UNIQUE NULLS NOT DISTINCT (code);',
])
def test_statements_whose_online_form_would_differ_run_as_written(sql: str) -> None:
    from schema_deploy.bundle.parse import parse_sql
    from schema_deploy.plan.online import rewrite_statement

    [stmt] = parse_sql(sql)
    assert rewrite_statement(stmt, {"child"}) is None
