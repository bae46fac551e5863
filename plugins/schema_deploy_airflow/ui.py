"""The "Schema deployments" page: a FastAPI app the Airflow API server mounts at `/schema-deploy`.

Every route requires an authenticated Airflow user: the app-wide dependency is
`airflow.api_fastapi.core_api.security.requires_authenticated()` (which resolves
`GetUserDep`, i.e. `get_user`: the `Authorization: Bearer <JWT>` header, or the UI's
`_token` cookie), because Airflow 3.3 mounts plugin apps without any authentication
of their own. No token: 401; an invalid one: 403. OpenAPI docs are switched off, so
nothing under the prefix is served anonymously.
A browser asking for the page gets that status with a link to Airflow's login page
(`next` back to the page).

Routes (GET; JSON unless said otherwise):

* `/schema-deploy/` — the HTML page (vanilla JS fetching the four endpoints below);
* `/schema-deploy/api/matrix` — `{bundle, environments: [{name, database, reachable, error,
  counts, schema_digest}], schemas_match, migrations: [{name, checksum, in_bundle,
  environments: {staging|production: {state: applied|pending|failed|drifted|unknown,
  detail, ledger_checksum, applied_at, applied_steps, logs}}}]}`;
* `/schema-deploy/api/runs?limit=20` — `{runs: [{dag_id, run_id, state, run_type,
  start_date, end_date, triggered_by, url, path (the url's root-relative part, the page's link),
  tasks: {task id: state}, source: airflow|audit only,
  summary: {outcome, decision, failed_at, targets, backup, verdict}, document: {uri, sha256, record,
  error} (the record the run kept in S3), audit: [{id, environment, kind, recorded_at, row_hash,
  outcome, decision, effect, approver, backup_uri, release, release_uri, migrations, record}]}],
  audit_errors: {environment: message}}` (DAGs deploy_schema and rollback_schema);
* `/schema-deploy/api/backups` — `{uri, error, count, backups: [{uri, environment,
  database, run_id, created, state, complete, verified, verification_state, verified_at,
  size, sha256, total_rows, ...}]}` listed from the backup_s3 connection's bucket at the
  configured prefix (deploy.yaml `backup:`);
* `/schema-deploy/api/audit` — `{environments: [{name, state: ok|broken|no trail|error,
  message, rows_checked, head, broken, ...}]}` from `audit.verify_chain`;
* `/schema-deploy/api/fleets?limit=20` — `{root, error, message, fleets, runs: [{fleet, run_id,
  source: record|live, outcome, counts, started, uri, error}]}`: deploy_fleet runs with a fleet
  record under the store's PREFIX/fleets/, and the ones in progress (no record yet) from Airflow;
* `/schema-deploy/api/fleets/{fleet}/runs/{run_id}?state=&q=&wave=` — `{fleet, run_id, source,
  outcome, release, waves, counts, total, shown, filters, rows: [{member, state: done|failed|
  pending|not attempted|skipped by window|dry run, recorded_state, wave, seconds, started, ended,
  tries, error, reason, next_window, attributes}]}`; `state` takes view states separated by
  commas, `q` text in a member's name, error, reason or attributes, `wave` a wave's number (0 first);
* `/schema-deploy/api/fleets/{fleet}/runs/{run_id}/csv?…` — the same rows as a CSV download
  (`fleet-<fleet>-<run id>.csv`).
* `/schema-deploy/api/backfills` — `{backfills: [{environment, id, table, state, rows_done, rows_estimated,
  percent, rows_per_s, eta_s, batch_rows, batches, wal_bytes, pauses, paused_because, updated_at}], errors}`
  from each environment's `schema_deploy.backfills`.
An unknown fleet or run, or no records at all, is a 404, a bad filter a 400, an unusable store a
502; each with `{detail}` saying what to do.

The one write: `POST /schema-deploy/api/backfills/{environment}/{backfill}/pause` (see `pause_backfill`).

The logic lives in `schema_deploy.views.overview` and `schema_deploy.views.fleet`; this module only
adapts Airflow (connections, its runs and their XComs, authentication).
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_access_dag, requires_authenticated
from schema_deploy.views.fleet import FleetViewError

URL_PREFIX = "/schema-deploy"
FLEET_DAG = "deploy_fleet"
FLEET_MEMBERS_TASK, FLEET_WAVE_TASKS = "fleet_members", ("canary", "waves", "windowed")  # deploy_fleet's task ids
PAGE = Path(__file__).with_name("ui_page.html")

app = FastAPI(title="schema-deploy", description=__doc__, docs_url=None, redoc_url=None, openapi_url=None,
              dependencies=[Depends(requires_authenticated())])


@app.exception_handler(HTTPException)
async def refused(request: Request, exc: HTTPException):
    """A browser refused the page (not the JSON) gets the same status with a link to Airflow's login."""
    root = request.scope.get("root_path", "").rstrip("/") or URL_PREFIX
    page_asked = request.url.path.rstrip("/") == root and "text/html" in request.headers.get("accept", "")
    if exc.status_code not in (401, 403) or not page_asked:
        return await http_exception_handler(request, exc)
    from airflow.api_fastapi.app import get_auth_manager

    login = get_auth_manager().get_url_login(next_url=f"{root}/")
    body = (f"<!doctype html><title>Schema deployments: sign in</title><p>{escape(str(exc.detail))}. "
            f"<a id='login' href='{escape(login, quote=True)}'>Sign in to Airflow</a> to see schema deployments.</p>")
    return HTMLResponse(body, status_code=exc.status_code)


