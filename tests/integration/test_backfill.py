"""Backfills on real PostgreSQL: keyset batches on a text key, every row updated exactly once even across a
kill -9, the application's row locks, operators' pause/cancel, a `where` that never converges, and
(on a private primary/replica pair) paused replay pausing the backfill.

Rows updated twice are counted, not assumed: a trigger increments `touched` on every UPDATE made by
the backfill's own session (told apart by its application_name)."""
from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from schema_deploy.backfill import checkpoint
from schema_deploy.backfill.engine import APPLICATION, Runner
from schema_deploy.backfill.errors import BackfillBusy, BackfillLocked, BackfillNotConverging, BackfillRefused
from schema_deploy.backfill.spec import load_spec
from schema_deploy.config.health import MB, HealthSettings
from schema_deploy.health.gate import HealthGate
from tests.integration.engine_support import run_cli, scalar
from tests.replica_pair import replica_pair

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
ROWS = 20_000

# Text keys (as Prisma's cuid/uuid ids): their order is not the insert order.
TABLE = f"""
CREATE TABLE events (id text PRIMARY KEY, ts timestamptz NOT NULL, day date, touched int NOT NULL DEFAULT 0);
INSERT INTO events (id, ts) SELECT md5(g::text), timestamptz '2026-01-01' + g * interval '1 minute'
FROM generate_series(1, {ROWS}) g;
CREATE FUNCTION count_backfill_updates() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF current_setting('application_name') = '{APPLICATION}' THEN NEW.touched := OLD.touched + 1; END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER events_touched BEFORE UPDATE ON events FOR EACH ROW EXECUTE FUNCTION count_backfill_updates();
"""
SPEC = """table: events
key: id
set:
  day: (ts AT TIME ZONE 'UTC')::date
where: day IS NULL
batch: {{target_ms: {target_ms}, min_rows: {min_rows}, max_rows: {max_rows}, first_rows: {first_rows}}}
lock_timeout_ms: {lock_timeout_ms}
wal_budget_mb_per_s: {wal}
"""


def spec_of(tmp_path: Path, name: str = "20261201000100_event_day", text: str | None = None, **batch):
    options = {"target_ms": 50, "min_rows": 200, "max_rows": 2000, "first_rows": 500, "lock_timeout_ms": 200,
               "wal": 64, **batch}
    path = tmp_path / name / "backfill.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if text is not None else SPEC.format(**options))
    return load_spec(name, path, path.read_bytes())


@pytest.fixture
def events(fresh_db: str) -> str:
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute(TABLE)
    return fresh_db


def counts(url: str) -> tuple[int, int, int]:
    """(rows still to do, rows the backfill updated more than once, rows it never updated)."""
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FILTER (WHERE day IS NULL), count(*) FILTER (WHERE touched > 1), "
                            "count(*) FILTER (WHERE touched = 0) FROM events").fetchone()


def point(url: str, backfill: str) -> checkpoint.Checkpoint:
    with psycopg.connect(url) as conn:
        (found,) = checkpoint.read(conn, backfill)
    return found


def test_a_backfill_walks_a_text_key_and_updates_every_row_exactly_once(events: str, tmp_path: Path) -> None:
    said: list[str] = []
    progress: list = []
    result = Runner(events, spec_of(tmp_path), log=said.append, on_progress=progress.append).run()
    assert (result.state, result.rows_done, result.rows_this_run) == ("done", ROWS, ROWS)
    assert counts(events) == (0, 0, 0)
    assert result.batches_this_run == point(events, result.id).batches > 5  # batches, not one statement
    assert point(events, result.id).state == "done" and point(events, result.id).wal_bytes > 0
    assert progress[-1].rows_done == ROWS and progress[-1].fraction == 1.0
    assert all(p.batch_rows <= 2000 for p in progress)
    assert said[0].startswith(f"backfill {result.id}: events.day where day IS NULL") and f"{ROWS} rows to do" in said[0]
    # Done is done: a retry changes nothing.
    again = Runner(events, spec_of(tmp_path), log=said.append).run()
    assert (again.state, again.rows_this_run) == ("done", 0) and said[-1].endswith("already done (20000 rows); nothing to do")


