"""The UI page's fleet routes (schema_deploy_airflow.ui) against the stack's S3 endpoint.

Fleet records are written by the real `keep_fleet_record` under a private prefix; runs in progress
sit in a metadata database made from Airflow's own models (SQLite, `Base.metadata.create_all`),
with the XComs deploy_fleet's tasks push. Airflow's authentication is switched off for the app
(the e2e UI test proves every route refuses anonymous requests); everything else is the route's.
"""
from __future__ import annotations

import csv
import io
import os
import tempfile
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest
from botocore.config import Config

from schema_deploy.pipeline import fleet
from tests.fleet_samples import ERROR, RUN_ID, context, live_members, outcomes, record, spec

_home = Path(tempfile.mkdtemp(prefix="schema-deploy-ui-fleet-"))
os.environ.setdefault("AIRFLOW_HOME", str(_home))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_home / 'airflow.db'}")

OTHER_RUN = "scheduled__2026-02-01T02:00:00+00:00"
LIVE_RUN = "manual__2026-03-02T02:00:00+00:00"


def run_path(fleet_name: str, run_id: str, tail: str = "") -> str:
    return f"/api/fleets/{quote(fleet_name, safe='')}/runs/{quote(run_id, safe='')}{tail}"


@pytest.fixture(scope="module")
def metadata_db() -> Iterator:
    """A metadata database with Airflow's tables, from its models."""
    from sqlalchemy import create_engine

    from airflow.models import import_all_models
    from airflow.models.base import Base

    import_all_models()
    engine = create_engine(f"sqlite:///{_home / 'fleet-view.db'}")
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def s3_root(stack_env: dict[str, str]) -> Iterator[tuple]:
    """(boto3 client, s3://BUCKET/PREFIX) private to the test, emptied after."""
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=stack_env["S3_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}))
    bucket, prefix = stack_env["BACKUP_BUCKET"], f"ui-fleet-tests/{uuid.uuid4().hex[:10]}"
    yield s3, f"s3://{bucket}/{prefix}"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])


@pytest.fixture
def client(metadata_db, s3_root, stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The plugin's app with deploy.yaml's store at the private prefix and the stack's backup_s3."""
    from fastapi.testclient import TestClient
    from sqlalchemy import delete
    from sqlalchemy.orm import Session

    from airflow.api_fastapi.common.db.common import _get_session
    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from schema_deploy_airflow import ui

    bucket, prefix = s3_root[1][len("s3://"):].split("/", 1)
    config = tmp_path / "deploy.yaml"
    config.write_text(f"backup: {{bucket: {bucket}, prefix: {prefix}}}\n")
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(config))
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_S3", stack_env["AIRFLOW_CONN_BACKUP_S3"])

    def session() -> Iterator[Session]:
        with Session(metadata_db) as s:
            yield s

    (auth,) = ui.app.router.dependencies
    ui.app.dependency_overrides.update({auth.dependency: lambda: None, _get_session: session})
    try:
        with TestClient(ui.app, raise_server_exceptions=True) as c:
            yield c
    finally:
        ui.app.dependency_overrides.clear()
        with Session(metadata_db) as s:
            s.execute(delete(XComModel))
            s.execute(delete(DagRun))
            s.commit()


def keep(s3_root, run_id: str = RUN_ID, name: str = "tenants") -> str:
    """The fleet record of a run, as deploy_fleet's fleet_record task keeps it."""
    s3, root = s3_root
    ctx = context(root, run_id, s3)
    return fleet.keep_fleet_record(ctx, spec(name), record(ctx, name))[0]


def live_run(engine, run_id: str = LIVE_RUN, xcoms: dict | None = None) -> None:
    """A running deploy_fleet run with the XComs its tasks pushed: {(task id, key): value}."""
    from sqlalchemy.orm import Session

    from airflow.models.dagrun import DagRun
    from airflow.models.xcom import XComModel
    from airflow.utils.state import DagRunState

    with Session(engine) as s:
        run = DagRun(dag_id="deploy_fleet", run_id=run_id, run_type="manual", state=DagRunState.RUNNING,
                     run_after=datetime.now(timezone.utc), start_date=datetime.now(timezone.utc) - timedelta(minutes=3),
                     conf={"fleet": "tenants"})
        s.add(run)
        s.flush()
        for (task_id, key), value in (xcoms or {}).items():
            s.add(XComModel(dag_run_id=run.id, task_id=task_id, map_index=-1, key=key, dag_id="deploy_fleet",
                            run_id=run_id, value=XComModel.serialize_value(value)))
        s.commit()