@app.exception_handler(FleetViewError)
async def fleet_view_refused(request: Request, exc: FleetViewError) -> JSONResponse:
    """What the fleet view cannot show: its status (404 not there, 400 bad filter) and what to do."""
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


def _urls_or_errors() -> tuple[dict[str, str], dict[str, str]]:
    from schema_deploy.views.overview import error_text
    from schema_deploy_airflow.connections import DB_CONNECTIONS, database_url

    urls, errors = {}, {}
    for env, conn_id in DB_CONNECTIONS.items():
        try:
            urls[env] = database_url(conn_id)
        except Exception as exc:  # a missing or incomplete connection: named on the page
            errors[env] = f"connection {conn_id!r}: {error_text(exc)}"
    return urls, errors


def airflow_runs(session, limit: int) -> list[dict[str, Any]]:
    """The newest deploy/rollback runs from Airflow's metadata database."""
    from urllib.parse import quote, urlsplit

    from sqlalchemy import select

    from airflow.configuration import conf
    from airflow.models.dagrun import DagRun
    from schema_deploy.views.overview import DAG_IDS

    base = conf.get("api", "base_url", fallback="").rstrip("/")
    query = (select(DagRun).where(DagRun.dag_id.in_(DAG_IDS))
             .order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(limit))
    runs = []
    found = list(session.scalars(query))
    tasks, waits = task_states(session, found), health_waits(session, found)
    for run in found:
        runs.append({"dag_id": run.dag_id, "run_id": run.run_id, "state": str(run.state) if run.state else None,
                     "tasks": tasks.get((run.dag_id, run.run_id), {}),
                     "health_wait": waits.get((run.dag_id, run.run_id)),
                     "run_type": str(run.run_type), "triggered_by": getattr(run, "triggering_user_name", None),
                     "start_date": (run.start_date or run.run_after).isoformat() if (run.start_date or run.run_after)
                     else None,
                     "end_date": run.end_date.isoformat() if run.end_date else None,
                     "url": f"{base}/dags/{run.dag_id}/runs/{quote(run.run_id, safe='')}",
                     # Root-relative: the page's links stay on the host and port the browser reached
                     # Airflow on (api.base_url may name another, e.g. localhost vs 127.0.0.1).
                     "path": f"{urlsplit(base).path}/dags/{run.dag_id}/runs/{quote(run.run_id, safe='')}"})
    return runs


def task_states(session, runs: list[Any]) -> dict[tuple[str, str], dict[str, str | None]]:
    """{(dag id, run id): {task id: state}} of `runs`, in one query (the page's live decision)."""
    from sqlalchemy import select, tuple_

    from airflow.models.taskinstance import TaskInstance

    if not runs:
        return {}
    query = select(TaskInstance.dag_id, TaskInstance.run_id, TaskInstance.task_id, TaskInstance.state).where(
        tuple_(TaskInstance.dag_id, TaskInstance.run_id).in_([(r.dag_id, r.run_id) for r in runs]),
        TaskInstance.map_index == -1)
    states: dict[tuple[str, str], dict[str, str | None]] = {}
    for dag_id, run_id, task_id, state in session.execute(query):
        states.setdefault((dag_id, run_id), {})[task_id] = str(state) if state else None
    return states


