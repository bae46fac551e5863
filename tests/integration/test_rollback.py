"""Down migrations: `rollback` runs down.sql through apply's engine and leaves the ledger as Prisma would.

Prisma's `migrate deploy` counts a migration as applied only through a row whose
`rolled_back_at` is NULL; `rollback` sets `rolled_back_at` on the applied row, so
the migration is pending again and the next deploy adds a second row beside it.
"""
from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import psycopg
import pytest
from engine_support import (BASELINE, CONTRACT, EPIC5, EXPAND, FAST, MIGRATIONS, backfilling, copy_bundle, ledger,
                            plain_bundle, run_cli)

from generate_data import generate
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.bundle.errors import MigrationFileError, SqlSyntaxError
from schema_deploy.engine.apply import apply, load_state
from schema_deploy.engine.down import down
from schema_deploy.engine.errors import (LockRetriesExhausted, NoDownMigration, NotApplied, RollbackFailed,
                                         RollbackRefused)
from schema_deploy.errors import UsageError
from schema_deploy.pg.db import connect
from schema_deploy.pg.fingerprint import diff_fingerprints, schema_fingerprint

EPIC5_SHA256 = "57965b6ac4b88a1e29b62a7d04cf43fc6c759b7ab1d22d401bcd9fb73186749e"
TABLES = ("personalization_experiments", "experiment_assignments", "behavioral_events", "behavioral_patterns",
          "struggle_predictions", "recommendations", "personalization_configs", "study_schedule_recommendations")


@pytest.fixture
def bundle(tmp_path: Path):
    """The shipped bundle up to Epic 5, whose down.sql these tests run (the example after it: its own test)."""
    return load_bundle(copy_bundle(tmp_path / "epic5", epic5_only=True))


@pytest.fixture
def baseline_db(fresh_db: str, bundle) -> str:
    """A fresh database at the baseline, with the small generated data set."""
    apply(fresh_db, bundle, FAST, to=BASELINE)
    generate(fresh_db, seed=7, scale="small")
    return fresh_db


def fingerprint(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return schema_fingerprint(conn)


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}


def states(url: str, bundle) -> dict[str, str]:
    with connect(url) as conn:
        status, _ = load_state(conn, bundle)
    return {s.name: s.state for s in status.states}


def test_down_sql_is_not_part_of_the_bundle_and_leaves_the_epic5_checksum_unchanged(bundle) -> None:
    epic5 = bundle.by_name()[EPIC5]
    assert epic5.path.name == "migration.sql" and epic5.down_path == epic5.path.parent / "down.sql"
    assert epic5.checksum == EPIC5_SHA256 == hashlib.sha256(epic5.path.read_bytes()).hexdigest()
    assert [m.name for m in bundle.migrations] == [BASELINE, EPIC5]
    assert all(m.path.name == "migration.sql" for m in bundle.migrations)


@pytest.mark.slow
def test_deploy_rollback_deploy_ends_where_a_single_deploy_does_with_the_data_kept(
        baseline_db: str, bundle, stack_env: dict[str, str]) -> None:
    baseline_fp, baseline_rows = fingerprint(baseline_db), counts(baseline_db)
    apply(baseline_db, bundle, FAST, online=True)
    deployed_fp = fingerprint(baseline_db)
    assert deployed_fp != baseline_fp

    result = down(baseline_db, bundle, settings=FAST, online=True)
    assert result.names == [EPIC5]
    assert len(result.rolled_back[0].steps) == 13  # 12 concurrent index drops, then one transaction
    assert diff_fingerprints(baseline_fp, fingerprint(baseline_db), "baseline", "rolled back") == []
    assert counts(baseline_db) == baseline_rows
    assert states(baseline_db, bundle) == {BASELINE: "applied", EPIC5: "pending"}
    (row,) = ledger(baseline_db, EPIC5)
    assert row["finished_at"] is not None and row["rolled_back_at"] is not None
    assert row["rolled_back_at"] > row["finished_at"] and row["applied_steps_count"] == 16

    apply(baseline_db, bundle, FAST, online=True)
    assert fingerprint(baseline_db) == deployed_fp
    assert counts(baseline_db) == baseline_rows
    old, new = ledger(baseline_db, EPIC5)  # Prisma's shape: the rolled-back row stays, a new one is applied
    assert old["id"] == row["id"] and old["rolled_back_at"] == row["rolled_back_at"]
    assert new["finished_at"] is not None and new["rolled_back_at"] is None and new["checksum"] == EPIC5_SHA256
    assert states(baseline_db, bundle) == {BASELINE: "applied", EPIC5: "applied"}
    assert len(ledger(baseline_db, BASELINE)) == 1


