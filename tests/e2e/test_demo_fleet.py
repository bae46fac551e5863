"""`make demo-fleet` end to end (devstack/demo_fleet.py) with four tenants, on databases of its own.

The script is run as `make demo-fleet` runs it, with `--staging-db` and `--database-prefix` so it
leaves the stack's own staging database and the demo's tenants alone, and an Airflow home copied
from the migrated one. Four tenants, waves of 25 %: the canary, then three waves of one; the orphan
rows go into the middle tenant (tenant_02, wave 3), which the brake tolerates (halt_after: 1).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid

import psycopg
import pytest

import tenants
from schema_deploy.state.ledger import read_rows
from tests.conftest import drop_database, with_database
from tests.e2e.harness import REPO

EPIC5 = "20251017120000_epic5_schema_completion"


@pytest.fixture
def isolated(stack_env: dict[str, str]):
    tag = f"t_dfleet_{uuid.uuid4().hex[:6]}_"
    yield tag
    tenants.drop(stack_env["PRODUCTION_DATABASE_URL"], tag)
    drop_database(stack_env["STAGING_DATABASE_URL"], f"{tag}staging")


def applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r.migration_name for r in read_rows(conn) if r.applied]


def test_demo_fleet_deploys_every_tenant_but_the_planted_one_and_reports_waves_brakes_slack_and_the_record(
        stack_env: dict[str, str], isolated: str, tmp_path, migrated_home) -> None:
    shutil.copytree(migrated_home, tmp_path / "airflow")
    proc = subprocess.run([sys.executable, str(REPO / "devstack/demo_fleet.py"), "--tenants", "4", "--work",
                           str(tmp_path), "--staging-db", f"{isolated}staging", "--database-prefix", isolated],
                          capture_output=True, text=True, timeout=300, cwd=REPO, env=dict(os.environ))
    out = proc.stdout

    assert proc.returncode == 0, out[-4000:] + proc.stderr[-4000:]
    assert re.search(r"run manual__\S+: failed \(as planned: tenant_02 failed alone, the others are done\)", out)
    assert re.search(r"release +[0-9a-f]{12}  s3://\S+/releases/[0-9a-f]{64}\.json", out)
    assert "settings   canary 1, size 25%, parallel 4, halt_after 1, pause 0 s, backup each" in out
    for i, name in enumerate(["tenant_00", "tenant_01", "tenant_02", "tenant_03"]):
        assert re.search(rf"wave {i + 1}( \(canary\))? +{name}\n +brake: continue — ", out), name
    assert "HALT" not in out
    assert re.search(r"tenant_02 +failed +3 +[\d.]+ +[\d.]+ +[\d.]+  data prechecks failed; nothing was changed: - "
                     r"sql/migrations/\S+migration.sql:10: 3 rows of experiment_assignments", out)
    assert len(re.findall(r"tenant_0[013] +done +[1-4] +[\d.]+", out)) == 3
    assert "outcome: failed (done 3, failed 1)" in out
    assert re.search(r"Slack \(stand-in\): \d+ messages this run: 4 wave messages, 1 summary", out)
    assert re.search(r"fleet record  s3://\S+/fleets/tenants/runs/manual__\S+/fleet\.json  sha256 [0-9a-f]{64}", out)
    assert re.search(r"timings +total \d+ s", out)

    base = stack_env["PRODUCTION_DATABASE_URL"]
    assert EPIC5 not in applied(with_database(base, f"{isolated}tenant_02"))
    for name in ("tenant_00", "tenant_01", "tenant_03"):
        assert EPIC5 in applied(with_database(base, f"{isolated}{name}")), name
    assert EPIC5 in applied(with_database(stack_env["STAGING_DATABASE_URL"], f"{isolated}staging"))
