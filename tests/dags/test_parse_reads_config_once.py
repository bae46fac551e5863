"""Parsing a DAG file reads deploy.yaml once, however many tasks ask it for their queue."""
from __future__ import annotations

from pathlib import Path

import pytest

from schema_deploy.config import settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("dag_file", ["deploy_schema.py", "deploy_fleet.py", "rollback_schema.py"])
def test_a_dag_file_parse_reads_deploy_yaml_once(dag_file: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.dag_processing.dagbag import DagBag

    loads: list[str] = []
    real = settings.load
    monkeypatch.setattr(settings, "load", lambda path=None, **kw: loads.append(str(path)) or real(path, **kw))
    settings._load_version.cache_clear()
    bag = DagBag(dag_folder=str(REPO / "dags" / dag_file))
    assert bag.import_errors == {} and len(bag.dags) == 1
    assert loads == [str(settings.config_path())]


def test_a_changed_file_is_read_again_and_an_unchanged_one_is_not(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "deploy.yaml"
    path.write_text("slack: {channel: '#a'}\n")
    monkeypatch.setenv("SCHEMA_DEPLOY_CONFIG", str(path))
    settings._load_version.cache_clear()
    first = settings.load_current()
    assert settings.load_current() is first and first.slack_channel == "#a"
    path.write_text("slack: {channel: '#b'}\n")  # the same size, written at once: its bytes decide
    assert settings.load_current().slack_channel == "#b"
