"""Each DAG's trigger form, in a real browser, submits at its defaults and its run reaches its first task.

Airflow's real services (devstack/airflow_local.py, started once for this module) against two
fresh databases at the baseline, with a verified backup of the staging one in S3 under a private
prefix. A headless Chromium (Debian's chromium + chromedriver, driven by selenium) logs in on
Airflow's login page, opens each DAG's page, clicks Trigger and, touching no field of the
params form, clicks the dialog's Trigger. Airflow's form keeps that button disabled while a field
it requires (a JSON-schema type without "null") is empty, so an optional field typed without
"null" fails this test.

Then, over the REST API with the admin's JWT: the run exists and its first task ran, and passed
(the defaults are a valid run). The deploy runs are marked failed after their first task (the
rest of a deployment is not this test's business); the rollback run goes on to the end: at its
defaults it restores staging from the newest verified backup, which its preflight must choose.
Screenshots go to tests/artifacts/ (git-ignored).
"""
from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest

from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply
from tests.conftest import drop_database, with_database
from tests.e2e.harness import (airflow_services, chrome, events, import_errors, masked, run_path, stack_secrets,
                               task_instances, task_logs, wait_for)

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
BASELINE = "20250915090000_baseline"
# Each DAG's first task, and a field of its form that is empty at its defaults (rendered once the
# dialog has loaded the params).
FIRST = {"deploy_schema": ("preflight_bundle", "skip_window_reason"),
         "deploy_fleet": ("preflight_bundle", "only_targets"),
         "rollback_schema": ("choose_environment", "backup_uri")}
FINISHED = ("success", "failed", "skipped", "upstream_failed", "removed")

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str]) -> Iterator[dict]:
    """Fresh staging and production databases at the baseline; a verified backup of staging's."""
    from schema_deploy.backups.dump import backup
    from schema_deploy.backups.restore import verify_backup
    from schema_deploy.backups.store import default_s3_client

    name = f"t_form_{uuid.uuid4().hex[:8]}"
    urls = {env: with_database(stack_env[f"{env.upper()}_DATABASE_URL"], name) for env in ("staging", "production")}
    bucket, prefix = stack_env["BACKUP_BUCKET"], f"form-tests/{name}"
    os.environ.update({k: v for k, v in stack_env.items() if k.startswith("AWS_")})
    s3 = default_s3_client()
    bundle = load_bundle(REPO / "sql" / "migrations")
    try:
        for env in urls:
            with psycopg.connect(stack_env[f"{env.upper()}_DATABASE_URL"], autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            apply(urls[env], bundle, to=BASELINE)
        made = backup(s3, urls["staging"], f"s3://{bucket}/{prefix}", environment="staging", run_id="form-test",
                      pg_bindir=stack_env.get("PG_BINDIR"))
        verify_backup(s3, made.uri, pg_bindir=stack_env.get("PG_BINDIR"))
        yield {"urls": urls, "bucket": bucket, "prefix": prefix, "backup": made.uri}
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        for env in ("STAGING", "PRODUCTION"):
            drop_database(stack_env[f"{env}_DATABASE_URL"], name)


@pytest.fixture(scope="module")
def services(tmp_path_factory, stack: dict) -> Iterator[dict]:
    """The four services, once for the module; nothing left running after (airflow_services asserts it)."""
    base = tmp_path_factory.mktemp("forms")
    home, config = base / "airflow", base / "deploy.yaml"
    config.write_text(
        f"bundles: {{main: {REPO / 'sql/migrations'}}}\nverify_dir: {REPO / 'sql/verify'}\n"
        f"backup: {{bucket: {stack['bucket']}, prefix: {stack['prefix']}, restore_check: false}}\n"
        "approval: {manual_runs: form, scheduled_runs: required}\n"
        "windows: [{name: always-open, cron: '* * * * *', duration: 1h, timezone: UTC}]\n"
        "fleets:\n  tenants: {targets: [tenant_a]}\n")
    with airflow_services(home, config, stack["urls"], timeout_s=500) as running:
        yield running


@pytest.fixture(scope="module")
def api(services: dict) -> Iterator[httpx.Client]:
    """An API client with the admin's JWT (POST /auth/token); every DAG parsed and unpaused."""
    with httpx.Client(base_url=services["url"], timeout=60) as client:
        token = client.post("/auth/token", json={"username": "admin", "password": services["password"]})
        assert token.status_code == 201, token.text
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        for dag_id in FIRST:
            wait_for(f"the dag-processor to parse {dag_id}",
                     lambda d=dag_id: True if client.get(f"/api/v2/dags/{d}").status_code == 200 else None, 240,
                     explain=lambda: f"; import errors: {import_errors(client) or 'none'}")
            # Unpaused here, so the dialog offers no "unpause on trigger" box: the form is all it shows.
            assert client.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).status_code == 200
        yield client




