"""The DAG end-to-end tests' harness: run one DAG under `dag.test()` (devstack/run_deploy.py)
against given target databases with a deploy.yaml of its own, and read what it did."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import httpx
import psycopg
import pytest

from schema_deploy.pg.fingerprint import schema_fingerprint

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_LOCAL = REPO / "devstack" / "airflow_local.py"
# The gate's tests use no hypothesis: its pytest plugin alone costs each gate run 0.7 s of CPU.
GATE = ('    - [python, -m, pytest, tests/gate, -q, -p, no:cacheprovider, -p, no:hypothesispytest, '
        '"--junitxml={junit}"]\n')


@dataclass
class Run:
    returncode: int
    log: str
    result: dict
    home: Path

    def state(self, task_id: str) -> str | None:
        return self.result["tasks"].get(task_id, {}).get("state")

    def xcom(self, task_id: str):
        return self.result["tasks"][task_id]["xcom"]

    def approval(self) -> dict:
        return self.result["tasks"]["approve_production"]["xcom_keys"]["approval"]


class Zygote:
    """tests/e2e/zygote.py for one pytest process: Airflow imported once, each run a fork of it, all
    runs in one AIRFLOW_HOME (`home`), which `reset` refills from the migrated template per test."""

    def __init__(self, home: Path, migrated_home: Path, stack_env: dict[str, str]) -> None:
        from airflow_env import airflow_env

        self.home, self.template = home, migrated_home
        self.reset()
        self.socket = str(home.parent / "zygote.sock")
        env = airflow_env(home, stack_env, home / "deploy.yaml")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "plugins"), str(REPO)])
        self.log = open(home.parent / "zygote.log", "w")
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests/e2e/zygote.py"), self.socket], env=env,
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=self.log, text=True)
        said = list(iter(self.proc.stdout.readline, "ready\n"))  # until it says ready (or ends)
        assert not said or said[-1], "".join(said) + (home.parent / "zygote.log").read_text()[-3000:]

    def reset(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)
        shutil.copytree(self.template, self.home)

    def run(self, script: Path, args: list[str], env: dict[str, str], out: Path, timeout: float
            ) -> subprocess.CompletedProcess:
        """`python script args` as a fork of the zygote: its exit code and output, like subprocess.run."""
        stdout, stderr = out.with_suffix(".stdout"), out.with_suffix(".stderr")
        request = {"script": str(script), "args": args, "env": env, "cwd": str(REPO),
                   "stdout": str(stdout), "stderr": str(stderr)}
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.socket)
            conn.settimeout(timeout)
            conn.sendall((json.dumps(request) + "\n").encode())
            answers = conn.makefile("r")
            pid = int(answers.readline())
            try:
                code = answers.readline()
            except TimeoutError:
                os.killpg(pid, signal.SIGKILL)
                raise subprocess.TimeoutExpired([str(script), *args], timeout) from None
        assert code, f"the zygote died running {script} (log: {self.home.parent / 'zygote.log'})"
        return subprocess.CompletedProcess([str(script), *args], int(code), stdout.read_text(), stderr.read_text())

    def close(self) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(self.socket)  # an empty request: the zygote returns
        self.proc.wait(30)
        self.log.close()


class DagRunner:
    """Runs one DAG against `targets`, with a deploy.yaml of its own and a private S3 prefix. With a
    zygote, in its home (refilled here) and forked from it; else in a home of its own, as a new process."""

    def __init__(self, dag_id: str, tmp_path: Path, migrated_home: Path, targets: dict[str, str],
                 stack_env: dict[str, str], zygote: Zygote | None = None) -> None:
        self.dag_id, self.tmp, self.targets, self.stack_env = dag_id, tmp_path, targets, stack_env
        self.zygote = zygote
        if zygote:
            zygote.reset()
            self.home = zygote.home
        else:
            self.home = tmp_path / "airflow"
            shutil.copytree(migrated_home, self.home)
        self.prefix = f"e2e-{uuid.uuid4().hex[:8]}"
        self.extra_env: dict[str, str] = {}
        self.script = REPO / "devstack/run_deploy.py"  # or a wrapper of it (tests/e2e/misrouted.py)

    def config(self, windows: str = "[{cron: '* * * * *', duration: 1h}]", gate: str = GATE, extra: str = "",
               bundle: Path = REPO / "sql/migrations") -> Path:
        path = self.tmp / "deploy.yaml"
        path.write_text(
            f"bundles: {{main: {bundle}}}\nverify_dir: {REPO / 'sql/verify'}\n"
            f"backup: {{bucket: {self.stack_env['BACKUP_BUCKET']}, prefix: {self.prefix}, restore_check: true}}\n"
            f"gate:\n  timeout: 2m\n  commands:\n{gate}"
            f"windows: {windows}\napproval: {{manual_runs: form, scheduled_runs: required}}\n"
            f"slack: {{channel: '{slack_channel()}'}}\n{extra}")
        return path

    def command(self, conf: dict, config: Path, approve: str | None, reject: str | None) -> list[str]:
        cmd = [sys.executable, str(self.script), "--dag-id", self.dag_id, "--home",
               str(self.home), "--config", str(config), "--conf", json.dumps(conf),
               "--result", str(self.tmp / "result.json")]
        if approve:
            cmd += ["--approve-as", approve]
        if reject:
            cmd += ["--reject-as", reject]
        return cmd

    def env(self) -> dict[str, str]:
        return {**os.environ, "AIRFLOW_CONN_STAGING_DB": self.targets["staging"],
                "AIRFLOW_CONN_PRODUCTION_DB": self.targets["production"], **self.extra_env}

    def run(self, conf: dict | None = None, config: Path | None = None, approve: str | None = None,
            reject: str | None = None) -> Run:
        result = self.tmp / "result.json"
        result.unlink(missing_ok=True)
        command = self.command(conf or {}, config or self.config(), approve, reject)
        if self.zygote:
            proc = self.zygote.run(Path(command[1]), command[2:], self.env(), self.tmp / "run", timeout=600)
        else:
            proc = subprocess.run(command, env=self.env(), capture_output=True, text=True, timeout=600, cwd=REPO)
        return Run(proc.returncode, proc.stdout + proc.stderr,
                   json.loads(result.read_text()) if result.exists() else {"tasks": {}}, self.home)

    def s3(self):
        from schema_deploy.backups.store import default_s3_client

        os.environ.update({k: v for k, v in self.stack_env.items() if k.startswith("AWS_")})
        return default_s3_client()

    def keys(self) -> list[str]:
        pages = self.s3().get_paginator("list_objects_v2").paginate(Bucket=self.stack_env["BACKUP_BUCKET"],
                                                                     Prefix=self.prefix + "/")
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def object(self, uri: str) -> bytes:
        from schema_deploy.backups.store import parse_s3_uri

        bucket, key = parse_s3_uri(uri)
        return self.s3().get_object(Bucket=bucket, Key=key)["Body"].read()


def slack_channel() -> str:
    """The Slack channel of this pytest process's runs (DagRunner.config writes it into deploy.yaml):
    messages posted through the Web API are told apart by channel, as webhook ones are by path."""
    from tests.conftest import worker_id

    return f"#deploys-{worker_id()}"


class Slack:
    """Messages the Slack stand-in recorded since this object was made, of this pytest process:
    posted to its webhook (stack_env's SLACK_WEBHOOK_URL, one per process) or to its channel."""

    def __init__(self, stack_env: dict[str, str]) -> None:
        from slack_standin import channel_id_for

        self.path = Path(stack_env["SLACK_MESSAGES_FILE"])
        self.webhook = urlsplit(stack_env["SLACK_WEBHOOK_URL"]).path
        self.channel = channel_id_for(slack_channel())
        self.start = len(self.path.read_text().splitlines()) if self.path.exists() else 0

    def records(self) -> list[dict]:
        lines = self.path.read_text().splitlines()[self.start:] if self.path.exists() else []
        return [r for r in map(json.loads, lines)
                if (r["path"] == self.webhook if r["kind"] == "webhook" else r["channel"] == self.channel)]

    def texts(self) -> str:
        """What the channel shows: each message's text and blocks (not the stand-in's request record)."""
        return "\n".join(json.dumps({k: r.get(k) for k in ("text", "blocks")}) for r in self.records())


def fingerprint(url: str):
    with psycopg.connect(url) as conn:
        return schema_fingerprint(conn)


def has_audit_table(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT to_regclass('schema_deploy.audit_events') IS NOT NULL").fetchone()[0]


# --- the REST API of a running Airflow (airflow_services) -----------------------------------

def stack_secrets(stack_env: dict[str, str]) -> dict[str, str]:
    """What must never reach a task log, by a name that can be printed."""
    secrets = {f"{env.lower()} role password": unquote(urlsplit(stack_env[f"{env}_DATABASE_URL"]).password or "")
               for env in ("STAGING", "PRODUCTION")}
    secrets["AWS_SECRET_ACCESS_KEY"] = stack_env["AWS_SECRET_ACCESS_KEY"]
    secrets["Slack webhook token"] = stack_env["SLACK_WEBHOOK_URL"].rstrip("/").rsplit("/", 1)[-1]
    secrets["SLACK_API_TOKEN"] = stack_env["SLACK_API_TOKEN"]
    assert all(len(v) >= 8 for v in secrets.values())
    return secrets


def masked(text: str, secrets: dict[str, str]) -> str:
    for name, value in secrets.items():
        text = text.replace(value, f"<{name}>")
    return text


def wait_for(what: str, check, timeout: float, every: float = 2.0, explain=lambda: ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (result := check()) is not None:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{explain()}")


def import_errors(api: httpx.Client) -> list[str]:
    """The DAG files that do not import (a run cannot finish while its DAG has one)."""
    return [f"{e['filename']}: {e['stack_trace'].strip().splitlines()[-1]}"
            for e in api.get("/api/v2/importErrors").json()["import_errors"]]


def run_path(run_id: str, dag_id: str = "deploy_schema") -> str:
    return f"/api/v2/dags/{dag_id}/dagRuns/{quote(run_id, safe='')}"


def task_instances(api: httpx.Client, run_id: str, dag_id: str = "deploy_schema") -> dict[str, dict]:
    resp = api.get(f"{run_path(run_id, dag_id)}/taskInstances", params={"limit": 100})
    resp.raise_for_status()
    return {ti["task_id"]: ti for ti in resp.json()["task_instances"]}


def task_logs(api: httpx.Client, run_id: str, ti: dict) -> list[str]:
    """Every try's full log as the API serves it (JSON: the events with all their fields)."""
    tries = []
    for attempt in range(1, ti["try_number"] + 1):
        resp = api.get(f"{run_path(run_id, ti['dag_id'])}/taskInstances/{ti['task_id']}/logs/{attempt}",
                       params={"full_content": "true"}, headers={"Accept": "application/json"})
        tries.append(resp.text if resp.status_code == 200 else "")
    return tries


def events(log: str) -> list[str]:
    """The event lines of one try's log."""
    try:
        return [str(e.get("event", e)) if isinstance(e, dict) else str(e) for e in json.loads(log)["content"]]
    except (ValueError, KeyError, TypeError):
        return []


@contextmanager
def airflow_services(home: Path, config: Path, targets: dict[str, str], timeout_s: float = 600,
                     executor: str = "local", fleet_env: Path | None = None,
                     extra_env: dict[str, str] | None = None) -> Iterator[dict]:
    """The four Airflow services (devstack/airflow_local.py) on a free port, against `targets` (with
    `executor="celery"` also a worker per environment; `fleet_env`: deploy_fleet's member connections,
    airflow_local's --fleet-env; `extra_env`: e.g. airflow_local's test-only DEVSTACK_* knobs); yields the URL, the admin's password and the supervisor's state
    (pids, workers); stopped after, asserting no process is left."""
    from airflow_local import airflow_processes, free_port, read_state

    port = free_port()
    env = {**os.environ, "AIRFLOW_CONN_STAGING_DB": targets["staging"],
           "AIRFLOW_CONN_PRODUCTION_DB": targets["production"],
           "DEVSTACK_DAG_REPARSE_S": "3600",  # the DAG files do not change while a test runs: parsed once
           **(extra_env or {})}
    try:
        t0 = time.monotonic()
        start = subprocess.run([sys.executable, str(AIRFLOW_LOCAL), "start", "--background", "--no-seed", "--home",
                                str(home), "--port", str(port), "--config", str(config), "--executor", executor]
                               + (["--fleet-env", str(fleet_env)] if fleet_env else []),
                               env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        assert start.returncode == 0, start.stdout[-4000:] + start.stderr[-2000:]
        print(f"services ready after {time.monotonic() - t0:.1f} s")
        yield {"url": f"http://127.0.0.1:{port}", "home": home, "state": read_state(home),
               "password": json.loads((home / "passwords.json").read_text())["admin"]}
    finally:
        stop = subprocess.run([sys.executable, str(AIRFLOW_LOCAL), "stop", "--home", str(home)], env=env, cwd=REPO,
                              capture_output=True, text=True, timeout=180)
        left = airflow_processes(home.resolve())
        if executor == "celery":
            from airflow_env import stack_env
            from airflow_local import drop_metadata_database

            drop_metadata_database(stack_env(), home.resolve())
        assert stop.returncode == 0 and not left, (stop.stdout + stop.stderr, [p.cmdline() for p in left])


def chrome(tmp_path: Path, size: str = "1400,1100"):
    """Headless Chromium (Debian's chromium + chromedriver) with a private profile under `tmp_path`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = os.environ.get("CHROME_BIN") or shutil.which("chromium")
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail("chromium and chromedriver are needed for the browser test: run devstack/ensure_chromium.sh "
                    "as root (apt-get install -y --no-install-recommends chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={size}", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver))
