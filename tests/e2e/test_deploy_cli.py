"""`python -m schema_deploy deploy`: the whole pipeline without Airflow, on the local stack.

Baseline → Epic 5 on a fresh staging and production: the first call freezes the release, backs
production up, migrates staging and passes the gate, then stops for want of an approval; the second,
from that release with an approver, changes production and verifies it. The audit chain of both
databases verifies, and the record names the approver as given on the command line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg

from schema_deploy.state.ledger import read_rows
from tests.e2e.harness import GATE, REPO

EPIC5 = "20251017120000_epic5_schema_completion"


def deploy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "schema_deploy", "deploy", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)


def applied(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {r.migration_name: r.checksum for r in read_rows(conn) if r.applied}


def test_deploy_without_airflow_takes_both_databases_to_epic5_with_backup_gate_approval_and_audit(
        tmp_path: Path, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    store = f"s3://{stack_env['BACKUP_BUCKET']}/cli-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "deploy.yaml"
    config.write_text(f"bundles: {{main: {REPO / 'sql/migrations'}}}\nverify_dir: {REPO / 'sql/verify'}\n"
                      "backup: {restore_check: true}\n"
                      f"gate:\n  timeout: 2m\n  commands:\n{GATE}"
                      "windows: [{cron: '0 3 1 1 *', duration: 1h}]\n")  # once a year: the window is skipped
    env = {**os.environ, **{k: v for k, v in stack_env.items() if k.startswith("AWS_")},
           "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}", "SLACK_WEBHOOK_URL": stack_env["SLACK_WEBHOOK_URL"],
           "USER": "ci-bot"}
    urls = ["--staging", targets["staging"], "--production", targets["production"], "--to", store,
            "--config", str(config)]

    first = deploy(env, *urls, "--json")

    assert first.returncode == 0, first.stderr[-4000:]
    outcome = json.loads(first.stdout)
    assert outcome["stopped"] == "awaiting approval: production untouched"
    assert outcome["states"] == {"preflight": "success", "backup": "success", "apply_staging": "success",
                                 "gate": "success", "record": "success"}
    assert EPIC5 in applied(targets["staging"]) and EPIC5 not in applied(targets["production"])
    assert outcome["results"]["backup"]["verified"].endswith("restore")
    assert outcome["results"]["gate"]["gate"]["tests"] > 0
    release = outcome["results"]["preflight"]["release"]
    assert release["uri"] == f"{store}/releases/{release['sha256']}.json"

    second = deploy(env, *urls, "--release", release["uri"], "--approved-by", "alice",
                    "--skip-window", "CI deploys on merge")

    assert second.returncode == 0, second.stderr[-4000:]
    report = second.stdout
    assert f"  {release['short']}  {release['uri']}" in report
    assert "approved by alice" in report and "via command line" in report
    assert "MET            foreign key constraints enforced: " in report  # criteria.Criterion.line()
    assert applied(targets["production"]) == applied(targets["staging"])
    for url in targets.values():
        audit = subprocess.run([sys.executable, "-m", "schema_deploy", "audit", "verify", "--db", url], env=env,
                               cwd=REPO, capture_output=True, text=True, timeout=60)
        assert audit.returncode == 0, audit.stdout + audit.stderr
    with psycopg.connect(targets["production"]) as conn:
        (payload,) = conn.execute("SELECT payload FROM schema_deploy.audit_events WHERE kind = 'deploy' "
                                  "ORDER BY id DESC LIMIT 1").fetchone()
    record = payload if isinstance(payload, dict) else json.loads(payload)
    assert record["outcome"] == "production migrated"
    assert record["approval"]["approver"] == "alice" and record["approval"]["via"] == "command line"
    assert record["release"]["sha256"] != "" and record["window"]["skipped"] is True
    assert record["run"]["triggered_by"] == "ci-bot"
