"""Airflow configuration for DAG tests: a private AIRFLOW_HOME, this repo's dags/ and plugins/.

Set before anything imports airflow (this conftest is loaded before the tests here).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_home = Path(tempfile.mkdtemp(prefix="schema-deploy-airflow-"))
os.environ.setdefault("AIRFLOW_HOME", str(_home))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(REPO / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(REPO / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_home / 'airflow.db'}")
os.environ.setdefault("SCHEMA_DEPLOY_CONFIG", str(REPO / "deploy.yaml"))
