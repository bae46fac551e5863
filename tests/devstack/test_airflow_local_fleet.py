"""`airflow_local.py --fleet-env FILE`: deploy_fleet's member connections reach the Celery worker of
the fleets' queue and no other process (devstack/airflow_local.py, module docstring).

The workers are built as `start --executor celery` builds them (their own project copies and
environments), without starting anything; tests/e2e/test_celery.py runs a fleet on them.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import airflow_local
from airflow_local import LocalAirflowError, celery_workers, fleet_connections, fleet_worker, member_connections

SECRET = "tenant-pw-4f1c9e"
MEMBER_URL = f"postgresql://tenant:{SECRET}@db.internal:5432/tenant_00"
STACK = {"AIRFLOW_CONN_STAGING_DB": "postgresql://migrator:staging-pw@127.0.0.1:1/staging",
         "AIRFLOW_CONN_PRODUCTION_DB": "postgresql://migrator:production-pw@127.0.0.1:2/production"}
SETTINGS = ("bundles: {main: ../sql/migrations}\nverify_dir: ../sql/verify\n"
            "queues: {staging: staging, production: production, default: staging}\n")


def fleet_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.env"
    path.write_text(text)
    return path


def workers_for(tmp_path: Path, settings: str, fleet: dict[str, str]) -> tuple[dict, dict[str, dict[str, str]]]:
    """(the control plane's environment after, {env name: its worker's environment})."""
    config = tmp_path / "settings" / "deploy.yaml"
    config.parent.mkdir()
    config.write_text(settings)
    control = {"SCHEMA_DEPLOY_CONFIG": str(config), "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor"}
    built = celery_workers(tmp_path / "home", STACK, control, fleet)
    return control, {w.name.removeprefix("worker-"): w.env for w in built}


def test_a_fleet_file_gives_each_member_connection_with_shell_quoting_and_comments(tmp_path) -> None:
    path = fleet_file(tmp_path, f"# tenants of eu-1\nexport AIRFLOW_CONN_TENANT_00='{MEMBER_URL}'\n\n"
                                "AIRFLOW_CONN_TENANT_01=postgresql://t:p@h/tenant_01\n")
    assert fleet_connections(path) == {"AIRFLOW_CONN_TENANT_00": MEMBER_URL,
                                       "AIRFLOW_CONN_TENANT_01": "postgresql://t:p@h/tenant_01"}
    assert fleet_connections(None) == {}


@pytest.mark.parametrize(("text", "message"), [
    (f"{MEMBER_URL}\n", r"fleet.env:1: is not `export AIRFLOW_CONN_<ID>=<url>`"),
    (f"export PGPASSWORD={SECRET}\n", r":1: PGPASSWORD is not `export AIRFLOW_CONN_<ID>=<url>`"),
    ("export AIRFLOW_CONN_TENANT_00=\n", r":1: AIRFLOW_CONN_TENANT_00 is not `export AIRFLOW_CONN_<ID>=<url>`"),
    (f"export AIRFLOW_CONN_TENANT_00='{MEMBER_URL}\n", r":1: AIRFLOW_CONN_TENANT_00 is not"),
    ("# none yet\n", r"names no connection: add `export AIRFLOW_CONN_<ID>=<url>` lines, or leave --fleet-env out"),
    (f"export AIRFLOW_CONN_PRODUCTION_DB={MEMBER_URL}\n",
     r":1: AIRFLOW_CONN_PRODUCTION_DB is one of the stack's own connections"),
    (f"export AIRFLOW_CONN_T_A={MEMBER_URL}\nexport AIRFLOW_CONN_T_A={MEMBER_URL}\n", r":2: AIRFLOW_CONN_T_A is set twice"),
])
def test_a_malformed_fleet_file_is_refused_by_line_without_its_secret(tmp_path, text: str, message: str) -> None:
    with pytest.raises(LocalAirflowError, match=message) as caught:
        fleet_connections(fleet_file(tmp_path, text))
    assert SECRET not in str(caught.value)


def test_a_missing_fleet_file_is_refused_by_name(tmp_path) -> None:
    with pytest.raises(LocalAirflowError, match=r"--fleet-env .*absent.env: cannot read it"):
        fleet_connections(tmp_path / "absent.env")


def test_the_member_connections_reach_the_worker_of_the_fleets_queue_and_no_other_process(tmp_path) -> None:
    fleet = {"AIRFLOW_CONN_TENANT_00": MEMBER_URL, "AIRFLOW_CONN_TENANT_01": MEMBER_URL.replace("00", "01")}
    control, env = workers_for(tmp_path, SETTINGS + "fleets: {tenants: {prefix: tenant_, queue: production}}\n", fleet)

    assert {k: env["production"].get(k) for k in fleet} == fleet
    assert member_connections(env["production"]) == ["tenant_00", "tenant_01"]
    assert member_connections(env["staging"]) == [] and member_connections(control) == []
    assert not any(SECRET in v for v in [*env["staging"].values(), *control.values()])
    # Each worker still holds only its own environment's database.
    assert "AIRFLOW_CONN_STAGING_DB" not in env["production"] and "AIRFLOW_CONN_PRODUCTION_DB" not in env["staging"]


def test_a_fleet_without_a_queue_takes_the_default_queues_worker(tmp_path) -> None:
    _, env = workers_for(tmp_path, SETTINGS + "fleets: {tenants: {prefix: tenant_}}\n",
                         {"AIRFLOW_CONN_TENANT_00": MEMBER_URL})
    assert member_connections(env["staging"]) == ["tenant_00"] and member_connections(env["production"]) == []


def test_the_first_fleets_queue_decides_as_it_does_for_the_dag(tmp_path) -> None:
    _, env = workers_for(tmp_path, SETTINGS + "fleets:\n  tenants: {prefix: tenant_, queue: production}\n"
                                              "  shards: {targets: [shard_a], queue: staging}\n",
                         {"AIRFLOW_CONN_SHARD_A": MEMBER_URL})
    assert member_connections(env["production"]) == ["shard_a"] and member_connections(env["staging"]) == []


def test_a_fleet_queue_no_worker_consumes_is_refused_with_the_queues_there_are(tmp_path) -> None:
    with pytest.raises(LocalAirflowError, match=r"fleets run on queue 'fleet', which no worker consumes "
                                                r"\(staging: staging, production: production\): set the first "
                                                r"fleet's queue: to one of those"):
        workers_for(tmp_path, SETTINGS + "fleets: {tenants: {prefix: tenant_, queue: fleet}}\n",
                    {"AIRFLOW_CONN_TENANT_00": MEMBER_URL})


def test_a_fleet_file_with_settings_that_declare_no_fleet_is_refused(tmp_path) -> None:
    with pytest.raises(LocalAirflowError, match=r"--fleet-env is given, but .*deploy.yaml declares no fleets:"):
        workers_for(tmp_path, SETTINGS, {"AIRFLOW_CONN_TENANT_00": MEMBER_URL})


def test_without_a_fleet_file_no_worker_holds_a_member_connection(tmp_path) -> None:
    _, env = workers_for(tmp_path, SETTINGS + "fleets: {tenants: {prefix: tenant_, queue: production}}\n", {})
    assert [member_connections(e) for e in env.values()] == [[], []]


def test_fleet_worker_names_the_environment_consuming_the_queue() -> None:
    assert fleet_worker({"staging": "stg", "production": "prod"}, "prod") == "production"


def test_start_refuses_a_malformed_fleet_file_before_starting_anything(tmp_path, capsys) -> None:
    path = fleet_file(tmp_path, f"{MEMBER_URL}\n")
    code = airflow_local.main(["start", "--background", "--home", str(tmp_path / "home"), "--port",
                               str(airflow_local.free_port()), "--executor", "celery", "--fleet-env", str(path)])
    out = capsys.readouterr().out
    assert code == 2 and "fleet.env:1: is not `export AIRFLOW_CONN_<ID>=<url>`" in out and SECRET not in out
    assert not (tmp_path / "home" / "logs").exists()