KILLER = """
import sys
import time
from pathlib import Path
from schema_deploy.backfill.engine import Runner
from schema_deploy.backfill.spec import load_spec
path = Path(sys.argv[2])
Runner(sys.argv[1], load_spec(path.parent.name, path, path.read_bytes()), on_progress=lambda p: time.sleep(0.02)).run()
"""


def test_a_kill_at_a_random_batch_resumes_at_the_checkpoint_with_no_row_updated_twice(events: str,
                                                                                      tmp_path: Path) -> None:
    # 200 batches of 100 rows, 20 ms apart (the killed process sleeps in on_progress): several seconds.
    spec = spec_of(tmp_path, min_rows=100, max_rows=100, first_rows=100, target_ms=20)
    stop_at = random.Random(os.getpid()).randrange(2_000, 15_000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", KILLER, events, str(spec.path)], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            with psycopg.connect(events) as conn:
                found = checkpoint.read(conn, spec.id) if conn.execute(
                    "SELECT to_regclass('schema_deploy.backfills')").fetchone()[0] else []
            if found and found[0].rows_done >= stop_at:
                break
            assert proc.poll() is None, f"it ended before the kill: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the backfill did not get going"
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = point(events, spec.id)
    assert killed.state == "running" and 0 < killed.rows_done < ROWS
    # The checkpoint and the table agree: what it says is done is done, and nothing more.
    left, twice, _ = counts(events)
    assert (left, twice) == (ROWS - killed.rows_done, 0)

    result = Runner(events, spec, sleep=lambda s: None).run()  # unpaced: the rest at once
    assert result.resumed_after_key == killed.last_key
    assert (result.state, result.rows_done, result.rows_this_run) == ("done", ROWS, ROWS - killed.rows_done)
    assert counts(events) == (0, 0, 0)


def test_a_set_that_leaves_rows_selected_stops_naming_a_key_and_keeps_nothing_of_that_batch(events: str,
                                                                                            tmp_path: Path) -> None:
    text = SPEC.format(target_ms=50, min_rows=100, max_rows=100, first_rows=100, lock_timeout_ms=200, wal=64).replace(
        "day: (ts AT TIME ZONE 'UTC')::date", "day: CASE WHEN ts < '2026-01-05' THEN ts::date END")
    spec = spec_of(tmp_path, text=text)
    with pytest.raises(BackfillNotConverging) as err:
        Runner(events, spec).run()
    done = point(events, spec.id)
    assert re.fullmatch(
        rf"backfill {spec.id}: stopped: after its `set`, \d+ row\(s\) of this batch still match `where` \(day IS NULL\), "
        r"e\.g\. id = [0-9a-f]{32}: they would be selected again for ever\. The batch that showed it was rolled back; "
        rf"{done.rows_done} rows done before it stay done \(the checkpoint keeps them\)\. Fix backfill\.yaml so that "
        r"each row's new values no longer match `where` \(or, for rows the application writes meanwhile, add a "
        r"trigger or a default in the migration before it\), then run the backfill again: an edited backfill\.yaml "
        r"starts a new checkpoint\.", str(err.value)), str(err.value)
    assert done.state == "failed" and done.message == str(err.value)
    left, twice, _ = counts(events)
    assert (left, twice) == (ROWS - done.rows_done, 0)


def test_rows_the_application_holds_make_the_batch_retry_without_holding_the_application(events: str,
                                                                                          tmp_path: Path) -> None:
    spec = spec_of(tmp_path, lock_timeout_ms=200)
    with psycopg.connect(events) as app:
        (first,) = app.execute("SELECT id FROM events ORDER BY id LIMIT 1 OFFSET 10").fetchone()
        app.execute("UPDATE events SET ts = ts WHERE id = %s", (first,))  # the application holds row 11
        said: list[str] = []
        outcome: dict = {}
        runner = threading.Thread(target=lambda: outcome.update(result=Runner(events, spec, log=said.append).run()))
        runner.start()
        deadline = time.monotonic() + 30
        while not any("locked by another session" in s for s in said):
            assert time.monotonic() < deadline, said
            time.sleep(0.02)
        # Meanwhile the application's own writes to rows of that batch wait at most one lock_timeout.
        began = time.monotonic()
        app.execute("UPDATE events SET ts = ts WHERE id = (SELECT id FROM events ORDER BY id LIMIT 1)")
        held = time.monotonic() - began
        app.commit()
    runner.join(60)
    result = outcome["result"]
    assert held < 0.2 + 0.5, f"the application waited {held:.2f} s for the backfill"
    assert result.state == "done" and result.lock_retries >= 1
    assert f"backfill {spec.id}: rows after key (first) are locked by another session (lock_timeout 200 ms); " \
           f"retrying with 250 rows" in said
    assert counts(events) == (0, 0, 0)


def test_an_operator_pauses_a_running_backfill_which_then_refuses_to_run_until_resumed(events: str,
                                                                                        tmp_path: Path) -> None:
    spec = spec_of(tmp_path, min_rows=100, max_rows=100, first_rows=100)
    outcome: dict = {}
    slow = Runner(events, spec, on_progress=lambda p: time.sleep(0.1))  # 200 batches, over 20 s in all
    runner = threading.Thread(target=lambda: outcome.update(result=slow.run()))
    runner.start()
    deadline = time.monotonic() + 30
    while not (scalar(events, "SELECT to_regclass('schema_deploy.backfills') IS NOT NULL")
               and point(events, spec.id).rows_done >= 1000):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    asked = run_cli("backfill", "pause", "--name", spec.id, "--by", "alice", "--db", events)
    assert asked.returncode == 0, asked.stderr
    assert asked.stdout.strip() == f"{spec.id}: running, pause requested: the running backfill stops at its next batch"
    runner.join(30)
    paused = outcome["result"]
    assert (paused.state, paused.requested_by) == ("paused", "alice") and paused.rows_done < ROWS
    at_pause = point(events, spec.id)
    assert (at_pause.state, at_pause.rows_done) == ("paused", paused.rows_done)

    with pytest.raises(BackfillRefused) as err:
        Runner(events, spec).run()
    assert str(err.value) == (f"backfill {spec.id}: it is paused by alice at {paused.rows_done} rows. Nothing was "
                              f"changed. Resume it first: python -m schema_deploy backfill resume --name {spec.id}.")
    assert run_cli("backfill", "resume", "--name", spec.id, "--by", "bob", "--db", events).returncode == 0
    result = Runner(events, spec, sleep=lambda s: None).run()  # unpaced: the rest at once
    assert (result.state, result.rows_done, result.resumed_after_key) == ("done", ROWS, at_pause.last_key)
    assert counts(events) == (0, 0, 0)
    status = run_cli("backfill", "status", "--db", events)
    assert status.stdout.startswith(f"{spec.id}: done, {ROWS} of ~{ROWS} rows, ")


def test_a_backfill_waits_while_the_replica_lags_naming_the_signal_and_goes_on_when_replay_resumes(
        tmp_path: Path) -> None:
    with replica_pair("backfill") as pair:
        name = f"t_backfill_{secrets.token_hex(4)}"
        url = pair.database(name)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(TABLE)
        pair.caught_up()
        spec = spec_of(tmp_path)
        gate = HealthGate(url, HealthSettings(max_replica_lag_bytes=1 * MB, poll_s=0.2, max_wait_s=60))
        said: list[str] = []
        outcome: dict = {}
        pair.replay(paused=True)
        pair.fill(mb=3)
        runner = threading.Thread(target=lambda: outcome.update(result=Runner(url, spec, gate=gate,
                                                                              log=said.append).run()))
        runner.start()
        try:
            deadline = time.monotonic() + 30
            while not any("paused for the database's health" in s for s in said):
                assert time.monotonic() < deadline, said
                time.sleep(0.05)
            time.sleep(1)
            assert runner.is_alive() and counts(url)[0] == ROWS  # not one batch ran while it lagged
        finally:
            pair.replay(paused=False)
        runner.join(60)
        gate.close()
        result = outcome["result"]
        assert result.state == "done" and counts(url) == (0, 0, 0)
        (pause,) = result.pauses
        assert re.fullmatch(r"replica health_replica \(local socket, streaming\) replay lag \d+\.\d MB \(over 1\.0 MB.*",
                            pause["reason"]), pause
        assert pause["seconds"] >= 1
        assert point(url, spec.id).pauses[0]["reason"] == pause["reason"]
        pair.drop(name)


def test_the_cli_runs_a_bundles_backfill_only_once_its_migration_is_applied(fresh_db: str, tmp_path: Path) -> None:
    name = "20261201000100_event_day"
    folder = tmp_path / "migrations" / name
    folder.mkdir(parents=True)
    (folder / "migration.sql").write_text(TABLE)
    (folder / "backfill.yaml").write_text(SPEC.format(target_ms=50, min_rows=200, max_rows=5000, first_rows=1000,
                                                      lock_timeout_ms=200, wal=64))
    bundle = ["--migrations", str(tmp_path / "migrations"), "--db", fresh_db]
    early = run_cli("backfill", "run", *bundle)
    assert early.returncode == 1, early.stderr
    assert early.stderr.strip() == (f"error: backfill {name}: its migration {name} is not applied on this database. "
                                    f"Nothing was changed. Apply it first (python -m schema_deploy apply --to {name}).")
    unknown = run_cli("backfill", "run", "--name", "20261201000000_nope", *bundle)
    assert unknown.returncode == 2 and unknown.stderr.strip() == (
        f"error: --name 20261201000000_nope: no such migration with a backfill.yaml in {tmp_path / 'migrations'}; "
        f"those with one: {name}.")
    assert run_cli("apply", *bundle).returncode == 0
    done = run_cli("backfill", "run", *bundle)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"backfill {name}: done: {ROWS} rows this run in ")
    assert counts(fresh_db) == (0, 0, 0)
    status = run_cli("backfill", "status", "--json", "--db", fresh_db)
    (row,) = json.loads(status.stdout)
    assert (row["id"], row["state"], row["rows_done"], row["last_key"] is not None) == (name, "done", ROWS, True)
    never = run_cli("backfill", "pause", "--name", "20261201000000_nope", "--db", fresh_db)
    assert never.returncode == 2 and never.stderr.strip() == (
        "error: backfill 20261201000000_nope: no checkpoint on this database (it has not run here).")


