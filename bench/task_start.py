#!/usr/bin/env python3
"""How long a task takes to start: CeleryExecutor (two workers, Redis) against LocalExecutor.

    make stack-up redis && .venv/bin/python bench/task_start.py [--json]

For each executor, one after the other on this machine: fresh staging and production
databases at the baseline, Airflow's services started by devstack/airflow_local.py (as
`make airflow [EXECUTOR=celery]` does), one deploy_schema run triggered over the REST API
(no approval, window skipped), and, from the task instances Airflow recorded:

  pickup    start_date - queued_when: the executor hands the task to a process that runs it
            (Local: a fork of the executor's worker; Celery: Redis, then a worker's fork)
  handoff   start_date - the latest end_date of its upstream tasks: everything between one
            task ending and the next one running (scheduler loop + pickup + task start-up)
  shortest  the shortest task's end_date - start_date: a task that does next to nothing, so its
            own start-up and wrap-up (process, DAG parse, XCom) on that executor
  work      end_date - start_date, summed: the run's own work

Prints medians per executor and the ratios celery/local (the baseline is the LocalExecutor
run of the same invocation). Not part of the test suite: about 5 minutes.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(REPO / "devstack")]

import httpx  # noqa: E402

from airflow_env import stack_env  # noqa: E402
from seed import reset  # noqa: E402
from tests.conftest import drop_database, with_database  # noqa: E402
from tests.e2e.harness import airflow_services  # noqa: E402

DAG = "deploy_schema"


def ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def measure(executor: str, stack: dict[str, str], base: Path) -> dict:
    name = f"bench_start_{uuid.uuid4().hex[:8]}"
    urls = {env: with_database(stack[f"{env.upper()}_DATABASE_URL"], name) for env in ("staging", "production")}
    config = base / executor / "settings" / "deploy.yaml"
    config.parent.mkdir(parents=True)
    # Celery: relative paths name each worker's copy of the project; Local: this checkout.
    folders = ("bundles: {main: ../sql/migrations}\nverify_dir: ../sql/verify\n" if executor == "celery" else
               f"bundles: {{main: {REPO / 'sql/migrations'}}}\nverify_dir: {REPO / 'sql/verify'}\n")
    config.write_text(
        folders
        + f"backup: {{bucket: {stack['BACKUP_BUCKET']}, prefix: bench-start, restore_check: true}}\n"
        "gate:\n  timeout: 5m\n  commands:\n"
        "    - [python, -m, pytest, tests/gate, -q, -p, no:cacheprovider, '--junitxml={junit}']\n"
        "approval: {manual_runs: form, scheduled_runs: required}\n"
        "windows: [{name: always-open, cron: '* * * * *', duration: 1h, timezone: UTC}]\n"
        "queues: {staging: staging, production: production, default: staging}\n")
    try:
        for url in urls.values():
            reset(url, seed=9, log=lambda _msg: None)
        with airflow_services(base / executor / "airflow", config, urls, executor=executor) as services, \
                httpx.Client(base_url=services["url"], timeout=30) as api:
            token = api.post("/auth/token", json={"username": "admin", "password": services["password"]})
            api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
            deadline = time.monotonic() + 180
            while api.get(f"/api/v2/dags/{DAG}").status_code != 200 and time.monotonic() < deadline:
                time.sleep(2)
            api.patch(f"/api/v2/dags/{DAG}", json={"is_paused": False})
            run = api.post(f"/api/v2/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": {
                "require_approval": False, "skip_window": True, "skip_window_reason": "benchmark"}}).json()
            path = f"/api/v2/dags/{DAG}/dagRuns/{run['dag_run_id']}"
            deadline = time.monotonic() + 600
            while (state := api.get(path).json()["state"]) not in ("success", "failed"):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{executor}: run not finished after 600 s")
                time.sleep(2)
            tis = {t["task_id"]: t for t in api.get(f"{path}/taskInstances", params={"limit": 100}).json()["task_instances"]}
            upstream: dict[str, list[str]] = {}
            for task in api.get(f"/api/v2/dags/{DAG}/tasks").json()["tasks"]:
                for down in task["downstream_task_ids"]:
                    upstream.setdefault(down, []).append(task["task_id"])
    finally:
        for env in ("STAGING", "PRODUCTION"):
            drop_database(stack[f"{env}_DATABASE_URL"], name)
    ran = {t: ti for t, ti in tis.items() if ti["start_date"] and ti["end_date"] and ti["queued_when"]}
    pickup = [(ts(ti["start_date"]) - ts(ti["queued_when"])).total_seconds() for ti in ran.values()]
    handoff = []
    for task_id, ti in ran.items():
        ends = [ts(tis[u]["end_date"]) for u in upstream.get(task_id, []) if tis.get(u, {}).get("end_date")]
        if ends:
            handoff.append((ts(ti["start_date"]) - max(ends)).total_seconds())
    return {"executor": executor, "state": state, "tasks": len(ran),
            "pickup_median_s": round(statistics.median(pickup), 2),
            "handoff_median_s": round(statistics.median(handoff), 2),
            # The shortest task does next to nothing: its duration is a task's own start-up and wrap-up.
            "shortest_task_s": round(min((ts(t["end_date"]) - ts(t["start_date"])).total_seconds()
                                         for t in ran.values()), 2),
            "work_s": round(sum((ts(t["end_date"]) - ts(t["start_date"])).total_seconds() for t in ran.values()), 1),
            "hosts": sorted({f"{ti['queue']}@{ti['hostname']}" for ti in ran.values()})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    stack = stack_env()
    with tempfile.TemporaryDirectory(prefix="bench-start-") as tmp:
        local = measure("local", stack, Path(tmp))
        celery = measure("celery", stack, Path(tmp))
    result = {"local": local, "celery": celery,
              "pickup_ratio": round(celery["pickup_median_s"] / max(local["pickup_median_s"], 0.01), 2),
              "handoff_ratio": round(celery["handoff_median_s"] / max(local["handoff_median_s"], 0.01), 2),
              "shortest_task_ratio": round(celery["shortest_task_s"] / max(local["shortest_task_s"], 0.01), 2)}
    if args.json:
        print(json.dumps(result))
    else:
        for r in (local, celery):
            print(f"{r['executor']:>7}: run {r['state']}, {r['tasks']} tasks; median pickup {r['pickup_median_s']} s, "
                  f"median handoff {r['handoff_median_s']} s, shortest task {r['shortest_task_s']} s, task work {r['work_s']} s; {', '.join(r['hosts'])}")
        print(f"celery/local: pickup x{result['pickup_ratio']}, handoff x{result['handoff_ratio']}, "
              f"shortest task x{result['shortest_task_ratio']}")
    return 0 if local["state"] == celery["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
