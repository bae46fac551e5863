"""A warm interpreter for the DAG tests: it imports Airflow once, then runs each of a pytest
process's `dag.test()` runs in a fork of itself.

Every run of devstack/run_deploy.py used to start a fresh interpreter, and a third of its CPU went
to importing Airflow (and, with an approval, the API app's routes) before its first task. Airflow
reads its settings at import time, so the fork can only stand in for a fresh process when each run
has the same settings: every run of one pytest process uses this interpreter's AIRFLOW_HOME (the
harness refills it from the migrated template before each test), and a run's own values (its
deploy.yaml, connections, trigger conf) are environment variables and arguments, which Airflow and
the DAG files read when the run needs them, in the fork. Nothing here opens the metadata database:
the fork opens its own connections.

Protocol (one request at a time, on a Unix socket): the harness sends one JSON line
`{"script", "args", "env", "cwd", "stdout", "stderr"}`; the zygote forks, answers the child's pid on
one line and, when the child has exited, its exit code (a negative signal number if killed) on
another. An empty request ends it; so does its pytest process ending. The child is a new session (its pid is its process group), runs `script` as `__main__`
with `args`, `env` and `cwd`, its output in the two files.
"""
from __future__ import annotations

import json
import os
import runpy
import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "devstack"), str(REPO / "plugins"), str(REPO)]

# What every run imports before its first task, settings-independent or read from this home's env.
PRELOAD = (
    "airflow.sdk",
    "airflow.dag_processing.dagbag",
    "airflow.models.taskinstance",
    "airflow.api_fastapi.execution_api.app",
    "airflow.sdk.execution_time.supervisor",
    "airflow.sdk.execution_time.task_runner",
    "airflow.api_fastapi.app",
    "airflow.api_fastapi.core_api.routes.public",
    "airflow.api_fastapi.core_api.routes.ui",
    "fastapi.testclient",
    "airflow.api_fastapi.execution_api.routes",
    "airflow.providers.amazon.aws.hooks.s3",
    "airflow.providers.postgres.hooks.postgres",
    "airflow.providers.slack.hooks.slack",
    "pglast",
    "psycopg",
    "schema_deploy.pipeline",
)


def child(request: dict) -> None:
    """In the fork: become the run's own process (session, files, environment, directory, argv), then
    run the script as `python script args` would. Leaves through SystemExit, so exit handlers run."""
    os.setsid()
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(out, fd)
        os.close(out)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    sys.argv = [request["script"], *request["args"]]
    runpy.run_path(request["script"], run_name="__main__")
    raise SystemExit(0)


def serve(path: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(1)
    server.settimeout(5)
    parent = os.getppid()
    print("ready", flush=True)
    while True:
        try:
            conn, _ = server.accept()
        except TimeoutError:
            if os.getppid() != parent:
                return  # its pytest process is gone (killed without closing it): so is its purpose
            continue
        conn.settimeout(None)
        with conn:
            line = conn.makefile("r").readline()
            if not line:
                return  # the harness closed without a request: its session is over
            request = json.loads(line)
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                server.close()
                conn.close()
                child(request)  # never returns
            conn.sendall(f"{pid}\n".encode())
            _, status = os.waitpid(pid, 0)
            conn.sendall(f"{os.waitstatus_to_exitcode(status)}\n".encode())


def main() -> None:
    import importlib

    socket_path = sys.argv[1]
    # Settings for this home as run_deploy.py sets them (it sets them again in each fork).
    for name in PRELOAD:
        importlib.import_module(name)
    # The in-process Execution API that dag.test() uses is one per process (in_process_api_server is
    # cached): built here, with Cadwyn's versioned routes generated, each fork inherits it ready. Only
    # the app: its transport starts a thread and the app's lifespan, which each fork does for itself.
    from airflow.sdk.execution_time.supervisor import in_process_api_server

    in_process_api_server().app._cadwyn_initialize()
    # The backup store's S3 client, from this home's `backup_s3` connection (the stack's S3, the same
    # for every run of this pytest process): cached per connection by the glue, each fork finds it made.
    # A new one costs a run ~1 s of CPU, most of it botocore reading its endpoint and service models.
    from schema_deploy_airflow.connections import s3_client

    s3_client()
    serve(socket_path)


if __name__ == "__main__":
    main()