def test_a_second_runner_is_refused_naming_the_session_that_runs_it(events: str, tmp_path: Path) -> None:
    spec = spec_of(tmp_path)
    with psycopg.connect(events, autocommit=True, application_name="other-runner") as other:
        other.execute("SELECT pg_advisory_lock(%s)", (checkpoint.lock_key(spec.id),))
        with pytest.raises(BackfillBusy) as err:
            Runner(events, spec).run()
    assert re.fullmatch(
        rf"backfill {spec.id}: another session runs it now \(pid \d+ \(application 'other-runner', client [^,]+, user "
        r"migrator, state idle\)\)\. Nothing was changed\. Wait for it to end, or pause it: python -m "
        rf"schema_deploy backfill pause --name {spec.id}\.", str(err.value)), str(err.value)
    assert counts(events)[0] == ROWS


def test_rows_held_through_every_attempt_stop_the_backfill_with_its_progress_kept(events: str, tmp_path: Path) -> None:
    spec = spec_of(tmp_path, lock_timeout_ms=50, min_rows=200, max_rows=200, first_rows=200)
    with psycopg.connect(events) as app:
        app.execute("SELECT 1 FROM events WHERE id = (SELECT id FROM events ORDER BY id LIMIT 1 OFFSET 500) FOR UPDATE")
        with pytest.raises(BackfillLocked) as err:
            Runner(events, spec, sleep=lambda s: None).run()
    done = point(events, spec.id)
    assert (done.state, done.rows_done) == ("failed", 400)  # two batches of 200 before the held row
    assert str(err.value) == (
        f"backfill {spec.id}: the batch after key {done.last_key} waited for rows other sessions hold locked 10 times "
        "(lock_timeout 50 ms each, the batch halved each time); 400 rows are done and checkpointed. Run it again later "
        "(it resumes there), or find the long transaction holding the rows (pg_stat_activity, pg_locks).")
    assert Runner(events, spec, sleep=lambda s: None).run().rows_this_run == ROWS - 400  # released: it resumes
    assert counts(events) == (0, 0, 0)


