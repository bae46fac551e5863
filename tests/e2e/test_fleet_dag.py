"""deploy_fleet end to end with `dag.test()` on the local stack (devstack/run_deploy.py).

A fleet of six small member databases (copies of one template on the staging cluster), declared by
the prefix `tenant_`: their connections are `AIRFLOW_CONN_TENANT_0n` in the run's environment, as a
worker's would be. Staging is a copy of the same template; production is never opened by this DAG,
so its connection points at a closed port.
"""
from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from schema_deploy.audit import chain
from schema_deploy.state.ledger import read_rows
from seed import reset
from tests.conftest import drop_database, with_database
from tests.e2e.harness import DagRunner, Slack

EPIC5 = "20251017120000_epic5_schema_completion"
MEMBERS = 6
CLOSED = "postgresql://nobody:never-used@127.0.0.1:1/production"
FLEET = ('fleets:\n  tenants: {prefix: tenant_, waves: {canary: 1, size: "50%", parallel: 3}, backup: none}\n')
GATE_OK = '    - [python, -c, "print(\'gate ok\')"]\n'


@pytest.fixture(scope="module")
def template(stack_env: dict[str, str]):
    name = f"t_fdag_tpl_{uuid.uuid4().hex[:6]}"
    url = with_database(stack_env["STAGING_DATABASE_URL"], name)
    reset(url, seed=7, scale="small", log=lambda _: None)
    yield name
    drop_database(stack_env["STAGING_DATABASE_URL"], name)


@pytest.fixture(scope="module")
def staging_template(stack_env: dict[str, str]):
    """Staging at the demo scale: its verification asks the planner to use the new indexes, which it
    does not on a small tenant (members are verified without EXPLAIN). Same schema as the tenants."""
    name = f"t_fdag_stpl_{uuid.uuid4().hex[:6]}"
    url = with_database(stack_env["STAGING_DATABASE_URL"], name)
    reset(url, seed=9, log=lambda _: None)
    yield name
    drop_database(stack_env["STAGING_DATABASE_URL"], name)


@pytest.fixture
def fleet_dbs(stack_env: dict[str, str], template: str, staging_template: str):
    """Staging and the six tenants, copies of their templates: {"staging": url, "tenant_00": url, …}."""
    base = stack_env["STAGING_DATABASE_URL"]
    tag = uuid.uuid4().hex[:6]
    names = {"staging": f"t_fdag_{tag}_staging", **{f"tenant_{i:02d}": f"t_fdag_{tag}_tenant_{i:02d}"
                                                    for i in range(MEMBERS)}}
    with psycopg.connect(base, autocommit=True) as conn:
        for key, db in names.items():
            conn.execute(f'CREATE DATABASE "{db}" TEMPLATE "{staging_template if key == "staging" else template}"')
    yield {key: with_database(base, db) for key, db in names.items()}
    for db in names.values():
        drop_database(base, db)


@pytest.fixture
def runner(tmp_path, migrated_home, fleet_dbs, stack_env, dag_zygote) -> DagRunner:
    runner = DagRunner("deploy_fleet", tmp_path, migrated_home,
                       {"staging": fleet_dbs["staging"], "production": CLOSED}, stack_env, dag_zygote)
    runner.extra_env = {f"AIRFLOW_CONN_{k.upper()}": url for k, url in fleet_dbs.items() if k.startswith("tenant_")}
    return runner


def failures(run) -> str:
    """The log lines that say what failed (the whole log is long), then its end."""
    lines = [ln for ln in run.log.splitlines() if "error" in ln.lower() or "failed" in ln.lower()]
    return "\n".join(lines[:40])[-6000:] + "\n…\n" + run.log[-2000:]


def applied(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r.migration_name for r in read_rows(conn) if r.applied]


def fleet_rows(url: str) -> list:
    with psycopg.connect(url) as conn:
        chain.ensure_table(conn)
        assert chain.verify_chain(conn).ok
        return [r for r in chain.read_rows(conn) if r.kind == "fleet"]


def fleet_messages(slack: Slack) -> list[str]:
    texts = [r.get("text") or "" for r in slack.records()]
    return [t for t in texts if t.startswith(("Fleet wave finished", "Fleet deployment finished"))]


