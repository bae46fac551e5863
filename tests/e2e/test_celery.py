"""deploy_schema and deploy_fleet on the CeleryExecutor, as `make airflow EXECUTOR=celery` runs them.

One set of services for the module (devstack/airflow_local.py --executor celery): the
metadata database on the stack's PostgreSQL, Redis as broker, and two Celery workers,
each started from its own copy of the project with its own hostname, each consuming its
environment's queue and holding only that environment's database connection. A fleet of
tenant databases (copies of a small template on the production cluster, prefix `tenant_`,
queue production) is given with --fleet-env, so only the production worker holds the
tenants' connections. The tests drive the REST API as the UI does and read what Airflow
recorded: which host ran each task instance, from which queue.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx
import psutil
import psycopg
import pytest

from schema_deploy.state.ledger import read_rows
from seed import reset
from tests.conftest import drop_database, with_database
from tests.e2e.harness import (airflow_services, events, import_errors, masked, run_path, stack_secrets,
                               task_instances, task_logs, wait_for)

DAG = "deploy_schema"
EPIC5 = "20251017120000_epic5_schema_completion"
# Tasks that open a database, by the environment whose queue they must run on.
OPENS = {"staging": ("apply_staging", "test_gate"),
         "production": ("backup_production", "apply_production", "verify_production")}
RUN_TIMEOUT_S = 480
APPROVE_AFTER_S = 5
# What the log endpoint says before a worker's upload of the log has reached S3.
LOG_SOURCE_LINES = ("::group::Log message source details", "::endgroup::", "Could not read served logs")
LOCKED_TABLE = "behavioral_events"  # Epic 5 builds three indexes on it, after its first steps commit
FLEET_DAG = "deploy_fleet"
TENANTS = 4
MEMBER_TASKS = ("fleet_members", "canary", "waves", "windowed")  # on the fleet's queue (production); the rest on staging's
CONTROL_PLANE = ("api-server", "scheduler", "dag-processor", "triggerer")

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def databases(stack_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """A staging and a production database of their own (reset to the baseline by each test)."""
    name = f"t_cel_{uuid.uuid4().hex[:8]}"
    urls = {env: with_database(stack_env[f"{env.upper()}_DATABASE_URL"], name) for env in ("staging", "production")}
    try:
        yield urls
    finally:
        for env in ("STAGING", "PRODUCTION"):
            drop_database(stack_env[f"{env}_DATABASE_URL"], name)


@pytest.fixture(scope="module")
def tenants(stack_env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The fleet's members, {"tenant_00": url, …}: copies of one small template at the baseline on the
    production cluster (their role is production's, so the staging worker must never see a URL)."""
    base, tag = stack_env["PRODUCTION_DATABASE_URL"], uuid.uuid4().hex[:8]
    template = f"t_cel_{tag}_tpl"
    names = {f"tenant_{i:02d}": f"t_cel_{tag}_tenant_{i:02d}" for i in range(TENANTS)}
    try:
        reset(with_database(base, template), seed=7, scale="small", log=lambda _msg: None)
        with psycopg.connect(base, autocommit=True) as conn:
            for db in names.values():
                conn.execute(f'CREATE DATABASE "{db}" TEMPLATE "{template}"')
        yield {key: with_database(base, db) for key, db in names.items()}
    finally:
        for db in [*names.values(), template]:
            drop_database(base, db)


