"""DAG integrity and policy: deploy_schema loads, and every task can be retried and read at 2 a.m."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dag_files_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "deploy_schema" in dagbag.dags


def test_deploy_schema_runs_one_at_a_time_with_docs_tags_and_owner(dagbag) -> None:
    dag = dagbag.dags["deploy_schema"]
    assert dag.max_active_runs == 1 and not dag.catchup
    assert dag.doc_md and "If it failed at 2 a.m." in dag.doc_md
    assert set(dag.tags) >= {"schema-deploy"}
    assert {t.owner for t in dag.tasks} == {"platform-db"}


ORDER = ["preflight_bundle", "preflight_staging", "preflight_production", "preflight", "backup_production",
         "apply_staging", "test_gate", "production_requested", "approval_needed", "approve_production",
         "wait_for_window", "apply_production", "backfill_production", "contract_production", "verify_production"]
AUDIT = ["audit_compose", "audit_staging", "audit_production", "audit_record"]
# Which environment's database each task opens (None: none): its queue is that environment's.
ENVS = {"preflight_bundle": None, "preflight_staging": "staging", "preflight_production": "production",
        "preflight": None, "backup_production": "production", "apply_staging": "staging", "test_gate": "staging",
        "production_requested": None, "approval_needed": None, "approve_production": None, "wait_for_window": None,
        "apply_production": "production", "backfill_production": "production", "contract_production": "production",
        "verify_production": "production", "audit_compose": None,
        "audit_staging": "staging", "audit_production": "production", "audit_record": None}
QUEUES = "queues: {staging: stg-eu, production: prod-eu, default: control}\n"


def test_the_chain_follows_the_design(dagbag) -> None:
    dag = dagbag.dags["deploy_schema"]
    assert set(dag.task_ids) == set(ORDER) | set(AUDIT) == set(ENVS)
    for upstream, downstream in [("preflight_bundle", "preflight_staging"),
                                 ("preflight_bundle", "preflight_production"), ("preflight_staging", "preflight"), ("preflight_production", "preflight"),
                                 ("preflight", "backup_production"), ("backup_production", "apply_staging"),
                                 ("apply_staging", "test_gate"), ("test_gate", "production_requested"),
                                 ("approve_production", "wait_for_window"), ("wait_for_window", "apply_production"),
                                 ("apply_production", "backfill_production"),
                                 ("backfill_production", "contract_production"),
                                 ("contract_production", "verify_production")]:
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)
    assert dag.get_task("preflight_staging").upstream_task_ids == {"preflight_bundle"}
    assert dag.get_task("preflight_production").upstream_task_ids == {"preflight_bundle"}
    # preflight reads the bundle check and both surveys: its inputs are their values (XComArgs).
    assert dag.get_task("preflight").upstream_task_ids == {"preflight_bundle", "preflight_staging",
                                                           "preflight_production"}
    # The record: computed once after every step, chained into each database, kept; all teardowns, so they
    # run whatever happened and the run's state stays the deployment's.
    assert dag.get_task("audit_compose").upstream_task_ids == set(ORDER)
    assert dag.get_task("audit_staging").upstream_task_ids == {"audit_compose"}
    assert dag.get_task("audit_production").upstream_task_ids == {"audit_compose"}
    assert dag.get_task("audit_record").upstream_task_ids == {"audit_compose", "audit_staging", "audit_production"}
    for task_id in AUDIT:
        task = dag.get_task(task_id)
        assert task.is_teardown and not task.on_failure_fail_dagrun, task_id


def test_the_record_names_a_step_for_every_task_but_its_own(dagbag) -> None:
    from schema_deploy.pipeline.record import STEPS
    from schema_deploy_airflow.task_ids import DEPLOY_STEPS as TASK_STEPS

    assert list(TASK_STEPS) == ORDER
    assert sorted(TASK_STEPS.values()) == sorted(STEPS)


@pytest.fixture
def queued_dag(tmp_path, monkeypatch):
    """deploy_schema parsed with a deploy.yaml that gives each environment its own queue."""
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "deploy.yaml"
    config.write_text(QUEUES)
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(config))
    return DagBag(dag_folder=str(REPO / "dags")).dags["deploy_schema"]


def test_each_task_runs_on_the_queue_of_the_database_it_opens(queued_dag, dagbag) -> None:
    wanted = {None: "control", "staging": "stg-eu", "production": "prod-eu"}
    assert {t.task_id: t.queue for t in queued_dag.tasks} == {t: wanted[env] for t, env in ENVS.items()}
    assert {t.queue for t in dagbag.dags["deploy_schema"].tasks} == {"default"}  # deploy.yaml without queues:


def test_no_task_reads_a_connection_other_than_its_queues_environments(queued_dag, monkeypatch) -> None:
    """Each task body runs with the pipeline replaced by a stand-in and the connection lookup spied
    on: what it asks for is what a worker of its queue must hold, and nothing else."""
    import inspect
    from types import SimpleNamespace
    from unittest.mock import MagicMock

    from schema_deploy import pipeline
    from schema_deploy.pipeline import deploy, record  # noqa: F401 - imported, so that they can be stood in for
    from schema_deploy_airflow import connections, steps

    asked: list[str] = []
    monkeypatch.setattr(connections, "database_url", lambda conn_id: asked.append(conn_id) or "postgresql://u@h/d")
    monkeypatch.setattr(pipeline, "deploy", MagicMock(**{"window.return_value": (MagicMock(), None)}))
    monkeypatch.setattr(pipeline, "record", MagicMock())
    monkeypatch.setattr(steps, "deployment", MagicMock())
    monkeypatch.setattr(steps, "notify", lambda *a, **k: {})
    monkeypatch.setattr(steps, "run_results", lambda *a: ({}, {}))
    # Every earlier result as if present, the record as if the run changed both databases.
    from schema_deploy.pipeline.results import Result

    monkeypatch.setattr(Result, "from_xcom", classmethod(lambda cls, data: MagicMock(
        changed=["staging", "production"], chained=["staging", "production"])))
    envs = {conn_id: env for env, conn_id in connections.DB_CONNECTIONS.items()}
    read = {}
    for task in queued_dag.tasks:
        context = {"ti": MagicMock(task=task), "params": {"dry_run": False, "skip_window": True},
                   "dag_run": SimpleNamespace(run_type="manual", run_id="r")}
        monkeypatch.setattr(steps, "current_context", lambda: context)
        asked.clear()
        if task.task_id == "approve_production":
            continue  # HITL: reads the earlier tasks' XCom and asks a human (tests/dags/test_approval_policy.py)
        if task.task_id in ("wait_for_window", "apply_production", "backfill_production", "contract_production"):
            task.execute(context)
        else:
            names = inspect.signature(task.python_callable).parameters
            task.python_callable(*[{}] * len(task.op_args), **{n: context[n] for n in ("params", "dag_run")
                                                                if n in names})
        read[task.task_id] = {envs[c] for c in asked}
    assert read == {t: ({env} if env else set()) for t, env in ENVS.items() if t != "approve_production"}


def test_every_task_but_the_approval_retries_with_backoff_and_has_docs(dagbag) -> None:
    dag = dagbag.dags["deploy_schema"]
    for task in dag.tasks:
        assert task.doc_md, task.task_id
        if task.task_id == "approve_production":
            assert task.retries == 0  # a human answer is not retried
            continue
        assert task.retries >= 2 and task.retry_exponential_backoff, task.task_id


def test_every_param_of_every_dag_and_task_declares_json_schema_draft_7(dagbag) -> None:
    """Airflow checks each param's schema against its draft's metaschema whenever it resolves it, and
    serializing a DAG resolves them all: draft 7's check is the cheaper (schema_deploy_airflow.defaults)."""
    from schema_deploy_airflow.defaults import PARAM_DRAFT

    seen = 0
    for dag in dagbag.dags.values():
        for where, params in [(dag.dag_id, dag.params), *((t.task_id, t.params) for t in dag.tasks)]:
            for name in params:
                assert params.get_param(name).schema.get("$schema") == PARAM_DRAFT, f"{where}: {name}"
                seen += 1
    assert {"deploy_schema", "deploy_fleet", "rollback_schema"} <= set(dagbag.dags) and seen > 100


