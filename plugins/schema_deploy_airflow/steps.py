"""The bodies of deploy_schema's tasks: each a few calls into `schema_deploy`.

Every function takes plain values (the run's params, earlier results) and
returns a JSON-serialisable dict for XCom, so the DAG file stays declarative
and each step can be retried on its own: apply resumes, backup starts clean,
verification only reads.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from schema_deploy import config as deploy_config
from schema_deploy.errors import SchemaDeployError, UsageError, scrub
from schema_deploy_airflow import connections


def task_log() -> logging.Logger:
    """The logger whose records land in the running task's log."""
    return logging.getLogger("schema_deploy")


def check_params(params: dict[str, Any]) -> None:
    """Reject contradictory trigger-form choices before anything runs."""
    if params.get("skip_window") and not str(params.get("skip_window_reason") or "").strip():
        raise UsageError("skip_window is on but skip_window_reason is empty: say why production may change "
                         "outside the maintenance window (it is recorded), or turn skip_window off.")
    if params.get("dry_run") and params.get("skip_window"):
        raise UsageError("dry_run leaves production untouched, so skip_window makes no sense with it; "
                         "turn one of them off.")
    if int(params.get("lock_retries", 0)) < 0:
        raise UsageError(f"lock_retries must be 0 or more (got {params.get('lock_retries')}).")


def notify(event: str, facts: dict[str, object], log) -> dict[str, object]:
    """Post to Slack through the `slack_deploys` connection; never raises."""
    from schema_deploy.notify import Delivery, deliver, message

    try:
        poster = connections.slack_poster()
    except Exception as exc:  # noqa: BLE001 - a missing Slack connection must not stop a deployment
        log.warning("Slack connection unusable (%s); notification '%s' not sent", scrub(str(exc)), event)
        return Delivery(event=event, ok=False, attempts=0, errors=[scrub(str(exc))]).as_dict()
    return deliver(poster, message(event, facts), event, log=log.warning).as_dict()


def bundle_for(params: dict[str, Any]):
    from schema_deploy.bundle import load_bundle

    cfg = deploy_config.load()
    folder = Path(params.get("migrations") or cfg.migrations)
    if not folder.is_absolute():
        folder = deploy_config.ROOT / folder
    return load_bundle(folder)


def preflight(params: dict[str, Any], log) -> dict[str, Any]:
    """Bundle, lint, both ledgers, schema match, production prechecks, the plan. Changes nothing."""
    from schema_deploy.apply import connect, load_state
    from schema_deploy.errors import LedgerBlocked
    from schema_deploy.fingerprint import diff_fingerprints, schema_fingerprint
    from schema_deploy.lint import lint_bundle
    from schema_deploy.plan import check_applyable, plan_for, table_sizes
    from schema_deploy.prechecks import require_clean

    check_params(params)
    bundle = bundle_for(params)
    findings = lint_bundle(bundle)
    urls = {env: connections.database_url(conn_id) for env, conn_id in connections.DB_CONNECTIONS.items()}
    fingerprints, pending = {}, {}
    for env, url in urls.items():
        with connect(url) as conn:
            status, _ = load_state(conn, bundle)
            check_applyable(status, bundle)
            pending[env] = status.pending
            fingerprints[env] = schema_fingerprint(conn)
    diff = diff_fingerprints(fingerprints["staging"], fingerprints["production"], "staging", "production")
    if diff and pending["staging"] == pending["production"]:
        raise LedgerBlocked("staging and production schemas differ before the change, so a staging rehearsal "
                            "would prove nothing:\n" + "\n".join(f"- {d}" for d in diff[:30]))
    with connect(urls["production"]) as conn:
        status, interrupted = load_state(conn, bundle)
        plan = plan_for(conn, bundle, status, interrupted, online=bool(params.get("online", True)))
        prechecks = require_clean(conn, plan)
        sizes = table_sizes(conn, plan.tables())
    summary = {
        "migrations": [{"name": mp.migration.name, "checksum": mp.migration.checksum, "steps": len(mp.steps),
                        "rewritten": sum(1 for s in mp.steps for p in s.statements if p.reason)}
                       for mp in plan.migrations],
        "pending": pending,
        "lint": {"errors": sum(f.severity == "error" and not f.suppressed for f in findings),
                 "warnings": sum(f.severity == "warning" and not f.suppressed for f in findings)},
        "prechecks": [r.as_dict() for r in prechecks],
        "locks": {t: m for mp in plan.migrations for s in mp.steps for t, m in s.locks.items()},
        "production_table_bytes": sum(v["bytes"] for v in sizes.values()),
    }
    notify("started", {"migrations": ", ".join(m["name"] for m in summary["migrations"]) or "none pending",
                       "dry run": bool(params.get("dry_run")), "online": bool(params.get("online", True))}, log)
    return summary


