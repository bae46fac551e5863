"""Run deploy_schema once with `dag.test()` on the local stack, answering the approval through the REST API.

This is what `make demo` and the DAG tests run. `dag.test()` executes the real DAG
(every task, the deferrable window wait inline, the callbacks) in this process
against a private SQLite metadata database. The human-in-the-loop approval is not
skipped: a responder thread waits for `approve_production` to ask, then answers it
through Airflow's own route (`PATCH .../taskInstances/{task}/-1/hitlDetails`) of the
API app, as the user named by --approve-as / --reject-as, exactly like a click in
the UI's "Required actions". Without either option nobody answers (the run waits).

Writes a JSON result (run id, state, per-task state/duration/XCom) to --result.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "plugins"), str(REPO / "devstack"), str(REPO)]

from airflow_env import airflow_env, stack_env  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", type=Path, default=REPO / ".devstack" / "airflow-test",
                   help="AIRFLOW_HOME for this run (SQLite metadata database inside)")
    p.add_argument("--config", type=Path, default=REPO / "deploy.yaml", help="deploy.yaml to use")
    p.add_argument("--conf", default="{}", help="the run's trigger-form values, as JSON")
    p.add_argument("--dag-id", default="deploy_schema", help="the DAG to run (default deploy_schema)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--approve-as", metavar="USER", help="answer the approval with Approve as USER")
    who.add_argument("--reject-as", metavar="USER", help="answer the approval with Reject as USER")
    p.add_argument("--result", type=Path, help="write the run's outcome here as JSON")
    p.add_argument("--migrate-only", action="store_true", help="only create the metadata database, then exit")
    return p.parse_args(argv)


class Responder(threading.Thread):
    """Answers deploy_schema's pending approval through the API app, like a person in the UI."""

    def __init__(self, user: str, option: str, dag_id: str = "deploy_schema") -> None:
        super().__init__(daemon=True, name="approval-responder")
        self.user, self.option, self.dag_id = user, option, dag_id
        self.answered: list[dict] = []
        self.error: str | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except Exception as exc:  # noqa: BLE001 - reported by the caller, never kills the run
            self.error = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        # Wait cheaply (one query a second) for a task awaiting input; build the API app only
        # then: importing it while tasks run would hold Python's import lock against them.
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState

        while not self.stop.wait(1.0):
            with create_session() as session:
                waiting = session.query(TaskInstance).filter(
                    TaskInstance.dag_id == self.dag_id,
                    TaskInstance.state == TaskInstanceState.AWAITING_INPUT).count()
            if waiting:
                self.answer()

    def answer(self) -> None:
        from fastapi.testclient import TestClient

        from airflow.api_fastapi.app import create_app, get_auth_manager
        from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

        client = TestClient(create_app("core"))
        token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=self.user, role="admin"))
        headers = {"Authorization": f"Bearer {token}"}
        r = client.get("/api/v2/dags/~/dagRuns/~/hitlDetails", params={"dag_id": self.dag_id}, headers=headers)
        r.raise_for_status()
        for detail in r.json().get("hitl_details", []):
            if detail.get("response_received"):
                continue
            ti = detail["task_instance"]
            path = (f"/api/v2/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                    f"{ti['task_id']}/{ti['map_index']}/hitlDetails")
            print(f"[demo approver] {self.user} answers {ti['task_id']} with {self.option} through "
                  f"PATCH {path}: {detail.get('subject')}", file=sys.stderr, flush=True)
            resp = client.patch(path, json={"chosen_options": [self.option], "params_input": {}}, headers=headers)
            resp.raise_for_status()
            self.answered.append({"task_id": ti["task_id"], "option": self.option, "user": self.user,
                                  "status": resp.status_code})


def outcome(dag_run) -> dict:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    tasks = {}
    with create_session() as session:
        for ti in dag_run.get_task_instances(session=session):
            rows = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=ti.dag_id,
                                                      task_ids=ti.task_id)).all()
            values = {row.key: XComModel.deserialize_value(row) for row in rows}
            tasks[ti.task_id] = {
                "state": str(ti.state) if ti.state else None,
                "try_number": ti.try_number,
                "seconds": round(ti.duration, 3) if ti.duration is not None else None,
                "xcom": values.pop("return_value", None),
                "xcom_keys": values,
            }
    return {"run_id": dag_run.run_id, "state": str(dag_run.state), "tasks": tasks}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    home = args.home.resolve()
    env = airflow_env(home, stack_env(), args.config.resolve())
    env.update({k: v for k, v in os.environ.items() if k.startswith("AIRFLOW_CONN_")})  # caller's override the stack's
    os.environ.clear()
    os.environ.update(env)
    if not (home / "airflow.db").exists():
        subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True)
    if args.migrate_only:
        return 0

    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    if bag.import_errors:
        print(f"{args.dag_id} does not load: {bag.import_errors}", file=sys.stderr)
        return 2
    dag = bag.get_dag(args.dag_id)
    responder = None
    if args.approve_as or args.reject_as:
        responder = Responder(args.approve_as or args.reject_as, "Approve" if args.approve_as else "Reject",
                              args.dag_id)
        responder.start()
    try:
        dag_run = dag.test(run_conf=json.loads(args.conf))
    finally:
        if responder:
            responder.stop.set()
    result = outcome(dag_run)
    result["approvals"] = responder.answered if responder else []
    result["responder_error"] = responder.error if responder else None
    if args.result:
        args.result.write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps({k: result[k] for k in ("run_id", "state")}), flush=True)
    return 0 if result["state"] == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