def test_every_member_reaches_the_release_in_three_waves_with_one_slack_message_each_and_a_record(
        runner: DagRunner, fleet_dbs: dict[str, str], stack_env: dict[str, str]) -> None:
    slack = Slack(stack_env)
    run = runner.run({"fleet": "tenants"}, runner.config(gate=GATE_OK, extra=FLEET))

    assert run.returncode == 0, failures(run)
    members = sorted(k for k in fleet_dbs if k.startswith("tenant_"))
    assert run.xcom("fleet_members")["waves"] == [members[:1], members[1:4], members[4:]]
    assert "postgresql://" not in json.dumps(run.xcom("fleet_members"))  # names and attributes, never URLs
    assert EPIC5 in applied(fleet_dbs["staging"])
    for name in members:
        assert EPIC5 in applied(fleet_dbs[name]), name
        assert len(fleet_rows(fleet_dbs[name])) == 1, name

    messages = fleet_messages(slack)
    assert [m.split(" — ")[0] for m in messages] == ["Fleet wave finished"] * 3 + ["Fleet deployment finished"]
    assert "wave: 1 of 3 (canary)" in messages[0] and "members: done 1" in messages[0]
    assert "members: done 3" in messages[1] and "next wave: none (the last wave)" in messages[2]

    record = run.xcom("fleet_record")
    assert record["outcome"] == "done" and record["counts"] == {"done": MEMBERS}
    document = json.loads(runner.object(record["uri"]))
    assert record["uri"].endswith("/fleet.json") and "/fleets/tenants/runs/" in record["uri"]
    assert sorted(m["member"] for m in document["members"]) == members
    assert {m["state"] for m in document["members"]} == {"done"}


def test_orphan_rows_in_the_canary_stop_the_run_before_any_other_member_and_list_them_not_attempted(
        runner: DagRunner, fleet_dbs: dict[str, str], stack_env: dict[str, str]) -> None:
    with psycopg.connect(fleet_dbs["tenant_00"]) as conn:
        conn.execute('UPDATE experiment_assignments SET "experimentId" = \'exp_missing_\' || id WHERE id IN '
                     '(SELECT id FROM experiment_assignments ORDER BY id LIMIT 3)')
    slack = Slack(stack_env)
    run = runner.run({"fleet": "tenants"}, runner.config(gate=GATE_OK, extra=FLEET))

    assert run.returncode == 1 and run.result["state"] == "failed", failures(run)
    assert run.state("canary") == "failed" and run.state("waves") == "upstream_failed"
    assert run.state("fleet_record") == "success"
    others = [f"tenant_{i:02d}" for i in range(1, MEMBERS)]
    for name in ["tenant_00", *others]:
        assert EPIC5 not in applied(fleet_dbs[name]), name

    record = run.xcom("fleet_record")
    assert record["outcome"] == "halted" and record["counts"] == {"failed": 1, "not_attempted": MEMBERS - 1}
    document = json.loads(runner.object(record["uri"]))
    states = {m["member"]: m for m in document["members"]}
    assert states["tenant_00"]["state"] == "failed"
    assert states["tenant_00"]["error"].startswith("data prechecks failed; nothing was changed:")
    assert "3 rows of experiment_assignments whose (experimentId) has no row in" in states["tenant_00"]["error"]
    assert all(states[n]["state"] == "not_attempted" and "the brake halted the run after wave 0" in states[n]["reason"]
               for n in others)

    messages = fleet_messages(slack)
    assert len(messages) == 2, messages  # the canary's wave, then the summary
    assert "tenant_00: data prechecks failed" in messages[0] and "next wave: none: the brake halted the run" in messages[0]
    assert "outcome: halted" in messages[1]


APPROVE_FLEET = ('fleets:\n  tenants: {prefix: tenant_, waves: {canary: 1, size: "50%", parallel: 3, '
                 'approve_after_canary: true}, backup: none}\n')


