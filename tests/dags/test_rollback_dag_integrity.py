"""rollback_schema's integrity and policy: one run at a time, every task retryable and documented."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dag():
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["rollback_schema"]


def test_rollback_schema_runs_one_at_a_time_manually_with_docs_tags_and_owner(dag) -> None:
    assert dag.max_active_runs == 1 and not dag.catchup and type(dag.timetable).__name__ == "NullTimetable"
    assert dag.doc_md and "If it failed at 2 a.m." in dag.doc_md
    assert set(dag.tags) >= {"schema-deploy", "rollback"}
    assert {t.owner for t in dag.tasks} == {"platform-db"}


def test_the_chain_confirms_approves_backs_up_rolls_back_verifies_and_audits(dag) -> None:
    for upstream, downstream in [("preflight", "approval_needed"), ("approval_needed", "approve_rollback"),
                                 ("approval_needed", "safety_backup"), ("approve_rollback", "safety_backup"),
                                 ("safety_backup", "rollback"), ("rollback", "verify_rollback")]:
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    assert dag.get_task("safety_backup").trigger_rule == "none_failed_min_one_success"
    audit = dag.get_task("audit_record")
    assert audit.is_teardown and not audit.on_failure_fail_dagrun
    assert audit.upstream_task_ids == {"preflight", "approval_needed", "approve_rollback", "safety_backup",
                                       "rollback", "verify_rollback"}


def test_every_task_but_the_approval_retries_with_backoff_has_docs_and_a_failure_callback(dag) -> None:
    for task in dag.tasks:
        assert task.doc_md and task.on_failure_callback, task.task_id
        if task.task_id == "approve_rollback":
            assert task.retries == 0  # a human answer is not retried
            continue
        assert task.retries >= 2 and task.retry_exponential_backoff, task.task_id


def test_trigger_form_offers_the_environments_and_methods_as_choices(dag) -> None:
    params = dag.params
    assert params.get_param("environment").schema["enum"] == ["staging", "production"]
    assert params.get_param("method").schema["enum"] == ["backup", "down_migrations"]
    assert params.get_param("steps").schema["type"] == "integer"
    for name in ("environment", "method", "backup_uri", "steps", "confirm_database", "force", "bundle"):
        assert params.get_param(name).schema.get("title"), name


def test_the_form_offers_the_declared_bundles_by_name_for_the_down_migrations(tmp_path, monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "deploy.yaml"
    config.write_text("bundles: {main: sql/migrations, hotfix: hotfixes}\ndefault_bundle: main\n")
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(config))
    params = DagBag(dag_folder=str(REPO / "dags")).dags["rollback_schema"].params
    assert params.get_param("bundle").schema["enum"] == ["main", "hotfix"] and params["bundle"] == "main"
    assert "migrations" not in params


def test_a_wrong_confirmation_names_the_database_to_type() -> None:
    from schema_deploy.errors import ConfirmationMismatch

    assert str(ConfirmationMismatch("", "shop")) == (
        "confirm_database is empty, but the production database is 'shop': a production rollback needs its "
        "database name typed exactly in confirm_database. Nothing was changed; trigger again with "
        "confirm_database = shop.")
