#!/usr/bin/env python3
"""One release to N tenant databases: deploy_fleet on LocalExecutor against a serial loop of our CLI.

    make stack-up && .venv/bin/python bench/fleet.py [--targets 50,200] [--parallel 4] [--json]

For each N of `--targets` (default 50; `50,200` runs both and prints the growth ratio), in one
invocation, on N tenants of the local stack (devstack/tenants.py: copies of one template at the
baseline with small data, on the production cluster) made afresh before each measurement:

  serial_loop_s  (a) `python -m schema_deploy apply --db URL` once per tenant, one after the
                 other: what a team scripts today (a process per tenant, no backup, no checks)
  work_s         (b) the sum over members of apply_s + verify_s, as deploy_member measured them
                 inside the run (the fleet record's MemberOutcome): the in-process work W
  ideal_s        work_s / parallel: W spread perfectly over `parallel` members at a time
  wall_s         (c) deploy_fleet end to end (the DAG run's start to end, Airflow's own dates) on
                 a real scheduler with LocalExecutor (devstack/airflow_local.py, as `make airflow`
                 runs it: SQLite, parallelism 4), the staging rehearsal (the tests/gate suite) included
  members_s      the members phase alone: canary's start to waves' end
  staging_s      the run's start to test_gate's end: the fixed cost before any member
  member_s       the sum of each member's whole deploy_member (survey, apply, verify, audit row)

The fleet's waves for the benchmark: canary 1, then one wave of the rest (size 100%), `parallel`
members at a time, halt_after 0, pause 0s, no backup (the CLI loop takes none either). One
Airflow (scheduler, api-server, dag-processor, triggerer) serves every N: the tenants'
connections are its environment, and a smaller N is run with only_targets. Before the first
measurement one uncounted run on 2 tenants warms it up (the first run of a fresh Airflow is several
seconds slower in its first tasks, which would flatter the growth ratio). Ratios are against the
loop measured in the same invocation. Not part of the test suite: about 13 minutes for 50,200.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(REPO / "devstack")]

import httpx  # noqa: E402

import tenants  # noqa: E402
from airflow_env import stack_env  # noqa: E402
from seed import reset  # noqa: E402
from tests.e2e.harness import airflow_services  # noqa: E402

DAG = "deploy_fleet"
DB_PREFIX = "bench_fleet_"
CLOSED = "postgresql://nobody:never-used@127.0.0.1:1/production"  # deploy_fleet never opens production
TARGETS = {"wall_over_ideal": 1.5, "wall_over_serial": 0.5, "growth": 4.4}  # issue 14, item 6
S3_PREFIX = "bench-fleet"


def waves(parallel: int) -> dict:
    return {"canary": 1, "size": "100%", "parallel": parallel, "halt_after": 0, "pause": "0s",
            "approve_after_canary": False}


def config(path: Path, stack: dict[str, str], parallel: int, celery: bool = False) -> Path:
    """The benchmark's deploy.yaml; on Celery the staging and production workers' queues, the members
    on production's (its worker alone gets the tenants' connections, airflow_local --fleet-env)."""
    w = waves(parallel)
    path.write_text(
        f"bundles: {{main: {REPO / 'sql/migrations'}}}\nverify_dir: {REPO / 'sql/verify'}\n"
        f"backup: {{bucket: {stack['BACKUP_BUCKET']}, prefix: {S3_PREFIX}, restore_check: false}}\n"
        "gate:\n  timeout: 5m\n  commands:\n"
        "    - [python, -m, pytest, tests/gate, -q, -p, no:cacheprovider, '--junitxml={junit}']\n"
        "approval: {manual_runs: form, scheduled_runs: required}\n"
        "windows: [{name: always-open, cron: '* * * * *', duration: 1h, timezone: UTC}]\n"
        "fleets:\n  tenants:\n    prefix: tenant_\n"
        f"    waves: {{canary: {w['canary']}, size: \"{w['size']}\", parallel: {w['parallel']}, "
        f"halt_after: {w['halt_after']}, pause: {w['pause']}, approve_after_canary: false}}\n"
        "    backup: none\n"
        + ("    queue: production\nqueues: {staging: staging, production: production, default: staging}\n"
           if celery else ""))
    return path


def ts(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if value else None


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def serial_loop(urls: list[str]) -> float:
    """(a): our CLI's apply, once per tenant, one after the other."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)])}
    t0 = time.monotonic()
    for url in urls:
        run = subprocess.run([sys.executable, "-m", "schema_deploy", "apply", "--db", url, "--migrations",
                              str(REPO / "sql/migrations")], env=env, cwd=REPO, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"serial loop: apply failed on {url.rsplit('/', 1)[-1]}: {run.stderr[-2000:]}")
    return time.monotonic() - t0


