"""deploy_schema end to end with `dag.test()` on the local stack (devstack/run_deploy.py).

Each test gets its own staging and production databases (one on each cluster),
seeded at the baseline with the same data, and its own Airflow home. The approval
is answered through Airflow's REST route by run_deploy's responder, as a person
would in the UI; the window wait defers and resumes through its trigger.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
import requests

from schema_deploy.backups.store import parse_s3_uri
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.state.ledger import read_rows
from tests.e2e.harness import GATE, REPO, DagRunner, Slack, fingerprint, has_audit_table

EPIC5 = "20251017120000_epic5_schema_completion"
EXPAND, CONTRACT = "20251103090000_event_date_expand", "20251103090100_event_date_contract"
LATER = "20261201000000_next_release"


@pytest.fixture
def deployer(tmp_path, migrated_home, targets, stack_env, dag_zygote) -> DagRunner:
    return DagRunner("deploy_schema", tmp_path, migrated_home, targets, stack_env, dag_zygote)


def ledger(url: str) -> list:
    with psycopg.connect(url) as conn:
        return read_rows(conn)


def applied(url: str) -> list[str]:
    return [r.migration_name for r in ledger(url) if r.applied]


def secrets_of(stack_env: dict[str, str], targets: dict[str, str]) -> list[str]:
    from urllib.parse import urlsplit

    found = [urlsplit(u).password for u in targets.values()]
    found += [stack_env["AWS_SECRET_ACCESS_KEY"], stack_env["SLACK_WEBHOOK_URL"].rsplit("/", 1)[-1]]
    return [s for s in found if s]


class LockHolder(threading.Thread):
    """Holds ACCESS SHARE on a production table (a long read) until `release()` or a condition."""

    def __init__(self, url: str, table: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(url)
        self.conn.execute(f'SELECT 1 FROM "{table}" LIMIT 1')  # the transaction keeps the lock
        self.table, self.url = table, url
        self.released = threading.Event()
        self.watch: psycopg.Connection | None = None  # one session for the polls (they come every 0.05-0.2 s)

    def _waiting(self, columns: str) -> list[tuple]:
        if self.released.is_set():  # its session is closed with the lock
            return []
        if self.watch is None or self.watch.closed:
            self.watch = psycopg.connect(self.url, autocommit=True)
        return self.watch.execute(f"SELECT {columns} FROM pg_stat_activity WHERE datname = current_database() "
                                  "AND wait_event_type = 'Lock' AND query ILIKE %s", (f"%{self.table}%",)).fetchall()

    def waiters(self) -> int:
        return len(self._waiting("pid"))

    def waits(self) -> set[tuple]:
        """(pid, query_start) of each statement waiting for a lock on the table now."""
        return set(self._waiting("pid, query_start"))

    def release(self) -> None:
        if not self.released.is_set():
            self.conn.rollback()
            self.conn.close()
            self.released.set()
        if self.watch is not None:
            self.watch.close()


def test_approved_deployment_retries_a_held_lock_then_migrates_verifies_and_announces_production(
        deployer: DagRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    slack = Slack(stack_env)
    holder = LockHolder(targets["production"], "experiment_assignments")

    def release_after_retries() -> None:  # the ALTER waits, times out, retries: then the long read ends
        waits: set[tuple] = set()  # each attempt is a statement of its own: a new (pid, query_start)
        while not holder.released.is_set() and len(waits) < 3:
            waits |= holder.waits()
            time.sleep(0.05)
        holder.release()

    watcher = threading.Thread(target=release_after_retries, daemon=True)
    watcher.start()
    try:
        run = deployer.run(approve="alice")
    finally:
        holder.release()
    assert run.returncode == 0, run.log[-5000:]
    assert EPIC5 in applied(targets["staging"]) and EPIC5 in applied(targets["production"])
    assert fingerprint(targets["staging"]) == fingerprint(targets["production"])

    production = run.xcom("apply_production")
    assert production["lock_retries"] >= 1
    assert "lock not granted within 100 ms (attempt 1 of 11); blocked by pid" in run.log
    approval = run.approval()
    assert approval == run.xcom("approve_production")
    assert approval["approved"] and approval["approver"] == "alice" and approval["triggered_by"] == "dag_test"
    assert run.result["approvals"][0]["status"] == 200  # answered through the REST route

    verified = run.xcom("verify_production")
    assert verified["rows_before"] == verified["rows_after"] and verified["rows_after"]["behavioral_events"] > 0
    assert len(verified["index_bytes"]) == 13 and all(b > 0 for b in verified["index_bytes"].values())  # Epic 5's 12, eventDate's
    criteria = {c["name"]: c["verdict"] for c in verified["criteria"]}
    assert criteria == {"foreign key constraints enforced": "met", "new indexes created and used by queries": "met",
                        "no data loss or corruption": "met",
                        # demo data is far below deploy.yaml's expectations.measurable_from_rows
                        "query performance meets expectations": "not measurable"}
    assert "success criterion MET            foreign key constraints enforced" in run.log

    backup = run.xcom("backup_production")
    junit = run.xcom("test_gate")["gate"]["junit"]
    bucket, key = parse_s3_uri(junit[0])
    assert key in deployer.keys() and key.startswith(parse_s3_uri(backup["uri"])[1][:-5])
    assert run.xcom("test_gate")["gate"]["tests"] >= 10

    audit_result = run.xcom("audit_record")
    assert audit_result["outcome"] == "production migrated" and set(audit_result["chain"]) == {"staging", "production"}
    verify = subprocess.run([sys.executable, "-m", "schema_deploy", "audit", "verify", "--db", targets["production"]],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(REPO / "plugins")})
    assert verify.returncode == 0 and "audit chain ok" in verify.stdout, verify.stdout + verify.stderr
    document = deployer.object(audit_result["s3"])
    assert hashlib.sha256(document).hexdigest() == audit_result["sha256"]
    record = json.loads(document)["record"]
    assert record["approval"]["approver"] == "alice" and record["backup"]["sha256"] == backup["sha256"]
    assert record["bundle"][0] == {"name": EPIC5, "checksum": run.xcom("preflight")["migrations"][0]["checksum"]}
    assert [m["name"] for m in record["bundle"]] == [EPIC5, EXPAND, CONTRACT]
    # expand → backfill → contract: three tasks, the figures of the backfill in the record.
    assert run.xcom("apply_production")["waiting_for"] == [EXPAND]
    (backfilled,) = record["production"]["backfills"]
    assert (backfilled["id"], backfilled["state"], backfilled["rows_done"]) == (
        EXPAND, "done", verified["rows_after"]["behavioral_events"])
    assert backfilled["batches_this_run"] > 1 and backfilled["wal_bytes_this_run"] > 0 and backfilled["pauses"] == []
    assert [m["name"] for m in run.xcom("contract_production")["applied"]] == [EPIC5, EXPAND, CONTRACT]
    assert any("CONCURRENTLY" in sql for step in record["sql_executed"] for sql in step["sql"])
    assert record["production"]["lock_retries"] == production["lock_retries"]

    texts = slack.texts()
    for title in ("Schema deployment started", "Staging test gate passed", "Waiting for approval",
                  "Production change approved", "Production migrated and verified"):
        assert title in texts, title
    assert "required_actions" in texts  # the approval link
    release = run.xcom("preflight")["release"]
    assert release["uri"].endswith(f"/releases/{release['sha256']}.json") and record["release"] == {
        **{k: release[k] for k in ("uri", "sha256", "short", "bundle", "source")},
        "check": "present, sha256 matches its name"}
    unnamed = [r["text"] for r in slack.records() if release["short"] not in json.dumps(r)
               and not r.get("text", "").startswith("Schema rollback")]  # another run's, when run beside one
    assert not unnamed  # every message of the run names its release
    for secret in secrets_of(stack_env, targets):
        assert secret not in run.log and secret not in texts

    # `make demo`'s report of such a run: every production task, the backfill's figures and the gate's word.
    from demo import report

    (deployer.tmp / "slack.jsonl").write_text(json.dumps({"text": "a message"}) + "\n")
    shown = report(run.result, deployer.tmp / "run.log", deployer.tmp / "slack.jsonl", 0, 1.0)
    for step in ("apply_production", "backfill_production", "contract_production", "verification"):
        assert re.search(rf"^  {step}\s+success\s", shown, re.M), (step, shown)
    assert re.search(rf"^  backfill {EXPAND} on behavioral_events: done, \d+ rows \(\d+ this run in \d+ batches\), "
                     r"[\d.]+ s, WAL [\d.]+ MB, 0 lock retries\n    the health gate let every batch go \(no pause\)$",
                     shown, re.M), shown


def test_a_dry_run_with_slack_down_still_migrates_staging_and_logs_the_lost_notifications(
        deployer: DagRunner, targets: dict[str, str], private_slack: dict[str, str]) -> None:
    # A stand-in of its own: Slack down for this run only, not for the tests running beside it.
    deployer.extra_env["AIRFLOW_CONN_SLACK_DEPLOYS"] = private_slack["AIRFLOW_CONN_SLACK_DEPLOYS"]
    control = private_slack["SLACK_CONTROL_URL"].rstrip("/")
    requests.post(control + "/fail", json={"status": 500, "paths": "all"}, timeout=5).raise_for_status()
    slack = Slack(private_slack)
    try:
        run = deployer.run({"dry_run": True})
    finally:
        requests.delete(control + "/fail", timeout=5)
    assert run.returncode == 0, run.log[-5000:]
    assert EPIC5 in applied(targets["staging"]) and EPIC5 not in applied(targets["production"])
    assert run.state("apply_production") == "skipped" and run.state("approve_production") == "skipped"
    assert "Slack notification 'started' not delivered" in run.log
    assert "giving up on Slack notification 'gate_passed'" in run.log
    assert slack.texts() == ""


def test_a_failing_gate_stops_before_production_and_names_the_failing_test(
        deployer: DagRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    failing = deployer.tmp / "test_release_blocker.py"
    failing.write_text("def test_checkout_still_works():\n    assert 1 + 1 == 3, 'checkout broke'\n")
    gate = GATE + f'    - [python, -m, pytest, {failing}, -q, -p, no:cacheprovider, "--junitxml={{junit}}"]\n'
    before = fingerprint(targets["production"])
    slack = Slack(stack_env)
    run = deployer.run(config=deployer.config(gate=gate), approve="alice")
    assert run.returncode == 1
    assert run.state("test_gate") == "failed" and run.state("apply_production") in ("upstream_failed", None)
    assert EPIC5 not in applied(targets["production"]) and fingerprint(targets["production"]) == before
    assert "the staging test gate failed, so production was not touched" in run.log
    assert "test_release_blocker.py::test_checkout_still_works" in run.log
    texts = slack.texts()
    assert "Staging test gate FAILED" in texts and "test_checkout_still_works" in texts
    assert "Schema deployment FAILED" in texts and "|Task log>" in texts  # the failure callback, with the log link


def test_a_rejected_approval_skips_production_and_says_so_in_the_runs_slack_thread(
        deployer: DagRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    # slack_deploys as a Web API connection: every message after the first is a reply in its thread.
    deployer.extra_env["AIRFLOW_CONN_SLACK_DEPLOYS"] = json.dumps({
        "conn_type": "slack", "password": stack_env["SLACK_API_TOKEN"],
        "extra": {"base_url": stack_env["SLACK_API_URL"]}})
    slack = Slack(stack_env)
    run = deployer.run(reject="bob")
    assert run.returncode == 0, run.log[-5000:]
    assert run.approval()["approved"] is False and run.approval()["approver"] == "bob"
    for task in ("wait_for_window", "apply_production", "verify_production"):
        assert run.state(task) == "skipped", task
    assert EPIC5 in applied(targets["staging"]) and EPIC5 not in applied(targets["production"])
    assert "Production change rejected" in slack.texts() and "bob" in slack.texts()
    assert run.xcom("audit_record")["outcome"] == "rejected"
    assert has_audit_table(targets["staging"]) and "rejected by bob: no reason given" in slack.texts()
    with psycopg.connect(targets["production"]) as conn:  # the rejection is in production's history, nothing changed
        assert conn.execute("SELECT kind, payload->>'decision', payload->'targets'->>'production' "
                            "FROM schema_deploy.audit_events").fetchall() == [
            ("deploy", "rejected by bob: no reason given", "nothing changed (rejected by bob: no reason given)")]
    records = slack.records()
    assert [r["kind"] for r in records] == ["chat.postMessage"] * len(records) and len(records) >= 4
    first = records[0]
    assert first["thread_ts"] is None and "Schema deployment started" in first["text"]
    assert all(r["thread_ts"] == first["ts"] for r in records[1:])
    assert len({r["channel"] for r in records}) == 1  # deploy.yaml's slack.channel, resolved to its id


class FolderChanger(threading.Thread):
    """Plays the other workers and the git-sync: once preflight has frozen the release (Slack says the
    deployment started), the migrations folder disappears; once the run waits for its window, the folder
    is back, with the pending migration edited and a new migration added."""

    def __init__(self, folder: Path, slack: Slack) -> None:
        super().__init__(daemon=True)
        self.folder, self.slack, self.backup = folder, slack, folder.parent / "kept"
        self.done, self.stop = [], threading.Event()

    def wait_for(self, title: str) -> bool:
        while not self.stop.is_set():
            if title in self.slack.texts():
                return True
            time.sleep(0.05)
        return False

    def run(self) -> None:
        if not self.wait_for("Schema deployment started"):
            return
        shutil.move(self.folder, self.backup)
        self.done.append("removed")
        if not self.wait_for("Waiting for the maintenance window"):
            return
        shutil.move(self.backup, self.folder)
        epic5 = self.folder / EPIC5 / "migration.sql"
        epic5.write_text(epic5.read_text() + "\nCREATE TABLE not_approved (id int);\n")
        later = self.folder / LATER
        later.mkdir()
        (later / "migration.sql").write_text("CREATE TABLE later_change (id int);\n")
        self.done.append("edited")


def test_a_closed_window_defers_production_which_then_gets_the_release_not_the_folder_edited_meanwhile(
        deployer: DagRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    # A one-minute window every minute: with at least a minute needed, only a whole window fits,
    # so the wait defers until the next minute starts, then production proceeds. Meanwhile the
    # migrations folder goes missing (another worker's disk), then comes back changed (a git-sync).
    folder = deployer.tmp / "migrations"
    shutil.copytree(REPO / "sql" / "migrations", folder)
    frozen = {m.name: m.checksum for m in load_bundle(folder).migrations}
    changer = FolderChanger(folder, Slack(stack_env))
    changer.start()
    try:
        run = deployer.run({"require_approval": False},
                           config=deployer.config(windows="[{cron: '* * * * *', duration: 1m}]", bundle=folder))
    finally:
        changer.stop.set()
    assert run.returncode == 0, run.log[-5000:]
    assert changer.done == ["removed", "edited"]
    window = run.xcom("wait_for_window")
    assert window["waited_s"] > 0 and "no worker slot held" in run.log
    # The slot in words (WindowSlot.describe), before the wait and after it; never the dataclass's repr.
    assert "waiting for the next window with time enough: maintenance window " in run.log
    assert re.search(r"maintenance window .+ is open from \d{4}-\d\d-\d\d \d\d:\d\d UTC until .+; waited .+ for it",
                     run.log) and "WindowSlot(" not in run.log
    opens = datetime.fromisoformat(window["opens"])
    assert opens.second == 0 and opens.microsecond == 0
    conn = sqlite3.connect(run.home / "airflow.db")
    started = conn.execute("SELECT start_date FROM task_instance WHERE task_id = 'apply_production'").fetchone()[0]
    assert datetime.fromisoformat(started.replace(" ", "T")).replace(tzinfo=opens.tzinfo) >= opens

    # Both databases hold exactly the release: its migrations, its checksums; the later one is pending.
    assert {r.migration_name: r.checksum for r in ledger(targets["production"]) if r.applied} == frozen
    assert {r.migration_name: r.checksum for r in ledger(targets["staging"]) if r.applied} == frozen
    with psycopg.connect(targets["production"]) as pg:
        assert pg.execute("SELECT to_regclass('public.not_approved'), to_regclass('public.later_change')"
                          ).fetchone() == (None, None)
    assert "the migrations folder is not on this machine (the release is used)" in run.log
    assert f"{folder / EPIC5 / 'migration.sql'}: edited since the release" in run.log
    assert f"{folder / LATER / 'migration.sql'}: not in the release (added since)" in run.log
    release = run.xcom("preflight")["release"]
    assert run.xcom("apply_production")["release"] == release["sha256"]
    status = subprocess.run([sys.executable, "-m", "schema_deploy", "status", "--migrations", str(folder), "--db",
                             targets["production"]], capture_output=True, text=True, timeout=60, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO / "plugins")})
    assert re.search(rf"{LATER}\s+pending", status.stdout), status.stdout


def test_orphan_rows_in_production_stop_preflight_with_nothing_changed_anywhere(
        deployer: DagRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    with psycopg.connect(targets["production"]) as conn:
        conn.execute('INSERT INTO experiment_assignments (id, "experimentId", "userId", variant, "assignedAt") '
                     "SELECT 'orphan-' || g, 'no-such-experiment', 'orphan-user-' || g, 'A', now() FROM generate_series(1, 3) g")
    before = {env: fingerprint(url) for env, url in targets.items()}
    run = deployer.run(approve="alice")
    assert run.returncode == 1
    assert run.state("preflight_production") == "failed" and run.state("preflight_staging") == "success"
    assert run.state("preflight") == "upstream_failed" and run.state("backup_production") == "upstream_failed"
    assert "experiment_assignments" in run.log and "orphan" in run.log.lower()
    assert {env: fingerprint(url) for env, url in targets.items()} == before
    assert not ledger(targets["staging"])[1:] and EPIC5 not in applied(targets["production"])
    keys = deployer.keys()
    assert not [k for k in keys if k.endswith(".dump")]  # no backup taken either
    audit_key = next(k for k in keys if k.endswith(".audit.json"))  # only the record of the refusal
    record = json.loads(deployer.object(f"s3://{stack_env['BACKUP_BUCKET']}/{audit_key}"))["record"]
    assert record["outcome"] == "failed" and record["task_states"]["preflight_production"] == "failed"
    assert not has_audit_table(targets["staging"]) and not has_audit_table(targets["production"])


def test_a_crashed_production_apply_converges_when_the_task_is_run_again(
        deployer: DagRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    # A long read on a table of step 4 stalls production after steps 1-3 have committed;
    # then the whole process running the DAG is killed (SIGKILL: no cleanup of any kind).
    holder = LockHolder(targets["production"], "study_schedule_recommendations")
    config = deployer.config(extra="lock: {lock_timeout_ms: 100, max_lock_timeout_ms: 2000, lock_retries: 100}\n")
    proc = subprocess.Popen(deployer.command({"require_approval": False}, config, None, None), env=deployer.env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not (holder.waiters() and any(r.applied_steps_count >= 3 for r in ledger(targets["production"])
                                             if r.migration_name == EPIC5)):
            assert proc.poll() is None and time.monotonic() < deadline, "the run never reached the held lock"
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        holder.release()
    row = next(r for r in ledger(targets["production"]) if r.migration_name == EPIC5)
    assert not row.applied and row.applied_steps_count == 3

    run_id = sqlite3.connect(deployer.home / "airflow.db").execute(
        "SELECT run_id FROM dag_run ORDER BY id DESC LIMIT 1").fetchone()[0]
    env = {**airflow_env_for(deployer, config), "AIRFLOW_CONN_STAGING_DB": targets["staging"],
           "AIRFLOW_CONN_PRODUCTION_DB": targets["production"]}
    logs = {}
    for task in ("apply_production", "backfill_production", "contract_production", "verify_production"):
        args = ["tasks", "test", "deploy_schema", task, run_id]
        if deployer.zygote:  # a fork of the warm interpreter (same AIRFLOW_HOME) instead of a cold start
            again = deployer.zygote.run(REPO / ".venv/bin/airflow", args, env, deployer.tmp / task, timeout=300)
        else:
            again = subprocess.run([str(REPO / ".venv/bin/airflow"), *args], env=env, capture_output=True, text=True,
                                   timeout=300, cwd=REPO)
        logs[task] = again.stdout + again.stderr  # `airflow tasks test` exits 0 whatever the task did
        assert "Task failed with exception" not in logs[task], logs[task][-4000:]
    rows = [r for r in ledger(targets["production"]) if r.migration_name == EPIC5]
    assert len(rows) == 1 and rows[0].applied and rows[0].applied_steps_count == 16
    # Said by apply's own lines (one per step), not by a dump of the task's result (DEFAULT_ARGS hides it).
    assert f"{EPIC5}: resuming at step 4 of 16 (an earlier run stopped there)" in logs["apply_production"]
    resumed = logs["apply_production"]
    assert f"{EPIC5}: step 4/16: " in resumed and f"{EPIC5}: step 3/16: " not in resumed
    assert "Returned value was" not in logs["apply_production"]
    with psycopg.connect(targets["production"]) as conn:
        assert conn.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid").fetchone()[0] == 0
    assert fingerprint(targets["production"]) == fingerprint(targets["staging"])

    # With everything applied on both, the next run (say, a scheduled one) ends at preflight.
    run = deployer.run(config=config)
    assert run.returncode == 0 and run.state("preflight") == "skipped", run.log[-3000:]
    assert "nothing to deploy: all 4 migrations" in run.log and run.state("backup_production") == "skipped"


def airflow_env_for(deployer: DagRunner, config: Path) -> dict[str, str]:
    from airflow_env import airflow_env

    return airflow_env(deployer.home, deployer.stack_env, config)


def test_a_skip_window_without_reason_is_refused_by_preflight_before_any_change(
        deployer: DagRunner, targets: dict[str, str]) -> None:
    run = deployer.run({"skip_window": True, "skip_window_reason": None}, approve="alice")  # the form's empty field
    assert run.returncode == 1 and run.state("preflight_bundle") == "failed"
    assert ("'Skip the maintenance window' (skip_window) is on but 'Why skip the window' (skip_window_reason) is "
            "empty: say there why production may change") in " ".join(run.log.split())
    assert EPIC5 not in applied(targets["staging"]) and EPIC5 not in applied(targets["production"])


def test_a_task_on_another_environments_worker_fails_at_once_naming_the_queue_it_belongs_on(
        deployer: DagRunner, targets: dict[str, str]) -> None:
    # The DAG processor's deploy.yaml sent production's tasks to queue staging; the worker that took
    # preflight_production is a staging one: its deploy.yaml routes production to queue production,
    # and it holds no production_db.
    import socket

    queues = "queues: {staging: staging, production: production, default: default}\n"
    misrouted = deployer.tmp / "parsed.yaml"
    misrouted.write_text("queues: {staging: staging, production: staging, default: default}\n")
    deployer.script = REPO / "tests/e2e/misrouted.py"
    deployer.extra_env.update(PARSE_CONFIG=str(misrouted), DROP_CONNECTIONS="AIRFLOW_CONN_PRODUCTION_DB")
    run = deployer.run(config=deployer.config(extra=queues), approve="alice")

    assert run.returncode == 1
    assert run.state("preflight_production") == "failed" and run.result["tasks"]["preflight_production"][
        "try_number"] == 1  # failed without a retry: a retry lands on the same worker
    flat = " ".join(run.log.split())  # the message is wrapped at 100 columns in the log (steps.fail_fast)
    host = re.search(r"connection production_db is not defined on this worker \((.+?), queue staging\)",
                     flat).group(1)
    assert host in (socket.getfqdn(), socket.gethostname())
    assert (f"AirflowFailException: ConnectionNotOnWorker: connection production_db is not defined on this worker "
            f"({host}, queue staging): route the task to queue production (deploy.yaml queues.production), "
            "whose workers hold production_db") in flat
    assert "AirflowNotFoundException" not in run.log  # the message is ours, not the lookup's traceback
    assert run.state("preflight_bundle") == run.state("preflight_staging") == "success"
    assert run.state("preflight") == "upstream_failed" and run.state("backup_production") == "upstream_failed"
    # The record still runs: composed and kept with no database, production's chain untouched (not changed).
    assert run.state("audit_production") == "success" and run.xcom("audit_production") is None
    assert run.xcom("audit_record")["outcome"] == "failed" and run.xcom("audit_record")["chain"] == {}
    assert not has_audit_table(targets["staging"]) and not has_audit_table(targets["production"])
    assert EPIC5 not in applied(targets["staging"]) and EPIC5 not in applied(targets["production"])


def test_a_lagging_replica_defers_apply_production_and_then_the_backfill_each_resuming_once_replay_catches_up(
        tmp_path, migrated_home, stack_env, dag_zygote, seeded) -> None:
    """Production on a primary of its own with a streaming replica (tests/replica_pair.py) whose replay is
    paused: apply_production reaches its first online step, the gate says wait, the task defers (no worker
    slot held) and, once replay resumes, runs again and goes on from that step. Replay is paused again once
    the expand migration is in: backfill_production pauses before its first batch, defers, and goes on from
    its checkpoint when replay resumes; then contract_production makes the column NOT NULL."""
    from seed import reset
    from tests.conftest import drop_database, with_database
    from tests.replica_pair import replica_pair

    name = f"t_dagh_{os.urandom(4).hex()}"
    slack = Slack(stack_env)
    with replica_pair("dag") as pair:
        staging = with_database(stack_env["STAGING_DATABASE_URL"], name)
        production = pair.database(name)
        seeded.reset(staging, seed=9)
        reset(production, seed=9, log=lambda _: None)  # not `seeded`: its template would outlive this cluster
        deployer = DagRunner("deploy_schema", tmp_path, migrated_home, {"staging": staging, "production": production},
                             stack_env, dag_zygote)
        config = deployer.config(extra="health: {max_replica_lag_mb: 1, poll: 1s, max_wait: 90s}\n")
        pair.replay(paused=True)
        pair.fill(mb=3)  # the lag is over 1 MB from the start (the run writes more: backup check, audit)
        seen: dict[str, object] = {}

        def said(words: str) -> bool:
            try:
                return any(words in (r.get("text") or "") for r in slack.records())
            except Exception as exc:  # noqa: BLE001 - the stand-in may be busy; reported if it never works
                seen["error"] = repr(exc)
                return False

        def expanded() -> bool:
            with psycopg.connect(production) as conn:
                return conn.execute("SELECT count(*) FROM pg_attribute WHERE attrelid = 'behavioral_events'::regclass "
                                    "AND attname = 'eventDate'").fetchone()[0] == 1

        def hold(until: Callable[[], bool], then: Callable[[], bool] | None, key: str, deadline: float) -> bool:
            """When `until` holds, pause replay (and lag it 3 MB) if `then` is given; then, once Slack hears
            `key`'s wait, a few seconds more (the task defers, its trigger fires meanwhile), and replay resumes."""
            while time.monotonic() < deadline and not until():
                time.sleep(0.2)
            if then is not None:
                pair.replay(paused=True)
                pair.fill(mb=3)
            while time.monotonic() < deadline and not said(key):
                time.sleep(0.3)
            if time.monotonic() >= deadline:
                return False
            seen[key] = time.monotonic()
            time.sleep(5)
            pair.replay(paused=False)
            return True

        def watch() -> None:
            deadline = time.monotonic() + 400
            if hold(lambda: True, None, "waits for the database's health", deadline):
                hold(expanded, expanded, "Backfill paused for the database's health", deadline)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            run = deployer.run({"require_approval": False}, config=config)
            with psycopg.connect(production) as conn:  # before the pair stops
                seen["wrong days"] = conn.execute('SELECT count(*) FROM behavioral_events WHERE "eventDate" IS '
                                                  'DISTINCT FROM "timestamp"::date').fetchone()[0]
                seen["not null"] = conn.execute("SELECT attnotnull FROM pg_attribute WHERE attrelid = "
                                                "'behavioral_events'::regclass AND attname = 'eventDate'").fetchone()[0]
        finally:
            pair.replay(paused=False)
            watcher.join(30)
            drop_database(stack_env["STAGING_DATABASE_URL"], name)
    assert run.returncode == 0, run.log[-5000:]
    assert "waits for the database's health" in seen, (
        f"the gate never held a step back while the replica lagged ({seen.get('error')})")
    first_wait = run.log.index("health gate: ")
    assert "new_state=deferred" in run.log[first_wait:], "apply_production did not defer while it waited"
    waits = re.findall(rf"health gate: {EPIC5}: step (\d+)/\d+ \((index build|constraint validation)\): waiting "
                       r"\(replica health_replica \(local socket, streaming\) replay lag \d+\.\d MB \(over 1\.0 MB", run.log)
    assert waits and len({step for step, _ in waits}) == 1, waits
    step = int(waits[0][0])
    assert f"{EPIC5}: resuming at step {step} of 16 (an earlier run stopped there)" in run.log
    applied = run.xcom("apply_production")["applied"][0]
    assert applied["resumed_from_step"] == (step if step > 1 else None)
    gated = [s for s in applied["steps"] if s["health"]]
    assert gated and all(s["health"]["wal_bytes"] > 0 for s in gated)
    # The held step's record: every deferral's wait and its first reason; the steps after it waited for nothing.
    assert gated[0]["number"] == step and gated[0]["health"]["waited_s"] >= 4
    assert gated[0]["health"]["wait_reason"].startswith("replica health_replica (local socket, streaming) replay lag ")
    assert all(s["health"]["waited_s"] == 0 for s in gated[1:])
    assert len(re.findall(rf"health gate: {EPIC5}: .*healthy after [\d.]+ s; going on", run.log)) == 1
    record = json.loads(deployer.object(run.xcom("audit_record")["s3"]))["record"]  # the figures, in the audit trail
    held = [s for s in record["production"]["steps"] if (s.get("health") or {}).get("waited_s")]
    assert [(s["migration"], s["number"]) for s in held] == [(EPIC5, step)]
    assert held[0]["health"]["wait_reason"] == gated[0]["health"]["wait_reason"]
    assert run.state("verify_production") == "success"
    health = [r for r in slack.records() if "waits for the database's health" in (r.get("text") or "")]
    assert len(health) == 1, [r.get("text") for r in slack.records()]

    # The backfill's own pause: its task deferred, and came back to its checkpoint.
    assert "Backfill paused for the database's health" in seen, f"the backfill never paused ({seen.get('error')})"
    assert run.xcom("apply_production")["waiting_for"] == [EXPAND]
    paused_at = run.log.index(f"backfill {EXPAND}: paused for the database's health")
    assert "new_state=deferred" in run.log[paused_at:], "backfill_production did not defer while it waited"
    assert re.search(rf"backfill {EXPAND} on production: resuming at \d+ of ~\d+ rows", run.log[paused_at:])
    (backfill,) = run.xcom("backfill_production")["backfills"]
    assert backfill["state"] == "done" and backfill["id"] == EXPAND
    # One pause at least: with a 1 MB lag limit, the batches after it may lag the replica over it again.
    pauses = record["production"]["backfills"][0]["pauses"]
    assert pauses and all(p["reason"].startswith("replica health_replica (local socket, streaming) replay lag ")
                          and p["seconds"] >= 0 for p in pauses), pauses
    assert record["production"]["backfills"][0]["rows_done"] > 0
    assert (seen["wrong days"], seen["not null"]) == (0, True)
    texts = [r.get("text") or "" for r in slack.records() if EXPAND in (r.get("text") or "")]
    kinds = [k for t in texts for k in ("Backfill started", "Backfill paused", "Backfill done") if k in t]
    # staging's run (no gate there) starts and ends; production's starts, pauses once, ends: never per batch.
    assert sorted(kinds) == sorted(["Backfill started", "Backfill done"] * 2 + ["Backfill paused"]), texts
    assert 0 < sum("Backfill progress" in t for t in texts) <= 6, texts  # each quarter once per target, at most
    assert f"step: {EPIC5}: step {step}/16" in health[0]["text"] and "waits at most: 90 s" in health[0]["text"]
