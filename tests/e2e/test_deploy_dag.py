"""deploy_schema end to end with `airflow dags test` on the local stack (a dry run: staging only)."""
from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest

from generate_data import generate
from schema_deploy.apply import apply
from schema_deploy.bundle import load_bundle
from schema_deploy.ledger import read_rows
from tests.conftest import drop_database, with_database

REPO = Path(__file__).resolve().parents[2]
BUNDLE = load_bundle(REPO / "sql" / "migrations")
EPIC5 = "20251017120000_epic5_schema_completion"


@pytest.fixture
def targets(stack_env: dict[str, str]):
    """A fresh staging and production database (one on each cluster), at the baseline with data."""
    name = f"t_dag_{uuid.uuid4().hex[:8]}"
    urls = {}
    for env in ("STAGING", "PRODUCTION"):
        base = stack_env[f"{env}_DATABASE_URL"]
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        urls[env.lower()] = with_database(base, name)
        apply(urls[env.lower()], BUNDLE, to="20250915090000_baseline")
        generate(urls[env.lower()], seed=9, scale="demo")
    yield urls
    for env in ("STAGING", "PRODUCTION"):
        drop_database(stack_env[f"{env}_DATABASE_URL"], name)


@pytest.fixture(scope="module")
def airflow_home(tmp_path_factory, stack_env: dict[str, str]) -> dict[str, str]:
    home = tmp_path_factory.mktemp("airflow")
    config = home / "deploy.yaml"
    config.write_text(
        f"migrations: {REPO / 'sql/migrations'}\nverify_dir: {REPO / 'sql/verify'}\n"
        f"backup: {{bucket: {stack_env['BACKUP_BUCKET']}, prefix: e2e, restore_check: true}}\n"
        "gate:\n  timeout: 2m\n  commands:\n"
        "    - [python, -m, pytest, tests/gate, -q, -p, no:cacheprovider]\n"
        "windows: [{cron: '* * * * *', duration: 1h}]\n")
    env = {**os.environ, **{k: v for k, v in stack_env.items() if k.startswith(("AWS_", "PG_BINDIR"))},
           "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
           "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
           "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
           "AIRFLOW_CONN_BACKUP_S3": stack_env["AIRFLOW_CONN_BACKUP_S3"],
           "AIRFLOW_CONN_SLACK_DEPLOYS": stack_env["AIRFLOW_CONN_SLACK_DEPLOYS"],
           "SCHEMA_DEPLOY_CONFIG": str(config),
           "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"}
    subprocess.run([str(REPO / ".venv/bin/airflow"), "db", "migrate"], env=env, check=True,
                   capture_output=True, timeout=300)
    return env


def run_dag(env: dict[str, str], targets: dict[str, str], conf: dict) -> str:
    env = {**env, "AIRFLOW_CONN_STAGING_DB": targets["staging"], "AIRFLOW_CONN_PRODUCTION_DB": targets["production"]}
    run = subprocess.run([str(REPO / ".venv/bin/airflow"), "dags", "test", "deploy_schema", "-c", json.dumps(conf)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    log = run.stdout + run.stderr
    assert run.returncode == 0, log[-4000:]
    return log


def applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r.migration_name for r in read_rows(conn) if r.applied]


def slack_since(stack_env: dict[str, str], marker: int) -> str:
    lines = Path(stack_env["SLACK_MESSAGES_FILE"]).read_text().splitlines()[marker:]
    return " ".join(json.loads(line).get("text") or "" for line in lines)


def slack_marker(stack_env: dict[str, str]) -> int:
    path = Path(stack_env["SLACK_MESSAGES_FILE"])
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_a_dry_run_migrates_staging_and_leaves_production_untouched(
        targets: dict[str, str], airflow_home: dict[str, str], stack_env: dict[str, str]) -> None:
    marker = slack_marker(stack_env)
    log = run_dag(airflow_home, targets, {"dry_run": True})
    assert EPIC5 in applied(targets["staging"])
    assert EPIC5 not in applied(targets["production"])
    texts = slack_since(stack_env, marker)
    assert "Schema deployment started" in texts and "Dry run finished" in texts and "gate passed" in texts
    password = targets["production"].split(":")[2].split("@")[0]
    assert password not in log and password not in texts


def test_without_approval_production_is_migrated_verified_and_announced(
        targets: dict[str, str], airflow_home: dict[str, str], stack_env: dict[str, str]) -> None:
    marker = slack_marker(stack_env)
    run_dag(airflow_home, targets, {"require_approval": False})
    assert EPIC5 in applied(targets["staging"]) and EPIC5 in applied(targets["production"])
    texts = slack_since(stack_env, marker)
    assert "Production migrated and verified" in texts
    with psycopg.connect(targets["production"]) as conn:
        assert conn.execute("SELECT convalidated FROM pg_constraint "
                            "WHERE conname = 'experiment_assignments_experimentId_fkey'").fetchone()[0]


def test_a_skip_window_without_reason_is_refused_by_preflight_before_any_change(
        targets: dict[str, str], airflow_home: dict[str, str], stack_env: dict[str, str]) -> None:
    env = {**airflow_home, "AIRFLOW_CONN_STAGING_DB": targets["staging"],
           "AIRFLOW_CONN_PRODUCTION_DB": targets["production"]}
    run = subprocess.run([str(REPO / ".venv/bin/airflow"), "tasks", "test", "deploy_schema", "preflight",
                          "-t", json.dumps({"skip_window": True, "skip_window_reason": ""})],
                         env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    out = run.stdout + run.stderr  # `airflow tasks test` exits 0 whatever the task did; read its log
    assert "Task failed with exception" in out
    assert "skip_window is on but skip_window_reason is empty: say why production may change" in out
    assert EPIC5 not in applied(targets["staging"]) and EPIC5 not in applied(targets["production"])
