"""`make demo`: the Epic 5 deployment through the real `deploy_schema` DAG, on the local stack.

1. Both stack databases are recreated at the baseline with the same demo data.
2. `deploy_schema` runs once under `dag.test()` (devstack/run_deploy.py) with
   devstack/demo-deploy.yaml, whose two demo-only settings are said out loud:
   * the approval is REQUIRED and is answered by a scripted approver, `demo-approver`,
     through Airflow's REST route (the same call the UI's Approve button makes);
   * the maintenance window is one minute long and opens every minute, so the run
     visibly waits (deferred) for the next one instead of for 02:00 UTC.
   Production runs as expand → backfill → contract: the log shows the example's backfill
   (sql/migrations, after Epic 5) with its progress and the health gate's decisions.
3. A report: migrations, timings per task, backup, gate, approval, window, the backfill's
   figures, verification with the plan's success criteria, and where the Slack messages are.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "devstack")]

from airflow_env import stack_env  # noqa: E402
from schema_deploy.redact import scrub  # noqa: E402
from seed import reset  # noqa: E402

CONFIG = REPO / "devstack" / "demo-deploy.yaml"
APPROVER = "demo-approver"
LOGGER_TAIL = re.compile(r"\s+\[[\w.]+\]\s+(loc=\S+.*)?$|\s+map_index=-1.*$")
PROGRESS = ("[DAG TEST] starting task_id=", "frozen:", "differs from release", "[demo approver]", "waiting for window",
            "maintenance window open", "lock not granted", "the expand phase ends", "backfill 2", "health gate",
            "success criterion", "Task failed with exception", "DagRun Finished")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_dag(work: Path, *, config: Path = CONFIG, args: tuple[str, ...] = ("--approve-as", APPROVER),
            env: dict[str, str] | None = None, progress: tuple[str, ...] = PROGRESS) -> tuple[int, dict, Path]:
    """Run a DAG with devstack/run_deploy.py (deploy_schema unless `args` name another with --dag-id);
    show the milestones as they happen, keep the full log in a file."""
    log_path, result_path = work / "run.log", work / "result.json"
    result_path.unlink(missing_ok=True)
    cmd = [sys.executable, str(REPO / "devstack/run_deploy.py"), "--home", str(work / "airflow"),
           "--config", str(config), "--result", str(result_path), *args]
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO, env=env)
        for line in proc.stdout:
            log.write(line)
            if any(marker in line for marker in progress):
                text = line.split("] ", 1)[-1] if line[:4].isdigit() else line
                text = LOGGER_TAIL.sub("", text.strip()).replace("[DAG TEST] starting task_id=", "task ")
                say("  " + scrub(text)[:260])
        code = proc.wait()
    result = json.loads(result_path.read_text()) if result_path.exists() else {"tasks": {}}
    return code, result, log_path


def report(result: dict, log_path: Path, slack_file: Path, slack_start: int, seconds: float) -> str:
    """The pipeline's report of the run, from the DAG's task results mapped to step names."""
    from schema_deploy.pipeline.report import render
    from schema_deploy_airflow.task_ids import DEPLOY_STEPS as TASK_STEPS

    tasks = result["tasks"]
    steps = {**TASK_STEPS, "audit_record": "record"}
    results = {step: (tasks.get(task) or {}).get("xcom") for task, step in steps.items()}
    results["approval"] = ((tasks.get("approve_production") or {}).get("xcom_keys") or {}).get("approval")
    states = {step: (tasks.get(task) or {}).get("state") for task, step in steps.items()}
    took = {step: (tasks.get(task) or {}).get("seconds") for task, step in steps.items()}
    out = render(f"deploy_schema on the local stack — run {result.get('run_id')}: {result.get('state')}", results,
                 states, took, notes={
                     "approval": "demo configuration: answered by a scripted approver through the REST API",
                     "window": "demo configuration: a 1-minute window every minute",
                     "facts": "demo data is small: sizes and sub-millisecond timings say little; bench/ runs at scale"})
    out.append("  check it: . .devstack/env && PYTHONPATH=plugins .venv/bin/python -m schema_deploy audit verify "
               "--db \"$PRODUCTION_DATABASE_URL\"")
    lines = slack_file.read_text().splitlines()[slack_start:] if slack_file.exists() else []
    out += ["", "Slack (stand-in)", f"  {len(lines)} messages this run, recorded in {slack_file}:"]
    out += [f"    {json.loads(line).get('text', '')[:110]}" for line in lines]
    out += ["", f"full Airflow log: {log_path}", f"total {seconds:.0f} s. `make airflow` runs the same DAG in the "
            "Airflow UI; `make stack-down` stops the stack."]
    return "\n".join(out)


def main() -> int:
    env = stack_env()
    work = Path(env.get("DEVSTACK_DIR", REPO / ".devstack")) / "demo"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    say("demo: recreating staging and production at the baseline with demo data")
    for key in ("STAGING_DATABASE_URL", "PRODUCTION_DATABASE_URL"):
        reset(env[key], seed=42, log=lambda _: None)
    slack_file = Path(env["SLACK_MESSAGES_FILE"])
    slack_start = len(slack_file.read_text().splitlines()) if slack_file.exists() else 0
    say(f"demo: running deploy_schema with {CONFIG.relative_to(REPO)} (approval by '{APPROVER}', a window every "
        "minute)")
    code, result, log_path = run_dag(work)
    print(report(result, log_path, slack_file, slack_start, time.monotonic() - t0))
    if code != 0:
        say(f"demo: the run did not succeed; read {log_path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
