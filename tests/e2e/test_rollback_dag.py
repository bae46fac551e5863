"""rollback_schema end to end with `dag.test()` on the local stack (devstack/run_deploy.py --dag-id rollback_schema).

Each test gets its own staging and production databases, seeded at the baseline with the
same data, and its own Airflow home; Epic 5 is deployed with the library's `apply` (the deploy
DAG has its own tests). The production approval is answered through Airflow's REST route by
run_deploy's responder, as a person would in the UI.
"""
from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply
from schema_deploy.state.ledger import read_rows
from tests.e2e.harness import REPO, DagRunner, Slack, fingerprint

GROUP = ("check_environment", "preflight", "approval_needed", "approve_rollback", "safety_backup", "rollback",
         "verify_rollback", "audit_record")

BASELINE = "20250915090000_baseline"
EPIC5 = "20251017120000_epic5_schema_completion"
TABLES = ("personalization_experiments", "experiment_assignments", "behavioral_events", "behavioral_patterns",
          "struggle_predictions", "recommendations", "personalization_configs", "study_schedule_recommendations")


@pytest.fixture
def runner(tmp_path, migrated_home, targets, stack_env, dag_zygote) -> DagRunner:
    return DagRunner("rollback_schema", tmp_path, migrated_home, targets, stack_env, dag_zygote)


def counts(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in TABLES}


def ledger_states(url: str) -> dict[str, str]:
    from schema_deploy.state.status import compute_status

    with psycopg.connect(url) as conn:  # the example after Epic 5 is not deployed here (`deploy_epic5`)
        return {s.name: s.state for s in compute_status(load_bundle(REPO / "sql/migrations"), read_rows(conn)).states
                if s.name in (BASELINE, EPIC5)}


