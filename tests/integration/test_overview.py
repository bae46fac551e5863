"""schema_deploy.views.overview, what the UI page shows, against real databases and the stack's S3 endpoint."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import boto3
import psycopg
import pytest
from botocore.config import Config
from psycopg.conninfo import make_conninfo

from engine_support import FAST, plain_bundle
from schema_deploy.audit import chain
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply
from schema_deploy.pg.db import connect
from schema_deploy.state import ledger
from schema_deploy.views import overview

UNREACHABLE = "postgresql://migrator:s3cret-pw-xyz@127.0.0.1:1/nowhere"
M1, M2, M3, M4 = ("20260101000001_create_t", "20260101000002_add_column", "20260101000003_broken",
                  "20260101000004_later")


@pytest.fixture
def bundle_root(tmp_path):
    return tmp_path / "migrations"


def deployed_with_every_state(url: str, root) -> None:
    """M1 applied, M2 applied then its file edited, M3 failed (Prisma's P3009 row), M4 pending."""
    bundle = plain_bundle(root, {M1: "CREATE TABLE t (id int PRIMARY KEY);\n",
                                 M2: "ALTER TABLE t ADD COLUMN note text;\n",
                                 M3: "ALTER TABLE t ADD COLUMN broken int;\n",
                                 M4: "ALTER TABLE t ADD COLUMN later int;\n"})
    apply(url, bundle, FAST, to=M2)
    with connect(url) as conn:
        row_id = ledger.insert_started(conn, M3, bundle.migrations[2].checksum)
        ledger.mark_failed(conn, row_id, "ERROR: division by zero\nin statement 1")
    (root / f"{M2}.sql").write_text("ALTER TABLE t ADD COLUMN note varchar(10);\n")


def test_the_matrix_shows_applied_drifted_failed_and_pending_per_environment(fresh_db: str, bundle_root) -> None:
    deployed_with_every_state(fresh_db, bundle_root)
    bundle = load_bundle(bundle_root)

    got = overview.read_matrix(bundle, {"staging": fresh_db, "production": fresh_db})

    cells = {m["name"]: m["environments"]["staging"] for m in got["migrations"]}
    assert {name: c["state"] for name, c in cells.items()} == {M1: "applied", M2: "drifted", M3: "failed",
                                                                M4: "pending"}
    assert cells[M2]["detail"] == "edited-after-apply"
    assert cells[M2]["ledger_checksum"] != next(m for m in got["migrations"] if m["name"] == M2)["checksum"]
    assert cells[M1]["applied_at"] and cells[M1]["ledger_checksum"] == bundle.migrations[0].checksum
    assert "division by zero" in cells[M3]["logs"]
    assert "applied_at" in cells[M4] and cells[M4]["applied_at"] is None
    staging = got["environments"][0]
    assert staging["reachable"] and staging["counts"] == {"applied": 1, "drifted": 1, "failed": 1, "pending": 1}
    assert got["schemas_match"] is True  # the same database twice
    json.dumps(got)  # what the endpoint returns must be JSON as it is


def test_an_unreachable_environment_is_reported_without_its_password(fresh_db: str, bundle_root) -> None:
    bundle = plain_bundle(bundle_root, {M1: "CREATE TABLE t (id int);\n"})
    apply(fresh_db, bundle, FAST)

    got = overview.read_matrix(bundle, {"staging": fresh_db, "production": UNREACHABLE})

    production = got["environments"][1]
    assert production["name"] == "production" and not production["reachable"]
    assert "127.0.0.1" in production["error"] and "s3cret-pw-xyz" not in json.dumps(got)
    assert got["migrations"][0]["environments"] == {
        "staging": pytest.approx(got["migrations"][0]["environments"]["staging"]),
        "production": {"state": "unknown", "detail": "environment not readable"}}
    assert got["migrations"][0]["environments"]["staging"]["state"] == "applied"
    assert got["schemas_match"] is None


def test_a_ledger_row_with_no_file_is_a_drifted_row_of_its_own(fresh_db: str, bundle_root) -> None:
    apply(fresh_db, plain_bundle(bundle_root, {M1: "CREATE TABLE t (id int);\n", M2: "SELECT 1;\n"}), FAST)
    (bundle_root / f"{M2}.sql").unlink()

    got = overview.read_matrix(load_bundle(bundle_root), {"staging": fresh_db})

    row = got["migrations"][-1]
    assert (row["name"], row["in_bundle"], row["checksum"]) == (M2, False, None)
    assert row["environments"]["staging"]["state"] == "drifted"
    assert row["environments"]["staging"]["detail"] == "missing-from-bundle"


def record(outcome: str, approver: str | None = "ana") -> dict:
    return {"outcome": outcome, "run": {"run_type": "manual", "triggered_by": "admin", "started": "2026-11-26T01:00:00"},
            "approval": {"approved": True, "approver": approver} if approver else None,
            "backup": {"uri": "s3://b/backups/production/db/x.dump", "sha256": "ab" * 32},
            "bundle": [{"name": M1, "checksum": "c" * 64}], "failed_tasks": [],
            "release": {"uri": "s3://b/backups/releases/" + "d" * 64 + ".json", "short": "d" * 12}}


def test_runs_carry_their_audit_records_and_audit_only_runs_are_kept(fresh_db: str) -> None:
    with connect(fresh_db) as conn:
        chain.append(conn, "deploy", "manual__old", "production", record("production migrated", approver=None))
        chain.append(conn, "deploy", "manual__new", "production", record("production migrated"))
        chain.append(conn, "deploy", "manual__new", "staging", record("production migrated"))
    airflow_runs = [{"dag_id": "deploy_schema", "run_id": "manual__new", "state": "success",
                     "start_date": "2026-11-26T02:00:00+00:00", "end_date": None, "url": "http://x/runs/manual__new"}]

    got = overview.read_runs(airflow_runs, {"production": fresh_db, "staging": UNREACHABLE})

    new, old = got["runs"]
    assert (new["run_id"], new["source"], new["state"]) == ("manual__new", "airflow", "success")
    assert [(a["environment"], a["outcome"], a["approver"]) for a in new["audit"]] == [
        ("production", "production migrated", "ana"), ("staging", "production migrated", "ana")]
    assert new["audit"][0]["backup_uri"].endswith("x.dump") and new["audit"][0]["migrations"] == [M1]
    assert new["audit"][0]["release"] == "d" * 12 and new["audit"][0]["release_uri"].endswith("d" * 64 + ".json")
    assert new["audit"][0]["record"]["outcome"] == "production migrated" and len(new["audit"][0]["row_hash"]) == 64
    assert (old["run_id"], old["source"], old["dag_id"], old["state"]) == ("manual__old", "audit only",
                                                                          "deploy_schema", None)
    assert set(got["audit_errors"]) == {"staging"} and "s3cret-pw-xyz" not in got["audit_errors"]["staging"]


def test_a_database_without_a_trail_has_no_runs_and_no_error(fresh_db: str) -> None:
    assert overview.read_runs([], {"staging": fresh_db}) == {"runs": [], "audit_errors": {}}


def test_the_audit_status_is_ok_then_names_the_edited_row(fresh_db: str, stack_env: dict[str, str]) -> None:
    assert overview.chain_status(fresh_db)["state"] == "no trail"
    with connect(fresh_db) as conn:
        for i in range(3):
            chain.append(conn, "deploy", f"run-{i}", "staging", {"step": i})
    ok = overview.read_audit({"staging": fresh_db})["environments"][0]
    assert (ok["name"], ok["state"], ok["rows_checked"]) == ("staging", "ok", 3) and ok["message"].startswith(
        "audit chain ok")

    admin = make_conninfo(stack_env["STAGING_ADMIN_URL"], dbname=fresh_db.rsplit("/", 1)[1])
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("ALTER TABLE schema_deploy.audit_events DISABLE TRIGGER audit_events_append_only")
        conn.execute("""UPDATE schema_deploy.audit_events SET payload = '{"step": 99}' WHERE id = 2""")
        conn.execute("ALTER TABLE schema_deploy.audit_events ENABLE ALWAYS TRIGGER audit_events_append_only")

    broken = overview.chain_status(fresh_db)
    assert broken["state"] == "broken" and broken["broken"]["id"] == 2 and "row 2" in broken["message"]
    assert overview.chain_status(UNREACHABLE)["state"] == "error"


# --- backups -------------------------------------------------------------------------------------

@pytest.fixture
def s3(stack_env: dict[str, str]):
    return boto3.session.Session().client(
        "s3", endpoint_url=stack_env["S3_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}, connect_timeout=2, read_timeout=10,
                      retries={"mode": "standard", "max_attempts": 1}))


@pytest.fixture
def prefix(s3, stack_env: dict[str, str]) -> Iterator[str]:
    bucket, prefix = stack_env["BACKUP_BUCKET"], f"overview-tests/{uuid.uuid4().hex[:10]}"
    yield prefix
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=bucket, Key=obj["Key"])