@pytest.mark.slow
def test_a_rollback_half_done_by_hand_is_finished_by_running_it_again(baseline_db: str, bundle) -> None:
    baseline_fp = fingerprint(baseline_db)
    apply(baseline_db, bundle, FAST, online=True)
    with psycopg.connect(baseline_db, autocommit=True) as conn:  # as if a rollback died after a few steps
        conn.execute('DROP INDEX "personalization_configs_userId_avgReward_idx"')
        conn.execute('ALTER TABLE "study_schedule_recommendations" DROP COLUMN "appliedAt"')
    logs: list[str] = []
    result = down(baseline_db, bundle, settings=FAST, log=logs.append)
    skipped = [s for step in result.rolled_back[0].steps for s in step.skipped]
    assert any("personalization_configs_userId_avgReward_idx" in s for s in skipped)
    assert fingerprint(baseline_db) == baseline_fp
    assert states(baseline_db, bundle)[EPIC5] == "pending"


@pytest.mark.slow
def test_a_held_lock_is_retried_and_then_the_rollback_completes(baseline_db: str, bundle) -> None:
    apply(baseline_db, bundle, FAST, online=True)
    holder = psycopg.connect(baseline_db)
    holder.execute('SELECT 1 FROM "experiment_assignments" LIMIT 1')  # ACCESS SHARE until rollback
    timer = threading.Timer(1.0, holder.rollback)
    timer.start()
    logs: list[str] = []
    try:
        down(baseline_db, bundle, settings=FAST, log=logs.append)
    finally:
        timer.cancel()
        holder.close()
    assert any("lock not granted within" in line for line in logs)
    assert states(baseline_db, bundle)[EPIC5] == "pending"


@pytest.mark.slow
def test_running_out_of_lock_retries_keeps_the_migration_applied_and_a_rerun_finishes(
        baseline_db: str, bundle) -> None:
    from schema_deploy.pg.retry import Settings

    apply(baseline_db, bundle, FAST, online=True)
    holder = psycopg.connect(baseline_db)
    holder.execute('SELECT 1 FROM "experiment_assignments" LIMIT 1')
    few = Settings(lock_timeout_ms=20, max_lock_timeout_ms=20, lock_retries=1, backoff_s=0.01, backoff_cap_s=0.01)
    try:
        with pytest.raises(LockRetriesExhausted, match=rf"^{EPIC5} \(.*down\.sql:\d+\): gave up after 2 attempts"):
            down(baseline_db, bundle, settings=few)
    finally:
        holder.close()
    assert states(baseline_db, bundle)[EPIC5] == "applied"
    down(baseline_db, bundle, settings=FAST)
    assert states(baseline_db, bundle)[EPIC5] == "pending"


@pytest.mark.slow
def test_cli_rollback_then_status_shows_epic5_pending(baseline_db: str, bundle) -> None:
    apply(baseline_db, bundle, FAST, online=True)
    run = run_cli("rollback", "--db", baseline_db, "--steps", "1")
    assert run.returncode == 0, run.stderr
    assert f"rolled back {EPIC5} in" in run.stdout and "_prisma_migrations marks it rolled back" in run.stderr
    status = run_cli("status", "--db", baseline_db)
    assert status.returncode == 1 and EPIC5 in status.stdout and "pending" in status.stdout