# --- the list of runs ------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_list_has_each_recorded_run_with_its_counts_and_the_runs_in_progress(client, s3_root,
                                                                                 metadata_db) -> None:
    uri = keep(s3_root)
    keep(s3_root, OTHER_RUN, "shards")
    live_run(metadata_db, xcoms={("fleet_members", "return_value"): live_members()})

    resp = client.get("/api/fleets")

    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert (data["error"], data["message"], data["fleets"]) == (None, None, ["shards", "tenants"])
    assert data["root"] == f"{s3_root[1]}/fleets/"
    by_run = {r["run_id"]: r for r in data["runs"]}
    assert [r["source"] for r in data["runs"]] == ["live", "record", "record"]  # in progress first
    recorded = by_run[RUN_ID]
    assert (recorded["fleet"], recorded["outcome"], recorded["uri"], recorded["error"]) == (
        "tenants", "halted", uri, None)
    assert recorded["counts"] == {"done": 2, "failed": 1, "pending": 0, "not attempted": 3,
                                  "skipped by window": 1, "dry run": 0}
    assert by_run[OTHER_RUN]["fleet"] == "shards"
    live = by_run[LIVE_RUN]
    assert (live["fleet"], live["outcome"], live["counts"]["pending"]) == ("tenants", "in progress (running)", 7)
    assert live["url"].endswith(f"/dags/deploy_fleet/runs/{quote(LIVE_RUN, safe='')}")


def test_with_no_records_yet_the_list_says_where_they_will_be(client, s3_root) -> None:
    data = client.get("/api/fleets").json()
    assert (data["runs"], data["fleets"], data["error"]) == ([], [], None)
    assert data["message"] == (f"no fleet records yet under {s3_root[1]}/fleets/: a deploy_fleet run writes one "
                               "when it ends (its fleet_record task), and a run in progress shows here once its "
                               "fleet_members task has run.")


@pytest.mark.slow
def test_a_run_in_progress_that_has_its_record_already_is_listed_once(client, s3_root, metadata_db) -> None:
    keep(s3_root)
    live_run(metadata_db, RUN_ID, {("fleet_members", "return_value"): live_members()})
    runs = client.get("/api/fleets").json()["runs"]
    assert [(r["run_id"], r["source"]) for r in runs] == [(RUN_ID, "record")]


# --- one run ----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_recorded_runs_rows_are_filtered_by_state_text_and_wave(client, s3_root) -> None:
    keep(s3_root)

    everything = client.get(run_path("tenants", RUN_ID)).json()
    failed = client.get(run_path("tenants", RUN_ID), params={"state": "failed"}).json()
    wave1_us = client.get(run_path("tenants", RUN_ID), params={"wave": "1", "q": "region=US"}).json()

    assert (everything["source"], everything["outcome"], everything["total"], everything["shown"]) == (
        "record", "halted", 7, 7)
    assert everything["waves"][0] == ["tenant_00"] and everything["release"]["short"] == "abababababab"
    (row,) = failed["rows"]
    assert (row["member"], row["state"], row["wave"], row["seconds"], row["error"]) == (
        "tenant_02", "failed", 1, 1.5, ERROR)
    assert failed["counts"] == everything["counts"] and failed["filters"] == {"state": ["failed"], "text": "",
                                                                             "wave": None}
    assert [(r["member"], r["state"]) for r in wave1_us["rows"]] == [("tenant_02", "failed"),
                                                                    ("tenant_03", "skipped by window")]


@pytest.mark.slow
def test_the_sanitised_run_id_of_the_records_key_finds_the_run_too(client, s3_root) -> None:
    keep(s3_root)
    resp = client.get(run_path("tenants", "manual__2026-03-01T02-00-00-00-00"))
    assert resp.status_code == 200 and resp.json()["run_id"] == RUN_ID


