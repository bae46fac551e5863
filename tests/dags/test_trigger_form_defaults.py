"""The three trigger forms submit at their defaults.

Airflow 3's form (the React UI of the Trigger dialog) marks a field required when its JSON-schema
type lacks "null", and keeps Trigger disabled while a required field is None or "" (it validates
each field alone). So every param either allows null, or has a default that is neither None nor
"" and validates against its own schema. What the form then sends untouched (empty fields as
None) must pass the first task's checks: the cross-field rules refuse only what an operator
chose, never the defaults.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = ("deploy_schema", "deploy_fleet", "rollback_schema")
FLEETS = "fleets:\n  tenants: {prefix: tenant_}\n"


def load(tmp_path, monkeypatch, extra: str):
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "deploy.yaml"
    config.write_text((REPO / "deploy.yaml").read_text().replace("bundles:\n  main: sql/migrations",
                                                                    f"bundles:\n  main: {REPO / 'sql/migrations'}")
                      + extra)
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(config))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag


@pytest.fixture(params=[FLEETS, ""], ids=["fleets declared", "no fleet declared"])
def bag(request, tmp_path, monkeypatch):
    return load(tmp_path, monkeypatch, request.param)


def required_by_the_form(schema: dict) -> bool:
    """Airflow 3.3's UI rule (airflow/ui: a field is required when its type lacks "null")."""
    kind = schema.get("type")
    return bool(kind) and (not isinstance(kind, list) or "null" not in kind)


def sent_at_defaults(dag) -> dict:
    """The conf the form sends when no field is touched: each param's default (an empty field is None)."""
    return {name: dag.params.get_param(name).value for name in dag.params}


@pytest.mark.parametrize("dag_id", DAGS)
def test_every_field_the_form_requires_has_a_default_that_validates_against_its_own_schema(bag, dag_id) -> None:
    from airflow.sdk import Param

    dag = bag.dags[dag_id]
    required = []
    for name in dag.params:
        param = dag.params.get_param(name)
        assert param.schema.get("title"), f"{dag_id}.{name} has no title"
        if required_by_the_form(param.schema):
            required.append(name)
            assert param.value not in (None, ""), (
                f"{dag_id}.{name}: the form requires it (type {param.schema['type']!r} lacks 'null'), but its "
                f"default {param.value!r} is empty, so Trigger stays disabled until it is touched")
        # The default, and the empty field the form sends, validate against the field's own schema.
        Param(param.value, **param.schema).resolve(suppress_exception=False)
    dag.params.validate()
    assert required, dag_id  # the test sees the real rule: booleans and enums are required


@pytest.mark.parametrize("dag_id, optional", [
    ("deploy_schema", {"skip_window_reason", "lock_retries", "waive_prechecks"}),
    ("deploy_fleet", {"only_targets", "skip_window_reason", "lock_retries", "waive_prechecks"}),
    ("rollback_schema", {"backup_uri", "confirm_database"}),
])
def test_the_optional_fields_are_empty_and_nullable(bag, dag_id, optional) -> None:
    dag = bag.dags[dag_id]
    for name in optional:
        param = dag.params.get_param(name)
        assert "null" in param.schema["type"] and param.value is None, (dag_id, name, param.schema, param.value)


def test_only_these_members_is_an_empty_field_that_takes_names_or_a_list(bag) -> None:
    from airflow.sdk import Param

    schema = bag.dags["deploy_fleet"].params.get_param("only_targets").schema
    for value in (None, "tenant_a, tenant_b", ["tenant_a"]):
        assert Param(value, **schema).resolve(suppress_exception=False) == value
    with pytest.raises(Exception, match="7 is not of type .string."):
        Param([7], **schema).resolve(suppress_exception=False)


