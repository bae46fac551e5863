"""`make demo-fleet`: one release to a fleet of tenant databases through the real `deploy_fleet` DAG.

1. Staging is recreated at the baseline with the demo data (demo scale: its verification asks
   the planner to use the new indexes, which it does not on a tiny table).
2. N tenants (`--tenants`, default 20) on the production cluster (devstack/tenants.py): copies
   of one template at the baseline with the same small deterministic data; orphan rows are
   planted in one of them (`--orphans-in`, default the middle one: tenant_10 of 20), so the
   Epic 5 foreign key cannot be added there.
3. `deploy_fleet` runs once under `dag.test()` (devstack/run_deploy.py --dag-id deploy_fleet)
   with devstack/demo-fleet.yaml: the `prefix: tenant_` fleet, canary 1, waves of 25 %,
   4 members at a time, a backup each, and `halt_after: 1`, so the planted failure is tolerated:
   the brake goes on, the later waves run, and the run ends failed with that member's details.
4. A report: the release, the waves and their members, every member's outcome (state, wave,
   seconds, first error line), the brake's decision after each wave, this run's Slack
   messages, the fleet record's S3 URI, timings.

Exits 0 when the run went as planned (the planted tenant failed alone at its prechecks, every
other tenant is done, the brake never halted; with `--orphans-in none`: every tenant done),
else 1. The tenants stay for inspection; `python devstack/tenants.py drop` removes them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [p for p in (str(REPO / "plugins"), str(REPO / "devstack")) if p not in sys.path]

import tenants as fleet_dbs  # noqa: E402
from airflow_env import stack_env  # noqa: E402
from demo import PROGRESS, run_dag, say  # noqa: E402
from seed import reset  # noqa: E402

CONFIG = REPO / "devstack" / "demo-fleet.yaml"
FLEET = "tenants"
STAGING_TASKS = ("preflight_bundle", "preflight_staging", "preflight", "apply_staging", "test_gate")
MEMBER_TASKS = ("fleet_members", "canary", "waves", "fleet_record")
MARKERS = (*PROGRESS, "fleet tenants wave", " failed: ", "fleet record of")
PRECHECK_ERROR = "data prechecks failed"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tenants", type=int, default=20, help="how many tenant databases (default 20)")
    p.add_argument("--orphans-in", metavar="NAME", help="the tenant to plant orphan rows in (default the middle "
                   "one, never the canary); 'none' plants none")
    p.add_argument("--work", type=Path, help="the run's folder (default .devstack/demo-fleet)")
    p.add_argument("--staging-db", metavar="NAME", help="rehearse on this database of the staging cluster "
                   "(recreated; default the stack's staging database)")
    p.add_argument("--database-prefix", default="", metavar="P", help="name the tenants' databases P<conn id> "
                   "(default: the connection id itself); the tests use their own")
    args = p.parse_args(argv)
    names = fleet_dbs.names(max(args.tenants, 1))
    if args.tenants < 2 and args.orphans_in != "none":
        p.error("--tenants must be at least 2 when a tenant gets orphan rows (the canary is the first); "
                "or pass --orphans-in none")
    args.orphans_in = args.orphans_in or names[args.tenants // 2]
    if args.orphans_in not in ("none", *names):
        p.error(f"--orphans-in {args.orphans_in}: not one of {names[0]} … {names[-1]} (or none)")
    return args


def fleet_document(uri: str, stack: dict[str, str]) -> dict:
    """The fleet record deploy_fleet kept in S3."""
    from schema_deploy.backups.store import default_s3_client, parse_s3_uri

    os.environ.update({k: v for k, v in stack.items() if k.startswith("AWS_")})
    bucket, key = parse_s3_uri(uri)
    return json.loads(default_s3_client().get_object(Bucket=bucket, Key=key)["Body"].read())


def slack_lines(path: Path, start: int, release_uri: str) -> list[str]:
    """This run's Slack messages: those since `start` that name its release (all of them do)."""
    lines = path.read_text().splitlines()[start:] if path.exists() else []
    texts = [json.loads(line).get("text", "").replace("\n", " · ") for line in lines]
    return [t for t in texts if release_uri and release_uri in t]


def short(text: str) -> str:
    """A line for the terminal: the bundle's absolute path made relative to the checkout."""
    return text.replace(f"{REPO}/devstack/../", "").replace(f"{REPO}/", "")


def as_planned(document: dict | None, planted: str) -> tuple[bool, str]:
    """Did the run go as the demo plans it? (ok, why not)."""
    if not document:
        return False, "no fleet record (a task before the members failed: read the log)"
    members = {m["member"]: m for m in document["members"]}
    others = [m for name, m in members.items() if name != planted]
    if any(b["halt"] for b in document["brakes"]):
        return False, "the brake halted the run"
    if bad := [m["member"] for m in others if m["state"] != "done"]:
        return False, f"not done: {', '.join(bad)}"
    if planted != "none" and (members[planted]["state"] != "failed"
                              or PRECHECK_ERROR not in members[planted]["error"]):
        return False, f"{planted} did not fail at its prechecks ({members[planted]['state']})"
    return True, ""


