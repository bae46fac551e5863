#!/usr/bin/env python3
"""What one fleet member costs in process, and what running members side by side buys on this machine.

    make stack-up && .venv/bin/python bench/fleet_member.py [--members 40] [--parallel 4] [--json]

No Airflow: `fleet.deploy_member` called directly, the way the `waves` task calls it. On 2 × N + 1
tenants of the local stack (devstack/tenants.py, small data, the production cluster), with a
fleet release frozen once from a rehearsal database on staging:

  serial     N members one after the other on this thread
  parallel   N other members through `fleet.run_wave` on `--parallel` threads

For each: the members' throughput (members a second over the phase's wall), and per member the
whole deploy_member, its W part (apply_s + verify_s, as the fleet benchmark counts W) and the
rest (survey: ledger, fingerprint, plan, prechecks; the audit row). `speedup` is the parallel
throughput over the serial one, measured in the same run; `w_inflation` is a member's W with
`--parallel` threads over its W alone. bench/fleet.py's `ideal_s` is W (as measured inside its
run) / parallel: when the machine is saturated, W inflates by as much as parallel buys nothing,
and ideal_s is then the serial work, not a quarter of it. About a minute at the defaults.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "plugins"), str(REPO / "devstack")]

import tenants  # noqa: E402
from airflow_env import stack_env  # noqa: E402
from seed import reset  # noqa: E402

DB_PREFIX = "bench_member_"


def summary(outcomes: list, wall: float) -> dict:
    whole = [o.seconds for o in outcomes]
    work = [o.apply_s + o.verify_s for o in outcomes]
    return {"members": len(outcomes), "wall_s": round(wall, 2), "members_per_s": round(len(outcomes) / wall, 2),
            "member_s": round(statistics.mean(whole), 4), "work_s": round(statistics.mean(work), 4),
            "rest_s": round(statistics.mean(w - x for w, x in zip(whole, work)), 4),
            "states": sorted({o.state for o in outcomes})}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=40, help="members in each phase (default 40)")
    parser.add_argument("--parallel", type=int, default=4, help="threads in the parallel phase (default 4)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    if args.members < 2 or args.parallel < 2:
        parser.error("--members and --parallel need at least 2")
    stack = stack_env()
    for key, value in stack.items():
        if key.startswith("AWS_"):
            os.environ[key] = value

    from schema_deploy.backups.store import default_s3_client
    from schema_deploy.config.settings import DeployConfig
    from schema_deploy.pipeline import Deployment, RunInfo, Store, Target, deploy, fleet
    from schema_deploy.pipeline.fleet.members import Member

    made = tenants.create(stack["PRODUCTION_DATABASE_URL"], 2 * args.members + 1, database_prefix=DB_PREFIX)
    rehearsal = tenants.with_database(stack["STAGING_DATABASE_URL"], f"{DB_PREFIX}staging")
    try:
        reset(rehearsal, seed=tenants.SEED, scale=tenants.SCALE, log=lambda _: None)
        cfg = DeployConfig(bundles=(("main", REPO / "sql" / "migrations"),), verify_dir=REPO / "sql" / "verify")
        store = Store(default_s3_client(), f"s3://{stack['BACKUP_BUCKET']}/bench-member-{uuid.uuid4().hex[:8]}",
                      {"ServerSideEncryption": "AES256"})
        ctx = Deployment(cfg=cfg, store=store, run=RunInfo(run_id=f"bench__{uuid.uuid4().hex[:6]}",
                                                           triggered_by="bench"))
        checked = deploy.preflight_bundle(ctx, None)
        pre = fleet.fleet_preflight(ctx, checked, deploy.preflight_production(
            ctx, Target("staging", "staging", rehearsal), checked))
        members = [Member(name, "member", url) for name, url in made.items()]

        def one(m: Member):
            return fleet.deploy_member(ctx, m, pre, fleet="bench", backup=False, dry_run=False)

        one(members[0])  # warm-up, not counted: the release's first load, imports
        t0 = time.monotonic()
        serial = [one(m) for m in members[1:args.members + 1]]
        serial_wall = time.monotonic() - t0
        t0 = time.monotonic()
        parallel = fleet.run_wave(ctx, members[args.members + 1:], parallel=args.parallel, fn=one)
        parallel_wall = time.monotonic() - t0
    finally:
        tenants.drop(stack["PRODUCTION_DATABASE_URL"], DB_PREFIX)
        tenants.drop(stack["STAGING_DATABASE_URL"], DB_PREFIX)
    s, p = summary(serial, serial_wall), summary(parallel, parallel_wall)
    result = {"cpus": os.cpu_count(), "parallel": args.parallel, "serial": s, "threads": p,
              "ratios": {"speedup": round(p["members_per_s"] / s["members_per_s"], 2),
                         "w_inflation": round(p["work_s"] / s["work_s"], 2),
                         "rest_over_member": round(s["rest_s"] / s["member_s"], 2)}}
    if args.json:
        print(json.dumps(result))
    else:
        for label, r in (("serial", s), (f"{args.parallel} threads", p)):
            print(f"{label:>10}: {r['members']} members in {r['wall_s']} s ({r['members_per_s']}/s); a member "
                  f"{r['member_s']} s = W {r['work_s']} + rest {r['rest_s']}; {', '.join(r['states'])}")
        print(f"speedup {result['ratios']['speedup']} on {os.cpu_count()} CPUs; W inflation "
              f"{result['ratios']['w_inflation']}")
    return 0 if {"done"} == set(s["states"]) | set(p["states"]) else 1


if __name__ == "__main__":
    sys.exit(main())