def audit_kinds(url: str) -> list[str]:
    from schema_deploy.audit import chain

    with psycopg.connect(url, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('schema_deploy.audit_events') IS NOT NULL").fetchone()[0]:
            return []
        assert chain.verify_chain(conn).ok
        return [r.kind for r in chain.read_rows(conn)]


def deploy_epic5(url: str) -> None:
    """sql/migrations up to Epic 5, whose rollback these tests run (the example after it has its own down.sql,
    tests/integration/test_rollback.py)."""
    apply(url, load_bundle(REPO / "sql/migrations"), online=True, to=EPIC5)


def without_connection(runner: DagRunner, tmp_path: Path, stack_env: dict[str, str], conn_id: str) -> None:
    """Runs of `runner` see no AIRFLOW_CONN_<conn_id> at all: neither from the caller nor from the
    stack's env file (run_deploy reads both), as on a worker that does not hold that connection."""
    var = f"AIRFLOW_CONN_{conn_id.upper()}"
    stack = tmp_path / "stack"
    stack.mkdir()
    lines = (Path(stack_env["DEVSTACK_DIR"]) / "env").read_text().splitlines()
    (stack / "env").write_text("\n".join(line for line in lines if not line.startswith(f"export {var}=")) + "\n")
    runner.extra_env["DEVSTACK_DIR"] = str(stack)
    full_env = runner.env
    runner.env = lambda: {k: v for k, v in full_env().items() if k != var}


def test_staging_down_migrations_bring_back_the_baseline_schema_and_leave_epic5_pending(
        runner: DagRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    staging = targets["staging"]
    baseline_fp, baseline_rows = fingerprint(staging), counts(staging)
    deploy_epic5(staging)
    assert fingerprint(staging) != baseline_fp
    slack = Slack(stack_env)
    run = runner.run({"environment": "staging", "method": "down_migrations", "steps": 1})
    assert run.returncode == 0, run.log[-5000:]
    assert run.state("staging.approve_rollback") == "skipped" and run.state("staging.safety_backup") == "success"
    assert fingerprint(staging) == baseline_fp and counts(staging) == baseline_rows
    assert ledger_states(staging) == {BASELINE: "applied", EPIC5: "pending"}
    assert [m["name"] for m in run.xcom("staging.rollback")["rolled_back"]] == [EPIC5]
    release = run.xcom("staging.preflight")["release"]  # the down.sql that ran is the release's, frozen by preflight
    assert run.xcom("staging.rollback")["release"] == release["sha256"]
    assert f"{runner.prefix}/releases/{release['sha256']}.json" in runner.keys()
    assert run.xcom("staging.verify_rollback")["ledger"][EPIC5] == "pending"
    assert audit_kinds(staging) == ["rollback"]
    assert run.xcom("staging.audit_record")["outcome"] == "rolled back and verified"
    assert any(k.endswith(".dump") and "/staging/" in k for k in runner.keys())  # the safety backup
    texts = slack.texts()
    assert "Schema rollback started" in texts and "Schema rollback done and verified" in texts


def test_production_rollback_from_the_pre_deploy_backup_after_approval_restores_rows_and_schema(
        runner: DagRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    from schema_deploy.backups.dump import backup
    from schema_deploy.backups.restore import verify_backup

    production = targets["production"]
    database = production.rsplit("/", 1)[1]
    before_fp, before_rows = fingerprint(production), counts(production)
    s3 = runner.s3()
    taken = backup(s3, production, f"s3://{stack_env['BACKUP_BUCKET']}/{runner.prefix}", environment="production",
                   run_id="pre-deploy")
    verify_backup(s3, taken.uri)
    deploy_epic5(production)
    with psycopg.connect(production) as conn:  # written after the backup: the restore takes it away
        conn.execute("DELETE FROM recommendations WHERE id IN (SELECT id FROM recommendations LIMIT 5)")
    assert fingerprint(production) != before_fp and counts(production) != before_rows

    run = runner.run({"environment": "production", "method": "backup", "confirm_database": database}, approve="alice")
    assert run.returncode == 0, run.log[-5000:]
    assert run.result["approvals"][0]["status"] == 200 and run.state("production.approve_rollback") == "success"
    assert run.xcom("production.approve_rollback")["responded_by_user"]["name"] == "alice"
    assert run.xcom("production.preflight")["backup"]["uri"] == taken.uri  # the newest verified, preflight's choice
    assert f"chosen: {taken.uri}" in run.log
    assert fingerprint(production) == before_fp and counts(production) == before_rows
    assert ledger_states(production) == {BASELINE: "applied", EPIC5: "pending"}
    assert run.xcom("production.rollback")["foreign_keys_dropped_first"] == [
        "public.experiment_assignments.experiment_assignments_experimentId_fkey"]
    assert audit_kinds(production) == ["rollback"]
    safety = run.xcom("production.safety_backup")["uri"]
    assert safety != taken.uri and safety.rsplit("/", 1)[1].replace(".dump", ".audit.json") in " ".join(runner.keys())


def test_a_wrong_production_confirmation_is_refused_by_preflight_with_nothing_changed(
        runner: DagRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    production = targets["production"]
    database = production.rsplit("/", 1)[1]
    deploy_epic5(production)
    before_fp, before_rows = fingerprint(production), counts(production)
    run = runner.run({"environment": "production", "method": "down_migrations", "confirm_database": "production"},
                     approve="alice")
    assert run.returncode == 1
    assert run.state("production.preflight") == "failed"
    assert run.state("production.rollback") in ("upstream_failed", None)
    assert (f"ConfirmationMismatch: confirm_database is 'production', but the production database is {database!r}: "
            "a production rollback needs its database name typed exactly in confirm_database. Nothing was changed; "
            f"trigger again with confirm_database = {database}.") in " ".join(run.log.split())  # wrapped in the log
    assert fingerprint(production) == before_fp and counts(production) == before_rows
    assert ledger_states(production)[EPIC5] == "applied" and audit_kinds(production) == []
    assert not [k for k in runner.keys() if k.endswith(".dump")]  # no safety backup either
    assert run.result["approvals"] == []


def test_a_staging_rollback_runs_without_the_production_connection_and_skips_the_production_group(
        runner: DagRunner, targets: dict[str, str], stack_env: dict[str, str], tmp_path: Path) -> None:
    staging = targets["staging"]
    baseline_fp = fingerprint(staging)
    deploy_epic5(staging)
    without_connection(runner, tmp_path, stack_env, "production_db")
    config = runner.config(extra="queues: {staging: stg, production: prod}\n")
    run = runner.run({"environment": "staging", "method": "down_migrations", "steps": 1}, config=config)
    assert run.returncode == 0, run.log[-5000:]
    assert run.state("choose_environment") == "success"
    assert {t: run.state(f"production.{t}") for t in GROUP} == dict.fromkeys(GROUP, "skipped")
    assert {t: run.state(f"staging.{t}") for t in GROUP} == {**dict.fromkeys(GROUP, "success"),
                                                             "approve_rollback": "skipped"}
    assert "production_db" not in run.log  # no step asked for it
    assert fingerprint(staging) == baseline_fp and ledger_states(staging)[EPIC5] == "pending"
    assert run.xcom("staging.audit_record")["outcome"] == "rolled back and verified"
    assert "rolling back staging: its database tasks run on queue stg, whose workers hold staging_db" in run.log


def test_a_production_rollback_on_a_worker_with_only_the_staging_connection_fails_at_preflight_naming_the_route(
        runner: DagRunner, targets: dict[str, str], stack_env: dict[str, str], tmp_path: Path) -> None:
    import re

    production = targets["production"]
    database = production.rsplit("/", 1)[1]
    deploy_epic5(production)
    before_fp = fingerprint(production)
    without_connection(runner, tmp_path, stack_env, "production_db")
    config = runner.config(extra="queues: {staging: stg, production: prod}\n")
    run = runner.run({"environment": "production", "method": "down_migrations", "confirm_database": database},
                     config=config, approve="alice")
    assert run.returncode == 1
    assert run.state("production.check_environment") == "success" and run.state("production.preflight") == "failed"
    assert run.result["tasks"]["production.preflight"]["try_number"] == 1  # not retried: the same worker again
    assert {run.state(f"production.{t}") for t in ("safety_backup", "rollback", "verify_rollback")} == {
        "upstream_failed"}
    assert {t: run.state(f"staging.{t}") for t in GROUP} == dict.fromkeys(GROUP, "skipped")
    assert re.search(r"ConnectionNotOnWorker: connection production_db is not defined on this worker \([^,]+, "
                     r"queue prod\): define production_db on the workers of queue prod \(AIRFLOW_CONN_PRODUCTION_DB "
                     r"or the worker's secrets backend\)", " ".join(run.log.split())), run.log[-5000:]  # wrapped
    assert fingerprint(production) == before_fp and ledger_states(production)[EPIC5] == "applied"
    assert run.result["approvals"] == []


def test_a_staging_rollback_from_a_production_backup_needs_allow_other_source_and_then_says_so(
        runner: DagRunner, targets: dict[str, str], stack_env: dict[str, str]) -> None:
    from schema_deploy.backups.dump import backup
    from schema_deploy.backups.restore import verify_backup

    staging, production = targets["staging"], targets["production"]
    with psycopg.connect(production) as conn:  # production's data differs from staging's
        conn.execute("DELETE FROM recommendations WHERE id IN (SELECT id FROM recommendations LIMIT 7)")
    s3 = runner.s3()
    taken = backup(s3, production, f"s3://{stack_env['BACKUP_BUCKET']}/{runner.prefix}", environment="production",
                   run_id="prod-nightly")
    verify_backup(s3, taken.uri)
    staging_db, production_db = staging.rsplit("/", 1)[1], production.rsplit("/", 1)[1]
    before = counts(staging)
    assert before != counts(production)

    run = runner.run({"environment": "staging", "method": "backup", "backup_uri": taken.uri})
    assert run.returncode == 1 and run.state("staging.preflight") == "failed"
    assert (f"RestoreFromOtherSource: refusing to restore into database '{staging_db}': backup {taken.uri} was "
            f"taken of production database '{production_db}' (as its manifest records), but the target is staging "
            f"database '{staging_db}'. Nothing was changed.") in " ".join(run.log.split())  # however it is wrapped
    assert counts(staging) == before and run.state("staging.rollback") in ("upstream_failed", None)

    slack = Slack(stack_env)
    run = runner.run({"environment": "staging", "method": "backup", "backup_uri": taken.uri,
                      "allow_other_source": True})
    assert run.returncode == 0, run.log[-5000:]
    assert counts(staging) == counts(production)
    other = run.xcom("staging.preflight")["backup"]["other_source"]
    assert (other["from"]["environment"], other["from"]["database"]) == ("production", production_db)
    assert run.xcom("staging.rollback")["other_source"]["to"] == {"environment": "staging", "database": staging_db}
    texts = slack.texts()
    assert f"data from production ({production_db}) to be restored into staging ({staging_db})" in texts
    assert f"data from production ({production_db}) restored into staging ({staging_db})" in texts
