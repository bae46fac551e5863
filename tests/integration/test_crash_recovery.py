"""A deployment killed in the middle of `CREATE INDEX CONCURRENTLY` converges when run again.

The index build is made slow without gigabytes of data: the index expression
calls an IMMUTABLE function that sleeps about a millisecond per row, so 1,500
rows take a few seconds to index and the machine stays idle meanwhile.
"""
from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest
from engine_support import FAST, REPO, cli_command, cli_env, ledger, plain_bundle, scalar

from schema_deploy.engine.apply import apply

SETUP = "20250101000000_big_table"
INDEX = "20250102000000_big_index"
SETUP_SQL = """\
CREATE TABLE big (id int PRIMARY KEY, payload text NOT NULL);
INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, 1500) AS g;
CREATE TABLE after_index_log (note text NOT NULL);
-- Declared IMMUTABLE so it may index; sleeps so that building the index takes seconds.
CREATE FUNCTION slow_key(int) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  PERFORM pg_sleep(0.001);
  RETURN $1;
END $$;
"""
INDEX_SQL = """\
CREATE INDEX CONCURRENTLY "big_idx" ON big (slow_key(id));
INSERT INTO after_index_log VALUES ('after the index');
"""


def wait_for_index_build(url: str, proc: subprocess.Popen, timeout_s: float = 20) -> None:
    """Poll until the server is building big_idx (so it exists, INVALID) on the process's behalf."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            phase = conn.execute("SELECT phase FROM pg_stat_progress_create_index "
                                 "WHERE datname = current_database() AND relid = to_regclass('big')").fetchone()
            if phase and phase[0].startswith("building index"):  # e.g. 'building index: scanning table'
                return
            if proc.poll() is not None:
                pytest.fail(f"apply exited ({proc.returncode}) before the index build: {proc.communicate()}")
            time.sleep(0.05)
    pytest.fail("the index build did not start")


@pytest.mark.slow
def test_apply_killed_during_a_concurrent_index_build_converges_when_run_again(fresh_db: str, tmp_path: Path) -> None:
    bundle = plain_bundle(tmp_path / "m", {SETUP: SETUP_SQL, INDEX: INDEX_SQL})
    proc = subprocess.Popen(cli_command("apply", "--db", fresh_db, "--migrations", str(tmp_path / "m")),
                            cwd=REPO, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_for_index_build(fresh_db, proc)
        assert scalar(fresh_db, "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass('big_idx')") is False
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()

    (interrupted,) = ledger(fresh_db, INDEX)
    assert interrupted["finished_at"] is None and interrupted["logs"].startswith("[schema-deploy: in progress] plan=")

    messages: list[str] = []
    # The orphaned backend still holds the migration lock until the server notices the
    # client is gone (client_connection_check_interval = 1s) and aborts the build.
    (result,) = apply(fresh_db, bundle, replace(FAST, advisory_lock_timeout_s=30), log=messages.append).applied
    assert result.name == INDEX
    assert any(f"{INDEX}: resuming at step 1 of 2" in m for m in messages), messages

    (row,) = ledger(fresh_db, INDEX)
    assert row["id"] == interrupted["id"]
    assert row["finished_at"] is not None and row["rolled_back_at"] is None and row["logs"] is None
    assert row["applied_steps_count"] == 2
    assert [r["finished_at"] is not None for r in ledger(fresh_db, SETUP)] == [True]
    assert scalar(fresh_db, "SELECT indisvalid AND indisready FROM pg_index "
                            "WHERE indexrelid = to_regclass('big_idx')") is True
    assert scalar(fresh_db, "SELECT count(*) FROM pg_index WHERE NOT indisvalid") == 0
    assert scalar(fresh_db, "SELECT count(*) FROM after_index_log") == 1
