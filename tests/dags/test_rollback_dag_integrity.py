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


GROUP = ("check_environment", "preflight", "approval_needed", "approve_rollback", "safety_backup", "rollback",
         "verify_rollback", "audit_record")


@pytest.mark.parametrize("env", ["staging", "production"])
def test_each_environment_group_confirms_approves_backs_up_rolls_back_verifies_and_audits(dag, env) -> None:
    assert {t.task_id for t in dag.tasks} == {"choose_environment", "audit_attempt"} | {
        f"{e}.{t}" for e in ("staging", "production") for t in GROUP}
    for upstream, downstream in [("check_environment", "preflight"), ("preflight", "approval_needed"),
                                 ("approval_needed", "approve_rollback"), ("approval_needed", "safety_backup"),
                                 ("approve_rollback", "safety_backup"), ("safety_backup", "rollback"),
                                 ("preflight", "rollback"), ("rollback", "verify_rollback")]:
        assert f"{env}.{downstream}" in dag.get_task(f"{env}.{upstream}").downstream_task_ids, (upstream, downstream)
    assert dag.get_task(f"{env}.safety_backup").trigger_rule == "none_failed_min_one_success"
    check, audit = dag.get_task(f"{env}.check_environment"), dag.get_task(f"{env}.audit_record")
    assert check.is_setup and check.upstream_task_ids == {"choose_environment"}
    assert audit.is_teardown and not audit.on_failure_fail_dagrun and audit.trigger_rule == "all_done_setup_success"
    assert audit.upstream_task_ids == {f"{env}.{t}" for t in GROUP if t != "audit_record"}


def test_an_attempt_refused_before_any_group_ran_is_still_recorded_by_the_last_teardown(dag) -> None:
    """audit_attempt has no setup upstream, so all_done_setup_success runs it once everything before
    it is done, whatever their states (a failed choose_environment included); a teardown, it leaves the
    run's state to the rollback's own tasks."""
    attempt = dag.get_task("audit_attempt")
    assert attempt.is_teardown and not attempt.on_failure_fail_dagrun
    assert attempt.trigger_rule == "all_done_setup_success" and not any(u.is_setup for u in attempt.upstream_list)
    assert attempt.upstream_task_ids == {"choose_environment", "staging.audit_record", "production.audit_record"}


def test_the_branch_reaches_each_group_only_through_its_setup_so_the_other_group_is_skipped_whole(dag) -> None:
    """choose_environment skips the other group's check_environment; all_success and
    none_failed_min_one_success skip when every upstream is skipped, and a teardown whose setups
    are all skipped is skipped (Airflow's trigger_rule_dep), so no task of that group runs."""
    branch = dag.get_task("choose_environment")
    assert branch.downstream_task_ids == {"staging.check_environment", "production.check_environment",
                                          "audit_attempt"}
    for env in ("staging", "production"):
        check = f"{env}.check_environment"
        for task in dag.tasks:
            if task.task_id.startswith(f"{env}.") and task.task_id != check:
                assert check in task.get_flat_relative_ids(upstream=True), task.task_id
                assert all(u.startswith(f"{env}.") for u in task.upstream_task_ids), task.task_id
                assert task.trigger_rule in ("all_success", "none_failed_min_one_success",
                                             "all_done_setup_success"), task.task_id
                if task.trigger_rule == "all_done_setup_success":
                    assert {u.task_id for u in task.upstream_list if u.is_setup} == {check}


def test_each_task_runs_on_the_queue_of_the_database_it_opens(tmp_path, monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "deploy.yaml"
    config.write_text("queues: {staging: stg, production: prod}\n")
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(config))
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["rollback_schema"]
    opens_db = {"preflight", "safety_backup", "rollback", "verify_rollback", "audit_record"}
    queues = {t.task_id: t.queue for t in dag.tasks}
    assert queues == {"choose_environment": "default", "audit_attempt": "default",
                      **{f"{env}.{t}": (q if t in opens_db else "default")
                         for env, q in (("staging", "stg"), ("production", "prod")) for t in GROUP}}


def test_the_audit_record_maps_every_group_task_but_the_setup_and_itself_to_a_pipeline_step(dag) -> None:
    from schema_deploy.pipeline.rollback import STEPS
    from schema_deploy_airflow.task_ids import ROLLBACK_STEPS as TASK_STEPS

    assert set(TASK_STEPS) == set(GROUP) - {"check_environment", "audit_record"}
    assert sorted(TASK_STEPS.values()) == sorted(STEPS)


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


def test_an_environment_the_form_does_not_offer_is_refused_with_the_choices() -> None:
    from schema_deploy.errors import UsageError
    from schema_deploy.pipeline.rollback import chosen_environment

    with pytest.raises(UsageError, match=r"^environment 'qa' is not one of staging, production\. Nothing was "
                                         r"changed; trigger again with one of them\.$"):
        chosen_environment({"environment": "qa"})
    assert chosen_environment({"environment": "production"}) == "production"


def test_a_task_of_the_group_the_form_did_not_choose_is_refused_before_it_reads_a_connection() -> None:
    from schema_deploy.errors import UsageError
    from schema_deploy.pipeline.rollback import chosen_environment

    with pytest.raises(UsageError, match=r"^this run rolls back staging \(the form's environment\), not production: "
                                         r"a production step does not run in it\. Nothing was changed; trigger a "
                                         r"run with environment = production to roll back production\.$"):
        chosen_environment({"environment": "staging"}, "production")


def test_a_wrong_confirmation_names_the_database_to_type() -> None:
    from schema_deploy.pipeline.errors import ConfirmationMismatch

    assert str(ConfirmationMismatch("", "shop")) == (
        "confirm_database is empty, but the production database is 'shop': a production rollback needs its "
        "database name typed exactly in confirm_database. Nothing was changed; trigger again with "
        "confirm_database = shop.")


def test_the_rollback_approval_offers_an_optional_reason_for_the_record(dag) -> None:
    for env in ("staging", "production"):
        params = dag.get_task(f"{env}.approve_rollback").serialized_params
        assert set(params) == {"reason"} and params["reason"]["schema"]["type"] == ["null", "string"]