def fleet_record(stack: dict[str, str], run_id: str) -> dict:
    """The run's fleet record from S3 (PREFIX/fleets/tenants/runs/<run id>/fleet.json)."""
    from schema_deploy.backups.store import default_s3_client, segment

    os.environ.update({k: v for k, v in stack.items() if k.startswith("AWS_")})
    key = f"{S3_PREFIX}/fleets/tenants/runs/{segment(run_id)}/fleet.json"
    return json.loads(default_s3_client().get_object(Bucket=stack["BACKUP_BUCKET"], Key=key)["Body"].read())


def run_fleet(api: httpx.Client, only: list[str]) -> tuple[dict, dict[str, dict]]:
    """Trigger deploy_fleet, wait for it; (the DAG run, its task instances by id)."""
    run = api.post(f"/api/v2/dags/{DAG}/dagRuns", json={"logical_date": None, "conf": {
        "fleet": "tenants", "only_targets": ",".join(only)}})
    run.raise_for_status()
    path = f"/api/v2/dags/{DAG}/dagRuns/{run.json()['dag_run_id']}"
    deadline = time.monotonic() + 1800
    while (state := (got := api.get(path).json())["state"]) not in ("success", "failed"):
        if time.monotonic() > deadline:
            raise SystemExit(f"{DAG}: run not finished after 1800 s")
        time.sleep(1)
    tis = api.get(f"{path}/taskInstances", params={"limit": 100}).json()["task_instances"]
    return {**got, "state": state}, {t["task_id"]: t for t in tis}


def measure(n: int, names: list[str], parallel: int, stack: dict[str, str], staging: str,
            api: httpx.Client, executor: str = "local") -> dict:
    prod = stack["PRODUCTION_DATABASE_URL"]
    say(f"N={n}: (a) serial loop of `schema_deploy apply` over {n} fresh tenants ...")
    made = tenants.create(prod, len(names), database_prefix=DB_PREFIX)
    loop_s = serial_loop([made[name] for name in names[:n]])
    say(f"N={n}: serial loop {loop_s:.1f} s; fresh tenants and staging, then deploy_fleet (parallel {parallel}) ...")
    tenants.create(prod, len(names), database_prefix=DB_PREFIX)
    reset(staging, seed=9, log=lambda _: None)
    run, tis = run_fleet(api, [] if n == len(names) else names[:n])
    start, end = ts(run["start_date"]), ts(run["end_date"])
    canary, rest, gate = tis.get("canary", {}), tis.get("waves", {}), tis.get("test_gate", {})
    record = fleet_record(stack, run["dag_run_id"])
    members = record["members"]
    work = sum(m["apply_s"] + m["verify_s"] for m in members)
    result = {
        "targets": n, "parallel": parallel, "executor": executor, "state": run["state"],
        "wall_s": round((end - start).total_seconds(), 2),
        "members_s": round((ts(rest.get("end_date")) - ts(canary.get("start_date"))).total_seconds(), 2)
        if rest.get("end_date") and canary.get("start_date") else None,
        "staging_s": round((ts(gate["end_date"]) - start).total_seconds(), 2) if gate.get("end_date") else None,
        "serial_loop_s": round(loop_s, 2), "work_s": round(work, 2), "ideal_s": round(work / parallel, 2),
        "member_s": round(sum(m["seconds"] for m in members), 2),
        "failed": sum(m["state"] == "failed" for m in members),
        "counts": record["counts"], "waves": waves(parallel),
        "tasks_s": {t: round((ts(ti["end_date"]) - ts(ti["start_date"])).total_seconds(), 2)
                    for t, ti in tis.items() if ti.get("start_date") and ti.get("end_date")},
    }
    result["ratios"] = {
        "wall_over_ideal": round(result["wall_s"] / max(result["ideal_s"], 0.01), 2),
        "wall_over_serial": round(result["wall_s"] / max(loop_s, 0.01), 2),
        "members_over_ideal": round((result["members_s"] or 0) / max(result["ideal_s"], 0.01), 2),
    }
    say(f"N={n}: deploy_fleet {run['state']} in {result['wall_s']} s (members {result['members_s']} s)")
    return result