def backup_production(run_id: str, log) -> dict[str, Any]:
    """pg_dump of production streamed to S3, then verified (restore check per deploy.yaml)."""
    from schema_deploy.backup import backup
    from schema_deploy.restore import verify_backup

    cfg = deploy_config.load()
    s3 = connections.s3_client()
    url = connections.database_url(connections.DB_CONNECTIONS["production"])
    result = backup(s3, url, f"s3://{cfg.backup_bucket}/{cfg.backup_prefix}", environment="production",
                    run_id=run_id, sse=cfg.backup_sse, kms_key_id=cfg.backup_kms_key_id, log=log.info)
    check = verify_backup(s3, result.uri, restore_check=cfg.backup_restore_check, admin_url=url, log=log.info)
    return {"uri": result.uri, "sha256": result.sha256, "size": result.size, "rows": sum(result.row_counts.values()),
            "verified": check.method if check.ok else f"FAILED: {check.problems}"}


def apply_to(env: str, params: dict[str, Any], log) -> dict[str, Any]:
    """Apply pending migrations to one target with the online plan and lock retries."""
    from schema_deploy.apply import Settings, apply
    from schema_deploy.plan import table_sizes

    cfg = deploy_config.load()
    settings = Settings(lock_timeout_ms=cfg.lock_timeout_ms, max_lock_timeout_ms=cfg.max_lock_timeout_ms,
                        lock_retries=int(params.get("lock_retries", cfg.lock_retries)))
    url = connections.database_url(connections.DB_CONNECTIONS[env])
    t0 = time.monotonic()
    result = apply(url, bundle_for(params), settings, online=bool(params.get("online", True)), log=log.info)
    seconds = time.monotonic() - t0
    from schema_deploy.apply import connect

    with connect(url) as conn:
        tables = sorted({t for m in result.applied for t in _tables(m.sql)})
        size = sum(v["bytes"] for v in table_sizes(conn, tables).values())
    return {"env": env, "seconds": round(seconds, 3), "table_bytes": size,
            "applied": [m.as_dict() for m in result.applied]}


def _tables(statements: list[str]) -> set[str]:
    from schema_deploy.parse import parse_sql

    return {t for sql in statements for s in parse_sql(sql) for t in s.locks}


def verify_target(env: str, params: dict[str, Any], log) -> dict[str, Any]:
    """Every expectation of the applied migrations plus sql/verify; raises on a failed check."""
    from schema_deploy.apply import connect, load_state
    from schema_deploy.parse import parse_migration
    from psycopg import sql as psycopg_sql
    from schema_deploy.verify import verify

    cfg = deploy_config.load()
    bundle = bundle_for(params)
    url = connections.database_url(connections.DB_CONNECTIONS[env])
    with connect(url) as conn:
        status, _ = load_state(conn, bundle)
        applied = set(status.names("applied"))
        statements = [s for m in bundle.migrations if m.name in applied for s in parse_migration(m)]
        # Fresh statistics for the tables the migrations touched, so the index-usage checks see
        # the planner's real choice (ANALYZE takes SHARE UPDATE EXCLUSIVE: writes go on).
        for table in sorted({t for s in statements for t in s.locks if "." not in t}):
            conn.execute(psycopg_sql.SQL("ANALYZE {}").format(psycopg_sql.Identifier(table)))
        report = verify(conn, statements, cfg.verify_dir)
    for check in report.checks:
        log.info("%s %s: %s", "ok  " if check.ok else "FAIL", check.name, check.detail)
    if not report.ok:
        raise VerificationFailed(env, [f"{c.name}: {c.detail}" for c in report.failed])
    return {"env": env, "checks": len(report.checks), "failed": 0}


class VerificationFailed(SchemaDeployError):
    exit_code = 1

    def __init__(self, env: str, failures: list[str]) -> None:
        super().__init__(f"verification of {env} failed: " + "; ".join(failures[:10]))


def run_gate(params: dict[str, Any], log) -> dict[str, Any]:
    """The configured test commands against staging (DATABASE_URL), with a timeout."""
    cfg = deploy_config.load()
    url = connections.database_url(connections.DB_CONNECTIONS["staging"])
    results = []
    for cmd in cfg.gate_commands:
        if cmd and cmd[0] in ("python", "python3"):  # the deployment's own interpreter and packages
            cmd = (sys.executable, *cmd[1:])
        t0 = time.monotonic()
        try:
            proc = subprocess.run(list(cmd), cwd=deploy_config.ROOT, capture_output=True, text=True,
                                  timeout=cfg.gate_timeout.total_seconds(),
                                  env={**os.environ, "DATABASE_URL": url})
            code, out = proc.returncode, (proc.stdout + proc.stderr)
        except subprocess.TimeoutExpired as exc:
            code, out = -1, f"timed out after {cfg.gate_timeout}: {exc}"
        results.append({"command": " ".join(cmd), "exit_code": code, "seconds": round(time.monotonic() - t0, 2),
                        "output_tail": scrub(out[-3000:])})
        log.info("gate command %s exited %s", " ".join(cmd), code)
    failed = [r for r in results if r["exit_code"] != 0]
    notify("gate_failed" if failed else "gate_passed",
           {"commands": len(results), "failed": ", ".join(r["command"] for r in failed) or "none"}, log)
    if failed:
        raise GateFailed(failed)
    return {"commands": results}


class GateFailed(SchemaDeployError):
    exit_code = 1

    def __init__(self, failed: list[dict[str, Any]]) -> None:
        lines = [f"{r['command']} exited {r['exit_code']}:\n{r['output_tail'][-1500:]}" for r in failed]
        super().__init__("the staging test gate failed; production was not touched.\n" + "\n".join(lines))