@pytest.fixture(scope="module")
def celery(tmp_path_factory, stack_env: dict[str, str], databases: dict[str, str],
           tenants: dict[str, str], seeded) -> Iterator[dict]:
    """The services and both workers, the tenants' connections in a --fleet-env file; an API client
    logged in as admin. Stopped after, no process left."""
    base = tmp_path_factory.mktemp("celery")
    settings = base / "settings"
    settings.mkdir()
    config = settings / "deploy.yaml"
    prefix = f"e2e-celery-{uuid.uuid4().hex[:8]}"  # a run's own, beside other runs of the suite
    # Relative paths: each worker reads them in its own copy of the project (settings/ of the copy).
    config.write_text(
        "bundles: {main: ../sql/migrations}\nverify_dir: ../sql/verify\n"
        f"backup: {{bucket: {stack_env['BACKUP_BUCKET']}, prefix: {prefix}, restore_check: true}}\n"
        "gate:\n  timeout: 5m\n  commands:\n"
        "    - [python, -m, pytest, tests/gate, -q, -p, no:cacheprovider, -p, no:hypothesispytest, "
        "'--junitxml={junit}']\n"
        "approval: {manual_runs: form, scheduled_runs: required}\n"
        "windows: [{name: always-open, cron: '* * * * *', duration: 1h, timezone: UTC}]\n"
        "lock: {lock_timeout_ms: 200, max_lock_timeout_ms: 1000, lock_retries: 10}\n"
        "queues: {staging: staging, production: production, default: staging}\n"
        'fleets: {tenants: {prefix: tenant_, waves: {canary: 1, size: "50%", parallel: 3}, backup: none, '
        "queue: production}}\n")
    fleet_env = base / "fleet.env"
    fleet_env.touch(mode=0o600)
    fleet_env.write_text("".join(f"export AIRFLOW_CONN_{name.upper()}='{url}'\n" for name, url in tenants.items()))
    for url in databases.values():
        seeded.reset(url, seed=9)
    # A killed worker's task is found dead after 20 s (checked every 3 s), not after the 60 s `make airflow`
    # waits: the kill test then waits less for the same outcome.
    quick = {"DEVSTACK_TASK_HEARTBEAT_TIMEOUT": "20", "DEVSTACK_TASK_HEARTBEAT_CHECK_EVERY": "3",
             "SCHEMA_DEPLOY_RETRY_DELAY_S": "3"}
    with airflow_services(base / "airflow", config, databases, executor="celery", fleet_env=fleet_env,
                          extra_env=quick) as services, \
            httpx.Client(base_url=services["url"], timeout=30) as api:
        token = api.post("/auth/token", json={"username": "admin", "password": services["password"]})
        assert token.status_code == 201, token.text
        api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        for dag_id in (DAG, FLEET_DAG):
            wait_for(f"the dag-processor to parse {dag_id}",
                     lambda d=dag_id: True if api.get(f"/api/v2/dags/{d}").status_code == 200 else None, 180,
                     explain=lambda: f"; import errors: {import_errors(api) or 'none'}")
            assert api.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).status_code == 200
        yield {**services, "api": api}


def workers(celery: dict) -> dict[str, dict]:
    """env -> the worker's queue, hostname, project copy, home and (current) pid, as the supervisor has it."""
    from airflow_local import read_state

    state = read_state(celery["home"].resolve())
    return {name.removeprefix("worker-"): w for name, w in state["workers"].items()}


def trigger(api: httpx.Client, conf: dict, dag_id: str = DAG) -> str:
    resp = api.post(f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf})
    assert resp.status_code == 200, resp.text
    return resp.json()["dag_run_id"]


def approve_when_asked(api: httpx.Client, run_id: str, parked: list[float]) -> None:
    """Answer the approval like a person: a few seconds after the task parks."""
    approval = task_instances(api, run_id).get("approve_production", {})
    if approval.get("state") in ("awaiting_input", "deferred") and not parked:
        parked.append(time.monotonic())
    if parked and len(parked) == 1 and time.monotonic() - parked[0] >= APPROVE_AFTER_S:
        answer = api.patch(f"{run_path(run_id)}/taskInstances/approve_production/-1/hitlDetails",
                           json={"chosen_options": ["Approve"], "params_input": {}})
        if answer.status_code == 200:
            parked.append(time.monotonic())


def run_state(api: httpx.Client, run_id: str, dag_id: str = DAG) -> str | None:
    state = api.get(run_path(run_id, dag_id)).json()["state"]
    return state if state in ("success", "failed") else None


def explain(api: httpx.Client, run_id: str, dag_id: str = DAG):
    def text() -> str:
        tis = task_instances(api, run_id, dag_id)
        return "\ntask states: " + json.dumps({t: (ti["state"], ti["hostname"], ti["queue"]) for t, ti in tis.items()})
    return text


