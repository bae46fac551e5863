"""No data crosses environments by accident: a backup taken of another environment or database than
the target is refused, naming both, unless asked for explicitly — then recorded and announced.

The rollback pipeline's steps are called directly (as in test_pipeline_rollback.py) on the local
stack's PostgreSQL clusters and S3; Slack messages go through the real slack-sdk to the stack's
Slack stand-in and are read back from what it recorded.
"""
from __future__ import annotations

import json
import logging
import re
import uuid
from pathlib import Path

import psycopg
import pytest
from engine_support import BASELINE, FAST, MIGRATIONS
from slack_sdk.webhook import WebhookClient

from generate_data import generate
from schema_deploy.audit import chain
from schema_deploy.backups.dump import backup
from schema_deploy.backups.errors import RestoreFromOtherSource
from schema_deploy.backups.restore import verify_backup
from schema_deploy.backups.store import parse_s3_uri
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.config.settings import DeployConfig
from schema_deploy.engine.apply import apply
from schema_deploy.ops.notify import deliver, message, webhook_poster
from schema_deploy.pg.fingerprint import schema_fingerprint
from schema_deploy.pg.tools import count_rows, qualified, user_tables
from schema_deploy.pipeline import Deployment, RollbackPlan, RunInfo, RunParams, Store, Target, rollback
from schema_deploy.pipeline.errors import NoBackupToRestore
from schema_deploy.pipeline.results import BackupRef
from schema_deploy.pipeline.target import STAGING
from seed import reset
from tests.conftest import drop_database, with_database

FORM = ("Choose a backup of staging database '{db}' (leave backup_uri empty for the newest verified one of this "
        "database), or, to copy that data here on purpose, ask for it explicitly: 'Restore data from another "
        "environment or database' (allow_other_source) on the form, --allow-other-source on the command line; "
        "the choice is then recorded and announced in Slack.")


def refused(uri: str, source: str, db: str) -> str:
    """The refusal's whole message, pinned."""
    return (f"refusing to restore into database '{db}': backup {uri} was taken of {source} (as its manifest "
            f"records), but the target is staging database '{db}'. Nothing was changed. " + FORM.format(db=db))


def slack_texts(env: dict[str, str], marker: str) -> list[str]:
    lines = Path(env["SLACK_MESSAGES_FILE"]).read_text().splitlines()
    return [m.get("text") or "" for m in map(json.loads, lines) if marker in (m.get("text") or "")]


@pytest.fixture
def ctx(stack_env: dict[str, str], s3) -> Deployment:
    """A Deployment whose notifier posts to the Slack stand-in through the real slack-sdk."""
    cfg = DeployConfig(bundles=(("main", MIGRATIONS),), backup_bucket=stack_env["BACKUP_BUCKET"],
                       backup_prefix=f"restore-source-{uuid.uuid4().hex[:8]}", backup_restore_check=False,
                       lock_timeout_ms=FAST.lock_timeout_ms, max_lock_timeout_ms=FAST.max_lock_timeout_ms)
    poster = webhook_poster(WebhookClient(stack_env["SLACK_WEBHOOK_URL"]))

    def notify(event: str, facts: dict, links: dict | None = None) -> dict:
        return deliver(poster, message(event, facts, links), event, sleep=lambda _: None).as_dict()

    return Deployment(cfg=cfg, store=Store.from_config(s3, cfg),
                      run=RunInfo(run_id=f"rs-{uuid.uuid4().hex[:8]}", triggered_by="alice"),
                      params=RunParams(bundle="main"), notify=notify, log=logging.getLogger("schema_deploy"))


@pytest.fixture
def staging(fresh_db: str) -> Target:
    """The target: a staging-cluster database at the baseline with the small generated data set."""
    apply(fresh_db, load_bundle(MIGRATIONS), FAST, to=BASELINE)
    generate(fresh_db, seed=7, scale="small")
    return Target(name="staging", role=STAGING, url=fresh_db)


@pytest.fixture
def production_db(stack_env: dict[str, str]):
    """A production-cluster database at the baseline with other data (seed 9, 1.5 times the small set's
    rows, so its row counts differ from the staging target's)."""
    name = f"t_src_prod_{uuid.uuid4().hex[:8]}"
    url = with_database(stack_env["PRODUCTION_DATABASE_URL"], name)
    reset(url, seed=9, scale=1.5, log=lambda _: None)
    yield url
    drop_database(stack_env["PRODUCTION_DATABASE_URL"], name)


@pytest.fixture
def production_backup(s3, ctx: Deployment, production_db: str):
    """A verified backup of production_db, filed as production's, in the run's store."""
    taken = backup(s3, production_db, ctx.store.root, environment="production", run_id="prod-nightly")
    verify_backup(s3, taken.uri)
    return taken


def state(url: str) -> tuple[dict, dict[str, int]]:
    """The schema fingerprint and every table's exact row count (the audit trail's aside)."""
    with psycopg.connect(url) as conn:
        tables = [qualified(s, t) for s, t in user_tables(conn) if s != "schema_deploy"]
        return schema_fingerprint(conn), count_rows(conn, tables)