def test_trigger_form_has_titled_typed_params(dagbag) -> None:
    params = dagbag.dags["deploy_schema"].params
    for name in ("bundle", "dry_run", "online", "require_approval", "skip_window", "skip_window_reason",
                 "lock_retries", "waive_prechecks"):
        spec = params.get_param(name).schema
        assert spec.get("title") and spec.get("type"), name
    assert params["online"] is True and params["dry_run"] is False
    # Optional (null allowed), so the form submits without it; empty means the prechecks stop the run.
    assert "null" in params.get_param("waive_prechecks").schema["type"] and params["waive_prechecks"] is None


def test_a_waiver_reason_from_the_form_reaches_the_run_trimmed_and_none_is_no_waiver() -> None:
    from schema_deploy.pipeline import RunParams

    assert RunParams.from_mapping({"waive_prechecks": "  rows fixed by hand, ticket 42 "}).waive_prechecks == \
        "rows fixed by hand, ticket 42"
    assert RunParams.from_mapping({"waive_prechecks": None}).waive_prechecks == ""


def test_the_form_offers_the_declared_bundles_by_name_and_no_folder_field(tmp_path, monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    config = tmp_path / "deploy.yaml"
    config.write_text("bundles: {main: sql/migrations, hotfix: hotfixes}\ndefault_bundle: main\n")
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(config))
    params = DagBag(dag_folder=str(REPO / "dags")).dags["deploy_schema"].params
    schema = params.get_param("bundle").schema
    assert schema["enum"] == ["main", "hotfix"] and params["bundle"] == "main"
    assert "migrations" not in params