def test_a_rejected_canary_approval_leaves_every_other_member_not_attempted_and_says_so(
        runner: DagRunner, fleet_dbs: dict[str, str], stack_env: dict[str, str]) -> None:
    slack = Slack(stack_env)
    run = runner.run({"fleet": "tenants"}, runner.config(gate=GATE_OK, extra=APPROVE_FLEET), reject="release-owner")

    assert run.state("canary") == "success" and run.state("approve_canary") == "success", failures(run)
    assert run.state("waves") == "skipped" and run.state("windowed") == "skipped"
    assert EPIC5 in applied(fleet_dbs["tenant_00"])
    assert all(EPIC5 not in applied(fleet_dbs[f"tenant_{i:02d}"]) for i in range(1, MEMBERS))
    record = run.xcom("fleet_record")
    assert record["outcome"] == "not approved" and record["counts"] == {"done": 1, "not_attempted": MEMBERS - 1}
    document = json.loads(runner.object(record["uri"]))
    assert {m["reason"] for m in document["members"] if m["state"] == "not_attempted"} == {
        "not approved after the canary wave"}
    messages = fleet_messages(slack)
    assert "next wave: after the approval (approve_canary)" in messages[0] and "outcome: not approved" in messages[-1]


def test_members_of_a_closed_regions_window_wait_deferred_while_the_others_proceed_then_change_when_it_opens(
        runner: DagRunner, fleet_dbs: dict[str, str], stack_env: dict[str, str]) -> None:
    """Members come from a catalog with a region each: `eu` has a window open every minute, `us` one
    that opens a few minutes from now, so `waves` leaves the us members waiting and `windowed` defers
    (dag.test runs the trigger in process) and changes them when it opens."""
    from datetime import datetime, timedelta, timezone

    base = stack_env["STAGING_DATABASE_URL"]
    catalog = f"t_fdag_cat_{uuid.uuid4().hex[:6]}"
    members = sorted(k for k in fleet_dbs if k.startswith("tenant_"))
    region = {name: "eu" if i % 2 == 0 else "us" for i, name in enumerate(members)}
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{catalog}"')
    try:
        with psycopg.connect(with_database(base, catalog)) as conn:
            conn.execute("CREATE TABLE tenants (conn_id text, region text, active boolean DEFAULT true)")
            for name, where in region.items():
                conn.execute("INSERT INTO tenants (conn_id, region) VALUES (%s, %s)", (name, where))
        runner.extra_env["AIRFLOW_CONN_TENANTS_CATALOG"] = with_database(base, catalog)
        # The us window opens at a minute boundary 90-150 s from now: still closed when the waves run (staging,
        # the gate, the canary and the eu members come first), and not waited for longer than that.
        opens = (datetime.now(timezone.utc) + timedelta(seconds=150)).replace(second=0, microsecond=0)
        fleet = ("fleets:\n  regional:\n    catalog: {conn: tenants_catalog, query: "
                 "\"select conn_id, region from tenants where active order by conn_id\"}\n"
                 "    waves: {canary: 1, size: \"100%\", parallel: 3}\n    backup: none\n"
                 "    window: {by: region, windows: {eu: {cron: \"* * * * *\", duration: 1m}, "
                 f"us: {{cron: \"{opens.minute} {opens.hour} * * *\", duration: 10m}}}}}}\n")
        slack = Slack(stack_env)
        run = runner.run({"fleet": "regional"}, runner.config(gate=GATE_OK, extra=fleet))
    finally:
        drop_database(base, catalog)

    assert run.returncode == 0, failures(run)
    in_waves = {o["member"]: o for o in run.result["tasks"]["waves"]["xcom_keys"]["fleet_run"]["outcomes"]}
    us = [n for n in members if region[n] == "us"]
    assert {n: o["state"] for n, o in in_waves.items()} == {n: "done" if region[n] == "eu" else "waiting_window"
                                                           for n in members[1:]}, "the us window opened too early"
    assert {o["next_window"] for n, o in in_waves.items() if n in us} == {opens.isoformat()}
    windowed = run.result["tasks"]["windowed"]["xcom"]
    assert {o["member"]: o["state"] for o in windowed["outcomes"]} == {n: "done" for n in us}
    assert all(datetime.fromisoformat(o["started"]) >= opens for o in windowed["outcomes"])
    assert all(EPIC5 in applied(fleet_dbs[n]) for n in members)
    record = run.xcom("fleet_record")
    assert record["outcome"] == "done" and record["counts"] == {"done": MEMBERS}
    messages = fleet_messages(slack)
    assert len(messages) == 4 and "wave: members whose window opened" in messages[2], messages