@pytest.mark.slow
def test_a_staging_rollback_given_a_production_backup_is_refused_naming_both_with_nothing_changed(
        ctx: Deployment, staging: Target, production_backup, stack_env: dict[str, str]) -> None:
    before = state(staging.url)
    source = f"production database '{production_backup.manifest['database']}'"
    request = rollback.RollbackRequest(backup_uri=production_backup.uri)
    expected = refused(production_backup.uri, source, staging.database)
    with pytest.raises(RestoreFromOtherSource, match=f"^{re.escape(expected)}$") as caught:
        rollback.preflight(ctx, staging, request)
    assert caught.value.exit_code == 2
    assert state(staging.url) == before
    assert slack_texts(stack_env, ctx.run.run_id) == []  # no "rollback started" for a refused rollback

    # A plan that names the backup without the opt-in (made by hand, or by an older preflight) is refused
    # by the rollback step too, before it drops a foreign key or restores a row.
    forged = RollbackPlan(environment="staging", database=staging.database, method=rollback.BACKUP,
                          needs_approval=False, backup=BackupRef(uri=production_backup.uri))
    with pytest.raises(RestoreFromOtherSource, match=re.escape(f"backup {production_backup.uri} was taken of "
                                                               f"{source}")):
        rollback.rollback(ctx, staging, forged)
    assert state(staging.url) == before


@pytest.mark.slow
def test_a_backup_of_another_database_of_the_same_environment_is_refused_too(
        ctx: Deployment, staging: Target, s3, stack_env: dict[str, str]) -> None:
    other = f"t_src_stg_{uuid.uuid4().hex[:8]}"
    other_url = with_database(stack_env["STAGING_DATABASE_URL"], other)
    reset(other_url, seed=3, scale="small", log=lambda _: None)
    try:
        taken = backup(s3, other_url, ctx.store.root, environment="staging", run_id="other-db")
    finally:
        drop_database(stack_env["STAGING_DATABASE_URL"], other)
    before = state(staging.url)
    expected = refused(taken.uri, f"staging database {other!r}", staging.database)
    with pytest.raises(RestoreFromOtherSource, match=f"^{re.escape(expected)}$"):
        rollback.preflight(ctx, staging, rollback.RollbackRequest(backup_uri=taken.uri))
    assert state(staging.url) == before


@pytest.mark.slow
def test_the_newest_verified_default_only_ever_picks_a_backup_of_the_target_s_own_database(
        ctx: Deployment, staging: Target, production_backup, s3, stack_env: dict[str, str]) -> None:
    # Only another environment's backup (verified, newer than anything) is there: none is chosen.
    with pytest.raises(NoBackupToRestore, match=rf"^no verified backup of staging database '{staging.database}'"):
        rollback.preflight(ctx, staging, rollback.RollbackRequest())
    own = backup(s3, staging.url, ctx.store.root, environment="staging", run_id="own")
    verify_backup(s3, own.uri)
    newer = backup(s3, with_database(stack_env["PRODUCTION_DATABASE_URL"], production_backup.manifest["database"]),
                   ctx.store.root, environment="production", run_id="prod-newer")
    verify_backup(s3, newer.uri)
    plan = rollback.preflight(ctx, staging, rollback.RollbackRequest())
    assert plan.backup.uri == own.uri and plan.backup.other_source is None
    assert plan.backup.source == {"environment": "staging", "database": staging.database,
                                     "host": own.manifest["host"], "recorded_by": "manifest"}