def report(result: dict, document: dict | None, record: dict, slack: list[str], planted: str,
           timings: dict[str, float]) -> str:
    tasks = result.get("tasks") or {}

    def took(task: str) -> str:
        s = (tasks.get(task) or {}).get("seconds")
        return f"{task} {(tasks.get(task) or {}).get('state') or 'not run'}" + (f" {s:.1f} s" if s is not None else "")

    ok, why = as_planned(document, planted)
    verdict = ("as planned: " + (f"{planted} failed alone, the others are done" if planted != "none" else "all done")
               if ok else f"NOT as planned: {why}")
    out = [f"deploy_fleet on the local stack — fleet {FLEET}, run {result.get('run_id')}: {result.get('state')} "
           f"({verdict})", ""]
    if not document:
        out += ["tasks: " + "; ".join(took(t) for t in (*STAGING_TASKS, *MEMBER_TASKS))]
        return "\n".join(out)
    rel, s = document["release"], document["settings"]
    out += [f"release    {rel['short']}  {rel['uri']}",
            "rehearsal  " + "; ".join(took(t) for t in STAGING_TASKS),
            f"settings   canary {s['canary']}, size {s['size']}, parallel {s['parallel']}, halt_after "
            f"{s['halt_after']}, pause {s['pause_s']:g} s, backup {s['backup']} (devstack/demo-fleet.yaml)", ""]
    brakes = {b["wave"]: b for b in document["brakes"]}
    waves = document["waves"]
    out.append(f"Waves ({len(waves)}; tasks: {took('canary')}; {took('waves')})")
    for i, wave in enumerate(waves):
        b = brakes.get(i)
        decision = "not reached" if b is None else ("HALT" if b["halt"] else "continue")
        label = f"wave {i + 1}" + (" (canary)" if i == 0 and s["canary"] else "")
        out.append(f"  {label:<16} {', '.join(wave)}")
        out.append(f"  {'':<16} brake: {decision}" + (f" — {b['reason'].split(' (')[0]}" if b else ""))
    out += ["", "Members"]
    width = max(len(m["member"]) for m in document["members"])
    out.append(f"  {'member':<{width}}  {'state':<13} wave  seconds  apply_s  verify_s  first error line")
    for m in sorted(document["members"], key=lambda m: m["member"]):
        out.append(f"  {m['member']:<{width}}  {m['state']:<13} {m['wave'] + 1:>4}  {m['seconds']:>7.2f}  "
                   f"{m['apply_s']:>7.2f}  {m['verify_s']:>8.2f}  {short(m.get('error') or m.get('reason') or '')}"[:240])
    counts = ", ".join(f"{k} {v}" for k, v in document["counts"].items())
    waves_told = sum(t.startswith("Fleet wave finished") for t in slack)
    summaries = sum(t.startswith("Fleet deployment finished") for t in slack)
    out += [f"  outcome: {document['outcome']} ({counts})", "",
            f"Slack (stand-in): {len(slack)} messages this run: {waves_told} wave messages, {summaries} summary, "
            f"{len(slack) - waves_told - summaries} from the rehearsal and the failure callback"]
    out += [f"  {short(t)[:200]}" for t in slack]
    work_s = sum(m["apply_s"] + m["verify_s"] for m in document["members"])
    out += ["", f"fleet record  {record.get('uri')}  sha256 {record.get('sha256')}",
            f"timings       total {timings['total']:.0f} s: databases {timings['setup']:.1f} s, deploy_fleet "
            f"{timings['dag']:.0f} s (dag.test, Airflow start-up included); members' apply + verify {work_s:.1f} s",
            f"full Airflow log: {timings['log']}",
            "the tenants stay: psql them (production cluster), or drop them with `.venv/bin/python "
            "devstack/tenants.py drop`"]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = stack_env()
    work = args.work or Path(stack.get("DEVSTACK_DIR", REPO / ".devstack")) / "demo-fleet"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    staging = stack["STAGING_DATABASE_URL"]
    if args.staging_db:
        staging = fleet_dbs.with_database(staging, args.staging_db)
    say("demo-fleet: recreating staging at the baseline with demo data")
    reset(staging, seed=42, log=lambda _: None)
    say(f"demo-fleet: {args.tenants} tenants on the production cluster")
    members = fleet_dbs.create(stack["PRODUCTION_DATABASE_URL"], args.tenants, database_prefix=args.database_prefix,
                               log=lambda m: say("  " + m))
    if args.orphans_in != "none":
        rows = fleet_dbs.plant_orphans(members[args.orphans_in])
        say(f"  {rows} orphan rows planted in {args.orphans_in} (experiment_assignments → no experiment)")
    setup_s = time.monotonic() - t0
    slack_file = Path(stack["SLACK_MESSAGES_FILE"])
    slack_start = len(slack_file.read_text().splitlines()) if slack_file.exists() else 0
    say(f"demo-fleet: running deploy_fleet with {CONFIG.relative_to(REPO)}")
    t1 = time.monotonic()
    _code, result, log_path = run_dag(work, config=CONFIG, progress=MARKERS,
                                      args=("--dag-id", "deploy_fleet", "--conf", json.dumps({"fleet": FLEET})),
                                      env={**os.environ, **fleet_dbs.conn_env(members),
                                           "AIRFLOW_CONN_STAGING_DB": staging})
    dag_s = time.monotonic() - t1
    record = ((result.get("tasks") or {}).get("fleet_record") or {}).get("xcom") or {}
    document = fleet_document(record["uri"], stack) if record.get("uri") else None
    timings = {"total": time.monotonic() - t0, "setup": setup_s, "dag": dag_s, "log": log_path}
    slack = slack_lines(slack_file, slack_start, (document or {}).get("release", {}).get("uri", ""))
    print(report(result, document, record, slack, args.orphans_in, timings))
    ok, why = as_planned(document, args.orphans_in)
    if not ok:
        say(f"demo-fleet: the run did not go as planned ({why}); read {log_path}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
