"""Failed runs, read as a person reads them (`dag.test()` on the local stack): the task log gives the
actionable message first and wrapped, and the trace ends with it again; Slack gets exactly one
FAILED message per run, naming the DAG in its text."""
from __future__ import annotations

import json
from urllib.parse import quote

from tests.e2e.harness import DagRunner, Slack

CLOSED = "postgresql://nobody:never-used@127.0.0.1:1/production"  # a run that fails first opens nothing
FLEET = 'fleets:\n  tenants: {prefix: tenant_, waves: {canary: 1, size: "50%", parallel: 3}, backup: none}\n'


def failed_messages(slack: Slack, run) -> list[dict]:
    """This run's FAILED messages (other tests may post to the stand-in meanwhile: matched by run id)."""
    run_id = quote(run.result["run_id"], safe="")
    return [r for r in slack.records() if "FAILED" in (r.get("text") or "") and run_id in json.dumps(r)]


def test_a_failed_deploy_schema_run_logs_its_message_first_and_wrapped_and_posts_one_failed_message(
        tmp_path, migrated_home, targets, stack_env, dag_zygote) -> None:
    deployer = DagRunner("deploy_schema", tmp_path, migrated_home, targets, stack_env, dag_zygote)
    slack = Slack(stack_env)
    run = deployer.run({"skip_window": True, "skip_window_reason": ""}, approve="alice")
    assert run.returncode == 1 and run.state("preflight_bundle") == "failed", run.log[-4000:]

    lines = run.log.splitlines()
    block = next(i for i, line in enumerate(lines) if "preflight_bundle failed (not retried" in line)
    trace = next(i for i, line in enumerate(lines) if "Task failed with exception" in line)
    assert block < trace, "the message comes before Airflow's trace"
    # The block's lines (the renderer's `[logger] loc=…` trailer has a line of its own).
    message = [line for line in lines[block + 1:trace] if line.strip() and "[schema_deploy]" not in line]
    assert message[0].startswith("  UsageError: ") and "skip_window" in message[0] and len(message) >= 2
    assert all(len(line) <= 100 for line in message) and all(line.startswith("      ") for line in message[1:])
    # The trace ends with the same message, wrapped to fit 100 columns with its prefix.
    end = next(i for i, line in enumerate(lines) if line.startswith("airflow.sdk.exceptions.AirflowFailException:"))
    tail = [lines[end]]
    while lines[end + len(tail)].startswith("    "):
        tail.append(lines[end + len(tail)])
    assert end > trace and len(tail) >= 2 and all(len(line) <= 100 for line in tail), tail
    words = " ".join(" ".join(message).split())
    assert " ".join(" ".join(tail).split()[1:]) == words

    (posted,) = failed_messages(slack, run)
    assert posted["text"].startswith("Schema deployment FAILED — DAG: deploy_schema; task: preflight_bundle; try: 1")
    assert f"error: {words}" in posted["text"]  # the same message, on one line


def test_a_fleet_run_failing_in_preflight_posts_one_failed_message_naming_deploy_fleet(
        tmp_path, migrated_home, stack_env, dag_zygote) -> None:
    # windowed runs whatever happened (all_done) and fails too, since the waves did not run: logged, not posted.
    runner = DagRunner("deploy_fleet", tmp_path, migrated_home, {"staging": CLOSED, "production": CLOSED}, stack_env,
                       dag_zygote)
    slack = Slack(stack_env)
    run = runner.run({"fleet": "tenants", "skip_window": True, "skip_window_reason": ""},
                     runner.config(extra=FLEET))
    assert run.returncode == 1 and run.state("preflight_bundle") == "failed", run.log[-4000:]
    assert run.state("windowed") == "failed"
    assert ("Slack: not posting 'failed' for windowed: this run's failure was already announced when "
            "preflight_bundle failed") in run.log

    (posted,) = failed_messages(slack, run)
    assert posted["text"].startswith("Schema deployment FAILED — DAG: deploy_fleet; task: preflight_bundle")
    assert "*DAG*\\ndeploy_fleet" in json.dumps(posted["blocks"])
