"""deploy_fleet loads, runs its tasks in the designed order on the designed queues, and refuses a bad form."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FLEETS = ('fleets:\n  tenants: {prefix: tenant_, waves: {canary: 1, size: "50%"}, queue: fleet-q}\n'
          '  shards: {targets: [shard_a, shard_b]}\n'
          'queues: {staging: stg-eu, default: control}\n')
ORDER = ["preflight_bundle", "preflight_staging", "preflight", "apply_staging", "test_gate", "fleet_members",
         "canary", "approval_needed", "waves", "windowed", "fleet_record"]
# None: opens no database; "fleet": the fleet's members.
ENVS = {"preflight_bundle": None, "preflight_staging": "staging", "preflight": None, "apply_staging": "staging",
        "test_gate": "staging", "fleet_members": "fleet", "canary": "fleet", "approval_needed": None,
        "approve_canary": None, "waves": "fleet", "windowed": "fleet", "fleet_record": None}


def load(tmp_path, monkeypatch, text: str):
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "deploy.yaml"
    config.write_text(text)
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(config))
    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert bag.import_errors == {}
    return bag.dags["deploy_fleet"]


@pytest.fixture
def dag(tmp_path, monkeypatch):
    return load(tmp_path, monkeypatch, FLEETS)


def test_deploy_fleet_parses_with_docs_tags_owner_and_one_run_at_a_time(dag) -> None:
    assert dag.max_active_runs == 1 and not dag.catchup and dag.schedule is None
    assert "If it failed at 2 a.m." in dag.doc_md and "What a retry costs" in dag.doc_md
    assert {"schema-deploy", "fleet"} <= set(dag.tags) and {t.owner for t in dag.tasks} == {"platform-db"}
    for task in dag.tasks:
        assert task.doc_md, task.task_id
        if task.task_id == "approve_canary":
            assert task.retries == 0  # a human answer is not retried
        else:
            assert task.retries >= 2 and task.retry_exponential_backoff, task.task_id


def test_deploy_fleet_still_parses_when_no_fleet_is_declared(tmp_path, monkeypatch) -> None:
    dag = load(tmp_path, monkeypatch, "")
    fleet = dag.params.get_param("fleet")  # empty but nullable: the form submits, preflight_bundle says why not
    assert dag.params["fleet"] is None and "enum" not in fleet.schema and "null" in fleet.schema["type"]


def test_the_chain_follows_the_design(dag) -> None:
    assert set(dag.task_ids) == set(ENVS)
    for upstream, downstream in zip(ORDER, ORDER[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    # Each task's inputs are its upstream tasks' values: the edges they bring are part of the design.
    assert dag.get_task("approve_canary").upstream_task_ids == {"approval_needed", "canary"}
    assert dag.get_task("waves").upstream_task_ids == {"approval_needed", "approve_canary", "canary", "preflight",
                                                       "fleet_members"}
    assert dag.get_task("waves").trigger_rule == "none_failed_min_one_success"
    windowed = dag.get_task("windowed")  # runs after failed waves too: a failure below halt_after goes on
    assert windowed.upstream_task_ids == {"waves", "canary", "preflight", "fleet_members"}
    assert windowed.trigger_rule == "all_done"
    record = dag.get_task("fleet_record")
    assert record.is_teardown and not record.on_failure_fail_dagrun
    assert set(ORDER[:-1]) - record.upstream_task_ids == {"preflight_staging", "apply_staging"}  # via their next


def test_the_member_tasks_take_their_upstream_values_and_a_part_of_a_task_that_never_ran_reads_as_none(dag) -> None:
    """canary and waves return {fleet_run: their part} with multiple_outputs, so windowed (all_done)
    and the approval read `fleet_run` through XComArgs: None for a task that never ran, not an error."""
    from airflow.sdk.definitions.xcom_arg import PlainXComArg

    assert dag.get_task("canary").multiple_outputs and dag.get_task("waves").multiple_outputs
    windowed = dag.get_task("windowed")
    for field, task_id, key in [("summary", "preflight", "return_value"), ("members", "fleet_members", "return_value"),
                                ("canary", "canary", "fleet_run"), ("waves", "waves", "fleet_run")]:
        arg = getattr(windowed, field)
        assert isinstance(arg, PlainXComArg) and (arg.operator.task_id, arg.key) == (task_id, key), field
        assert field in windowed.template_fields
    approve = dag.get_task("approve_canary")
    assert (approve.canary.operator.task_id, approve.canary.key) == ("canary", "fleet_run")
    assert "canary" in approve.template_fields


def test_each_task_runs_on_the_queue_of_what_it_opens_the_members_on_the_first_fleets(dag, tmp_path,
                                                                                        monkeypatch) -> None:
    wanted = {None: "control", "staging": "stg-eu", "fleet": "fleet-q"}
    assert {t.task_id: t.queue for t in dag.tasks} == {t: wanted[env] for t, env in ENVS.items()}
    plain = load(tmp_path, monkeypatch, "fleets: {tenants: {prefix: tenant_}}\n")
    assert {t.queue for t in plain.tasks} == {"default"}


def test_the_form_offers_the_declared_fleets_first_by_default_and_titled_fields(dag) -> None:
    params = dag.params
    assert params.get_param("fleet").schema["enum"] == ["tenants", "shards"] and params["fleet"] == "tenants"
    for name in ("fleet", "bundle", "dry_run", "only_targets", "skip_window", "skip_window_reason", "lock_retries",
                 "waive_prechecks"):
        spec = params.get_param(name).schema
        assert spec.get("title") and spec.get("type"), name
    assert params["dry_run"] is False and params["only_targets"] is None  # an empty field, not a literal []


@pytest.mark.parametrize("given, wanted", [
    (None, []), ("", []), ([], []), ("tenant_a, tenant_b", ["tenant_a", "tenant_b"]),
    ("tenant_a,tenant_b tenant_c", ["tenant_a", "tenant_b", "tenant_c"]), ([" tenant_a ", ""], ["tenant_a"]),
])
def test_only_targets_takes_a_list_or_a_comma_separated_string(given, wanted) -> None:
    from schema_deploy_airflow.fleet_steps import only_targets

    assert only_targets(given) == wanted


def fleets_config():
    from schema_deploy.config.fleets import FleetSpec
    from schema_deploy.config.settings import DeployConfig

    return DeployConfig(fleets=(FleetSpec("tenants", "prefix", prefix="tenant_"),), source=Path("deploy.yaml"),
                        approval_manual=False)


@pytest.mark.parametrize("params, message", [
    ({"fleet": "tenant"}, r"^deploy.yaml: no fleet named 'tenant' \(declared: tenants\); pass one of those, or "
                          r"declare it under fleets:.$"),
    ({"fleet": ""}, r"no fleet named '' \(declared: tenants\)"),
    ({"fleet": "tenants", "only_targets": 7}, r"^'Only these members' \(only_targets\) must be member names, "
                                              r"comma-separated, or a list of them \(got 7\); leave it empty for the "
                                              r"whole fleet.$"),
    ({"fleet": "tenants", "skip_window": True, "skip_window_reason": None},
     r"^'Skip the members' maintenance windows' \(skip_window\) is on but 'Why skip the windows' "
     r"\(skip_window_reason\) is empty: say there why the members may change outside their maintenance windows "
     r"\(it is recorded in the fleet record\), or turn skip_window off. Nothing was changed.$"),
    ({"fleet": "tenants", "skip_window": True, "skip_window_reason": "  "}, r"^'Skip the members' maintenance "
                                                                          r"windows' \(skip_window\) is on but"),
    ({"fleet": "tenants", "dry_run": True, "skip_window": True, "skip_window_reason": "x"},
     r"^'Dry run' \(dry_run\) changes no member, so 'Skip the members' maintenance windows' \(skip_window\) makes "
     r"no sense with it; turn one of them off. Nothing was changed.$"),
])
def test_a_bad_fleet_or_only_targets_is_refused_naming_the_valid_choices(params, message) -> None:
    from schema_deploy.errors import UsageError
    from schema_deploy_airflow.fleet_steps import check_form

    with pytest.raises(UsageError, match=message):
        check_form(params, fleets_config())


def test_the_forms_defaults_pass_the_first_tasks_checks() -> None:
    """What the form sends untouched (empty fields as None) is a valid run: no cross-field refusal."""
    from schema_deploy.pipeline import RunParams
    from schema_deploy_airflow.fleet_steps import check_form

    defaults = {"fleet": "tenants", "bundle": "main", "dry_run": False, "only_targets": None, "skip_window": False,
                "skip_window_reason": None, "lock_retries": None, "waive_prechecks": None}
    check_form(defaults, fleets_config())
    RunParams.from_mapping(defaults).check(fleets_config())
    check_form({**defaults, "skip_window": True, "skip_window_reason": "hotfix for tenant outage"}, fleets_config())


def test_a_prefix_fleets_members_are_the_workers_airflow_conn_variables(monkeypatch) -> None:
    from schema_deploy_airflow.fleet_steps import env_conn_ids

    monkeypatch.setenv("AIRFLOW_CONN_TENANT_B", "postgresql://u@h/b")
    monkeypatch.setenv("AIRFLOW_CONN_TENANT_A", "postgresql://u@h/a")
    ids = env_conn_ids()
    assert [i for i in ids if i.startswith("tenant_")] == ["tenant_a", "tenant_b"]
