"""rollback_schema end to end with `dag.test()` on the local stack (devstack/run_deploy.py --dag-id rollback_schema).

Each test gets its own staging and production databases, seeded at the baseline with the
same data, and its own Airflow home; Epic 5 is deployed with the library's `apply` (the deploy
DAG has its own tests). The production approval is answered through Airflow's REST route by
run_deploy's responder, as a person would in the UI.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from schema_deploy.apply import apply
from schema_deploy.bundle import load_bundle
from schema_deploy.fingerprint import schema_fingerprint
from schema_deploy.ledger import read_rows
from seed import reset
from tests.conftest import drop_database, with_database

REPO = Path(__file__).resolve().parents[2]
BASELINE = "20250915090000_baseline"
EPIC5 = "20251017120000_epic5_schema_completion"
TABLES = ("personalization_experiments", "experiment_assignments", "behavioral_events", "behavioral_patterns",
          "struggle_predictions", "recommendations", "personalization_configs", "study_schedule_recommendations")


@pytest.fixture
def targets(stack_env: dict[str, str]):
    """A fresh staging and production database, at the baseline with identical demo data."""
    name = f"t_rb_{uuid.uuid4().hex[:8]}"
    urls = {env.lower(): with_database(stack_env[f"{env}_DATABASE_URL"], name) for env in ("STAGING", "PRODUCTION")}
    for url in urls.values():
        reset(url, seed=9, log=lambda _: None)
    yield urls
    for env in ("STAGING", "PRODUCTION"):
        drop_database(stack_env[f"{env}_DATABASE_URL"], name)


@pytest.fixture(scope="module")
def migrated_home(tmp_path_factory) -> Path:
    """An Airflow home with its metadata database migrated once; each test copies it."""
    home = tmp_path_factory.mktemp("airflow-template")
    config = home / "deploy.yaml"
    config.write_text("")
    run = subprocess.run([sys.executable, str(REPO / "devstack/run_deploy.py"), "--home", str(home),
                          "--config", str(config), "--migrate-only"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return home


@dataclass
class Run:
    returncode: int
    log: str
    result: dict

    def state(self, task_id: str) -> str | None:
        return self.result["tasks"].get(task_id, {}).get("state")

    def xcom(self, task_id: str):
        return self.result["tasks"][task_id]["xcom"]


class RollbackRunner:
    def __init__(self, tmp_path: Path, migrated_home: Path, targets: dict[str, str], stack_env: dict[str, str]):
        self.tmp, self.targets, self.stack_env = tmp_path, targets, stack_env
        self.home = tmp_path / "airflow"
        shutil.copytree(migrated_home, self.home)
        self.prefix = f"e2e-rb-{uuid.uuid4().hex[:8]}"

    def config(self) -> Path:
        path = self.tmp / "deploy.yaml"
        path.write_text(
            f"migrations: {REPO / 'sql/migrations'}\nverify_dir: {REPO / 'sql/verify'}\n"
            f"backup: {{bucket: {self.stack_env['BACKUP_BUCKET']}, prefix: {self.prefix}, restore_check: true}}\n")
        return path

    def run(self, conf: dict, approve: str | None = None) -> Run:
        cmd = [sys.executable, str(REPO / "devstack/run_deploy.py"), "--dag-id", "rollback_schema", "--home",
               str(self.home), "--config", str(self.config()), "--conf", json.dumps(conf),
               "--result", str(self.tmp / "result.json")]
        if approve:
            cmd += ["--approve-as", approve]
        env = {**os.environ, "AIRFLOW_CONN_STAGING_DB": self.targets["staging"],
               "AIRFLOW_CONN_PRODUCTION_DB": self.targets["production"]}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        result = self.tmp / "result.json"
        return Run(proc.returncode, proc.stdout + proc.stderr,
                   json.loads(result.read_text()) if result.exists() else {"tasks": {}})

    def s3(self):
        from schema_deploy.backup_store import default_s3_client

        os.environ.update({k: v for k, v in self.stack_env.items() if k.startswith("AWS_")})
        return default_s3_client()

    def keys(self) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.stack_env["BACKUP_BUCKET"],
                                                                     Prefix=self.prefix + "/")
        return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def runner(tmp_path, migrated_home, targets, stack_env) -> RollbackRunner:
    return RollbackRunner(tmp_path, migrated_home, targets, stack_env)


def fingerprint(url: str):
    with psycopg.connect(url) as conn:
        return schema_fingerprint(conn)


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}


def ledger_states(url: str) -> dict[str, str]:
    from schema_deploy.status import compute_status

    with psycopg.connect(url) as conn:
        return {s.name: s.state for s in compute_status(load_bundle(REPO / "sql/migrations"), read_rows(conn)).states}


def audit_kinds(url: str) -> list[str]:
    from schema_deploy import audit

    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('schema_deploy.audit_events') IS NOT NULL").fetchone()[0]:
            return []
        assert audit.verify_chain(conn).ok
        return [r.kind for r in audit.read_rows(conn)]


def slack_texts(stack_env: dict[str, str], start: int) -> str:
    path = Path(stack_env["SLACK_MESSAGES_FILE"])
    lines = path.read_text().splitlines()[start:] if path.exists() else []
    return "\n".join(json.dumps({k: json.loads(line).get(k) for k in ("text", "blocks")}) for line in lines)


def slack_mark(stack_env: dict[str, str]) -> int:
    path = Path(stack_env["SLACK_MESSAGES_FILE"])
    return len(path.read_text().splitlines()) if path.exists() else 0


def deploy_epic5(url: str) -> None:
    apply(url, load_bundle(REPO / "sql/migrations"), online=True)


def test_staging_down_migrations_bring_back_the_baseline_schema_and_leave_epic5_pending(
        runner: RollbackRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    staging = targets["staging"]
    baseline_fp, baseline_rows = fingerprint(staging), counts(staging)
    deploy_epic5(staging)
    assert fingerprint(staging) != baseline_fp
    mark = slack_mark(stack_env)
    run = runner.run({"environment": "staging", "method": "down_migrations", "steps": 1})
    assert run.returncode == 0, run.log[-5000:]
    assert run.state("approve_rollback") == "skipped" and run.state("safety_backup") == "success"
    assert fingerprint(staging) == baseline_fp and counts(staging) == baseline_rows
    assert ledger_states(staging) == {BASELINE: "applied", EPIC5: "pending"}
    assert [m["name"] for m in run.xcom("rollback")["rolled_back"]] == [EPIC5]
    assert run.xcom("verify_rollback")["ledger"][EPIC5] == "pending"
    assert audit_kinds(staging) == ["rollback"] and run.xcom("audit_record")["outcome"] == "rolled back and verified"
    assert any(k.endswith(".dump") and "/staging/" in k for k in runner.keys())  # the safety backup
    texts = slack_texts(stack_env, mark)
    assert "Schema rollback started" in texts and "Schema rollback done and verified" in texts


def test_production_rollback_from_the_pre_deploy_backup_after_approval_restores_rows_and_schema(
        runner: RollbackRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    from schema_deploy.backup import backup
    from schema_deploy.restore import verify_backup

    production = targets["production"]
    database = production.rsplit("/", 1)[1]
    before_fp, before_rows = fingerprint(production), counts(production)
    s3 = runner.s3()
    taken = backup(s3, production, f"s3://{stack_env['BACKUP_BUCKET']}/{runner.prefix}", environment="production",
                   run_id="pre-deploy")
    verify_backup(s3, taken.uri)
    deploy_epic5(production)
    with psycopg.connect(production) as conn:  # written after the backup: the restore takes it away
        conn.execute("DELETE FROM recommendations WHERE id IN (SELECT id FROM recommendations LIMIT 5)")
    assert fingerprint(production) != before_fp and counts(production) != before_rows

    run = runner.run({"environment": "production", "method": "backup", "confirm_database": database}, approve="alice")
    assert run.returncode == 0, run.log[-5000:]
    assert run.result["approvals"][0]["status"] == 200 and run.state("approve_rollback") == "success"
    assert run.xcom("approve_rollback")["responded_by_user"]["name"] == "alice"
    assert run.xcom("preflight")["backup"]["uri"] == taken.uri  # the newest verified backup, chosen by preflight
    assert f"chosen: {taken.uri}" in run.log
    assert fingerprint(production) == before_fp and counts(production) == before_rows
    assert ledger_states(production) == {BASELINE: "applied", EPIC5: "pending"}
    assert run.xcom("rollback")["foreign_keys_dropped_first"] == [
        "public.experiment_assignments.experiment_assignments_experimentId_fkey"]
    assert audit_kinds(production) == ["rollback"]
    safety = run.xcom("safety_backup")["uri"]
    assert safety != taken.uri and safety.rsplit("/", 1)[1].replace(".dump", ".audit.json") in " ".join(runner.keys())


def test_a_wrong_production_confirmation_is_refused_by_preflight_with_nothing_changed(
        runner: RollbackRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    production = targets["production"]
    database = production.rsplit("/", 1)[1]
    deploy_epic5(production)
    before_fp, before_rows = fingerprint(production), counts(production)
    run = runner.run({"environment": "production", "method": "down_migrations", "confirm_database": "production"},
                     approve="alice")
    assert run.returncode == 1
    assert run.state("preflight") == "failed" and run.state("rollback") in ("upstream_failed", None)
    assert (f"ConfirmationMismatch: confirm_database is 'production', but the production database is {database!r}: "
            "a production rollback needs its database name typed exactly in confirm_database. Nothing was changed; "
            f"trigger again with confirm_database = {database}.") in run.log
    assert fingerprint(production) == before_fp and counts(production) == before_rows
    assert ledger_states(production)[EPIC5] == "applied" and audit_kinds(production) == []
    assert not [k for k in runner.keys() if k.endswith(".dump")]  # no safety backup either
    assert run.result["approvals"] == []
