"""What the Airflow UI page shows: the migration matrix, runs with their audit records, backups, chains.

Pure logic and read-only database/S3 reads, no Airflow imports: the UI plugin
(`schema_deploy_airflow/ui.py`) resolves the connections and Airflow's runs and
passes them in; tests call these functions directly.

* `read_matrix`: every migration of the bundle × each environment, one cell each:
  `applied`, `pending`, `failed` (failed or interrupted, Prisma's P3009) or
  `drifted` (applied, but the ledger checksum is not the file's; or applied and
  missing from the bundle), with checksums and applied-at; plus whether the
  environments' schema fingerprints match.
* `read_runs`: recent deploy/rollback runs joined with their `schema_deploy.audit_events`
  rows (by run id), audit rows of runs Airflow no longer knows included, and with the record
  each run kept in S3 (found by run id, `record.index_key`), so a run no chain has (failed,
  refused, nothing to do) shows its record too. Each run says its outcome, its decision exactly
  (approved by X / rejected by X: reason / awaiting approval / timed out / not required /
  not reached / failed at task T), its backup and its verification verdict (`run_summary`).
* `read_backups`: backups under the configured S3 prefix with manifest facts and
  their verification state.
* `read_audit`: the chain status of each environment (`audit.verify_chain`).

Sessions are read-only with short timeouts, and every error is reported per
environment (its message scrubbed of passwords) instead of failing the page.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg

from schema_deploy.audit import chain
from schema_deploy.bundle.discover import Bundle
from schema_deploy.errors import SchemaDeployError
from schema_deploy.pg import db
from schema_deploy.pg.fingerprint import fingerprint_digest, schema_fingerprint
from schema_deploy.state import ledger
from schema_deploy.state.status import APPLIED, EDITED, FAILED, INTERRUPTED, MISSING, PENDING, Status, compute_status

APPLICATION_NAME = "schema-deploy-ui"
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_MS = 15000
# The page's four cell states, from status.py's finer ones.
CELL_STATES = {APPLIED: "applied", PENDING: "pending", FAILED: "failed", INTERRUPTED: "failed",
               EDITED: "drifted", MISSING: "drifted"}
DAG_IDS = ("deploy_schema", "rollback_schema")
KIND_TO_DAG = {"deploy": "deploy_schema", "rollback": "rollback_schema"}

Urls = Mapping[str, str]


# --- sessions --------------------------------------------------------------------------

def open_readonly(url: str) -> psycopg.Connection:
    """A read-only autocommit session with short connect and statement timeouts."""
    return db.connect(url, application_name=APPLICATION_NAME, connect_timeout=CONNECT_TIMEOUT_S,
                      settings={"default_transaction_read_only": "on", "statement_timeout": str(STATEMENT_TIMEOUT_MS)})


def error_text(exc: BaseException, url: str | None = None) -> str:
    """An error for the page: one line, no password (libpq may echo pieces of the URL)."""
    return db.mask_password((str(exc).strip() or type(exc).__name__).splitlines()[0], url)


def describe(conn: psycopg.Connection) -> str:
    return f"{conn.info.dbname} on {conn.info.host}:{conn.info.port}"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(timezone.utc).isoformat() if value is not None else None


# --- the matrix ------------------------------------------------------------------------

def build_matrix(bundle: Bundle, statuses: Mapping[str, Status | None]) -> list[dict[str, Any]]:
    """One row per migration (bundle order, then ledger-only names) with a cell per environment.

    A cell: state (applied|pending|failed|drifted), detail (status.py's state), the ledger's
    checksum, applied_at, applied_steps and the failure's first log line. An environment
    whose status is None (unreachable) gets `unknown` cells.
    """
    rows: dict[str, dict[str, Any]] = {m.name: {"name": m.name, "checksum": m.checksum, "in_bundle": True,
                                                "environments": {}} for m in bundle.migrations}
    for env, status in statuses.items():
        for s in (status.states if status else []):
            row = rows.setdefault(s.name, {"name": s.name, "checksum": None, "in_bundle": False, "environments": {}})
            row["environments"][env] = {
                "state": CELL_STATES.get(s.state, s.state), "detail": s.state,
                "ledger_checksum": s.ledger_checksum, "applied_at": s.applied_at,
                "applied_steps": s.applied_steps,
                "logs": s.logs.strip().splitlines()[0][:300] if s.logs and s.logs.strip() else None}
    for row in rows.values():
        for env in statuses:
            row["environments"].setdefault(env, {"state": "unknown", "detail": "environment not readable"})
    return list(rows.values())


def read_environment(url: str, bundle: Bundle) -> tuple[dict[str, Any], Status | None]:
    """(facts of one environment: database, ledger counts, schema digest or error; its Status)."""
    try:
        with open_readonly(url) as conn:
            status = compute_status(bundle, ledger.read_rows(conn))
            facts = {"database": describe(conn), "reachable": True, "error": None,
                     "ledger": ledger.ledger_exists(conn),
                     "schema_digest": fingerprint_digest(schema_fingerprint(conn))}
    except (psycopg.Error, SchemaDeployError) as exc:
        return {"reachable": False, "error": error_text(exc, url)}, None
    counts: dict[str, int] = {}
    for s in status.states:
        cell = CELL_STATES.get(s.state, s.state)
        counts[cell] = counts.get(cell, 0) + 1
    return {**facts, "counts": counts, "clean": status.clean}, status


def read_matrix(bundle: Bundle, urls: Urls, name: str | None = None) -> dict[str, Any]:
    """The matrix of `bundle` × `urls` ({environment: postgresql URL}); `name`: the bundle's declared
    name (deploy.yaml `bundles:`). The bundle's folder is shown resolved (no `..`)."""
    envs, statuses = {}, {}
    for env, url in urls.items():
        envs[env], statuses[env] = read_environment(url, bundle)
    digests = {e: f.get("schema_digest") for e, f in envs.items() if f.get("schema_digest")}
    return {"bundle": {"root": str(Path(bundle.root).resolve()), "name": name,
                       "layout": bundle.layout, "migrations": len(bundle.migrations)},
            "environments": [{"name": env, **facts} for env, facts in envs.items()],
            "schemas_match": (len(set(digests.values())) == 1) if len(digests) == len(urls) > 1 else None,
            "migrations": build_matrix(bundle, statuses)}


# --- runs and their audit records ------------------------------------------------------------

def verdict_of(record: dict[str, Any]) -> str | None:
    """The verification's verdict as the record holds it (the deploy's criteria summary; a rollback's
    checks), or why there is none."""
    states = record.get("task_states") or {}
    v = record.get("verification")
    if record.get("kind") == "rollback":
        if isinstance(v, dict):
            problems = v.get("problems") or []
            return ("verified: " + ("row counts equal the backup's manifest" if v.get("row_counts")
                                    else "the undone migrations are pending") + ", no INVALID index"
                    if not problems else "not verified: " + "; ".join(problems))
        return "verification failed (see verify_rollback's log)" if states.get("verify") == "failed" else None
    if isinstance(v, dict):
        if v.get("verdict"):
            return str(v["verdict"])
        try:
            from schema_deploy.engine.criteria import summary_of

            return summary_of(v.get("criteria"))
        except Exception:  # noqa: BLE001 - an older record's shape: its counts then
            return f"{v.get('checks')} checks, {v.get('failed')} failed"
    return "verification failed (see verify_production's log)" if states.get("verification") == "failed" else None


def backup_of(record: dict[str, Any]) -> dict[str, Any]:
    """The backups a run's record names: the deploy's backup of production; a rollback's restored
    backup and the safety backup it took first."""
    if record.get("kind") == "rollback":
        return {"restored": ((record.get("plan") or {}).get("backup") or {}).get("uri"),
                "safety": (record.get("safety_backup") or {}).get("uri")}
    backup = record.get("backup") or {}
    return {"uri": backup.get("uri"), "sha256": backup.get("sha256")}


def run_summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the page says of a run, from its record: outcome, decision, where it failed, what it
    changed where, its backup(s), its verification verdict."""
    approval = record.get("approval") if isinstance(record.get("approval"), dict) else None
    decision = record.get("decision")
    if not decision:  # a record written before decisions were recorded
        from schema_deploy.pipeline.record import decision_of

        decision = decision_of(approval, record.get("task_states") or {})
    return {"outcome": record.get("outcome"), "decision": decision, "failed_at": record.get("failed_at") or [],
            "targets": record.get("targets") or {}, "backup": backup_of(record), "verdict": verdict_of(record)}


def audit_summary(row: chain.AuditRow) -> dict[str, Any]:
    """The facts of one audit row an on-call engineer scans for, plus the whole record."""
    p = row.payload if isinstance(row.payload, dict) else {}
    run, approval, backup = p.get("run") or {}, p.get("approval") or {}, p.get("backup") or {}
    return {"id": row.id, "environment": row.environment, "kind": row.kind, "recorded_at": _iso(row.recorded_at),
            "row_hash": row.row_hash, "outcome": p.get("outcome"), "failed_tasks": p.get("failed_tasks") or [],
            "triggered_by": run.get("triggered_by"), "run_type": run.get("run_type"),
            "approver": approval.get("approver"), "approved": approval.get("approved"),
            "decision": run_summary(p)["decision"], "effect": (p.get("targets") or {}).get(row.environment),
            "backup_uri": backup.get("uri"), "backup_sha256": backup.get("sha256"),
            "release": (p.get("release") or {}).get("short"), "release_uri": (p.get("release") or {}).get("uri"),
            "migrations": [m.get("name") for m in p.get("bundle") or [] if isinstance(m, dict)],
            "record": row.payload}


# Airflow's task ids of each DAG's approval (rollback: inside the environment's group).
APPROVAL_TASKS = {"deploy_schema": ("approve_production",),
                  "rollback_schema": ("staging.approve_rollback", "production.approve_rollback")}
LIVE_STATES = ("queued", "running")
# The tasks that defer while production's health gate says wait (schema_deploy.health).
HEALTH_GATED = {"deploy_schema": ("apply_production", "backfill_production", "contract_production")}


def live_summary(run: dict[str, Any]) -> dict[str, Any]:
    """What the page says of a run with no record yet, from Airflow's task states (`run["tasks"]`) and,
    while production's health gate holds it, the gate's wait (`run["health_wait"]`: {task id: since, first
    and latest reason}, as each gated task keeps it)."""
    tasks = run.get("tasks") or {}
    approvals = [tasks.get(t) for t in APPROVAL_TASKS.get(run.get("dag_id"), ()) if tasks.get(t)]
    failed = [t for t, state in tasks.items() if state == "failed"]
    if any(s in ("awaiting_input", "deferred") for s in approvals):
        decision = "awaiting approval"
    elif failed:
        decision = f"failed at task {failed[0]}"
    else:
        decision = "not reached" if run.get("state") not in LIVE_STATES else "not reached yet"
    outcome = ("in progress" if run.get("state") in LIVE_STATES else
               f"failed at task {failed[0]}" if failed else run.get("state"))
    waiting = None
    deferred = [t for t in HEALTH_GATED.get(run.get("dag_id"), ()) if tasks.get(t) == "deferred"]
    if run.get("state") in LIVE_STATES and deferred:
        wait = (run.get("health_wait") or {}).get(deferred[0]) or {}
        outcome = ("in progress: production's backfill is paused for the database's health"
                   if str(wait.get("what", "")).startswith("backfill ") else
                   "in progress: production waits for the database's health before an online step")
        if wait.get("latest") or wait.get("reason"):
            waiting = f"waiting for: {wait.get('latest') or wait.get('reason')}"
            waiting += f" (waiting since {wait['since']})" if wait.get("since") else ""
        else:  # the task deferred but its wait is not (yet) readable: where to find the reason
            waiting = f"waiting for: see {deferred[0]}'s log"
    return {"outcome": outcome, "decision": decision, "failed_at": failed, "targets": {}, "backup": {},
            "verdict": None, "waiting": waiting}


def merge_runs(airflow_runs: list[dict[str, Any]], audit_rows: Mapping[str, list[chain.AuditRow]],
               limit: int = 20, documents: Callable[[str, str], dict[str, Any] | None] | None = None
               ) -> list[dict[str, Any]]:
    """Airflow's runs (dicts with dag_id, run_id, state, start_date, tasks: {task id: state}, ...) newest
    first, each with the audit rows of its run id (of its DAG's kind) and the record it kept in S3
    (`documents(kind, run_id)`: the run's index object, or None); audit rows of runs Airflow does not
    list become entries of their own. Every entry has a `summary` (`run_summary`, or `live_summary`
    while the run has no record)."""
    dag_kind = {dag: kind for kind, dag in KIND_TO_DAG.items()}
    by_run: dict[tuple[str, str], list[chain.AuditRow]] = {}
    for rows in audit_rows.values():
        for row in rows:
            if row.run_id:
                by_run.setdefault((row.kind, row.run_id), []).append(row)
    entries = []
    for run in airflow_runs:
        kind = dag_kind.get(run["dag_id"], run["dag_id"])
        rows = sorted(by_run.pop((kind, run["run_id"]), []), key=lambda r: (r.environment or "", r.id))
        document = documents(kind, run["run_id"]) if documents is not None else None
        record_ = (document or {}).get("record") or next((r.payload for r in rows if isinstance(r.payload, dict)),
                                                         None)
        summary = run_summary(record_) if record_ and run.get("state") not in LIVE_STATES else live_summary(run)
        entries.append({**run, "source": "airflow", "audit": [audit_summary(r) for r in rows], "summary": summary,
                        "document": {k: document.get(k) for k in ("uri", "sha256", "record", "error")}
                        if document else None})
    for (_kind, run_id), rows in by_run.items():
        rows.sort(key=lambda r: (r.environment or "", r.id))
        first = rows[0]
        payload = first.payload if isinstance(first.payload, dict) else {}
        run = payload.get("run")
        entries.append({"dag_id": KIND_TO_DAG.get(first.kind, first.kind), "run_id": run_id, "state": None,
                        "start_date": (run or {}).get("started") or _iso(first.recorded_at), "end_date": None,
                        "run_type": (run or {}).get("run_type"), "url": (run or {}).get("url"),
                        "source": "audit only", "audit": [audit_summary(r) for r in rows],
                        "summary": run_summary(payload), "document": None})
    entries.sort(key=lambda e: str(e.get("start_date") or ""), reverse=True)
    return entries[:limit]


def recent_audit_rows(conn: psycopg.Connection, limit: int = 50) -> list[chain.AuditRow]:
    """The newest `limit` rows of the trail, oldest first; [] when there is no trail yet."""
    if not db.relation_exists(conn, chain.QUALIFIED):
        return []
    rows = conn.execute(f"SELECT {', '.join(chain.COLUMNS)} FROM {chain.QUALIFIED} ORDER BY id DESC LIMIT %s",
                        (limit,)).fetchall()
    return [chain.AuditRow(*r) for r in reversed(rows)]


def read_runs(airflow_runs: list[dict[str, Any]], urls: Urls, limit: int = 20,
              documents: Callable[[str, str], dict[str, Any] | None] | None = None) -> dict[str, Any]:
    """Recent runs with their audit records (chain rows, and the record each kept in S3 when
    `documents` reads them, see `run_documents`); audit read errors per environment."""
    rows, errors = {}, {}
    for env, url in urls.items():
        try:
            with open_readonly(url) as conn:
                rows[env] = recent_audit_rows(conn, limit * 3)
        except (psycopg.Error, SchemaDeployError) as exc:
            errors[env] = error_text(exc, url)
    return {"runs": merge_runs(airflow_runs, rows, limit, documents), "audit_errors": errors}


def run_documents(s3: Any, root: str) -> Callable[[str, str], dict[str, Any] | None]:
    """`documents(kind, run_id)` for `read_runs`: the run's index object under the store's root
    (`record.index_key`), None when the run kept none (yet), {"error": …} when S3 cannot say."""
    from botocore.exceptions import ClientError

    from schema_deploy.pipeline.record import index_key

    unreachable: list[str] = []  # an endpoint that did not answer is not asked again for every run

    def read(kind: str, run_id: str) -> dict[str, Any] | None:
        import json

        bucket, key = index_key(root, kind, run_id)
        if unreachable:
            return {"error": f"s3://{bucket}/{key}: not read ({unreachable[0]})"}
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            return {"error": f"s3://{bucket}/{key}: {error_text(exc)}"}
        except Exception as exc:  # an unreachable endpoint: said on the page, never a 500
            unreachable.append(error_text(exc))
            return {"error": f"s3://{bucket}/{key}: {error_text(exc)}"}
        try:
            return json.loads(body)
        except ValueError as exc:
            return {"error": f"s3://{bucket}/{key} is not JSON: {exc}"}

    return read


# --- backups ------------------------------------------------------------------------------------

def verification_state(entry: Any) -> str:
    """verified | verification failed | not verified | incomplete (a dump without manifest or vice versa)."""
    if not entry.complete:
        return "incomplete"
    v = entry.verification
    if not v:
        return "not verified"
    return "verified" if v.get("ok") else "verification failed"


def backup_facts(entry: Any) -> dict[str, Any]:
    """A `backups.store.BackupEntry` with the manifest facts the page shows."""
    m, v = entry.manifest or {}, entry.verification or {}
    ledger_state = m.get("ledger") if isinstance(m.get("ledger"), dict) else {}
    return {**entry.as_dict(), "verification_state": verification_state(entry),
            "verified_at": v.get("verified_at"), "verification_method": v.get("method"),
            "problems": (v.get("details") or {}).get("problems") or [],
            "finished_at": m.get("finished_at"), "duration_s": m.get("duration_s"),
            "server_version": m.get("server_version"), "pg_dump_version": m.get("pg_dump_version"),
            "sse": (m.get("sse") or {}).get("mode"), "ledger": ledger_state}


def read_backups(s3: Any, uri: str, limit: int = 50) -> dict[str, Any]:
    """Backups under `uri` (s3://BUCKET/PREFIX), newest first, or the S3 error."""
    from schema_deploy.backups.store import list_backups

    try:
        entries = list_backups(s3, uri)
    except Exception as exc:  # botocore's errors, an unreachable endpoint: shown, never a 500
        return {"uri": uri, "error": error_text(exc), "backups": []}
    return {"uri": uri, "error": None, "count": len(entries),
            "backups": [backup_facts(e) for e in reversed(entries)][:limit]}


# --- audit chains -------------------------------------------------------------------------------

def chain_status(url: str) -> dict[str, Any]:
    """One environment's chain: state ok | broken | no trail | error, with verify's report and message."""
    try:
        with open_readonly(url) as conn:
            if not db.relation_exists(conn, chain.QUALIFIED):
                return {"state": "no trail", "database": describe(conn), "message":
                        f"{chain.QUALIFIED} does not exist yet: no deploy has recorded itself in {describe(conn)}"}
            report = chain.verify_chain(conn)
            return {"state": "ok" if report.ok else "broken", "database": describe(conn), "message": report.message,
                    **report.as_dict()}
    except (psycopg.Error, SchemaDeployError) as exc:
        return {"state": "error", "message": error_text(exc, url)}


def read_backfills(urls: Urls) -> dict[str, Any]:
    """Every environment's backfills (schema_deploy.backfills) with their progress; read errors by environment."""
    from schema_deploy.backfill import checkpoint

    found, errors = [], {}
    for env, url in urls.items():
        try:
            with open_readonly(url) as conn:
                found += [{"environment": env, **c.progress()} for c in checkpoint.read(conn)]
        except (psycopg.Error, SchemaDeployError) as exc:
            errors[env] = error_text(exc, url)
    return {"backfills": found, "errors": errors}


def pause_backfill(url: str, environment: str, backfill: str, user: str, via: str) -> dict[str, Any]:
    """An operator's pause from the page: the request on the backfill's checkpoint and a row in the
    environment's audit chain (kind `backfill_pause`: who, when, the backfill, where it stood), in one
    transaction. A running backfill stops at its next batch; one that is not running is paused at once."""
    from schema_deploy.backfill import checkpoint
    from schema_deploy.backfill.errors import BackfillNotFound

    with db.connect(url, application_name=APPLICATION_NAME) as conn, conn.transaction():
        if not checkpoint.read(conn, backfill):
            raise BackfillNotFound(environment, backfill)
        point = checkpoint.request(conn, backfill, "pause", user)
        row = chain.append(conn, "backfill_pause", None, environment,
                           {"backfill": backfill, "by": user, "via": via, "state": point.state,
                            "requested": point.requested, "rows_done": point.rows_done,
                            "rows_estimated": point.rows_estimated, "last_key": point.last_key})
    return {"environment": environment, **point.progress(), "audit_row": row.row_hash}


def read_audit(urls: Urls, check: Callable[[str], dict[str, Any]] = chain_status) -> dict[str, Any]:
    """The chain status of every environment."""
    return {"environments": [{"name": env, **check(url)} for env, url in urls.items()]}
