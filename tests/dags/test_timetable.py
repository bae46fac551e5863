"""MaintenanceWindowTimetable through Airflow itself: plugin registration, DAG serialization, scheduling."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pendulum
import pytest

from schema_deploy_airflow.timetable import MaintenanceWindowTimetable

REPO = Path(__file__).resolve().parents[2]

NIGHTLY = {"cron": "0 2 * * *", "duration": "2h", "timezone": "UTC", "name": "nightly"}
BERLIN = {"cron": "0 2 * * *", "duration": "2h", "timezone": "Europe/Berlin", "name": "berlin"}
NEW_YORK = {"cron": "0 22 * * *", "duration": "3h", "timezone": "America/New_York", "name": "new-york"}


def at(text: str) -> pendulum.DateTime:
    return pendulum.instance(datetime.fromisoformat(text).replace(tzinfo=timezone.utc))


def serialized_round_trip(timetable: MaintenanceWindowTimetable, **dag_kwargs):
    """A one-task DAG scheduled by `timetable`, through Airflow's DAG serialization and JSON and back."""
    from airflow.providers.standard.operators.empty import EmptyOperator
    from airflow.sdk import DAG
    from airflow.serialization.serialized_objects import DagSerialization

    with DAG("window_probe", schedule=timetable, **dag_kwargs) as dag:
        EmptyOperator(task_id="noop")
    data = json.loads(json.dumps(DagSerialization.to_dict(dag)))
    return data, DagSerialization.from_dict(data)


def test_the_plugin_is_found_by_airflows_plugins_manager() -> None:
    from airflow import plugins_manager

    plugins, import_errors = plugins_manager._get_plugins()
    assert not [path for path in import_errors if path.endswith("schema_deploy_plugin.py")]
    assert "schema_deploy" in {plugin.name for plugin in plugins}
    registered = plugins_manager.get_timetables_plugins()
    assert registered["schema_deploy_airflow.timetable.MaintenanceWindowTimetable"] is MaintenanceWindowTimetable


def test_a_dag_using_the_timetable_survives_airflows_serialization() -> None:
    timetable = MaintenanceWindowTimetable([NIGHTLY, BERLIN], lead="1h30m")
    data, restored = serialized_round_trip(timetable, start_date=at("2026-01-01T00:00:00"))
    assert data["dag"]["timetable"]["__type"] == "schema_deploy_airflow.timetable.MaintenanceWindowTimetable"
    assert isinstance(restored.timetable, MaintenanceWindowTimetable)
    assert restored.timetable.serialize() == timetable.serialize() == {
        "windows": [NIGHTLY, BERLIN], "lead": "1h30m",
    }
    assert restored.timetable.summary == (
        "1h30m before nightly (0 2 * * * UTC, 2h), berlin (0 2 * * * Europe/Berlin, 2h)"
    )


def test_an_unregistered_subclass_is_refused_by_serialization() -> None:
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.sdk import DAG

    class Unregistered(MaintenanceWindowTimetable):
        pass

    dag = DAG("unregistered_probe", schedule=Unregistered([NIGHTLY]), start_date=at("2026-01-01T00:00:00"))
    with pytest.raises(Exception, match="is not registered"):
        DagSerialization.to_dict(dag)


def test_first_and_following_runs_run_an_hour_before_the_window_and_span_it() -> None:
    _, dag = serialized_round_trip(MaintenanceWindowTimetable([NIGHTLY], lead="1h"),
                                   start_date=at("2026-11-26T00:00:00"), catchup=True)
    first = dag.next_dagrun_info(last_automated_run_info=None)
    assert first.run_after == at("2026-11-26T01:00:00")
    assert first.data_interval == (at("2026-11-26T01:00:00"), at("2026-11-26T04:00:00"))
    assert first.logical_date == at("2026-11-26T01:00:00")
    second = dag.next_dagrun_info(last_automated_run_info=first)
    assert second.run_after == at("2026-11-27T01:00:00")
    assert second.data_interval == (at("2026-11-27T01:00:00"), at("2026-11-27T04:00:00"))


def test_two_time_zones_alternate_and_end_date_stops_the_schedule() -> None:
    _, dag = serialized_round_trip(MaintenanceWindowTimetable([BERLIN, NEW_YORK], lead="2h"),
                                   start_date=at("2026-11-26T12:00:00"), end_date=at("2026-11-27T23:00:00"),
                                   catchup=True)
    infos, info = [], None
    while info := dag.next_dagrun_info(last_automated_run_info=info):
        infos.append(info)
    assert [(i.run_after, i.data_interval.end) for i in infos] == [
        (at("2026-11-26T23:00:00"), at("2026-11-27T03:00:00")),  # Berlin 02:00-04:00 CET
        (at("2026-11-27T01:00:00"), at("2026-11-27T06:00:00")),  # New York 22:00-01:00 EST
        (at("2026-11-27T23:00:00"), at("2026-11-28T03:00:00")),  # Berlin again, exactly at end_date
    ]