def health_waits(session, runs: list[Any]) -> dict[tuple[str, str], dict[str, dict[str, Any]]]:
    """{(dag id, run id): {gated task id: the health gate's wait, as that task keeps it}} of `runs` (the
    page's "waits for the database's health" and why), in one query."""
    from sqlalchemy import select, tuple_

    from airflow.models.xcom import XComModel
    from schema_deploy.views.overview import HEALTH_GATED
    from schema_deploy_airflow.task_ids import HEALTH_WAIT_KEY

    if not runs:
        return {}
    query = select(XComModel.dag_id, XComModel.run_id, XComModel.task_id, XComModel.value).where(
        tuple_(XComModel.dag_id, XComModel.run_id).in_([(r.dag_id, r.run_id) for r in runs]),
        XComModel.task_id.in_({t for gated in HEALTH_GATED.values() for t in gated}),
        XComModel.key == HEALTH_WAIT_KEY, XComModel.map_index == -1)
    waits: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for row in session.execute(query):
        value = XComModel.deserialize_value(row)
        if isinstance(value, dict):
            waits.setdefault((row.dag_id, row.run_id), {})[row.task_id] = value
    return waits


@app.get("/", response_class=HTMLResponse)
def page(request: Request, user: GetUserDep) -> HTMLResponse:
    """The page; it fetches the JSON endpoints with the same cookie."""
    base = request.scope.get("root_path", "").rstrip("/") or URL_PREFIX
    html = PAGE.read_text().replace("{{base}}", escape(base, quote=True)).replace("{{user}}", escape(user.get_name()))
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@app.get("/api/matrix")
def matrix() -> dict[str, Any]:
    """Migrations of the bundle × environments."""
    from schema_deploy.bundle.discover import load_bundle
    from schema_deploy.config import settings
    from schema_deploy.views.overview import read_matrix

    urls, errors = _urls_or_errors()
    cfg = settings.load_current()
    result = read_matrix(load_bundle(cfg.migrations), urls, name=cfg.default_bundle)
    result["environments"] += [{"name": env, "reachable": False, "error": msg} for env, msg in errors.items()]
    return result


@app.get("/api/runs")
def runs(session: SessionDep, limit: int = Query(20, ge=1, le=200)) -> dict[str, Any]:
    """Recent deploy_schema / rollback_schema runs with their audit records: chain rows, and the
    record each run kept in the store (failed, refused and nothing-to-do runs have no chain row)."""
    from schema_deploy.views.overview import read_runs, run_documents

    urls, errors = _urls_or_errors()
    root, s3, store_error = _fleet_store()
    result = read_runs(airflow_runs(session, limit), urls, limit, run_documents(s3, root) if s3 is not None else None)
    result["audit_errors"].update(errors)
    if store_error:
        result["audit_errors"]["S3"] = f"{root}: {store_error}"
    return result


@app.get("/api/backups")
def backups() -> dict[str, Any]:
    """Backups in S3 (backup_s3 connection, deploy.yaml's bucket and prefix) with verification state."""
    from schema_deploy.config import settings
    from schema_deploy.views.overview import error_text, read_backups
    from schema_deploy_airflow.connections import s3_client

    cfg = settings.load_current()
    uri = f"s3://{cfg.backup_bucket}/{cfg.backup_prefix}".rstrip("/")
    try:
        s3 = s3_client()
    except Exception as exc:  # the connection is missing or unusable
        return {"uri": uri, "error": error_text(exc), "backups": []}
    return read_backups(s3, uri)


@app.get("/api/backfills")
def backfills() -> dict[str, Any]:
    """Each environment's declared backfills: state, rows done of estimated, rate, ETA, batch, why paused."""
    from schema_deploy.views.overview import read_backfills

    urls, errors = _urls_or_errors()
    result = read_backfills(urls)
    result["errors"].update(errors)
    return result