def final_logs(api: httpx.Client, run_id: str, tis: dict[str, dict]) -> dict[str, list[str]]:
    """Every try's log; a worker uploads it to S3 a moment after the task ends, so wait for each."""
    def complete(task_id: str, ti: dict):
        tries = task_logs(api, run_id, ti)
        return tries if all(any(not e.startswith(LOG_SOURCE_LINES) for e in events(t)) for t in tries) else None

    return {task_id: wait_for(f"the log of {task_id}", lambda t=task_id, ti=ti: complete(t, ti), 60, every=2)
            for task_id, ti in tis.items() if ti["state"] in ("success", "failed") and ti["try_number"]}


def epic5_rows(url: str) -> list:
    with psycopg.connect(url) as conn:
        return [r for r in read_rows(conn) if r.migration_name == EPIC5]


def invalid_indexes(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE NOT i.indisvalid")]


def production_secrets(stack_env: dict[str, str]) -> dict[str, str]:
    url = urlsplit(stack_env["PRODUCTION_DATABASE_URL"])
    return {"production role password": unquote(url.password or ""),
            "production URL": f"{url.hostname}:{url.port}{url.path}"}


def tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def test_a_deployment_runs_each_task_on_its_environments_worker_and_survives_a_redis_restart(
        celery: dict, databases: dict[str, str], stack_env: dict[str, str]) -> None:
    api, secrets, placed = celery["api"], stack_secrets(stack_env), workers(celery)
    assert {env: w["queue"] for env, w in placed.items()} == {"staging": "staging", "production": "production"}
    run_id = trigger(api, {"require_approval": True})
    parked: list[float] = []
    bounced: list[float] = []

    def finished():
        if (state := run_state(api, run_id)) is not None:
            return state
        approve_when_asked(api, run_id, parked)
        # While staging's gate runs, the broker goes away for a few seconds and comes back.
        if not bounced and task_instances(api, run_id).get("test_gate", {}).get("state") == "running":
            import stack

            stack.stop_redis()
            time.sleep(5)
            stack.start_redis(stack.load_secrets()["redis_password"])
            bounced.append(time.monotonic())
        return None

    state = wait_for(f"run {run_id}", finished, RUN_TIMEOUT_S, every=2, explain=explain(api, run_id))
    tis = task_instances(api, run_id)
    logs = final_logs(api, run_id, tis)
    assert bounced, "the broker was never restarted during the run"
    not_ok = {t: ti["state"] for t, ti in tis.items() if ti["state"] not in ("success", "skipped")}
    assert state == "success" and not not_ok, masked(
        f"run {state}; not successful: {not_ok}\n"
        + "\n".join(f"--- {t}\n" + "\n".join(events(logs[t][-1])[-30:]) for t in not_ok if logs.get(t)), secrets)

    # Where each task ran, as Airflow recorded it: the worker of its queue, and the database tasks on
    # their environment's queue.
    host_of = {w["queue"]: w["hostname"] for w in placed.values()}
    ran = {t: (ti["queue"], ti["hostname"]) for t, ti in tis.items() if ti["state"] == "success"}
    assert all(host == host_of[queue] for queue, host in ran.values()), ran
    for env, task_ids in OPENS.items():
        assert {t: ran[t] for t in task_ids} == {t: (env, f"{env}-worker") for t in task_ids}
    assert {queue for queue, _ in ran.values()} == {"staging", "production"}

    rows = epic5_rows(databases["production"])
    assert len(rows) == 1 and rows[0].applied and invalid_indexes(databases["production"]) == []
    leaks = sorted(f"{t}: {name}" for t, tries in logs.items() for name, value in secrets.items()
                   if any(value in log for log in tries))
    assert not leaks, f"stack secrets in task logs: {leaks}"


def test_the_staging_worker_holds_and_logs_no_production_credential(
        celery: dict, stack_env: dict[str, str]) -> None:
    placed = workers(celery)
    staging, production = placed["staging"], placed["production"]
    secrets = production_secrets(stack_env)
    assert all(len(v) >= 8 for v in secrets.values())

    environments = [p.environ() for p in tree(staging["pid"])]
    assert environments and all("AIRFLOW_CONN_PRODUCTION_DB" not in e for e in environments)
    found = sorted({name for e in environments for name, v in secrets.items() if any(v in x for x in e.values())})
    assert found == [], f"the staging worker's environment holds {found}"
    texts = [p.read_text(errors="replace") for p in Path(staging["home"]).rglob("*.log")]
    texts.append((celery["home"] / "logs" / "worker-staging.log").read_text(errors="replace"))
    assert len(texts) > 3  # its own log and the task logs of the run above
    found = sorted({name for text in texts for name, v in secrets.items() if v in text})
    assert found == [], f"the staging worker's logs hold {found}"
    # ...while production's worker does hold it: the check above can see a credential where there is one.
    assert any(e.get("AIRFLOW_CONN_PRODUCTION_DB") for e in (p.environ() for p in tree(production["pid"])))


def test_a_production_worker_killed_mid_apply_is_restarted_and_the_retried_task_converges(
        celery: dict, databases: dict[str, str], seeded) -> None:
    api = celery["api"]
    for url in databases.values():
        seeded.reset(url, seed=9)
    # A session of "the application" holds a lock Epic 5's index builds wait for (reads go on).
    holder = psycopg.connect(databases["production"], application_name="test-lock-holder")
    holder.execute(f'LOCK TABLE "{LOCKED_TABLE}" IN EXCLUSIVE MODE')
    killed: list[int] = []
    try:
        run_id = trigger(api, {"require_approval": False, "lock_retries": 100})

        def waiting_on_the_lock():
            if run_state(api, run_id) is not None:
                raise AssertionError(f"the run ended before apply_production waited{explain(api, run_id)()}")
            ti = task_instances(api, run_id).get("apply_production", {})
            if ti.get("state") != "running":
                return None
            with psycopg.connect(databases["production"]) as conn:
                waiting = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                                       (LOCKED_TABLE,)).fetchone()[0]
            return ti if waiting else None

        ti = wait_for("apply_production to wait on the held lock", waiting_on_the_lock, RUN_TIMEOUT_S, every=1,
                      explain=explain(api, run_id))
        assert (ti["queue"], ti["hostname"]) == ("production", "production-worker")
        before = workers(celery)["production"]["pid"]
        procs = tree(before)
        for proc in procs:
            proc.kill()
        killed.extend(p.pid for p in procs)
        psutil.wait_procs(procs, timeout=10)
    finally:
        holder.close()  # the application lets go

    wait_for("the supervisor to start the production worker again",
             lambda: True if workers(celery)["production"]["pid"] not in killed else None, 60)
    state = wait_for(f"run {run_id} after the kill", lambda: run_state(api, run_id), RUN_TIMEOUT_S, every=3,
                     explain=explain(api, run_id))
    tis = task_instances(api, run_id)
    assert state == "success", explain(api, run_id)()
    apply_ti, verify_ti = tis["apply_production"], tis["verify_production"]
    assert apply_ti["try_number"] >= 2 and apply_ti["hostname"] == "production-worker"
    assert verify_ti["state"] == "success"
    rows = epic5_rows(databases["production"])
    assert len(rows) == 1 and rows[0].applied, rows
    assert invalid_indexes(databases["production"]) == []


