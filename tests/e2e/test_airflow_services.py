"""deploy_schema on Airflow's real services, as `make airflow` runs them (devstack/airflow_local.py).

The api-server, scheduler, dag-processor and triggerer run on a free port with a
private AIRFLOW_HOME against two fresh databases; the test drives the REST API the
way the UI does: trigger with approval, answer the approval, wait for success, then
read every task's state and log. Production is a primary with a streaming replica whose
replay is paused: apply_production defers on the real triggerer until the page has said
what it waits for, then replay resumes.
"""
from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from schema_deploy.state.ledger import read_rows
from seed import reset
from tests.conftest import drop_database, with_database
from tests.replica_pair import Pair, replica_pair
from tests.e2e.harness import (airflow_services, events, import_errors, masked, run_path, stack_secrets,
                               task_instances, task_logs, wait_for)

REPO = Path(__file__).resolve().parents[2]
DAG = "deploy_schema"
EPIC5 = "20251017120000_epic5_schema_completion"
TASKS = ("preflight_bundle", "preflight_staging", "preflight_production", "preflight", "backup_production", "apply_staging", "test_gate", "production_requested",
         "approval_needed", "approve_production", "wait_for_window", "apply_production", "verify_production")
RUN_TIMEOUT_S = 480
APPROVE_AFTER_S = 5

pytestmark = pytest.mark.timeout(1200)


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with replica_pair("svc") as made:
        yield made


@pytest.fixture(scope="module")
def targets(stack_env: dict[str, str], pair: Pair) -> Iterator[dict[str, str]]:
    """A fresh database on staging's cluster and on the replicated primary, at the baseline with the demo data."""
    name = f"t_svc_{uuid.uuid4().hex[:8]}"
    urls = {"staging": with_database(stack_env["STAGING_DATABASE_URL"], name), "production": pair.database(name)}
    try:
        for url in urls.values():
            reset(url, log=lambda _msg: None)  # creates the database if needed, then baseline + data
        yield urls
    finally:
        drop_database(stack_env["STAGING_DATABASE_URL"], name)


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, stack_env: dict[str, str], targets: dict[str, str]) -> Iterator[httpx.Client]:
    """The four services running; an API client logged in as admin. Stopped, with no process left, after."""
    base = tmp_path_factory.mktemp("services")
    home, config = base / "airflow", base / "deploy.yaml"
    config.write_text(
        f"migrations: {REPO / 'sql/migrations'}\nverify_dir: {REPO / 'sql/verify'}\n"
        f"backup: {{bucket: {stack_env['BACKUP_BUCKET']}, prefix: e2e-services-{uuid.uuid4().hex[:8]}, "
        "restore_check: true}\n"
        "gate:\n  timeout: 5m\n  commands:\n"
        "    - [python, -m, pytest, tests/gate, -q, -p, no:cacheprovider, -p, no:hypothesispytest, "
        "'--junitxml={junit}']\n"
        "approval: {manual_runs: form, scheduled_runs: required}\n"
        "windows: [{name: always-open, cron: '* * * * *', duration: 1h, timezone: UTC}]\n"
        "health: {max_replica_lag_mb: 1, poll: 2s, max_wait: 5m}\n")
    with airflow_services(home, config, targets) as services, \
            httpx.Client(base_url=services["url"], timeout=30) as api:
        token = api.post("/auth/token", json={"username": "admin", "password": services["password"]})
        assert token.status_code == 201, token.text
        api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield api


