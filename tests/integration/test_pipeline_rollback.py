"""The rollback pipeline's steps called directly, without Airflow, on the local stack's PostgreSQL and S3.

The down-migration path freezes the bundle into a release at preflight; the rollback and its
verification run from that release, so a down.sql edited in the folder afterwards is reported
in the log and not run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest
from engine_support import BASELINE, EPIC5, FAST, MIGRATIONS

from generate_data import generate
from schema_deploy.audit import chain
from schema_deploy.backups.store import parse_s3_uri
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.config.settings import DeployConfig
from schema_deploy.engine.apply import apply
from schema_deploy.ops.errors import ReleaseMissing
from schema_deploy.ops.release import release_uri
from schema_deploy.pg.fingerprint import schema_fingerprint
from schema_deploy.pipeline import (Deployment, RollbackPlan, RollbackResult, RollbackVerification, RunInfo,
                                    RunParams, Store, Target, rollback)
from schema_deploy.pipeline.errors import ConfirmationMismatch, NoBackupToRestore, RollbackVerificationFailed
from schema_deploy.pipeline.results import BackupResult, ChainRowRef
from schema_deploy.pipeline.target import PRODUCTION, STAGING
from schema_deploy.state.ledger import read_rows
from schema_deploy.state.status import compute_status

EDITED_DOWN = 'CREATE TABLE "edited_after_preflight" (id int);\n'


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A copy of the shipped bundle up to Epic 5 (whose down.sql these tests roll back), that the test may
    edit, declared as bundle `main`."""
    copy = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, copy, ignore=shutil.ignore_patterns("*_event_date_*"))
    return copy


@pytest.fixture
def messages() -> list[tuple[str, dict]]:
    return []


@pytest.fixture
def ctx(stack_env: dict[str, str], s3, folder: Path, messages: list) -> Deployment:
    """A Deployment as an orchestrator builds one: deploy.yaml's settings (the bundle `main` is the
    tmp copy), a private S3 prefix, a notifier that records what it was told."""
    cfg = DeployConfig(bundles=(("main", folder),), backup_bucket=stack_env["BACKUP_BUCKET"],
                       backup_prefix=f"pipeline-rollback-{uuid.uuid4().hex[:8]}", backup_restore_check=False,
                       lock_timeout_ms=FAST.lock_timeout_ms, max_lock_timeout_ms=FAST.max_lock_timeout_ms)

    def notify(event: str, facts: dict, links: dict | None = None) -> dict:
        messages.append((event, facts))
        return {"event": event, "ok": True, "attempts": 1, "errors": [], "ts": "1700000000.000100"}

    return Deployment(cfg=cfg, store=Store.from_config(s3, cfg), run=RunInfo(run_id=f"rb-{uuid.uuid4().hex[:8]}",
                                                                             triggered_by="alice"),
                      params=RunParams(bundle="main"), notify=notify, log=logging.getLogger("schema_deploy"))


@pytest.fixture
def staging(fresh_db: str) -> Target:
    """A fresh database at the baseline with the small generated data set."""
    apply(fresh_db, load_bundle(MIGRATIONS), FAST, to=BASELINE)
    generate(fresh_db, seed=7, scale="small")
    return Target(name="staging", role=STAGING, url=fresh_db)


def fingerprint(url: str) -> dict:
    with psycopg.connect(url) as conn:
        return schema_fingerprint(conn)