@pytest.mark.slow
def test_the_examples_contract_and_expand_roll_back_to_epic5s_schema_and_deploy_again(baseline_db: str) -> None:
    shipped = load_bundle(MIGRATIONS)
    apply(baseline_db, shipped, FAST, online=True, to=EPIC5)
    at_epic5, rows = fingerprint(baseline_db), counts(baseline_db)
    apply(baseline_db, shipped, FAST, online=True, backfill=backfilling(baseline_db))
    assert fingerprint(baseline_db) != at_epic5

    result = down(baseline_db, shipped, settings=FAST, online=True, steps=2)
    assert result.names == [CONTRACT, EXPAND]
    assert diff_fingerprints(at_epic5, fingerprint(baseline_db), "at Epic 5", "rolled back") == []
    assert counts(baseline_db) == rows
    assert states(baseline_db, shipped) == {BASELINE: "applied", EPIC5: "applied", EXPAND: "pending",
                                            CONTRACT: "pending"}
    # The backfill, done before the rollback, starts again from the first key: one pass, every row once.
    again = apply(baseline_db, shipped, FAST, online=True, backfill=backfilling(baseline_db))
    assert [m.name for m in again.applied] == [EXPAND, CONTRACT]
    (backfill,) = again.backfills
    assert (backfill["state"], backfill["passes"], backfill["rows_done"]) == ("done", 1, rows["behavioral_events"])


# --- refusals: nothing changes --------------------------------------------------------------

def test_a_migration_without_down_sql_is_refused_naming_the_file_expected(baseline_db: str, bundle) -> None:
    apply(baseline_db, bundle, FAST, online=True)
    before = fingerprint(baseline_db)
    with pytest.raises(NoDownMigration, match=(
            rf"^cannot roll back {BASELINE}: it has no down migration; expected "
            rf"{bundle.by_name()[BASELINE].path.parent / 'down.sql'}\. Write the SQL that reverses migration\.sql "
            "there")):
        down(baseline_db, bundle, to=BASELINE, settings=FAST)
    assert fingerprint(baseline_db) == before  # Epic 5 was not undone either: the check comes first
    assert states(baseline_db, bundle) == {BASELINE: "applied", EPIC5: "applied"}


def test_rolling_back_a_migration_that_is_not_applied_is_refused(baseline_db: str, bundle) -> None:
    with pytest.raises(NotApplied, match=(
            rf"^cannot roll back {EPIC5}: it is not applied to this database \(its state is pending\)\. "
            rf"Only applied migrations can be rolled back; the newest applied ones are: {BASELINE}\.")):
        down(baseline_db, bundle, to=EPIC5, settings=FAST)


def test_a_plain_layout_migration_is_refused_explaining_down_migrations_need_folders(
        fresh_db: str, tmp_path: Path) -> None:
    bundle = plain_bundle(tmp_path / "m", {"20250101000000_t": "CREATE TABLE t (a int);\n"})
    apply(fresh_db, bundle, FAST)
    with pytest.raises(NoDownMigration, match=r"down migrations need Prisma's folder layout"):
        down(fresh_db, bundle, settings=FAST)


@pytest.mark.slow
def test_a_syntax_error_in_down_sql_is_reported_before_anything_runs(baseline_db: str, tmp_path: Path) -> None:
    root = copy_bundle(tmp_path, epic5_only=True)
    bundle = load_bundle(root)
    apply(baseline_db, bundle, FAST, online=True)
    before = fingerprint(baseline_db)
    down_sql = root / EPIC5 / "down.sql"
    down_sql.write_text(down_sql.read_text() + "\nALTER TABLE oops DROP COLUMN;\n")
    with pytest.raises(SqlSyntaxError, match=rf"down\.sql:\d+:\d+: syntax error"):
        down(baseline_db, load_bundle(root), settings=FAST)
    assert fingerprint(baseline_db) == before