def test_a_run_triggered_and_approved_over_the_api_migrates_production_and_logs_no_secret(
        airflow: httpx.Client, targets: dict[str, str], stack_env: dict[str, str], pair: Pair) -> None:
    api, secrets = airflow, stack_secrets(stack_env)
    pair.replay(paused=True)
    pair.fill(mb=3)  # the replica lags over 1 MB until the page has said so
    t0 = time.monotonic()
    wait_for("the dag-processor to parse deploy_schema",
             lambda: True if api.get(f"/api/v2/dags/{DAG}").status_code == 200 else None, 180,
             explain=lambda: f"; import errors: {import_errors(api) or 'none'}")
    assert api.patch(f"/api/v2/dags/{DAG}", json={"is_paused": False}).status_code == 200
    trigger = api.post(f"/api/v2/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": {"require_approval": True}})
    assert trigger.status_code == 200, trigger.text
    run_id = trigger.json()["dag_run_id"]

    asked: list[dict] = []
    parked: list[float] = []
    held: list[dict] = []  # the page's entry of the run while apply_production deferred on the health gate
    looked: list[list[dict]] = []  # each read of the page while the API said apply_production was deferred

    def finished():
        state = api.get(run_path(run_id)).json()["state"]
        if state in ("success", "failed"):
            return state
        if not held and task_instances(api, run_id).get("apply_production", {}).get("state") == "deferred":
            entry = [r for r in api.get("/schema-deploy/api/runs").json()["runs"] if r["run_id"] == run_id]
            looked.append(entry)
            # The page reads the task's state itself: between the two reads the task may have come back from
            # one deferral (each lasts one poll). While the replica lags it defers again: ask again then.
            if (entry and "database's health" in entry[0]["summary"]["outcome"]) or len(looked) >= 10:
                held.extend(entry)
                pair.replay(paused=False)
        approval = task_instances(api, run_id).get("approve_production", {})
        if approval.get("state") in ("awaiting_input", "deferred") and not parked:
            parked.append(time.monotonic())
        # Answer like a person, not at once: an answer within ~0.5 s of the task parking races the
        # scheduler's handling of the parked worker's exit, and Airflow 3.3 then fails the task.
        if not asked and parked and time.monotonic() - parked[0] >= APPROVE_AFTER_S:
            detail = api.get(f"{run_path(run_id)}/taskInstances/approve_production/-1/hitlDetails")
            if detail.status_code == 200:
                answer = api.patch(f"{run_path(run_id)}/taskInstances/approve_production/-1/hitlDetails",
                                   json={"chosen_options": ["Approve"], "params_input": {}})
                assert answer.status_code == 200, answer.text
                asked.append(detail.json())
        return None

    def explain() -> str:
        states = {t: ti["state"] for t, ti in task_instances(api, run_id).items()}
        return f"\ntask states: {states}\nimport errors: {import_errors(api) or 'none'}"

    try:
        state = wait_for(f"run {run_id} to finish", finished, RUN_TIMEOUT_S, every=3, explain=explain)
    finally:
        pair.replay(paused=False)
    print(f"run {run_id}: {state} after {time.monotonic() - t0:.1f} s")
    tis = task_instances(api, run_id)
    logs = {task_id: task_logs(api, run_id, ti) for task_id, ti in tis.items()}
    not_ok = {t: tis.get(t, {}).get("state") for t in TASKS if tis.get(t, {}).get("state") != "success"}
    assert state == "success" and not not_ok, masked(
        f"run {state}; tasks not successful: {not_ok}\n"
        + "\n".join(f"--- {t}\n" + "\n".join(events(logs[t][-1])[-40:]) for t in not_ok if logs.get(t)), secrets)

    assert asked and "Approve" in asked[0]["options"]
    assert held, "apply_production never deferred while the replica lagged"
    summary = held[0]["summary"]  # what the page said while the task waited: that it waits, and why
    assert summary["outcome"] == "in progress: production waits for the database's health before an online step"
    assert re.fullmatch(r"waiting for: replica health_replica \(.+, streaming\) replay lag \d+\.\d MB \(over 1\.0 MB.*\) "
                        r"\(waiting since \d{4}-\d\d-\d\dT[\d:.]+\+00:00\)", summary["waiting"] or ""), summary
    record = api.get(f"{run_path(run_id)}/taskInstances/approve_production/xcomEntries/return_value",
                     params={"deserialize": "true"})
    assert record.status_code == 200, record.text
    assert {k: record.json()["value"].get(k) for k in ("approved", "approver")} == {"approved": True, "approver": "admin"}
    with psycopg.connect(targets["production"]) as conn:
        assert EPIC5 in [r.migration_name for r in read_rows(conn) if r.applied]

    assert all(events(logs[t][-1]) for t in TASKS), {t: len(events(logs[t][-1])) for t in TASKS}
    leaks = sorted(f"{task_id}: {name}" for task_id, tries in logs.items()
                   for name, value in secrets.items() if any(value in log for log in tries))
    assert not leaks, f"stack secrets in task logs: {leaks}"
