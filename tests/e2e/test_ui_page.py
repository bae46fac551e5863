"""The "Schema deployments" UI page on Airflow's real services (devstack/airflow_local.py).

The api-server, scheduler, dag-processor and triggerer start once for this module, on
a free port with a private AIRFLOW_HOME, against two fresh databases: staging with
every migration applied (Epic 5 included), production at the baseline (Epic 5
pending), an audit record on staging, a real backup of production and a fleet record
(keep_fleet_record, tests/fleet_samples.py) in S3 under a private prefix. The JSON endpoints are called with a JWT and without one; then a
headless Chromium (Debian's chromium + chromedriver, driven by selenium) logs in on
Airflow's login page, opens the page and reads the matrix. Screenshots go to
tests/artifacts/ (git-ignored).
"""
from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import psycopg
import pytest
from botocore.config import Config

from schema_deploy.audit import chain
from schema_deploy.backups.dump import backup
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply
from schema_deploy.pg.db import connect
from tests.conftest import drop_database, with_database
from tests.e2e.harness import airflow_services, chrome
from tests.fleet_samples import context as fleet_context, record as fleet_record, spec as fleet_spec

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"
BASELINE = "20250915090000_baseline"
EPIC5 = "20251017120000_epic5_schema_completion"
PREFIX = "/schema-deploy"
ENDPOINTS = ("/", "/api/matrix", "/api/runs", "/api/backups", "/api/audit", "/api/fleets")
RUN_ID = f"ui-test__{uuid.uuid4().hex[:8]}"
BACKFILL = "20261201000000_event_date_expand"
RUNNING = "20261202000000_score_backfill"
CLICKED = "20261203000000_rank_backfill"

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def stack(stack_env: dict[str, str]) -> Iterator[dict]:
    """Fresh staging (all applied) and production (baseline) databases, an audit row, a backup."""
    name = f"t_ui_{uuid.uuid4().hex[:8]}"
    urls = {env: with_database(stack_env[f"{env.upper()}_DATABASE_URL"], name) for env in ("staging", "production")}
    bucket, prefix = stack_env["BACKUP_BUCKET"], f"ui-tests/{name}"
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=stack_env["S3_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}))
    bundle = load_bundle(REPO / "sql" / "migrations")
    try:
        for env, url in urls.items():
            with psycopg.connect(stack_env[f"{env.upper()}_DATABASE_URL"], autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
        apply(urls["staging"], bundle)
        apply(urls["production"], bundle, to=BASELINE)
        with connect(urls["staging"]) as conn:
            row = chain.append(conn, "deploy", RUN_ID, "staging",
                               {"outcome": "dry run", "run": {"run_id": RUN_ID, "run_type": "manual"},
                                "approval": {"approved": True, "approver": "ui-test"},
                                "bundle": [{"name": m.name, "checksum": m.checksum} for m in bundle.migrations]})
            # A backfill an operator paused at a quarter of its rows (its checkpoint, as the engine keeps it).
            from schema_deploy.backfill import checkpoint

            checkpoint.start(conn, BACKFILL, "d" * 64, None, "behavioral_events", 1000)
            checkpoint.batch_done(conn, BACKFILL, "key-250", 250, 0)
            checkpoint.request(conn, BACKFILL, "pause", "ui-test")
            # And one between its batches (no runner now): what the page's Pause acts on.
            for running in (RUNNING, CLICKED):
                checkpoint.start(conn, running, "e" * 64, None, "behavioral_events", 4000)
                checkpoint.batch_done(conn, running, "key-1000", 1000, 0)
        made = backup(s3, urls["production"], f"s3://{bucket}/{prefix}", environment="production", run_id=RUN_ID,
                      pg_bindir=stack_env["PG_BINDIR"])
        from schema_deploy.pipeline.fleet.record import keep_fleet_record

        fleet_ctx = fleet_context(f"s3://{bucket}/{prefix}", s3=s3)
        keep_fleet_record(fleet_ctx, fleet_spec(), fleet_record(fleet_ctx))
        yield {"urls": urls, "bucket": bucket, "prefix": prefix, "bundle": bundle, "audit_row": row, "backup": made}
    finally:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=bucket, Key=obj["Key"])
        for env in ("STAGING", "PRODUCTION"):
            drop_database(stack_env[f"{env}_DATABASE_URL"], name)


@pytest.fixture(scope="module")
def services(tmp_path_factory, stack: dict) -> Iterator[dict]:
    """The four services, up; yields the base URL and the admin's password. Nothing left running after."""
    base = tmp_path_factory.mktemp("ui")
    home, config = base / "airflow", base / "deploy.yaml"
    config.write_text(f"migrations: {REPO / 'sql/migrations'}\n"
                      f"backup: {{bucket: {stack['bucket']}, prefix: {stack['prefix']}}}\n")
    with airflow_services(home, config, stack["urls"], timeout_s=500) as services:
        yield services


@pytest.fixture(scope="module")
def api(services: dict) -> Iterator[httpx.Client]:
    """An API client with the admin's JWT (POST /auth/token)."""
    with httpx.Client(base_url=services["url"], timeout=60) as client:
        token = client.post("/auth/token", json={"username": "admin", "password": services["password"]})
        assert token.status_code == 201, token.text
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield client


# --- authentication ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", ENDPOINTS)
def test_an_anonymous_request_is_refused_on_every_route(services: dict, path: str) -> None:
    with httpx.Client(base_url=services["url"], timeout=30) as anonymous:
        assert anonymous.get(PREFIX + path).status_code == 401
        forged = anonymous.get(PREFIX + path, headers={"Authorization": "Bearer not-a-jwt"})
        assert forged.status_code == 403
    with httpx.Client(base_url=services["url"], timeout=30, cookies={"_token": "not-a-jwt"}) as forged_cookie:
        assert forged_cookie.get(PREFIX + path).status_code == 403


def test_a_browser_refused_the_page_gets_a_link_to_airflows_login(services: dict) -> None:
    with httpx.Client(base_url=services["url"], timeout=30, headers={"Accept": "text/html"}) as anonymous:
        resp = anonymous.get(PREFIX + "/")
    assert resp.status_code == 401 and "Sign in to Airflow" in resp.text
    assert "/auth/login?next=%2Fschema-deploy%2F" in resp.text and "Migrations" not in resp.text


def test_no_openapi_or_docs_route_is_served_under_the_prefix(services: dict) -> None:
    with httpx.Client(base_url=services["url"], timeout=30) as anonymous:
        assert {p: anonymous.get(PREFIX + p).status_code for p in ("/docs", "/redoc", "/openapi.json")} == {
            "/docs": 404, "/redoc": 404, "/openapi.json": 404}


# --- the JSON endpoints, authenticated ------------------------------------------------------------

def test_the_matrix_shows_epic5_applied_on_staging_and_pending_on_production(api: httpx.Client, stack: dict) -> None:
    resp = api.get(f"{PREFIX}/api/matrix")
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert [(e["name"], e["reachable"]) for e in data["environments"]] == [("staging", True), ("production", True)]
    assert data["schemas_match"] is False  # production lacks Epic 5
    rows = {m["name"]: m for m in data["migrations"]}
    assert list(rows) == [m.name for m in stack["bundle"].migrations] and list(rows)[:2] == [BASELINE, EPIC5]
    epic5 = rows[EPIC5]
    assert epic5["checksum"] == stack["bundle"].migrations[1].checksum
    assert epic5["environments"]["staging"]["state"] == "applied"
    assert epic5["environments"]["staging"]["ledger_checksum"] == epic5["checksum"]
    assert epic5["environments"]["staging"]["applied_at"]
    assert epic5["environments"]["production"]["state"] == "pending"
    assert rows[BASELINE]["environments"]["production"]["state"] == "applied"


def test_runs_list_the_audit_record_of_a_run(api: httpx.Client, stack: dict) -> None:
    resp = api.get(f"{PREFIX}/api/runs")
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["audit_errors"] == {}
    run = next(r for r in data["runs"] if r["run_id"] == RUN_ID)
    assert (run["source"], run["dag_id"]) == ("audit only", "deploy_schema")  # this Airflow never ran it
    (record,) = run["audit"]
    assert (record["environment"], record["outcome"], record["approver"], record["row_hash"]) == (
        "staging", "dry run", "ui-test", stack["audit_row"].row_hash)
    assert record["migrations"] == [m.name for m in stack["bundle"].migrations]


def test_a_run_airflow_knows_is_joined_with_its_audit_record(api: httpx.Client, stack: dict) -> None:
    deadline = time.monotonic() + 150
    while api.get("/api/v2/dags/deploy_schema").status_code != 200:
        assert time.monotonic() < deadline, "the dag-processor did not parse deploy_schema"
        time.sleep(2)
    # Paused, the run stays queued: this test needs Airflow to know it, not to run it.
    assert api.patch("/api/v2/dags/deploy_schema", json={"is_paused": True}).status_code == 200
    trigger = api.post("/api/v2/dags/deploy_schema/dagRuns", json={"dag_run_id": RUN_ID, "logical_date": None})
    assert trigger.status_code == 200, trigger.text

    runs = api.get(f"{PREFIX}/api/runs").json()["runs"]

    (run,) = [r for r in runs if r["run_id"] == RUN_ID]
    assert (run["source"], run["dag_id"], run["state"]) == ("airflow", "deploy_schema", "queued")
    assert run["url"].endswith(f"/dags/deploy_schema/runs/{RUN_ID}")
    assert [a["row_hash"] for a in run["audit"]] == [stack["audit_row"].row_hash]


def test_backups_list_the_production_backup_with_its_manifest_facts(api: httpx.Client, stack: dict) -> None:
    resp = api.get(f"{PREFIX}/api/backups")
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert data["error"] is None and data["uri"] == f"s3://{stack['bucket']}/{stack['prefix']}"
    (entry,) = data["backups"]
    made = stack["backup"]
    assert (entry["uri"], entry["environment"], entry["state"], entry["verification_state"]) == (
        made.uri, "production", "complete", "not verified")
    assert (entry["sha256"], entry["size"], entry["run_id"]) == (made.sha256, made.size, RUN_ID)


def test_backfills_list_a_paused_backfill_with_its_progress_and_why_it_stands(api: httpx.Client) -> None:
    data = api.get(f"{PREFIX}/api/backfills").json()
    assert data["errors"] == {}
    (b,) = [b for b in data["backfills"] if b["id"] == BACKFILL]
    assert (b["environment"], b["state"], b["rows_done"], b["rows_estimated"], b["percent"], b["batch_rows"],
            b["eta_s"], b["paused_because"]) == ("staging", "paused", 250, 1000, 25.0, 250, None, "paused by ui-test")


def test_a_pause_from_the_page_needs_edit_rights_and_the_pages_header_and_is_audited(
        services: dict, api: httpx.Client, stack: dict) -> None:
    from schema_deploy.audit import chain
    from schema_deploy.backfill import checkpoint

    url = f"{PREFIX}/api/backfills/staging/{RUNNING}/pause"
    header = {"X-Schema-Deploy-Action": "pause"}
    with httpx.Client(base_url=services["url"], timeout=60) as watcher:  # a viewer: no edit rights on the DAG
        password = json.loads((services["home"] / "passwords.json").read_text())["watcher"]
        token = watcher.post("/auth/token", json={"username": "watcher", "password": password}).json()["access_token"]
        refused = watcher.post(url, headers={**header, "Authorization": f"Bearer {token}"})
    assert refused.status_code == 403, refused.text
    anonymous = httpx.post(services["url"] + url, headers=header)
    assert anonymous.status_code == 401, anonymous.text
    forged = api.post(url)  # no header: what a form or an image on another site can send
    assert (forged.status_code, forged.json()["detail"]) == (403, (
        "refused: a pause needs the header X-Schema-Deploy-Action: pause, which the page sends (protection against "
        "requests made from other sites)"))
    elsewhere = api.post(url, headers={**header, "Origin": "https://evil.example"})
    assert (elsewhere.status_code, elsewhere.json()["detail"]) == (
        403, "refused: a pause asked from another site (https://evil.example)")
    unknown = api.post(f"{PREFIX}/api/backfills/staging/20260101000000_nope/pause", headers=header)
    assert (unknown.status_code, unknown.json()["detail"]) == (404, (
        "no backfill 20260101000000_nope on staging: it has not run there (the Backfills table lists those that "
        "have)"))
    nowhere = api.post(f"{PREFIX}/api/backfills/qa/{RUNNING}/pause", headers=header)
    assert (nowhere.status_code, nowhere.json()["detail"]) == (
        404, "no environment 'qa': one of ['production', 'staging']")
    with psycopg.connect(stack["urls"]["staging"]) as conn:
        assert checkpoint.read(conn, RUNNING)[0].state == "running"  # nothing refused changed it

    done = api.post(url, headers=header)
    assert done.status_code == 200, done.text
    assert (done.json()["state"], done.json()["paused_because"]) == ("paused", "paused by admin")
    with psycopg.connect(stack["urls"]["staging"]) as conn:
        point = checkpoint.read(conn, RUNNING)[0]
        (row,) = [r for r in chain.read_rows(conn) if r.kind == "backfill_pause"]
    assert (point.state, point.requested_by) == ("paused", "admin")
    assert row.row_hash == done.json()["audit_row"] and row.environment == "staging"
    assert {k: row.payload[k] for k in ("backfill", "by", "via", "state", "rows_done")} == {
        "backfill": RUNNING, "by": "admin", "via": "the Schema deployments page", "state": "paused", "rows_done": 1000}


def test_audit_status_is_ok_on_staging_and_no_trail_on_production(api: httpx.Client) -> None:
    resp = api.get(f"{PREFIX}/api/audit")
    assert resp.status_code == 200, resp.text
    states = {e["name"]: e for e in resp.json()["environments"]}
    # The fixture's row, and the pauses asked from the page when those tests ran first: each one a row.
    assert states["staging"]["state"] == "ok" and states["staging"]["rows_checked"] >= 1
    assert states["production"]["state"] == "no trail"


def test_the_page_is_linked_in_the_ui_navigation(api: httpx.Client) -> None:
    plugins = api.get("/api/v2/plugins", params={"limit": 100}).json()["plugins"]
    (ui,) = [p for p in plugins if p["name"] == "schema_deploy_ui"]
    assert ui["fastapi_apps"][0]["url_prefix"] == PREFIX
    (view,) = ui["external_views"]
    assert (view["href"], view["url_route"], view["destination"]) == (f"{PREFIX}/", "schema-deploy", "nav")


# --- a real browser ----------------------------------------------------------------------------------



def test_after_login_the_page_shows_the_matrix_in_a_real_browser(services: dict, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = chrome(tmp_path)
    wait = WebDriverWait(browser, 60)
    try:
        browser.get(services["url"] + PREFIX + "/")  # anonymous: refused, with a link to Airflow's login
        assert not browser.find_elements(By.ID, "matrix")
        browser.find_element(By.ID, "login").click()
        wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys(services["password"])
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        # Airflow's login sets the _token cookie and sends the browser back to the page.
        wait.until(lambda b: b.current_url.rstrip("/").endswith(PREFIX) and b.find_elements(By.ID, "matrix"))
        assert browser.get_cookie("_token")
        wait.until(lambda b: all(b.find_element(By.ID, t).get_attribute("data-state") != "loading"
                                 for t in ("matrix", "audit", "runs", "fleet", "backfills", "backups")))
        assert browser.find_element(By.ID, "matrix").get_attribute("data-state") == "loaded"
        row = browser.find_element(By.CSS_SELECTOR, f'#matrix tr[data-migration="{EPIC5}"]')
        cells = {c.get_attribute("data-env"): c for c in row.find_elements(By.CSS_SELECTOR, "td[data-env]")}
        assert (cells["staging"].get_attribute("data-state"), cells["production"].get_attribute("data-state")) == (
            "applied", "pending")
        assert "applied" in cells["staging"].text and "pending" in cells["production"].text
        assert EPIC5 in row.text and "admin" in browser.find_element(By.TAG_NAME, "p").text
        assert browser.find_element(By.CSS_SELECTOR, f'#runs tr[data-run="{RUN_ID}"] a').get_attribute("href")
        assert "not verified" in browser.find_element(By.ID, "backups").text
        paused = browser.find_element(By.CSS_SELECTOR, f'#backfills tr[data-backfill="{BACKFILL}"]')
        assert (paused.get_attribute("data-environment"), browser.find_element(By.ID, "backfills").get_attribute(
            "data-state")) == ("staging", "loaded")
        assert "250 of ~1000 (25 %)" in paused.text and "paused by ui-test" in paused.text, paused.text
        # The page's one write: Pause on a running backfill, with the sign-in cookie and the page's header.
        browser.find_element(By.CSS_SELECTOR, f'button[data-pause="staging/{CLICKED}"]').click()
        wait.until(lambda b: "paused by admin" in b.find_element(
            By.CSS_SELECTOR, f'#backfills tr[data-backfill="{CLICKED}"]').text)
        assert "recorded in staging's audit trail" in browser.find_element(By.ID, "backfills-meta").text
        fleet_rows = browser.find_elements(By.CSS_SELECTOR, "#fleet tr[data-member]")  # the fleet record's members
        assert len(fleet_rows) == 7 and browser.find_element(By.ID, "fleet").get_attribute("data-state") == "loaded"
        assert browser.find_element(By.CSS_SELECTOR, '#fleet tr[data-member="tenant_02"] td[data-state]'
                                    ).get_attribute("data-state") == "failed"
        browser.save_screenshot(str(ARTIFACTS / "ui_page.png"))

        # The same page inside Airflow's UI, where its navigation entry leads (Browse → Schema deployments).
        browser.get(services["url"] + "/plugin/schema-deploy")
        frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'iframe[src*="{PREFIX}"]')))
        browser.switch_to.frame(frame)
        wait.until(lambda b: b.find_element(By.ID, "matrix").get_attribute("data-state") == "loaded")
        browser.switch_to.default_content()
        browser.save_screenshot(str(ARTIFACTS / "ui_page_in_airflow.png"))
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "ui_page_failure.png"))
        raise
    finally:
        browser.quit()
    assert (ARTIFACTS / "ui_page.png").stat().st_size > 10_000