def expand_and_contract(tmp_path: Path, wal: float = 64) -> tuple[Path, str, str]:
    """A bundle: `events` with its backfill of `day` (the expand), then `day` made NOT NULL (the contract)."""
    expand, contract = "20261201000100_event_day", "20261201000200_event_day_not_null"
    root = tmp_path / "migrations"
    (root / expand).mkdir(parents=True)
    (root / expand / "migration.sql").write_text(TABLE)
    (root / expand / "backfill.yaml").write_text(SPEC.format(target_ms=50, min_rows=200, max_rows=5000,
                                                             first_rows=1000, lock_timeout_ms=200, wal=wal))
    (root / contract).mkdir()
    (root / contract / "migration.sql").write_text("ALTER TABLE events ALTER COLUMN day SET NOT NULL;\n")
    return root, expand, contract


def test_a_migration_after_a_backfill_is_refused_until_its_rows_are_done(fresh_db: str, tmp_path: Path) -> None:
    root, expand, contract = expand_and_contract(tmp_path)
    bundle = ["--migrations", str(root), "--db", fresh_db]
    refused = run_cli("apply", "--no-backfill", *bundle)
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        f"error: migration {contract} ({root / contract / 'migration.sql'}): refused: it comes after backfill {expand}, "
        f"and {ROWS} row(s) of events still match that backfill's `where` (day IS NULL). Nothing of {contract} was "
        f"changed; applied before it in this run, and complete: {expand}. Run the backfill first (python -m "
        f"schema_deploy backfill run --name {expand}; in Airflow, the deployment's backfill task does), then apply "
        "again.")
    assert scalar(fresh_db, "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'events'::regclass "
                            "AND attname = 'day'") is False
    assert run_cli("backfill", "run", *bundle).returncode == 0
    applied = run_cli("apply", "--no-backfill", *bundle)
    assert applied.returncode == 0, applied.stderr
    assert scalar(fresh_db, "SELECT attnotnull FROM pg_attribute WHERE attrelid = 'events'::regclass "
                            "AND attname = 'day'") is True