@pytest.mark.slow
def test_a_run_in_progress_shows_what_its_tasks_pushed_and_the_rest_pending(client, metadata_db) -> None:
    canary = {"outcomes": [o.to_xcom() for o in outcomes()[:1]], "brakes": []}
    live_run(metadata_db, xcoms={("fleet_members", "return_value"): live_members(), ("canary", "fleet_run"): canary})

    data = client.get(run_path("tenants", LIVE_RUN)).json()

    assert (data["source"], data["fleet"], data["outcome"]) == ("live", "tenants", "in progress (running)")
    assert [(r["member"], r["state"]) for r in data["rows"][:2]] == [("tenant_00", "done"), ("tenant_01", "pending")]
    assert data["counts"]["pending"] == 6 and data["counts"]["done"] == 1
    assert client.get(run_path("shards", LIVE_RUN)).status_code == 404  # it is another fleet's run


@pytest.mark.slow
@pytest.mark.parametrize(("params", "detail"), [
    ({"state": "succeeded"}, "filter state='succeeded' is not valid: a state is one of done, failed, pending, "
                             "not attempted, skipped by window, dry run (several separated by commas)."),
    ({"wave": "9"}, "filter wave='9' is not valid: a wave is a whole number from 0 to 2 (0 is the first wave)."),
])
def test_a_bad_filter_is_a_400_naming_the_valid_values(client, s3_root, params: dict, detail: str) -> None:
    keep(s3_root)
    for tail in ("", "/csv"):
        resp = client.get(run_path("tenants", RUN_ID, tail), params=params)
        assert (resp.status_code, resp.json()) == (400, {"detail": detail})


@pytest.mark.slow
def test_an_unknown_run_fleet_or_no_records_at_all_is_a_404_saying_what_exists(client, s3_root) -> None:
    root = f"{s3_root[1]}/fleets/"
    nothing = client.get(run_path("tenants", RUN_ID))
    assert (nothing.status_code, nothing.json()["detail"]) == (404, f"no fleet records yet under {root}: a "
                                                                     "deploy_fleet run writes one when it ends (its "
                                                                     "fleet_record task), and a run in progress "
                                                                     "shows here once its fleet_members task has run.")
    keep(s3_root)
    keep(s3_root, OTHER_RUN)

    run = client.get(run_path("tenants", "manual__nope"))
    fleet_name = client.get(run_path("nope", RUN_ID, "/csv"))

    assert (run.status_code, run.json()["detail"]) == (
        404, f"fleet 'tenants' has no run 'manual__nope': no record under {root}tenants/runs/ and no deploy_fleet "
             "run of that id in progress; its recorded runs, newest first: scheduled__2026-02-01T02-00-00-00-00, "
             "manual__2026-03-01T02-00-00-00-00.")
    assert (fleet_name.status_code, fleet_name.json()["detail"]) == (
        404, f"fleet 'nope' has no records under {root} and no deploy_fleet run in progress; fleets with records: "
             "tenants.")


# --- CSV ------------------------------------------------------------------------------------------

def test_the_csv_download_has_the_filtered_rows_and_a_filename(client, s3_root) -> None:
    keep(s3_root)

    resp = client.get(run_path("tenants", RUN_ID, "/csv"), params={"state": "done,not attempted"})

    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == "text/csv; charset=utf-8"
    assert resp.headers["content-disposition"] == (
        'attachment; filename="fleet-tenants-manual__2026-03-01T02-00-00-00-00.csv"')
    lines = list(csv.DictReader(io.StringIO(resp.text)))
    assert [(ln["member"], ln["state"]) for ln in lines] == [
        ("tenant_00", "done"), ("tenant_01", "done"), ("tenant_04", "not attempted"), ("tenant_05", "not attempted"),
        ("tenant_06", "not attempted")]
    assert lines[0]["run_id"] == RUN_ID and lines[0]["seconds"] == "4.25" and lines[0]["attributes"] == "region=eu"