def environments(procs: list[psutil.Process]) -> list[dict[str, str]]:
    """The environments that can be read of the processes still alive: a task process may end while we
    read, and a process that set its title (setproctitle: Celery, Airflow's components) has written
    over the memory /proc/<pid>/environ shows, so only an environment naming AIRFLOW_HOME counts."""
    found = []
    for proc in procs:
        try:
            environment = proc.environ()
        except psutil.NoSuchProcess:
            continue
        if environment.get("AIRFLOW_HOME"):
            found.append(environment)
    return found


def tenant_traces(environment: dict[str, str], tenants: dict[str, str]) -> list[str]:
    """What of the tenants an environment holds: their connection variables, their database names."""
    names = [urlsplit(url).path[1:] for url in tenants.values()]
    return sorted({k for k in environment if k.startswith("AIRFLOW_CONN_TENANT")}
                  | {n for n in names if any(n in v for v in environment.values())})


def test_a_fleet_run_brings_every_tenant_to_the_release_opening_them_only_on_the_fleet_queues_worker(
        celery: dict, databases: dict[str, str], tenants: dict[str, str], stack_env: dict[str, str],
        seeded) -> None:
    from airflow_local import read_state

    api, placed = celery["api"], workers(celery)
    assert placed["production"]["fleet_connections"] == sorted(tenants), placed
    assert placed["staging"]["fleet_connections"] == []
    seeded.reset(databases["staging"], seed=9)  # the rehearsal needs staging at the baseline
    run_id = trigger(api, {"fleet": "tenants"}, FLEET_DAG)
    state = wait_for(f"run {run_id}", lambda: run_state(api, run_id, FLEET_DAG), RUN_TIMEOUT_S, every=2,
                     explain=explain(api, run_id, FLEET_DAG))
    tis = task_instances(api, run_id, FLEET_DAG)
    not_ok = {t: ti["state"] for t, ti in tis.items() if ti["state"] not in ("success", "skipped")}
    assert state == "success" and not not_ok, masked(
        f"run {state}; not successful: {not_ok}\n" + "\n".join(
            f"--- {t}\n" + "\n".join(events((task_logs(api, run_id, tis[t]) or [""])[-1])[-30:]) for t in not_ok),
        stack_secrets(stack_env))

    for name, url in tenants.items():
        rows = epic5_rows(url)
        assert len(rows) == 1 and rows[0].applied, name
    assert [r.applied for r in epic5_rows(databases["staging"])] == [True]
    record = api.get(f"{run_path(run_id, FLEET_DAG)}/taskInstances/fleet_record/xcomEntries/return_value",
                     params={"deserialize": "true"})
    assert record.status_code == 200, record.text
    assert {k: record.json()["value"][k] for k in ("outcome", "counts")} == {"outcome": "done",
                                                                              "counts": {"done": TENANTS}}

    # Where each task ran: the member tasks on the fleet's queue and its worker, everything else
    # (staging's rehearsal and gate, the database-free tasks) on staging's.
    ran = {t: (ti["queue"], ti["hostname"]) for t, ti in tis.items() if ti["state"] == "success"}
    assert {"preflight_staging", "apply_staging", "test_gate", *MEMBER_TASKS} <= set(ran), ran
    assert tis["approve_canary"]["state"] == "skipped"
    assert ran == {t: ("production", "production-worker") if t in MEMBER_TASKS else ("staging", "staging-worker")
                   for t in ran}

    # Who holds the tenants: the production worker, nobody else (nor the supervisor that started it).
    # What the supervisor gave each process, then what the processes' environments show, where
    # they can be read (the api-server's processes set their titles over theirs).
    supervisor = read_state(celery["home"].resolve())
    shared = ["backup_s3", "slack_deploys"]
    assert supervisor["connections"] == {**{name: shared for name in CONTROL_PLANE},
                                         "worker-staging": sorted([*shared, "staging_db"]),
                                         "worker-production": sorted([*shared, "production_db", *tenants])}
    held = {name: environments(tree(supervisor["components"][name])) for name in CONTROL_PLANE}
    held["supervisor"] = [psutil.Process(supervisor["pid"]).environ()]  # plain Python, its title unchanged
    held["worker-staging"] = environments(tree(placed["staging"]["pid"]))
    readable = {name: len(envs) for name, envs in held.items()}
    assert all(readable[n] for n in ("scheduler", "dag-processor", "triggerer", "supervisor", "worker-staging")), \
        readable
    traces = {name: sorted({t for e in envs for t in tenant_traces(e, tenants)}) for name, envs in held.items()}
    assert {name: t for name, t in traces.items() if t} == {}
    production = environments(tree(workers(celery)["production"]["pid"]))
    # Compared, not printed: the URLs hold production's password.
    holds_all = any(all(e.get(f"AIRFLOW_CONN_{name.upper()}") == url for name, url in tenants.items())
                    for e in production)
    assert holds_all, f"no process of the production worker holds all {TENANTS} tenant connections"
    assert os.environ.get("AIRFLOW_CONN_TENANT_00") is None  # nor did the test hand them over any other way