# --- every decision and attempt on record, and links inside Airflow's frame -----------------------------
# These run last: they add rows to production's chain (the tests above expect none there).

REASON = "restore window collides with the billing batch"
REJECTED_RUN = f"ui-reject__{uuid.uuid4().hex[:8]}"
REFUSED_RUN = f"ui-refused__{uuid.uuid4().hex[:8]}"
PIPELINE_RUN = f"ui-deploy-reject__{uuid.uuid4().hex[:8]}"
ROLLBACK = "rollback_schema"
ANSWER_AFTER_S = 5  # an answer within ~0.5 s of the task parking races the scheduler (test_airflow_services.py)


def rollback_path(run_id: str) -> str:
    from urllib.parse import quote

    return f"/api/v2/dags/{ROLLBACK}/dagRuns/{quote(run_id, safe='')}"


def finished_rollback(api: httpx.Client, run_id: str, reject: bool = False) -> str:
    """Wait for a rollback_schema run to end, answering its production approval with Reject (and
    the reason) like a person in "Required actions" when `reject`. Returns the run's state."""
    from tests.e2e.harness import task_instances, wait_for

    parked: list[float] = []

    def check():
        state = api.get(rollback_path(run_id)).json()["state"]
        if state in ("success", "failed"):
            return state
        approval = task_instances(api, run_id, ROLLBACK).get("production.approve_rollback", {})
        if reject and approval.get("state") in ("awaiting_input", "deferred") and not parked:
            parked.append(time.monotonic())
        if reject and parked and parked[0] > 0 and time.monotonic() - parked[0] >= ANSWER_AFTER_S:
            answer = api.patch(f"{rollback_path(run_id)}/taskInstances/production.approve_rollback/-1/hitlDetails",
                               json={"chosen_options": ["Reject"], "params_input": {"reason": REASON}})
            assert answer.status_code == 200, answer.text
            parked[0] = -1.0  # answered
        return None

    return wait_for(f"{ROLLBACK} run {run_id} to finish", check, 300, every=2,
                    explain=lambda: f"; tasks: {({t: ti['state'] for t, ti in task_instances(api, run_id, ROLLBACK).items()})}")