# A write from the page: the caller must hold edit rights on deploy_schema (Airflow's auth manager), and
# send this header: a browser sends a custom header cross-site only after a CORS preflight, which this app
# never grants, so a page elsewhere cannot make a signed-in user's browser pause a backfill.
WRITE_HEADER = "X-Schema-Deploy-Action"


@app.post("/api/backfills/{environment}/{backfill}/pause",
          dependencies=[Depends(requires_access_dag(method="PUT", param_dag_id="deploy_schema"))])
def pause_backfill(environment: str, backfill: str, request: Request, user: GetUserDep) -> dict[str, Any]:
    """Pause one environment's backfill (its checkpoint's request, and an audit row in that environment)."""
    from urllib.parse import urlsplit

    from schema_deploy.backfill.errors import BackfillNotFound
    from schema_deploy.views.overview import error_text, pause_backfill as pause

    if request.headers.get(WRITE_HEADER) != "pause":
        raise HTTPException(403, f"refused: a pause needs the header {WRITE_HEADER}: pause, which the page sends "
                                 "(protection against requests made from other sites)")
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        raise HTTPException(403, f"refused: a pause asked from another site ({origin})")
    urls, errors = _urls_or_errors()
    if environment not in urls:
        raise HTTPException(404, errors.get(environment) or f"no environment {environment!r}: one of {sorted(urls)}")
    try:
        return pause(urls[environment], environment, backfill, user.get_name(), via="the Schema deployments page")
    except BackfillNotFound as exc:
        raise HTTPException(404, exc.message) from None
    except Exception as exc:  # the database: said, never a stack trace
        raise HTTPException(502, f"{environment}: {error_text(exc)}") from None


@app.get("/api/audit")
def audit_status() -> dict[str, Any]:
    """The audit chain's state in each environment."""
    from schema_deploy.views.overview import read_audit

    urls, errors = _urls_or_errors()
    result = read_audit(urls)
    result["environments"] += [{"name": env, "state": "error", "message": msg} for env, msg in errors.items()]
    return result


# --- the fleet view ---------------------------------------------------------------------------

def _fleet_store() -> tuple[str, Any, str | None]:
    """(s3://BUCKET/PREFIX of deploy.yaml's store, the backup_s3 client or None, the error or None)."""
    from schema_deploy.config import settings
    from schema_deploy.views.overview import error_text
    from schema_deploy_airflow.connections import s3_client

    cfg = settings.load_current()
    root = f"s3://{cfg.backup_bucket}/{cfg.backup_prefix}".rstrip("/")
    try:
        return root, s3_client(), None
    except Exception as exc:  # the connection is missing or unusable
        return root, None, error_text(exc)


def _run_url(run_id: str) -> str:
    from urllib.parse import quote

    from airflow.configuration import conf

    return f"{conf.get('api', 'base_url', fallback='').rstrip('/')}/dags/{FLEET_DAG}/runs/{quote(run_id, safe='')}"


def fleet_xcoms(session, run_id: str) -> dict[tuple[str, str], Any]:
    """What a deploy_fleet run's member tasks pushed so far: {(task id, key): value}."""
    from sqlalchemy import select

    from airflow.models.xcom import XComModel
    from schema_deploy_airflow.task_ids import FLEET_RUN_KEY as RUN_KEY

    query = select(XComModel).where(XComModel.dag_id == FLEET_DAG, XComModel.run_id == run_id,
                                    XComModel.map_index == -1,
                                    XComModel.task_id.in_((FLEET_MEMBERS_TASK, *FLEET_WAVE_TASKS)),
                                    XComModel.key.in_(("return_value", RUN_KEY)))
    return {(x.task_id, x.key): XComModel.deserialize_value(x) for x in session.scalars(query)}


def live_view(session, run) -> dict[str, Any]:
    """A deploy_fleet run's view from its XComs (views.fleet.view_of_live)."""
    from schema_deploy.views.fleet import view_of_live
    from schema_deploy_airflow.task_ids import FLEET_RUN_KEY as RUN_KEY

    got = fleet_xcoms(session, run.run_id)
    members = got.get((FLEET_MEMBERS_TASK, "return_value"))
    view = view_of_live(run.run_id, members if isinstance(members, dict) else None,
                        [got.get((t, RUN_KEY)) for t in FLEET_WAVE_TASKS],
                        str(run.state) if run.state else None, _run_url(run.run_id))
    if not view["fleet"]:  # fleet_members has not run yet: the form's fleet, if the trigger gave one
        view["fleet"] = (run.conf or {}).get("fleet") or None
    view["started"] = run.start_date.isoformat() if run.start_date else None
    view["triggered_by"] = getattr(run, "triggering_user_name", None)
    return view