@pytest.mark.parametrize("given, message", [
    ("nightly", "bundle 'nightly' is not declared: a deployment takes one of the bundles declared under 'bundles:' "
                "in deploy.yaml, by name: main, hotfix. Pick one of them, or declare the folder there first."),
    ("/etc", "bundle '/etc' is a path: a deployment takes one of the bundles declared under 'bundles:' in "
             "deploy.yaml, by name: main, hotfix."),
    ("../../..", "bundle '../../..' is a path: a deployment takes one of the bundles declared under 'bundles:' in "
                 "deploy.yaml, by name: main, hotfix."),
    ("sql/migrations", "bundle 'sql/migrations' is a path: .* by name: main, hotfix."),
])
def test_a_bundle_that_is_not_a_declared_name_is_refused_listing_the_declared_ones(given: str, message: str) -> None:
    from schema_deploy.config.errors import BundleNotDeclared
    from schema_deploy.config.settings import DeployConfig
    from schema_deploy.pipeline import RunParams

    cfg = DeployConfig(bundles=(("main", REPO / "sql/migrations"), ("hotfix", REPO / "hotfixes")),
                       approval_manual=False, source=Path("deploy.yaml"))
    with pytest.raises(BundleNotDeclared, match=message) as info:
        RunParams.from_mapping({"bundle": given}).check(cfg)
    assert info.value.exit_code == 2


def test_the_old_migrations_folder_field_is_refused_rather_than_obeyed() -> None:
    from schema_deploy.config.settings import DeployConfig
    from schema_deploy.errors import UsageError
    from schema_deploy.pipeline import RunParams

    with pytest.raises(UsageError, match="the run asks for migrations folder '/etc/secrets', but deployments take "
                                         "a declared bundle now: pass 'bundle' with one of deploy.yaml's bundle"):
        RunParams.from_mapping({"migrations": "/etc/secrets"}).check(DeployConfig(approval_manual=False))


@pytest.mark.parametrize("params, message", [
    ({"skip_window": True, "skip_window_reason": " "},
     r"^'Skip the maintenance window' \(skip_window\) is on but 'Why skip the window' \(skip_window_reason\) is "
     r"empty: say there why production may change outside the maintenance window \(it is recorded\), or turn "
     r"skip_window off. Nothing was changed.$"),
    ({"skip_window": True, "skip_window_reason": None}, r"^'Skip the maintenance window' \(skip_window\) is on but "
                                                        r"'Why skip the window' \(skip_window_reason\) is empty"),
    ({"dry_run": True, "skip_window": True, "skip_window_reason": "x"},
     r"^'Dry run' \(dry_run\) leaves production untouched, so 'Skip the maintenance window' \(skip_window\) makes "
     r"no sense with it; turn one of them off. Nothing was changed.$"),
    ({"lock_retries": -1}, "lock_retries must be 0 or more"),
    ({"lock_retries": "ten"}, r"lock_retries must be a whole number \(got 'ten'\)"),
])
def test_contradictory_trigger_choices_are_rejected_by_the_first_task(params: dict, message: str) -> None:
    from schema_deploy.config.settings import DeployConfig
    from schema_deploy.errors import UsageError
    from schema_deploy.pipeline import RunParams

    with pytest.raises(UsageError, match=message):
        RunParams.from_mapping(params).check(DeployConfig(approval_manual=False))