def test_with_catchup_false_missed_runs_are_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    _, dag = serialized_round_trip(MaintenanceWindowTimetable([NIGHTLY], lead="1h"),
                                   start_date=at("2026-01-01T00:00:00"), catchup=False)
    monkeypatch.setattr(pendulum, "now", lambda tz=None: at("2026-11-26T01:30:00"))
    first = dag.next_dagrun_info(last_automated_run_info=None)
    assert first.run_after == at("2026-11-27T01:00:00")  # today's 01:00 has passed
    long_ago = dag.timetable.next_dagrun_info(
        last_automated_data_interval=first.data_interval._replace(start=at("2026-06-01T01:00:00")),
        restriction=dag._time_restriction,
    )
    assert long_ago.run_after == at("2026-11-27T01:00:00")  # not 2026-06-02


def test_with_catchup_true_missed_runs_are_scheduled_from_start_date() -> None:
    _, dag = serialized_round_trip(MaintenanceWindowTimetable([NIGHTLY], lead="1h"),
                                   start_date=at("2026-01-01T00:00:00"), catchup=True)
    assert dag.next_dagrun_info(last_automated_run_info=None).run_after == at("2026-01-01T01:00:00")


def test_a_manual_run_spans_to_the_close_of_the_open_or_next_window() -> None:
    timetable = MaintenanceWindowTimetable([NIGHTLY])
    assert timetable.infer_manual_data_interval(run_after=at("2026-11-26T02:30:00")) == (
        at("2026-11-26T02:30:00"), at("2026-11-26T04:00:00"))
    assert timetable.infer_manual_data_interval(run_after=at("2026-11-26T12:00:00")) == (
        at("2026-11-26T12:00:00"), at("2026-11-27T04:00:00"))


def test_from_config_reads_the_windows_of_deploy_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "deploy.yaml"
    config.write_text("windows:\n"
                      "  - {name: nightly, cron: '0 2 * * *', duration: 2h, timezone: UTC}\n"
                      "  - {cron: '0 22 * * 6', duration: 90m, timezone: Europe/Berlin}\n")
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(config))
    timetable = MaintenanceWindowTimetable.from_config(lead=timedelta(minutes=30))
    assert timetable.serialize()["windows"][1] == {"cron": "0 22 * * 6", "duration": "1h30m",
                                                   "timezone": "Europe/Berlin", "name": ""}
    assert timetable.summary == "30m before nightly (0 2 * * * UTC, 2h), (0 22 * * 6 Europe/Berlin, 1h30m)"


def test_no_windows_is_an_error_that_says_the_fix() -> None:
    from airflow.exceptions import AirflowTimetableInvalid

    with pytest.raises(AirflowTimetableInvalid, match=(
        r"^MaintenanceWindowTimetable has no maintenance window, so it would never schedule a run: "
        r"add one under windows: in deploy.yaml \(cron, duration, timezone, name\) or pass windows=\[")):
        MaintenanceWindowTimetable([]).validate()


def test_a_window_without_cron_or_duration_is_refused() -> None:
    from airflow.exceptions import AirflowTimetableInvalid

    with pytest.raises(AirflowTimetableInvalid, match="needs 'cron' and 'duration'"):
        MaintenanceWindowTimetable([{"cron": "0 2 * * *"}])


def test_loading_plugins_imports_only_the_plugin_files_and_not_the_ui_page() -> None:
    """Airflow imports each .py of the plugins folder as a top-level module named after the file:
    plugins/.airflowignore keeps the packages out, so no second "steps" or "ui" module appears and a
    process other than the api-server does not build the UI page's app (a fresh interpreter: this
    one has imported the packages already)."""
    probe = ("import sys\nfrom airflow import plugins_manager\n"
             "plugins, errors = plugins_manager._get_plugins()\n"
             "print('plugins:', sorted(p.name for p in plugins if p.name.startswith('schema_deploy')), sorted(errors))\n"
             "print('modules:', sorted(m for m in sys.modules if m in {'steps', 'ui', 'operators', 'callbacks', 'connections',"
             " 'defaults', 'schema_deploy_airflow.ui', '__main__.py'}))\n")
    env = {**os.environ, "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    env.pop("SCHEMA_DEPLOY_UI", None)
    run = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    said = [line for line in run.stdout.splitlines() if line.startswith(("plugins:", "modules:"))]
    assert said == ["plugins: ['schema_deploy', 'schema_deploy_ui'] []", "modules: []"], run.stdout