def live_fleet_runs(session, limit: int, run_id: str | None = None) -> list[dict[str, Any]]:
    """deploy_fleet runs Airflow has not finished (queued or running), or the one `run_id`, as views."""
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun

    query = select(DagRun).where(DagRun.dag_id == FLEET_DAG)
    query = (query.where(DagRun.run_id == run_id) if run_id is not None
             else query.where(DagRun.state.in_(("queued", "running"))))
    query = query.order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(limit)
    return [live_view(session, run) for run in session.scalars(query)]


@app.get("/api/fleets")
def fleet_runs(session: SessionDep, limit: int = Query(20, ge=1, le=200)) -> dict[str, Any]:
    """Fleet runs: those with a record in S3 and those in progress in Airflow, newest first."""
    from schema_deploy.backups.store import segment
    from schema_deploy.views.fleet import NoFleetRecords, counts, fleets_root, list_records
    from schema_deploy.views.overview import error_text

    root, s3, error = _fleet_store()
    recorded: list[dict[str, Any]] = []
    if s3 is not None:
        try:
            recorded = list_records(s3, root, limit)
        except Exception as exc:  # an unreachable endpoint, a missing bucket: shown, never a 500
            error = error_text(exc)
    have = {(r["fleet"], segment(r["run_id"] or "")) for r in recorded}
    live = [{"fleet": v["fleet"], "run_id": v["run_id"], "source": "live", "outcome": v["outcome"],
             "counts": counts(v["rows"]), "started": v["started"], "uri": None, "url": v["url"], "error": None}
            for v in live_fleet_runs(session, limit) if (v["fleet"], segment(v["run_id"])) not in have]
    runs = live + recorded
    bucket, base = fleets_root(root)
    message = None if runs or error else NoFleetRecords(f"s3://{bucket}/{base}").message
    return {"root": f"s3://{bucket}/{base}", "error": error, "message": message,
            "fleets": sorted({r["fleet"] for r in runs if r["fleet"]}), "runs": runs}


def _fleet_view(session, fleet: str, run_id: str) -> dict[str, Any]:
    """The run's record; else the run as Airflow has it (in progress: no record yet); else the
    record's refusal (404), or the store's error (502)."""
    from schema_deploy.views.fleet import read_record
    from schema_deploy.views.overview import error_text

    root, s3, error = _fleet_store()
    missing: FleetViewError | None = None
    try:
        if s3 is not None:
            return read_record(s3, root, fleet, run_id)
    except FleetViewError as exc:
        if exc.status != 404:
            raise
        missing = exc
    except Exception as exc:  # S3 trouble: named below unless Airflow has the run
        error = error_text(exc)
    live = [v for v in live_fleet_runs(session, 1, run_id) if v["fleet"] in (fleet, None)]
    if live:
        return {**live[0], "fleet": fleet}
    if missing is not None:
        raise missing
    raise HTTPException(502, f"the fleet record of {fleet} {run_id} cannot be read from {root}: {error}")


@app.get("/api/fleets/{fleet}/runs/{run_id}")
def fleet_run(session: SessionDep, fleet: str, run_id: str, state: str | None = None, q: str | None = None,
              wave: str | None = None) -> dict[str, Any]:
    """One fleet run's members × state, filtered by state, text and wave."""
    from schema_deploy.views.fleet import filtered

    return filtered(_fleet_view(session, fleet, run_id), state, q, wave)


@app.get("/api/fleets/{fleet}/runs/{run_id}/csv")
def fleet_run_csv(session: SessionDep, fleet: str, run_id: str, state: str | None = None, q: str | None = None,
                  wave: str | None = None) -> Response:
    """The same rows as a CSV download."""
    from schema_deploy.views.fleet import csv_filename, filtered, to_csv

    view = filtered(_fleet_view(session, fleet, run_id), state, q, wave)
    return Response(to_csv(view), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{csv_filename(fleet, run_id)}"',
                             "Cache-Control": "no-store"})
