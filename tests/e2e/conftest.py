"""Fixtures of the DAG end-to-end tests: fresh target databases and a migrated Airflow home."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import drop_database, with_database
from tests.e2e.harness import REPO, Zygote


@pytest.fixture
def targets(stack_env: dict[str, str], seeded):
    """A fresh staging and production database, at the baseline with identical demo data."""
    name = f"t_dag_{uuid.uuid4().hex[:8]}"
    urls = {env.lower(): with_database(stack_env[f"{env}_DATABASE_URL"], name) for env in ("STAGING", "PRODUCTION")}
    for url in urls.values():
        seeded.reset(url, seed=9)
    yield urls
    for env in ("STAGING", "PRODUCTION"):
        drop_database(stack_env[f"{env}_DATABASE_URL"], name)


@pytest.fixture(scope="session")
def migrated_home(tmp_path_factory) -> Path:
    """An Airflow home with its metadata database migrated once; each run copies it. Under xdist the
    pytest processes share one (made by the first, under a file lock, in their common temp folder)."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    home = shared / "airflow-template"
    with FileLock(str(shared / "airflow-template.lock")):
        if (home / "migrated").exists():
            return home
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir()
        config = home / "deploy.yaml"
        config.write_text("")
        run = subprocess.run([sys.executable, str(REPO / "devstack/run_deploy.py"), "--home", str(home),
                              "--config", str(config), "--migrate-only"], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        (home / "migrated").touch()
    return home


@pytest.fixture(scope="session")
def dag_zygote(tmp_path_factory, migrated_home: Path, stack_env: dict[str, str]) -> Iterator[Zygote]:
    """This pytest process's warm interpreter for the DAG runs (tests/e2e/zygote.py), started by the
    first DAG test it runs."""
    zygote = Zygote(tmp_path_factory.mktemp("zygote") / "airflow", migrated_home, stack_env)
    yield zygote
    zygote.close()