def test_apply_runs_a_backfill_before_the_migration_after_it(fresh_db: str, tmp_path: Path) -> None:
    root, expand, contract = expand_and_contract(tmp_path)
    done = run_cli("apply", "--migrations", str(root), "--db", fresh_db, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [m["name"] for m in result["applied"]] == [expand, contract]
    (backfill,) = result["backfills"]
    assert (backfill["id"], backfill["state"], backfill["rows_done"]) == (expand, "done", ROWS)
    assert f"{contract}: comes after backfill {expand}, which has {ROWS} row(s) to do: running it first" in done.stderr
    assert scalar(fresh_db, "SELECT count(*) FROM events WHERE day IS NULL") == 0


def test_on_an_empty_table_expand_and_contract_apply_in_one_run(fresh_db: str, tmp_path: Path) -> None:
    root = tmp_path / "migrations"
    (root / "20261201000100_t").mkdir(parents=True)
    (root / "20261201000100_t" / "migration.sql").write_text("CREATE TABLE t (id int PRIMARY KEY, a int);\n")
    (root / "20261201000100_t" / "backfill.yaml").write_text("table: t\nkey: id\nset: {a: '1'}\nwhere: a IS NULL\n")
    (root / "20261201000200_t_not_null").mkdir()
    (root / "20261201000200_t_not_null" / "migration.sql").write_text("ALTER TABLE t ALTER COLUMN a SET NOT NULL;\n")
    done = run_cli("apply", "--migrations", str(root), "--db", fresh_db)
    assert done.returncode == 0, done.stderr
    assert scalar(fresh_db, "SELECT count(*) FROM _prisma_migrations WHERE finished_at IS NOT NULL") == 2


def test_plan_shows_expand_backfill_and_contract_with_the_rows_to_do_and_a_time_at_the_budget(
        fresh_db: str, tmp_path: Path) -> None:
    root, expand, contract = expand_and_contract(tmp_path, wal=16)
    bundle = ["--migrations", str(root), "--db", fresh_db]
    before = run_cli("plan", *bundle)
    assert before.returncode == 0, before.stderr
    assert ("phases (a migration after a backfill is applied only once the backfill is done):\n"
            f"   expand    {expand}\n   backfill  {expand} on events: events does not exist yet\n"
            f"   contract  {contract}") in before.stdout
    assert run_cli("apply", "--to", expand, *bundle).returncode == 0
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("ANALYZE events")
    after = run_cli("plan", "--json", *bundle)
    phases = json.loads(after.stdout)["phases"]
    assert [p["phase"] for p in phases] == ["expand", "backfill", "contract"]
    assert phases[0]["migrations"] == [] and phases[2]["migrations"] == [contract]
    backfill = phases[1]
    assert (backfill["backfill"], backfill["rows"], backfill["rows_known"]) == (expand, ROWS, True)
    assert backfill["bytes_per_row"] > 50
    assert abs(backfill["eta_s"] - ROWS * backfill["bytes_per_row"] / (16 * MB)) <= 0.1
    text = run_cli("plan", *bundle).stdout
    assert re.search(rf"   backfill  {expand} on events: {ROWS} rows to do, about \d+ s at 16 MB/s of WAL or longer "
                     r"\(full-page writes come on top\)\n   contract  " + contract, text), text
    assert run_cli("backfill", "run", *bundle).returncode == 0
    assert "phases" not in run_cli("plan", *bundle).stdout  # done: no backfill bears on what is pending


def test_the_page_reads_each_backfills_progress_and_why_it_waits(events: str, tmp_path: Path) -> None:
    from schema_deploy.views.overview import read_backfills

    spec = spec_of(tmp_path)
    Runner(events, spec).run()
    with psycopg.connect(events, autocommit=True) as conn:  # as a running backfill held by the gate keeps it
        conn.execute("UPDATE schema_deploy.backfills SET state = 'running', rows_done = 5000, "
                     "started_at = now() - interval '10 seconds', updated_at = now()")
        checkpoint.add_pause(conn, spec.id, {"reason": "replica r1 replay lag 70.0 MB (over 64.0 MB)", "since": "x"})
    (b,) = read_backfills({"staging": events})["backfills"]
    assert (b["id"], b["environment"], b["state"], b["rows_done"], b["rows_estimated"], b["percent"]) == (
        spec.id, "staging", "running", 5000, ROWS, 25.0)
    assert 400 <= b["rows_per_s"] <= 550 and 25 <= b["eta_s"] <= 40 and b["batch_rows"] > 0
    assert b["paused_because"] == "the database's health: replica r1 replay lag 70.0 MB (over 64.0 MB)"
    assert read_backfills({"staging": events.replace("/t_", "/missing_t_")})["errors"]["staging"].startswith(
        "cannot connect to ")