def line(r: dict) -> str:
    q = r["ratios"]
    return (f"N={r['targets']:>4} parallel {r['parallel']} ({r['executor']}): run {r['state']}, failed {r['failed']}; "
            f"wall {r['wall_s']} s (staging rehearsal {r['staging_s']} s, members {r['members_s']} s); "
            f"serial loop {r['serial_loop_s']} s; work W {r['work_s']} s (whole members {r['member_s']} s); "
            f"ideal W/P {r['ideal_s']} s\n"
            f"        wall/ideal {q['wall_over_ideal']} (target <= {TARGETS['wall_over_ideal']}), "
            f"members/ideal {q['members_over_ideal']}, wall/serial {q['wall_over_serial']} "
            f"(target <= {TARGETS['wall_over_serial']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default="50", help="tenant counts, comma-separated (default 50; e.g. 50,200)")
    parser.add_argument("--parallel", type=int, default=4, help="members at a time (waves.parallel, default 4)")
    parser.add_argument("--celery", action="store_true", help="CeleryExecutor on the stack's two workers (needs Redis)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    executor = "celery" if args.celery else "local"
    try:
        sizes = sorted({int(v) for v in args.targets.split(",") if v.strip()})
    except ValueError:
        parser.error(f"--targets {args.targets!r}: give tenant counts, e.g. 50 or 50,200")
    if not sizes or sizes[0] < 2 or args.parallel < 1:
        parser.error("--targets needs counts of at least 2 (the canary and one more), --parallel at least 1")
    stack = stack_env()
    names = tenants.names(sizes[-1])
    staging = tenants.with_database(stack["STAGING_DATABASE_URL"], f"{DB_PREFIX}staging")
    say(f"fleet waves for the benchmark: {waves(args.parallel)}, backup none")
    made = tenants.create(stack["PRODUCTION_DATABASE_URL"], len(names), database_prefix=DB_PREFIX)
    reset(staging, seed=9, log=lambda _: None)
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
            cfg = config(Path(tmp) / "deploy.yaml", stack, args.parallel, celery=args.celery)
            members = Path(tmp) / "fleet.env"  # airflow_local --fleet-env: the members' connections
            members.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in tenants.conn_env(made).items()))
            with contextlib.redirect_stdout(sys.stderr), \
                    airflow_services(Path(tmp) / "airflow", cfg, {"staging": staging, "production": CLOSED},
                                     executor=executor, fleet_env=members) as services, \
                    httpx.Client(base_url=services["url"], timeout=60) as api:
                token = api.post("/auth/token", json={"username": "admin", "password": services["password"]})
                api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
                deadline = time.monotonic() + 180
                while api.get(f"/api/v2/dags/{DAG}").status_code != 200 and time.monotonic() < deadline:
                    time.sleep(2)
                api.patch(f"/api/v2/dags/{DAG}", json={"is_paused": False})
                warm, _ = run_fleet(api, names[:2])
                say(f"warm-up run on 2 tenants (not counted): {warm['state']}")
                for n in sizes:
                    runs.append(measure(n, names, args.parallel, stack, staging, api, executor))
    finally:
        tenants.drop(stack["PRODUCTION_DATABASE_URL"], DB_PREFIX)
        tenants.drop(stack["STAGING_DATABASE_URL"], DB_PREFIX)
    result: dict = runs[0] if len(runs) == 1 else {"runs": runs}
    if len(runs) > 1:
        result["growth"] = {"from": runs[0]["targets"], "to": runs[-1]["targets"],
                            "wall": round(runs[-1]["wall_s"] / runs[0]["wall_s"], 2),
                            "members": round(runs[-1]["members_s"] / runs[0]["members_s"], 2),
                            "target": TARGETS["growth"]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"waves: {waves(args.parallel)}, backup none")
        for r in runs:
            print(line(r))
        if len(runs) > 1:
            g = result["growth"]
            print(f"growth wall({g['to']})/wall({g['from']}) {g['wall']} (target <= {g['target']}); "
                  f"members phase {g['members']}")
    return 0 if all(r["state"] == "success" and not r["failed"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