def put_backup(s3, bucket: str, prefix: str, stamp: str, run: str, verification: dict | None | str) -> str:
    key = f"{prefix}/production/americano/{stamp}_{run}.dump"
    s3.put_object(Bucket=bucket, Key=key, Body=b"PGDMP fake")
    if verification != "no manifest":
        manifest = {"run_id": run, "size": 10, "sha256": "ef" * 32, "total_rows": 1234, "sse": {"mode": "AES256"},
                    "server_version": "15.8", "ledger": {"applied": [M1]}, "verification": verification}
        s3.put_object(Bucket=bucket, Key=key[:-5] + ".manifest.json", Body=json.dumps(manifest).encode())
    return f"s3://{bucket}/{key}"


def test_backups_are_listed_newest_first_with_their_verification_state(s3, prefix: str,
                                                                      stack_env: dict[str, str]) -> None:
    bucket = stack_env["BACKUP_BUCKET"]
    verified = put_backup(s3, bucket, prefix, "20261126T010000Z", "r1",
                          {"ok": True, "method": "sha256+toc+restore", "verified_at": "2026-11-26T01:01:00+00:00",
                           "details": {"problems": []}})
    put_backup(s3, bucket, prefix, "20261126T020000Z", "r2", None)
    put_backup(s3, bucket, prefix, "20261126T030000Z", "r3",
               {"ok": False, "method": "sha256+toc", "details": {"problems": ["sha256 differs from the manifest"]}})
    put_backup(s3, bucket, prefix, "20261126T040000Z", "r4", "no manifest")

    got = overview.read_backups(s3, f"s3://{bucket}/{prefix}")

    assert got["error"] is None and got["count"] == 4
    assert [(b["run_id"], b["verification_state"]) for b in got["backups"]] == [
        ("r4", "incomplete"), ("r3", "verification failed"), ("r2", "not verified"), ("r1", "verified")]
    r1 = got["backups"][-1]
    assert (r1["uri"], r1["total_rows"], r1["verification_method"], r1["ledger"]) == (
        verified, 1234, "sha256+toc+restore", {"applied": [M1]})
    assert got["backups"][1]["problems"] == ["sha256 differs from the manifest"]
    json.dumps(got)


def test_an_unreachable_s3_endpoint_is_an_error_on_the_page_not_an_exception(stack_env: dict[str, str]) -> None:
    s3 = boto3.session.Session().client(
        "s3", endpoint_url="http://127.0.0.1:1", region_name="us-east-1", aws_access_key_id="k",
        aws_secret_access_key="s", config=Config(connect_timeout=1, retries={"max_attempts": 1}))
    got = overview.read_backups(s3, "s3://bucket/backups")
    assert got["backups"] == [] and "127.0.0.1:1" in got["error"]