@pytest.mark.slow
@pytest.mark.parametrize("content, message", [
    (b"  \n\t\n", r"down\.sql: is empty\. Write the migration's SQL into it"),
    (b"-- nothing to undo\n", r"down\.sql: holds no SQL statement, only comments: rolling back would mark the "
                             r"migration pending while undoing nothing\. Write the SQL that reverses migration\.sql"),
    (b"\xef\xbb\xbfDROP TABLE x;\n", r"down\.sql:1:1: starts with a byte-order mark \(EF BB BF\)"),
    (b"-- caf\xe9\nDROP TABLE x;\n", r"down\.sql:1:7: byte 0xe9 \(file offset 6\) is not UTF-8\. Save the file as UTF-8"),
], ids=["empty", "comments-only", "byte-order-mark", "not-utf8"])
def test_a_down_sql_that_is_not_sql_is_refused_before_anything_runs(
        baseline_db: str, tmp_path: Path, content: bytes, message: str) -> None:
    """An empty down.sql would "roll back" by running nothing while the ledger said pending again."""
    root = copy_bundle(tmp_path, epic5_only=True)
    bundle = load_bundle(root)
    apply(baseline_db, bundle, FAST, online=True)
    before = fingerprint(baseline_db)
    (root / EPIC5 / "down.sql").write_bytes(content)
    with pytest.raises(MigrationFileError, match=message):
        down(baseline_db, load_bundle(root), settings=FAST)
    assert fingerprint(baseline_db) == before
    assert states(baseline_db, bundle)[EPIC5] == "applied"


@pytest.mark.slow
def test_a_failing_down_statement_names_the_file_line_and_keeps_the_migration_applied(
        baseline_db: str, tmp_path: Path) -> None:
    root = copy_bundle(tmp_path, epic5_only=True)
    bundle = load_bundle(root)
    apply(baseline_db, bundle, FAST, online=True)
    (root / EPIC5 / "down.sql").write_text('DROP INDEX CONCURRENTLY IF EXISTS "recommendations_userId_createdAt_idx";\n'
                                           'ALTER TABLE "no_such_table" DROP COLUMN "x";\n')
    with pytest.raises(RollbackFailed, match=(
            rf"^rollback of {EPIC5} failed at step 2 of 2, .*down\.sql:2: SQLSTATE 42P01: relation \"no_such_table\" "
            rf"does not exist\nSteps 1\.\.1 of 2 ran and stay committed; _prisma_migrations still records {EPIC5} "
            r"as applied\.")):
        down(baseline_db, load_bundle(root), settings=FAST)
    assert states(baseline_db, bundle)[EPIC5] == "applied"


def test_a_failed_migration_in_the_ledger_blocks_a_rollback(fresh_db: str, tmp_path: Path) -> None:
    from schema_deploy.engine.errors import MigrationFailed

    bundle = plain_bundle(tmp_path / "m", {
        "20250101000000_setup": "CREATE TABLE t (a int);\n",
        "20250102000000_bad": "CREATE INDEX CONCURRENTLY t_a_idx ON t (a);\nINSERT INTO nope VALUES (1);\n"})
    with pytest.raises(MigrationFailed):
        apply(fresh_db, bundle, FAST)
    with pytest.raises(RollbackRefused, match=(r"^refusing to roll back: the ledger is not in a state to undo from; "
                                               r"nothing was changed\.\n- 20250102000000_bad is failed")):
        down(fresh_db, bundle, settings=FAST)


def test_steps_and_to_together_are_a_usage_error(fresh_db: str, bundle) -> None:
    with pytest.raises(UsageError, match=r"^give either steps or to"):
        down(fresh_db, bundle, steps=1, to=EPIC5)


@pytest.mark.slow
def test_to_names_the_oldest_migration_to_undo_and_the_cli_reports_json(baseline_db: str, bundle) -> None:
    import json

    apply(baseline_db, bundle, FAST, online=True)
    run = run_cli("rollback", "--db", baseline_db, "--to", EPIC5, "--json")
    assert run.returncode == 0, run.stderr
    assert [m["name"] for m in json.loads(run.stdout)["rolled_back"]] == [EPIC5]
    assert states(baseline_db, bundle) == {BASELINE: "applied", EPIC5: "pending"}
    again = run_cli("rollback", "--db", baseline_db, "--to", EPIC5)
    assert again.returncode == 1 and f"error: cannot roll back {EPIC5}: it is not applied" in again.stderr