def test_what_the_forms_send_at_their_defaults_passes_the_first_tasks_checks(tmp_path, monkeypatch) -> None:
    from schema_deploy.config import settings as config
    from schema_deploy.pipeline import RunParams
    from schema_deploy.pipeline.rollback import RollbackRequest, chosen_environment
    from schema_deploy_airflow.fleet_steps import check_form

    bag = load(tmp_path, monkeypatch, FLEETS)
    cfg = config.load()
    deploy = sent_at_defaults(bag.dags["deploy_schema"])
    assert deploy["skip_window_reason"] is None
    RunParams.from_mapping(deploy).check(cfg)  # deploy_schema's preflight_bundle

    fleet = sent_at_defaults(bag.dags["deploy_fleet"])
    assert fleet["only_targets"] is None and fleet["fleet"] == "tenants"
    check_form(fleet, cfg)  # deploy_fleet's preflight_bundle
    RunParams.from_mapping(fleet).check(cfg)

    rollback = sent_at_defaults(bag.dags["rollback_schema"])
    env = chosen_environment(rollback)  # rollback_schema's choose_environment
    request = RollbackRequest.from_mapping(rollback)
    request.check(env)
    # The empty Backup URI is the newest verified backup (choose_backup's empty uri).
    assert (env, request.method, request.backup_uri, request.confirm_database) == ("staging", "backup", "", "")


def test_with_no_fleet_declared_the_fleet_form_still_submits_and_the_first_task_says_what_to_declare(
        tmp_path, monkeypatch) -> None:
    from schema_deploy.config import settings as config
    from schema_deploy.errors import UsageError
    from schema_deploy_airflow.fleet_steps import check_form

    fleet = sent_at_defaults(load(tmp_path, monkeypatch, "").dags["deploy_fleet"])
    assert fleet["fleet"] is None
    with pytest.raises(UsageError, match=r"no fleet named '' \(declared: none\); pass one of those, or declare it "
                                         r"under fleets:.$"):
        check_form(fleet, config.load())


@pytest.mark.parametrize("task, params, message", [
    ("rollback", {"environment": "production", "method": "backup", "confirm_database": None},
     r"^UsageError: 'Confirm the database name' \(confirm_database\) is empty, but 'Environment' \(environment\) "
     r"is production"),
    ("rollback", {"environment": "staging", "method": "down_migrations", "backup_uri": "s3://b/x.dump"},
     r"^UsageError: 'Backup URI' \(backup_uri\) is 's3://b/x.dump', but 'Method' \(method\) is down_migrations"),
    ("fleet", {"fleet": "tenants", "skip_window": True, "skip_window_reason": None},
     r"^UsageError: 'Skip the members' maintenance windows' \(skip_window\) is on but 'Why skip the windows'"),
])
def test_the_first_task_refuses_a_contradictory_form_at_once_not_retried(tmp_path, monkeypatch, task, params,
                                                                          message) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from schema_deploy_airflow import fleet_steps, rollback_steps

    load(tmp_path, monkeypatch, FLEETS)  # SCHEMA_DEPLOY_CONFIG: a deploy.yaml with the fleet
    module, first = {"rollback": (rollback_steps, rollback_steps.choose_environment),
                     "fleet": (fleet_steps, fleet_steps.preflight_bundle)}[task]
    monkeypatch.setattr(module, "current_context", lambda: {"params": params})
    with pytest.raises(AirflowFailException) as failed:  # Airflow's failure without a retry
        first()
    assert re.match(message, " ".join(str(failed.value).split())), str(failed.value)  # the log may wrap it


def test_choose_environment_passes_the_forms_defaults_and_picks_the_environments_group(monkeypatch) -> None:
    from schema_deploy_airflow import rollback_steps

    defaults = {"environment": "staging", "method": "backup", "backup_uri": None, "steps": 1,
                "confirm_database": None, "force": False, "bundle": "main"}
    monkeypatch.setattr(rollback_steps, "current_context", lambda: {"params": defaults})
    assert rollback_steps.choose_environment() == "staging"
    monkeypatch.setattr(rollback_steps, "current_context", lambda: {"params": {
        **defaults, "environment": "production", "confirm_database": "shop"}})
    assert rollback_steps.choose_environment() == "production"  # its exact name: preflight, which knows it