def states(url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {s.name: s.state for s in compute_status(load_bundle(MIGRATIONS), read_rows(conn)).states
                if "_event_date_" not in s.name}


@pytest.mark.slow
def test_down_migrations_run_the_frozen_release_even_after_the_folder_s_down_sql_was_edited(
        ctx: Deployment, staging: Target, folder: Path, cli, s3, messages: list,
        caplog: pytest.LogCaptureFixture) -> None:
    baseline = fingerprint(staging.url)
    applied = cli("apply", "--db", staging.url, "--migrations", str(folder))
    assert applied.returncode == 0, applied.stderr
    assert states(staging.url) == {BASELINE: "applied", EPIC5: "applied"}
    request = rollback.RollbackRequest(method=rollback.DOWN, steps=1)
    frozen_down = (folder / EPIC5 / "down.sql").read_bytes()

    plan = rollback.preflight(ctx, staging, request)
    assert [m["name"] for m in plan.migrations] == [EPIC5] and not plan.needs_approval
    assert plan.migrations[0]["down_sha256"] == hashlib.sha256(frozen_down).hexdigest()
    assert plan.release.uri == release_uri(ctx.store.root, plan.release.sha256)
    assert f"release `{plan.release.short}`" in plan.approval_body and EPIC5 in plan.approval_body
    bucket, key = parse_s3_uri(plan.release.uri)
    document = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert next(m for m in document["migrations"] if m["name"] == EPIC5)["down_sql"].encode() == frozen_down
    plan = RollbackPlan.from_xcom(json.loads(json.dumps(plan.to_xcom())))  # as the next worker gets it

    # After preflight the folder changes; the steps after it must not care.
    (folder / EPIC5 / "down.sql").write_text(EDITED_DOWN)
    gone_uri = release_uri(ctx.store.root, "0" * 64)
    gone = dataclasses.replace(plan, release=dataclasses.replace(plan.release, uri=gone_uri))
    with pytest.raises(ReleaseMissing, match=r"does not exist \(deleted, or a wrong bucket/prefix\)\. Nothing was "
                                             r"changed\."):
        rollback.rollback(ctx, staging, gone)
    assert states(staging.url)[EPIC5] == "applied"

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="schema_deploy"):
        done = RollbackResult.from_xcom(rollback.rollback(ctx, staging, plan).to_xcom())
    assert [m["name"] for m in done.rolled_back] == [EPIC5] and done.release == plan.release.sha256
    assert f"{folder / EPIC5 / 'down.sql'}: edited since the release" in caplog.text
    assert "applying the release, not the folder" in caplog.text
    ran = " ".join(done.rolled_back[0]["sql"])
    assert "edited_after_preflight" not in ran and "DROP INDEX" in ran
    with psycopg.connect(staging.url) as conn:
        assert conn.execute("SELECT to_regclass('edited_after_preflight')").fetchone()[0] is None
    assert fingerprint(staging.url) == baseline
    assert states(staging.url) == {BASELINE: "applied", EPIC5: "pending"}

    verified = RollbackVerification.from_xcom(rollback.verify(ctx, staging, plan).to_xcom())
    assert verified.ledger == {BASELINE: "applied", EPIC5: "pending"} and verified.problems == []

    results = {"preflight": plan.to_xcom(), "rollback": done.to_xcom(), "verify": verified.to_xcom()}
    steps = {"preflight": "success", "approval_needed": "success", "approval": "skipped", "rollback": "success",
             "verify": "success"}
    record = rollback.record(ctx, staging, request, results, steps)
    assert record.outcome == "rolled back and verified" and record.release == plan.release.sha256
    assert record.s3 == f"{ctx.store.root}/audit/{ctx.run.run_id}.audit.json"
    body = s3.get_object(Bucket=bucket, Key=parse_s3_uri(record.s3)[1])["Body"].read()
    assert hashlib.sha256(body).hexdigest() == record.sha256
    kept = json.loads(body)["record"]
    assert kept["kind"] == "rollback" and kept["run"]["triggered_by"] == "alice"
    assert kept["release"]["sha256"] == plan.release.sha256 and kept["params"]["bundle"] == "main"
    with psycopg.connect(staging.url, autocommit=True) as conn:
        rows = chain.read_rows(conn)
        assert [(r.kind, r.run_id) for r in rows] == [("rollback", ctx.run.run_id)] and chain.verify_chain(conn).ok
    assert record.chain == {"staging": ChainRowRef(rows[0].id, rows[0].row_hash)}
    assert record.to_xcom()["chain"] == {"staging": {"id": rows[0].id, "row_hash": rows[0].row_hash}}
    assert rollback.record(ctx, staging, request, results, steps).chain == record.chain  # a retry adds no row
    assert [event for event, _ in messages] == ["rollback_started", "rollback_done", "rollback_done"]
    assert f"{EPIC5}: pending" in messages[1][1]["ledger"]
    assert messages[0][1]["release"] == f"{plan.release.short} ({plan.release.uri})"

    # Migrated again afterwards, the target fails the same verification: it says what, and names the
    # safety backup as the way back.
    assert cli("apply", "--db", staging.url, "--migrations", str(folder)).returncode == 0
    safety = BackupResult(uri=f"{ctx.store.root}/safety/{uuid.uuid4().hex}.dump", sha256="0" * 64, size=1, rows=0,
                          verified="restored")
    with pytest.raises(RollbackVerificationFailed) as failed:
        rollback.verify(ctx, staging, plan, safety)
    assert str(failed.value) == (
        f"verification of the staging rollback failed: {EPIC5} is applied, not pending. Investigate; the safety "
        f"backup taken before the rollback, {safety.uri}, holds the state before it (rollback_schema with it as "
        "the Backup URI puts that back).")


def test_a_production_target_needs_its_database_name_typed_before_anything_is_read(
        ctx: Deployment, stack_env: dict[str, str], messages: list) -> None:
    url = stack_env["PRODUCTION_DATABASE_URL"]
    production = Target(name="production", role=PRODUCTION, url=url)
    with pytest.raises(ConfirmationMismatch, match=rf"^confirm_database is 'production', but the production "
                                                   rf"database is '{production.database}': a production rollback"):
        rollback.preflight(ctx, production, rollback.RollbackRequest(method=rollback.DOWN,
                                                                     confirm_database="production"))
    assert messages == []


def test_without_a_verified_backup_of_the_database_the_restore_is_refused_naming_the_way_out(
        ctx: Deployment, stack_env: dict[str, str], messages: list) -> None:
    staging = Target(name="staging", role=STAGING, url=stack_env["STAGING_DATABASE_URL"])
    with pytest.raises(NoBackupToRestore, match=rf"^no verified backup of staging database '{staging.database}' "
                                                rf"under {re.escape(ctx.store.root)} \(0 backup\(s\) there, none "
                                                r"complete and verified\)\. Nothing was changed\. Pick one "
                                                r"explicitly in backup_uri"):
        rollback.preflight(ctx, staging, rollback.RollbackRequest(method=rollback.BACKUP))
    assert messages == []