def test_a_manual_run_cannot_turn_off_approval_when_deploy_yaml_requires_it() -> None:
    from schema_deploy.config.settings import DeployConfig
    from schema_deploy.errors import UsageError
    from schema_deploy.pipeline import RunParams
    def approval_required(params: dict, run_type: str, cfg: DeployConfig) -> bool:
        return RunParams.from_mapping(params).approval_required(cfg, run_type)

    def check_params(params: dict, cfg: DeployConfig, run_type: str = "manual") -> None:
        RunParams.from_mapping(params).check(cfg, run_type)

    required = DeployConfig(approval_manual=True, source=Path("deploy.yaml"))
    with pytest.raises(UsageError, match=r"^deploy.yaml: approval.manual_runs is 'required', so 'Require approval' "
                                         r"\(require_approval\) cannot be turned off in the trigger form; leave it on, "
                                         r"or set approval.manual_runs: form.$"):
        check_params({"require_approval": False}, required)
    check_params({"require_approval": False}, required, "scheduled")  # the schedule policy decides those
    assert approval_required({"require_approval": False}, "manual", DeployConfig(approval_manual=False)) is False
    assert approval_required({"require_approval": False}, "manual", required) is True
    assert approval_required({}, "DagRunType.SCHEDULED".lower(), DeployConfig(approval_scheduled=False)) is False


def test_deploy_schema_is_manual_unless_deploy_yaml_schedules_it_before_each_window(tmp_path, monkeypatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from schema_deploy_airflow.timetable import MaintenanceWindowTimetable

    config = tmp_path / "deploy.yaml"
    config.write_text("windows: [{name: nightly, cron: '0 2 * * *', duration: 2h, timezone: Europe/Berlin}]\n"
                      "schedule: {lead: 90m}\n")
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(config))
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["deploy_schema"]
    assert isinstance(dag.timetable, MaintenanceWindowTimetable)
    assert dag.timetable.summary.startswith("1h30m before nightly")

    config.write_text("windows: [{name: nightly, cron: '0 2 * * *', duration: 2h}]\n")
    dag = DagBag(dag_folder=str(REPO / "dags")).dags["deploy_schema"]
    assert not isinstance(dag.timetable, MaintenanceWindowTimetable)


@pytest.mark.parametrize("body", ["chain_audit", "record_audit"])
def test_an_audit_task_without_the_composed_record_fails_naming_the_task_to_clear(monkeypatch, body: str) -> None:
    from unittest.mock import MagicMock

    from airflow.sdk.exceptions import AirflowFailException

    from schema_deploy_airflow import steps

    context = {"ti": MagicMock(**{"xcom_pull.return_value": None})}
    monkeypatch.setattr(steps, "current_context", lambda: context)
    run = getattr(steps, body)
    with pytest.raises(AirflowFailException) as raised:
        run("staging", None) if body == "chain_audit" else run(None, None, None)
    # Wrapped at 100 columns for the task log (steps.fail_fast); the words are these.
    assert " ".join(str(raised.value).split()) == ("UsageError: audit_compose left no record (it failed: see its "
                                                   "log); clear audit_compose, which clears the audit tasks after it.")


def test_the_retry_delay_is_30_s_unless_the_dag_processors_environment_sets_another(monkeypatch) -> None:
    import importlib
    from datetime import timedelta

    from schema_deploy_airflow import defaults

    try:
        monkeypatch.delenv("SCHEMA_DEPLOY_RETRY_DELAY_S", raising=False)
        assert importlib.reload(defaults).DEFAULT_ARGS["retry_delay"] == timedelta(seconds=30)
        monkeypatch.setenv("SCHEMA_DEPLOY_RETRY_DELAY_S", "3")  # tests/e2e/test_celery.py's killed worker
        assert importlib.reload(defaults).DEFAULT_ARGS["retry_delay"] == timedelta(seconds=3)
    finally:
        monkeypatch.delenv("SCHEMA_DEPLOY_RETRY_DELAY_S", raising=False)
        importlib.reload(defaults)


def test_a_process_builds_one_s3_client_per_connection_version_and_none_without_the_connection(monkeypatch) -> None:
    """A boto3 session reads botocore's models again each time: one client per connection as it is."""
    import json

    from schema_deploy_airflow import connections

    def conn(endpoint: str) -> str:
        return json.dumps({"conn_type": "aws", "login": "key", "password": "secret",
                           "extra": {"endpoint_url": endpoint, "region_name": "us-east-1"}})

    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_S3", conn("http://127.0.0.1:9"))
    first = connections.s3_client()
    assert connections.s3_client() is first
    assert first.meta.endpoint_url == "http://127.0.0.1:9"
    monkeypatch.setenv("AIRFLOW_CONN_BACKUP_S3", conn("http://127.0.0.1:10"))  # the connection was edited
    edited = connections.s3_client()
    assert edited is not first and edited.meta.endpoint_url == "http://127.0.0.1:10"
    monkeypatch.delenv("AIRFLOW_CONN_BACKUP_S3")  # none: boto3's own credential chain, as the hook does
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    assert connections.s3_client().meta.service_model.service_name == "s3"