def test_a_dry_run_checks_every_member_and_changes_nothing_anywhere_staging_included(
        runner: DagRunner, fleet_dbs: dict[str, str], stack_env: dict[str, str]) -> None:
    from schema_deploy.pg.fingerprint import fingerprint_digest, schema_fingerprint

    def state(url: str) -> tuple:
        with psycopg.connect(url) as conn:
            chain.ensure_table(conn)
            return applied(url), fingerprint_digest(schema_fingerprint(conn)), len(chain.read_rows(conn))

    with psycopg.connect(fleet_dbs["tenant_03"]) as conn:
        conn.execute('UPDATE experiment_assignments SET "experimentId" = \'exp_missing_\' || id WHERE id IN '
                     '(SELECT id FROM experiment_assignments ORDER BY id LIMIT 2)')
    before = {name: state(url) for name, url in fleet_dbs.items()}
    run = runner.run({"fleet": "tenants", "dry_run": True}, runner.config(gate=GATE_OK, extra=APPROVE_FLEET))

    assert run.returncode == 1 and run.state("windowed") == "failed", failures(run)  # what it found fails the run
    assert run.state("canary") == "success" and run.state("waves") == "success"  # checks only: every member checked
    assert run.state("approve_canary") == "skipped" and run.xcom("apply_staging") == {
        "dry_run": True, "skipped": "the release is not applied"}
    assert {name: state(url) for name, url in fleet_dbs.items()} == before
    record = run.xcom("fleet_record")
    assert record["outcome"] == "dry run" and record["counts"] == {"failed": 1, "would_apply": MEMBERS - 1}
    document = json.loads(runner.object(record["uri"]))
    failed = [m for m in document["members"] if m["state"] == "failed"]
    assert [m["member"] for m in failed] == ["tenant_03"] and "2 rows of experiment_assignments" in failed[0]["error"]


def test_a_wave_two_failure_halts_the_later_waves_and_a_resume_with_only_targets_changes_just_those(
        runner: DagRunner, fleet_dbs: dict[str, str], stack_env: dict[str, str]) -> None:
    """Waves 00 | 01 02 03 | 04 05 and halt_after 0: orphan rows in tenant_02 stop the run after
    wave 2 of 3. Fixed, the same release is run again, approved after the canary, for the members
    not done: only they change; the others are not even opened."""
    with psycopg.connect(fleet_dbs["tenant_02"]) as conn:
        conn.execute('UPDATE experiment_assignments SET "experimentId" = \'exp_missing_\' || id WHERE id IN '
                     '(SELECT id FROM experiment_assignments ORDER BY id LIMIT 3)')
    first = runner.run({"fleet": "tenants"}, runner.config(gate=GATE_OK, extra=FLEET))

    assert first.returncode == 1 and first.state("waves") == "failed", failures(first)
    states = {m["member"]: m for m in json.loads(runner.object(first.xcom("fleet_record")["uri"]))["members"]}
    assert {n: m["state"] for n, m in states.items()} == {
        "tenant_00": "done", "tenant_01": "done", "tenant_02": "failed", "tenant_03": "done",
        "tenant_04": "not_attempted", "tenant_05": "not_attempted"}
    assert states["tenant_05"]["reason"].startswith("the brake halted the run after wave 1: 1 member(s) failed")

    with psycopg.connect(fleet_dbs["tenant_02"]) as conn:
        conn.execute('DELETE FROM experiment_assignments WHERE "experimentId" LIKE \'exp_missing_%\'')
    again = runner.run({"fleet": "tenants", "only_targets": "tenant_02, tenant_04,tenant_05"},
                       runner.config(gate=GATE_OK, extra=APPROVE_FLEET), approve="release-owner")

    assert again.returncode == 0, failures(again)
    assert again.state("approve_canary") == "success" and again.state("waves") == "success"
    assert again.xcom("fleet_members")["waves"] == [["tenant_02"], ["tenant_04", "tenant_05"]]
    record = again.xcom("fleet_record")
    assert record["outcome"] == "done" and record["counts"] == {"done": 3}
    assert all(EPIC5 in applied(fleet_dbs[f"tenant_{i:02d}"]) for i in range(MEMBERS))
    assert [len(fleet_rows(fleet_dbs[f"tenant_{i:02d}"])) for i in range(MEMBERS)] == [1] * MEMBERS
