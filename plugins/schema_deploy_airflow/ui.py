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
  start_date, end_date, triggered_by, url, source: airflow|audit only, audit: [{id,
  environment, kind, recorded_at, row_hash, outcome, approver, backup_uri, release, release_uri, migrations,
  record}]}], audit_errors: {environment: message}}` (DAGs deploy_schema and rollback_schema);
* `/schema-deploy/api/backups` — `{uri, error, count, backups: [{uri, environment,
  database, run_id, created, state, complete, verified, verification_state, verified_at,
  size, sha256, total_rows, ...}]}` listed from the backup_s3 connection's bucket at the
  configured prefix (deploy.yaml `backup:`);
* `/schema-deploy/api/audit` — `{environments: [{name, state: ok|broken|no trail|error,
  message, rows_checked, head, broken, ...}]}` from `audit.verify_chain`.

The logic lives in `schema_deploy.overview`; this module only adapts Airflow
(connections, its runs, authentication).
"""
from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException

from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import GetUserDep, requires_authenticated

URL_PREFIX = "/schema-deploy"
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


def _urls_or_errors() -> tuple[dict[str, str], dict[str, str]]:
    from schema_deploy.overview import error_text
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
    from urllib.parse import quote

    from sqlalchemy import select

    from airflow.configuration import conf
    from airflow.models.dagrun import DagRun
    from schema_deploy.overview import DAG_IDS

    base = conf.get("api", "base_url", fallback="").rstrip("/")
    query = (select(DagRun).where(DagRun.dag_id.in_(DAG_IDS))
             .order_by(DagRun.run_after.desc(), DagRun.id.desc()).limit(limit))
    runs = []
    for run in session.scalars(query):
        runs.append({"dag_id": run.dag_id, "run_id": run.run_id, "state": str(run.state) if run.state else None,
                     "run_type": str(run.run_type), "triggered_by": getattr(run, "triggering_user_name", None),
                     "start_date": (run.start_date or run.run_after).isoformat() if (run.start_date or run.run_after)
                     else None,
                     "end_date": run.end_date.isoformat() if run.end_date else None,
                     "url": f"{base}/dags/{run.dag_id}/runs/{quote(run.run_id, safe='')}"})
    return runs


@app.get("/", response_class=HTMLResponse)
def page(request: Request, user: GetUserDep) -> HTMLResponse:
    """The page; it fetches the JSON endpoints with the same cookie."""
    base = request.scope.get("root_path", "").rstrip("/") or URL_PREFIX
    html = PAGE.read_text().replace("{{base}}", escape(base, quote=True)).replace("{{user}}", escape(user.get_name()))
    return HTMLResponse(html, headers={"Cache-Control": "no-store"})


@app.get("/api/matrix")
def matrix() -> dict[str, Any]:
    """Migrations of the bundle × environments."""
    from schema_deploy import config
    from schema_deploy.bundle import load_bundle
    from schema_deploy.overview import read_matrix

    urls, errors = _urls_or_errors()
    result = read_matrix(load_bundle(config.load().migrations), urls)
    result["environments"] += [{"name": env, "reachable": False, "error": msg} for env, msg in errors.items()]
    return result


@app.get("/api/runs")
def runs(session: SessionDep, limit: int = Query(20, ge=1, le=200)) -> dict[str, Any]:
    """Recent deploy_schema / rollback_schema runs with their audit records."""
    from schema_deploy.overview import read_runs

    urls, errors = _urls_or_errors()
    result = read_runs(airflow_runs(session, limit), urls, limit)
    result["audit_errors"].update(errors)
    return result


@app.get("/api/backups")
def backups() -> dict[str, Any]:
    """Backups in S3 (backup_s3 connection, deploy.yaml's bucket and prefix) with verification state."""
    from schema_deploy import config
    from schema_deploy.overview import error_text, read_backups
    from schema_deploy_airflow.connections import s3_client

    cfg = config.load()
    uri = f"s3://{cfg.backup_bucket}/{cfg.backup_prefix}".rstrip("/")
    try:
        s3 = s3_client()
    except Exception as exc:  # the connection is missing or unusable
        return {"uri": uri, "error": error_text(exc), "backups": []}
    return read_backups(s3, uri)


@app.get("/api/audit")
def audit_status() -> dict[str, Any]:
    """The audit chain's state in each environment."""
    from schema_deploy.overview import read_audit

    urls, errors = _urls_or_errors()
    result = read_audit(urls)
    result["environments"] += [{"name": env, "state": "error", "message": msg} for env, msg in errors.items()]
    return result