@pytest.fixture(scope="module")
def browser(services: dict, tmp_path_factory) -> Iterator:
    """Chromium logged in on Airflow's login page as admin."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver = chrome(tmp_path_factory.mktemp("chromium"), "1400,1400")
    try:
        driver.get(services["url"] + "/auth/login")
        wait = WebDriverWait(driver, 90)
        wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
        driver.find_element(By.NAME, "password").send_keys(services["password"])
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda d: d.get_cookie("_token"))
        yield driver
    finally:
        driver.quit()


def run_ids(api: httpx.Client, dag_id: str) -> set[str]:
    resp = api.get(f"/api/v2/dags/{dag_id}/dagRuns", params={"limit": 100})
    resp.raise_for_status()
    return {r["dag_run_id"] for r in resp.json()["dag_runs"]}


def trigger_at_defaults(browser, base: str, dag_id: str, api: httpx.Client) -> str:
    """Opens the DAG's Trigger dialog and submits it with no field touched; the new run's id."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 90)
    before = run_ids(api, dag_id)
    browser.get(f"{base}/dags/{dag_id}")
    wait.until(ec.element_to_be_clickable((By.CSS_SELECTOR, "[data-testid=trigger-dag-button]"))).click()
    wait.until(ec.presence_of_element_located((By.ID, f"element_{FIRST[dag_id][1]}")))
    time.sleep(1)  # the form's checks run in effects after the fields render
    submit = browser.find_element(By.CSS_SELECTOR, "[data-testid=trigger-dag-submit]")
    dialog = browser.find_element(By.TAG_NAME, "body").text
    browser.save_screenshot(str(ARTIFACTS / f"trigger_form_{dag_id}.png"))
    assert "This field is required" not in dialog, f"{dag_id}: the form marks a field required at its defaults"
    assert submit.is_enabled(), f"{dag_id}: Trigger is disabled at the form's defaults:\n{dialog}"
    submit.click()
    new = wait_for(f"the run of {dag_id} the form triggered",
                   lambda: (run_ids(api, dag_id) - before) or None, 60,
                   explain=lambda: f"; the dialog said: {browser.find_element(By.TAG_NAME, 'body').text[-1500:]}")
    assert len(new) == 1, new
    browser.save_screenshot(str(ARTIFACTS / f"trigger_form_{dag_id}_submitted.png"))
    # Off the DAG's page, which refreshes itself every few seconds while the test waits on the run:
    # Chromium and the api-server spent ~10 s of CPU on that per module run.
    browser.get("about:blank")
    return new.pop()


def log_of(api: httpx.Client, run_id: str, ti: dict, secrets: dict[str, str]) -> str:
    tries = task_logs(api, run_id, ti)
    return masked("\n".join(events(tries[-1])[-40:]) if tries else "(no log)", secrets)


def states(api: httpx.Client, run_id: str, dag_id: str) -> str:
    return "; task states: " + ", ".join(f"{t} {ti['state']}" for t, ti in task_instances(api, run_id, dag_id).items())


def first_task(api: httpx.Client, run_id: str, dag_id: str) -> dict:
    task_id = FIRST[dag_id][0]

    def finished():
        ti = task_instances(api, run_id, dag_id).get(task_id, {})
        return ti if ti.get("state") in FINISHED else None

    return wait_for(f"{dag_id}'s first task {task_id} to finish", finished, 300,
                    explain=lambda: states(api, run_id, dag_id))


def settled(api: httpx.Client, run_id: str, dag_id: str, timeout: float, stop: bool = False) -> dict:
    """The run once it and every task of it ended; `stop`: marked failed, again while it still runs (a
    PATCH that lands as a task finishes can leave the run going on: seen with four test processes)."""
    def done():
        if stop and api.get(run_path(run_id, dag_id)).json()["state"] not in ("success", "failed"):
            api.patch(run_path(run_id, dag_id), json={"state": "failed"})
        run = api.get(run_path(run_id, dag_id)).json()
        tis = task_instances(api, run_id, dag_id)
        busy = {t: ti["state"] for t, ti in tis.items() if ti["state"] in ("running", "queued", "scheduled",
                                                                          "deferred", "restarting", "up_for_retry")}
        return run if run["state"] in ("success", "failed") and not busy else None

    return wait_for(f"run {run_id} of {dag_id} to end", done, timeout, every=3,
                    explain=lambda: states(api, run_id, dag_id))


