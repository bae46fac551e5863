"""devstack/run_deploy.py as a misrouted Celery deployment would run a task: the DAG parsed with
another deploy.yaml than the worker reads (its queues: come from $PARSE_CONFIG), and the worker
without the connections named in $DROP_CONNECTIONS (comma-separated AIRFLOW_CONN_* names).

So one `dag.test()` shows what a worker of one environment says when it is handed another's task.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "devstack"), str(REPO / "plugins"), str(REPO)]

import run_deploy  # noqa: E402
from schema_deploy.config import settings  # noqa: E402
from schema_deploy_airflow import steps  # noqa: E402


def main() -> int:
    dropped = [name for name in os.environ.pop("DROP_CONNECTIONS", "").split(",") if name]
    for name in dropped:
        os.environ.pop(name, None)
    parsed = settings.load(os.environ.pop("PARSE_CONFIG"), must_exist=True)
    steps.queue = parsed.queue  # what the DAG file's queue= reads at parse time (the DAG processor's file)
    stack_env = run_deploy.airflow_env

    def without(*args, **kwargs) -> dict[str, str]:
        env = stack_env(*args, **kwargs)
        return {k: v for k, v in env.items() if k not in dropped}

    run_deploy.airflow_env = without
    return run_deploy.main()


if __name__ == "__main__":
    sys.exit(main())