@pytest.fixture(scope="module")
def decided(api: httpx.Client, stack: dict, stack_env: dict[str, str]) -> dict:
    """A real production rollback rejected with a reason through Airflow's HITL endpoint, a real one
    refused at preflight (a wrong confirmation), and a deploy rejection recorded through the pipeline's
    record functions, as deploy_schema's audit tasks write it."""
    from schema_deploy.config.settings import DeployConfig
    from schema_deploy.pipeline import Approval, Deployment, RunInfo, RunParams, Store, Target, record

    from tests.e2e.harness import wait_for

    wait_for("the dag-processor to parse rollback_schema",
             lambda: True if api.get(f"/api/v2/dags/{ROLLBACK}").status_code == 200 else None, 180)
    assert api.patch(f"/api/v2/dags/{ROLLBACK}", json={"is_paused": False}).status_code == 200
    database = stack["urls"]["production"].rsplit("/", 1)[-1].split("?")[0]
    states = {}
    for run_id, confirm, reject in ((REJECTED_RUN, database, True), (REFUSED_RUN, "not-the-database", False)):
        trigger = api.post(f"/api/v2/dags/{ROLLBACK}/dagRuns", json={
            "dag_run_id": run_id, "logical_date": None,
            "conf": {"environment": "production", "method": "backup", "backup_uri": stack["backup"].uri,
                     "confirm_database": confirm}})
        assert trigger.status_code == 200, trigger.text
        states[run_id] = finished_rollback(api, run_id, reject=reject)  # max_active_runs=1: one after the other

    s3 = boto3.session.Session().client(
        "s3", endpoint_url=stack_env["S3_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}))
    cfg = DeployConfig(backup_bucket=stack["bucket"], backup_prefix=stack["prefix"])
    ctx = Deployment(cfg=cfg, store=Store.from_config(s3, cfg), params=RunParams(),
                     run=RunInfo(run_id=PIPELINE_RUN, triggered_by="alice", started="2026-12-06T06:00:00+00:00"))
    rejected = Approval(approved=False, approver="bob", responded_at="2026-12-06T06:30:00+00:00",
                        reason="not during the sale").to_xcom()
    ran = {s: "success" for s in ("preflight", "backup", "apply_staging", "gate", "approval_needed", "approval")}
    kept = record.record(ctx, {"apply_staging": Target("staging", "staging", stack["urls"]["staging"]),
                               "apply_production": Target("production", "production", stack["urls"]["production"])},
                         {"approval": rejected}, {**ran, "apply_production": "skipped"})
    return {"states": states, "pipeline": kept, "database": database}


def production_rows(stack: dict, run_id: str) -> list[tuple]:
    with psycopg.connect(stack["urls"]["production"]) as conn:
        return conn.execute("SELECT kind, payload->>'decision', payload->'targets'->>'production' "
                            "FROM schema_deploy.audit_events WHERE run_id = %s", (run_id,)).fetchall()


def test_a_rejected_rollback_ends_not_failed_and_is_in_productions_chain_with_who_and_why(
        api: httpx.Client, stack: dict, decided: dict) -> None:
    from tests.e2e.harness import events, task_instances, task_logs

    def explain(run_id: str) -> str:
        tis = task_instances(api, run_id, ROLLBACK)
        logs = {t: events(task_logs(api, run_id, ti)[-1])[-25:] for t, ti in tis.items() if ti["try_number"]
                and (ti["state"] == "failed" or t.endswith(("audit_record", "audit_attempt", "approve_rollback")))}
        return f"tasks: {({t: ti['state'] for t, ti in tis.items()})}\nlogs: {json.dumps(logs, indent=1)}"

    assert decided["states"][REJECTED_RUN] == "success", explain(REJECTED_RUN)  # a decision, not a fault
    decision = f"rejected by admin: {REASON}"
    assert production_rows(stack, REJECTED_RUN) == [("rollback", decision, f"nothing changed ({decision})")], \
        explain(REJECTED_RUN)
    assert production_rows(stack, PIPELINE_RUN) == [
        ("deploy", "rejected by bob: not during the sale", "nothing changed (rejected by bob: not during the sale)")]
    runs = {r["run_id"]: r for r in api.get(f"{PREFIX}/api/runs", params={"limit": 50}).json()["runs"]}
    rejected = runs[REJECTED_RUN]
    assert (rejected["summary"]["outcome"], rejected["summary"]["decision"]) == ("rejected", decision)
    assert rejected["summary"]["backup"]["restored"] == stack["backup"].uri
    assert [a["environment"] for a in rejected["audit"]] == ["production"]
    assert rejected["document"]["uri"].startswith(f"s3://{stack['bucket']}/{stack['prefix']}/audit/")
    assert rejected["document"]["record"]["approval"]["reason"] == REASON
    refused = runs[REFUSED_RUN]
    assert decided["states"][REFUSED_RUN] == "failed" and refused["audit"] == []  # nothing changed: no chain row
    assert refused["summary"]["decision"] == "failed at task production.preflight"
    assert refused["document"]["record"]["outcome"] == "failed"
    assert runs[PIPELINE_RUN]["summary"]["decision"] == "rejected by bob: not during the sale"


def test_the_page_in_airflows_frame_shows_decisions_and_records_and_its_run_link_navigates_the_frame(
        services: dict, decided: dict, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser = chrome(tmp_path)
    wait = WebDriverWait(browser, 60)
    try:
        browser.get(services["url"] + "/auth/login?next=%2Fplugin%2Fschema-deploy")
        wait.until(ec.presence_of_element_located((By.NAME, "username"))).send_keys("admin")
        browser.find_element(By.NAME, "password").send_keys(services["password"])
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait.until(lambda b: b.get_cookie("_token"))
        browser.get(services["url"] + "/plugin/schema-deploy")  # Browse → Schema deployments
        frame = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, f'iframe[src*="{PREFIX}"]')))
        assert "allow-top-navigation" not in (frame.get_attribute("sandbox") or "")  # why the links stay inside
        browser.switch_to.frame(frame)
        wait.until(lambda b: b.find_element(By.ID, "runs").get_attribute("data-state") == "loaded")

        rejected = browser.find_element(By.CSS_SELECTOR, f'#runs tr[data-run="{REJECTED_RUN}"]')
        decision = rejected.find_element(By.CSS_SELECTOR, ".decision")
        assert decision.text == f"rejected by admin: {REASON}"
        assert "approved" not in rejected.text
        assert rejected.get_attribute("data-outcome") == "rejected" and "Airflow run: success" in rejected.text
        records = rejected.find_element(By.CSS_SELECTOR, "td.records")
        assert records.find_element(By.CSS_SELECTOR, '.chain-row[data-env="production"]').text.startswith(
            "production: rejected · nothing changed")
        assert "S3 s3://" in records.find_element(By.CSS_SELECTOR, ".document").text
        assert decided["database"] in rejected.find_element(By.CSS_SELECTOR, "td.backup-cell").text or \
            "restored" in rejected.find_element(By.CSS_SELECTOR, "td.backup-cell").text

        refused = browser.find_element(By.CSS_SELECTOR, f'#runs tr[data-run="{REFUSED_RUN}"]')
        assert refused.find_element(By.CSS_SELECTOR, ".decision").text == "failed at task production.preflight"
        assert "S3 s3://" in refused.find_element(By.CSS_SELECTOR, "td.records").text  # its record, not "none"

        pipeline = browser.find_element(By.CSS_SELECTOR, f'#runs tr[data-run="{PIPELINE_RUN}"]')
        assert pipeline.find_element(By.CSS_SELECTOR, ".decision").text == "rejected by bob: not during the sale"
        assert pipeline.find_elements(By.CSS_SELECTOR, '.chain-row[data-env="production"]')
        browser.switch_to.default_content()
        browser.save_screenshot(str(ARTIFACTS / "ui_page_decisions_in_airflow.png"))

        # The run's link, clicked inside the sandboxed frame, navigates the frame to the run.
        browser.switch_to.frame(frame)
        link = browser.find_element(By.CSS_SELECTOR, f'#runs tr[data-run="{REJECTED_RUN}"] a.run-link')
        assert link.get_attribute("target") in (None, "", "_self")
        link.click()
        wait.until(lambda b: f"/dags/{ROLLBACK}/runs/{REJECTED_RUN}" in b.execute_script("return location.href"))
        browser.switch_to.default_content()
        # The top page is still Airflow's page of the plugin (which mirrors the frame's path in its URL).
        assert browser.current_url.startswith(services["url"] + "/plugin/schema-deploy")
        assert browser.find_element(By.CSS_SELECTOR, f'iframe[src*="{PREFIX}"]')
        browser.save_screenshot(str(ARTIFACTS / "ui_page_run_link_in_frame.png"))
    except Exception:
        browser.save_screenshot(str(ARTIFACTS / "ui_page_decisions_failure.png"))
        raise
    finally:
        browser.quit()