@pytest.mark.parametrize("dag_id", ["deploy_schema", "deploy_fleet"])
def test_a_deploy_form_triggers_at_its_defaults_and_its_first_task_passes(
        browser, services: dict, api: httpx.Client, stack_env: dict[str, str], dag_id: str) -> None:
    run_id = trigger_at_defaults(browser, services["url"], dag_id, api)
    try:
        run = api.get(run_path(run_id, dag_id)).json()
        assert run["run_type"] == "manual" and run["conf"].get("skip_window_reason") is None, run["conf"]
        ti = first_task(api, run_id, dag_id)
        assert ti["state"] == "success", (f"{dag_id}.{ti['task_id']} {ti['state']} at the form's defaults:\n"
                                          + log_of(api, run_id, ti, stack_secrets(stack_env)))
    finally:  # the rest of a deployment is not this test's: stop the run, and wait until nothing of it runs
        settled(api, run_id, dag_id, 180, stop=True)


def test_the_rollback_form_triggers_at_its_defaults_a_staging_restore_of_the_newest_verified_backup(
        browser, services: dict, api: httpx.Client, stack: dict, stack_env: dict[str, str]) -> None:
    dag_id, secrets = "rollback_schema", stack_secrets(stack_env)
    run_id = trigger_at_defaults(browser, services["url"], dag_id, api)
    conf = api.get(run_path(run_id, dag_id)).json()["conf"]
    assert (conf["environment"], conf["method"], conf.get("backup_uri"), conf.get("confirm_database")) == (
        "staging", "backup", None, None), conf
    ti = first_task(api, run_id, dag_id)
    assert ti["state"] == "success", f"choose_environment {ti['state']}:\n" + log_of(api, run_id, ti, secrets)
    run = settled(api, run_id, dag_id, 420)
    tis = task_instances(api, run_id, dag_id)
    preflight = tis["staging.preflight"]
    assert preflight["state"] == "success", log_of(api, run_id, preflight, secrets)
    plan = api.get(f"{run_path(run_id, dag_id)}/taskInstances/staging.preflight/xcomEntries/return_value",
                   params={"deserialize": "true"})
    assert plan.status_code == 200, plan.text
    assert plan.json()["value"]["backup"]["uri"] == stack["backup"]  # the empty Backup URI: the newest verified one
    assert {t for t, ti in tis.items() if t.startswith("production.") and ti["state"] != "skipped"} == set()
    not_ok = {t: ti["state"] for t, ti in tis.items() if ti["state"] not in ("success", "skipped")}
    assert run["state"] == "success" and not not_ok, (
        f"run {run['state']}; not successful: {not_ok}\n"
        + "\n".join(f"--- {t}\n{log_of(api, run_id, tis[t], secrets)}" for t in not_ok))


def test_a_production_rollback_without_its_confirmation_fails_at_the_first_task_at_once_naming_the_field(
        api: httpx.Client, stack_env: dict[str, str]) -> None:
    """The form lets it through (each field is valid alone); choose_environment refuses it, not retried."""
    dag_id = "rollback_schema"
    trigger = api.post(f"/api/v2/dags/{dag_id}/dagRuns", json={
        "logical_date": None, "conf": {"environment": "production", "backup_uri": None, "confirm_database": None}})
    assert trigger.status_code == 200, trigger.text
    run_id = trigger.json()["dag_run_id"]
    ti = first_task(api, run_id, dag_id)
    run = settled(api, run_id, dag_id, 240)
    log = " ".join(log_of(api, run_id, ti, stack_secrets(stack_env)).split())
    assert (ti["state"], ti["try_number"], run["state"]) == ("failed", 1, "failed"), log
    assert ("'Confirm the database name' (confirm_database) is empty, but 'Environment' (environment) is "
            "production: a production rollback needs the production database's name typed there.") in log, log
    ran = {t: x["state"] for t, x in task_instances(api, run_id, dag_id).items()
           if t.startswith(("production.", "staging.")) and x["state"] not in (None, "skipped", "upstream_failed")}
    assert ran == {}, ran  # no group ran: nothing read either database