@pytest.mark.slow
def test_asked_for_explicitly_production_data_is_restored_into_staging_recorded_and_announced(
        ctx: Deployment, staging: Target, production_backup, production_db: str, s3,
        stack_env: dict[str, str]) -> None:
    source_db = production_backup.manifest["database"]
    request = rollback.RollbackRequest.from_mapping({"backup_uri": production_backup.uri,
                                                     "allow_other_source": True})
    assert state(staging.url)[1] != state(production_db)[1]
    plan = rollback.preflight(ctx, staging, request)
    crossed = plan.backup.other_source
    assert crossed["from"] == {"environment": "production", "database": source_db,
                               "host": production_backup.manifest["host"], "recorded_by": "manifest"}
    assert crossed["to"] == {"environment": "staging", "database": staging.database}
    assert crossed["asked_by"] == "alice" and crossed["run"] == ctx.run.run_id
    assert (f"**Data from another environment or database**: data from production ({source_db}) to be restored "
            f"into staging ({staging.database}), asked for by alice (allow_other_source).") in plan.approval_body
    plan = RollbackPlan.from_xcom(json.loads(json.dumps(plan.to_xcom())))  # as the next worker gets it

    safety = rollback.safety_backup(ctx, staging, plan)
    done = rollback.rollback(ctx, staging, plan)
    assert done.other_source["fact"] == (f"data from production ({source_db}) restored into staging "
                                         f"({staging.database})")
    assert state(staging.url)[1] == state(production_db)[1]
    verified = rollback.verify(ctx, staging, plan)
    results = {"preflight": plan.to_xcom(), "safety_backup": safety.to_xcom(), "rollback": done.to_xcom(),
               "verify": verified.to_xcom()}
    steps = {"preflight": "success", "approval_needed": "success", "approval": "skipped",
             "safety_backup": "success", "rollback": "success", "verify": "success"}
    record = rollback.record(ctx, staging, request, results, steps)
    assert record.outcome == "rolled back and verified"

    bucket, key = parse_s3_uri(record.s3)
    kept = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())["record"]
    assert kept["params"]["allow_other_source"] is True and kept["run"]["triggered_by"] == "alice"
    assert kept["plan"]["backup"]["other_source"]["from"]["environment"] == "production"
    assert kept["plan"]["backup"]["other_source"]["to"]["database"] == staging.database
    assert kept["rollback"]["other_source"]["from"]["database"] == source_db
    with psycopg.connect(staging.url) as conn:
        [row] = [r for r in chain.read_rows(conn) if r.kind == "rollback"]
    assert row.payload["plan"]["backup"]["other_source"]["asked_by"] == "alice"

    texts = slack_texts(stack_env, staging.database)
    assert [t.split(" — ")[0] for t in texts] == ["Schema rollback started", "Schema rollback done and verified"]
    assert (f"data from another environment or database: data from production ({source_db}) to be restored into "
            f"staging ({staging.database}), asked for by alice (allow_other_source)") in texts[0]
    assert (f"data from another environment or database: data from production ({source_db}) restored into "
            f"staging ({staging.database}), asked for by alice (allow_other_source)") in texts[1]


@pytest.mark.slow
def test_the_cli_restore_refuses_another_environment_s_backup_unless_allow_other_source(
        cli, s3, production_backup, production_db: str, fresh_db: str, stack_env: dict[str, str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "PG_BINDIR"):
        if name in stack_env:
            monkeypatch.setenv(name, stack_env[name])
    apply(fresh_db, load_bundle(MIGRATIONS), FAST, to=BASELINE)
    generate(fresh_db, seed=7, scale="small")
    before = state(fresh_db)
    assert before[1] != state(production_db)[1]
    target_db = fresh_db.rsplit("/", 1)[1]
    source = f"production database '{production_backup.manifest['database']}'"

    run = cli("restore", "--from", production_backup.uri, "--db", fresh_db, "--environment", "staging", "--clean")
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == f"error: {refused(production_backup.uri, source, target_db)}\n"
    assert state(fresh_db) == before

    # Without --environment the target is environment "default" (as `backup` files it): refused as well.
    run = cli("restore", "--from", production_backup.uri, "--db", fresh_db, "--clean")
    assert run.returncode == 2 and "but the target is default database" in run.stderr
    assert state(fresh_db) == before

    run = cli("restore", "--from", production_backup.uri, "--db", fresh_db, "--environment", "staging", "--clean",
              "--allow-other-source")
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1] == (f"data from production ({production_backup.manifest['database']}) "
                                          f"restored into staging ({target_db}) (--allow-other-source)")
    assert "asked for explicitly (allow_other_source)" in run.stderr
    assert state(fresh_db)[1] == state(production_db)[1]


@pytest.mark.slow
def test_an_old_manifest_without_the_source_is_judged_by_its_key_and_still_restores_its_own_database(
        ctx: Deployment, staging: Target, production_backup, s3) -> None:
    from schema_deploy.backups.store import read_manifest

    bucket, key = parse_s3_uri(production_backup.uri)
    manifest = read_manifest(s3, bucket, key)
    old = {k: v for k, v in manifest.items() if k not in ("environment", "database", "host")}
    s3.put_object(Bucket=bucket, Key=production_backup.manifest_key, Body=json.dumps(old).encode(),
                  ServerSideEncryption="AES256")
    with pytest.raises(RestoreFromOtherSource, match=re.escape(
            f"was taken of production database '{manifest['database']}' (as its key says; its manifest does not "
            f"record it), but the target is staging database '{staging.database}'")):
        rollback.preflight(ctx, staging, rollback.RollbackRequest(backup_uri=production_backup.uri))

    own = backup(s3, staging.url, ctx.store.root, environment="staging", run_id="own-old")
    verify_backup(s3, own.uri)
    own_key = parse_s3_uri(own.uri)[1]
    old = {k: v for k, v in read_manifest(s3, bucket, own_key).items() if k not in ("environment", "database")}
    s3.put_object(Bucket=bucket, Key=own.manifest_key, Body=json.dumps(old).encode(), ServerSideEncryption="AES256")
    plan = rollback.preflight(ctx, staging, rollback.RollbackRequest())
    assert plan.backup.uri == own.uri and plan.backup.other_source is None
    assert plan.backup.source["recorded_by"] == "key"
