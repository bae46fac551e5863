"""Rolling back from a backup over a database that has moved on (backups.restore_over)."""
from __future__ import annotations

import uuid

import boto3
import psycopg
import pytest
from botocore.config import Config
from engine_support import backfilling

from schema_deploy.audit import chain
from schema_deploy.backups.dump import backup
from schema_deploy.backups.errors import RestoreRefused
from schema_deploy.backups.restore_over import restore_over
from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply
from schema_deploy.pg.fingerprint import schema_fingerprint
from schema_deploy.state.ledger import read_rows
from seed import reset
from tests.conftest import REPO, drop_database, with_database

EPIC5 = "20251017120000_epic5_schema_completion"


@pytest.fixture
def s3(stack_env: dict[str, str]):
    return boto3.session.Session().client(
        "s3", endpoint_url=stack_env["S3_ENDPOINT_URL"], region_name="us-east-1",
        aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"],
        config=Config(s3={"addressing_style": "path"}))


@pytest.fixture
def production(stack_env: dict[str, str]):
    """A production-cluster database at the baseline with demo data; (url, name)."""
    name = f"t_rb_prod_{uuid.uuid4().hex[:8]}"
    url = with_database(stack_env["PRODUCTION_DATABASE_URL"], name)
    reset(url, seed=9, log=lambda _: None)
    yield url, name
    drop_database(stack_env["PRODUCTION_DATABASE_URL"], name)


@pytest.mark.slow
def test_restoring_a_pre_deploy_backup_over_epic5_undoes_it_and_keeps_the_audit_chain(
        s3, production, stack_env: dict[str, str]) -> None:
    url, name = production
    with psycopg.connect(url, autocommit=True) as conn:
        chain.append(conn, "deploy", "before-backup", "production", {"n": 1})
        before = schema_fingerprint(conn)
    taken = backup(s3, url, f"s3://{stack_env['BACKUP_BUCKET']}/t-rb-{uuid.uuid4().hex[:8]}",
                   environment="production", run_id="pre")
    apply(url, load_bundle(REPO / "sql/migrations"), online=True, backfill=backfilling(url))
    with psycopg.connect(url, autocommit=True) as conn:
        chain.append(conn, "deploy", "after-backup", "production", {"n": 2})
    logs: list[str] = []
    done = restore_over(s3, taken.uri, url, confirm_production=name, environment="production", log=logs.append)
    assert done.foreign_keys_dropped == ["public.experiment_assignments.experiment_assignments_experimentId_fkey"]
    assert done.restore.row_counts == taken.row_counts and done.audit_rows_kept == 1
    with psycopg.connect(url, autocommit=True) as conn:
        assert schema_fingerprint(conn) == before
        assert [r.migration_name for r in read_rows(conn) if r.applied] == ["20250915090000_baseline"]
        assert [r.run_id for r in chain.read_rows(conn)] == ["before-backup", "after-backup"]
        # The example's backfill checkpoint, made after the backup, counted rows the restore undid: gone.
        assert conn.execute("SELECT to_regclass('schema_deploy.backfills')").fetchone()[0] is None
        assert conn.execute("SELECT to_regnamespace('schema_deploy_restore_aside')").fetchone()[0] is None
        assert chain.verify_chain(conn).ok
        chain.append(conn, "rollback", "rb", "production", {"n": 3})
        assert chain.verify_chain(conn).ok
    assert ("dropped schema_deploy.backfills, which the backup does not hold: the progress it kept (backfill "
            "checkpoints) was of work the restore undid") in logs


@pytest.mark.slow
def test_a_refused_restore_puts_the_dropped_foreign_keys_back(s3, production, stack_env: dict[str, str]) -> None:
    url, name = production
    taken = backup(s3, url, f"s3://{stack_env['BACKUP_BUCKET']}/t-rb-{uuid.uuid4().hex[:8]}",
                   environment="production", run_id="pre")
    apply(url, load_bundle(REPO / "sql/migrations"), online=True, backfill=backfilling(url))
    with psycopg.connect(url) as conn:
        after_deploy = schema_fingerprint(conn)
    with pytest.raises(RestoreRefused, match=rf"^refusing to restore into database '{name}': its environment is "
                                             r"marked production \(the confirmation given, 'nope', does not match\)"):
        restore_over(s3, taken.uri, url, confirm_production="nope", environment="production")
    with psycopg.connect(url) as conn:
        assert schema_fingerprint(conn) == after_deploy  # refused before any foreign key was dropped
