"""The bodies of deploy_schema's tasks: each a few calls into `schema_deploy`.

Every function takes plain values (the run's params, earlier results) and
returns a JSON-serialisable dict for XCom, so the DAG file stays declarative
and each step can be retried on its own: apply resumes, backup starts clean,
the gate and verification only read.
"""
from __future__ import annotations

import functools
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from schema_deploy import config as deploy_config
from schema_deploy.errors import SchemaDeployError, UsageError, scrub
from schema_deploy_airflow import connections

PREFLIGHT = "preflight"


def is_transient(exc: BaseException) -> bool:
    """Worth an automatic retry: a lock not granted, a busy advisory lock, a lost connection, S3 or
    pg_dump trouble. Bad input, failed checks and failed gates would fail the same way again."""
    from schema_deploy.errors import AdvisoryLockTimeout, BackupFailed, DatabaseError, LockRetriesExhausted

    return not isinstance(exc, SchemaDeployError) or isinstance(
        exc, (LockRetriesExhausted, AdvisoryLockTimeout, DatabaseError, BackupFailed))


def fail_fast(step: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a non-transient SchemaDeployError into Airflow's no-retry failure, message kept whole."""

    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return step(*args, **kwargs)
        except SchemaDeployError as exc:
            if is_transient(exc):
                raise
            from airflow.sdk.exceptions import AirflowFailException

            raise AirflowFailException(f"{type(exc).__name__}: {exc}") from None

    return run


def task_log() -> logging.Logger:
    """The logger whose records land in the running task's log."""
    return logging.getLogger("schema_deploy")


def current_context() -> dict[str, Any]:
    """The running task's context, or {} outside a task (unit tests, callbacks after the fact)."""
    try:
        from airflow.sdk import get_current_context

        return get_current_context()
    except Exception:  # noqa: BLE001 - no task is running
        return {}


def run_facts(context: dict[str, Any]) -> dict[str, str]:
    """Who and what, for the first Slack message and the audit trail."""
    dag_run = context.get("dag_run")
    if dag_run is None:
        return {}
    run_type = str(getattr(dag_run, "run_type", "") or "")
    return {"run": dag_run.run_id, "run type": run_type.split(".")[-1].lower(),
            "triggered by": getattr(dag_run, "triggering_user_name", None) or "schedule"}


def approval_required(params: dict[str, Any], run_type: str, cfg: deploy_config.DeployConfig) -> bool:
    """deploy.yaml's approval policy applied to this run (scheduled runs ignore the form)."""
    if run_type.endswith("scheduled"):
        return cfg.approval_scheduled
    return cfg.approval_manual or bool(params.get("require_approval", True))


def check_params(params: dict[str, Any], cfg: deploy_config.DeployConfig, run_type: str = "manual") -> None:
    """Reject contradictory trigger-form choices before anything runs."""
    if params.get("skip_window") and not str(params.get("skip_window_reason") or "").strip():
        raise UsageError("skip_window is on but skip_window_reason is empty: say why production may change "
                         "outside the maintenance window (it is recorded), or turn skip_window off.")
    if params.get("dry_run") and params.get("skip_window"):
        raise UsageError("dry_run leaves production untouched, so skip_window makes no sense with it; "
                         "turn one of them off.")
    retries = params.get("lock_retries")
    if retries is not None and int(retries) < 0:
        raise UsageError(f"lock_retries must be 0 or more (got {retries}).")
    if not run_type.endswith("scheduled") and cfg.approval_manual and params.get("require_approval") is False:
        raise UsageError(f"{cfg.source or 'deploy.yaml'}: approval.manual_runs is 'required', so require_approval "
                         "cannot be turned off in the trigger form; leave it on, or set approval.manual_runs: form.")


def notify(event: str, facts: dict[str, object], log, links: dict[str, str] | None = None,
           context: dict[str, Any] | None = None) -> dict[str, object]:
    """Post to Slack through the `slack_deploys` connection, threaded under the run's first message
    when the connection is a Web API one. Never raises: a deployment never waits on Slack."""
    from schema_deploy.notify import Delivery, deliver, message

    try:
        channel = deploy_config.load().slack_channel
    except SchemaDeployError:  # a broken deploy.yaml is reported by the task; Slack still hears of it
        channel = deploy_config.DeployConfig().slack_channel
    context = context or current_context()
    thread = None
    if event != "started" and context.get("ti") is not None:
        try:
            thread = (context["ti"].xcom_pull(task_ids=PREFLIGHT) or {}).get("slack_ts")
        except Exception:  # noqa: BLE001 - no thread then
            thread = None
    try:
        poster = connections.slack_poster(channel, thread)
    except Exception as exc:  # noqa: BLE001 - a missing Slack connection must not stop a deployment
        log.warning("Slack connection unusable (%s); notification '%s' not sent", scrub(str(exc)), event)
        return Delivery(event=event, ok=False, attempts=0, errors=[scrub(str(exc))]).as_dict()
    outcome = deliver(poster, message(event, facts, links), event, log=log.warning).as_dict()
    if outcome["ok"]:
        log.info("Slack: '%s' delivered", event)
    return outcome


def bundle_for(params: dict[str, Any]):
    from schema_deploy.bundle import load_bundle

    cfg = deploy_config.load()
    folder = Path(params.get("migrations") or cfg.migrations)
    if not folder.is_absolute():
        folder = deploy_config.ROOT / folder
    return load_bundle(folder)


@fail_fast
def preflight(params: dict[str, Any], log) -> dict[str, Any]:
    """Bundle, lint, both ledgers, schema match, production prechecks, the plan. Changes nothing."""
    from schema_deploy.apply import connect, load_state
    from schema_deploy.errors import LedgerBlocked, LintBlocked
    from schema_deploy.fingerprint import diff_fingerprints, schema_fingerprint
    from schema_deploy.lint import lint_bundle, load_config
    from schema_deploy.plan import check_applyable, plan_for, table_sizes, unfixed_findings
    from schema_deploy.prechecks import require_clean

    cfg = deploy_config.load()
    facts = run_facts(current_context())
    check_params(params, cfg, facts.get("run type", "manual"))
    online = bool(params.get("online", True))
    bundle = bundle_for(params)
    findings = lint_bundle(bundle, config=load_config(cfg.source) if cfg.source else None)
    urls = {env: connections.database_url(conn_id) for env, conn_id in connections.DB_CONNECTIONS.items()}
    fingerprints, pending = {}, {}
    for env, url in urls.items():
        with connect(url) as conn:
            status, _ = load_state(conn, bundle)
            check_applyable(status, bundle)
            pending[env] = status.pending
            fingerprints[env] = schema_fingerprint(conn)
        log.info("%s: pending %s", env, ", ".join(status.pending) or "nothing")
    if not pending["staging"] and not pending["production"]:
        from airflow.sdk.exceptions import AirflowSkipException

        notify("nothing_pending", {"migrations": f"all {len(bundle.migrations)} applied on staging and production",
                                   **{k: v for k, v in facts.items() if k in ("run", "triggered by")}}, log)
        raise AirflowSkipException(f"nothing to deploy: all {len(bundle.migrations)} migrations of {bundle.root} "
                                   "are applied on staging and production")
    diff = diff_fingerprints(fingerprints["staging"], fingerprints["production"], "staging", "production")
    if diff and pending["staging"] == pending["production"]:
        raise LedgerBlocked("staging and production schemas differ before the change, so a staging rehearsal "
                            "would prove nothing:\n" + "\n".join(f"- {d}" for d in diff[:30])
                            + "\nBring staging to production's schema (restore it from a production backup), "
                              "then clear preflight.")
    with connect(urls["production"]) as conn:
        status, interrupted = load_state(conn, bundle)
        plan = plan_for(conn, bundle, status, interrupted, online=online)
        unfixed = unfixed_findings(findings, plan)
        if unfixed:
            raise LintBlocked(unfixed)
        prechecks = require_clean(conn, plan)
        sizes = table_sizes(conn, plan.tables())
    for r in prechecks:
        log.info("precheck ok: %s", r.as_dict())
    summary = {
        "migrations": [{"name": mp.migration.name, "checksum": mp.migration.checksum,
                        "steps": [{"number": s.number, "transactional": s.transactional,
                                   "sql": [p.sql for p in s.statements],
                                   "rewritten": [p.reason for p in s.statements if p.reason],
                                   "locks": s.locks} for s in mp.steps],
                        "resume_from": mp.resume_from}
                       for mp in plan.migrations],
        "online": online,
        "pending": pending,
        "lint": {"errors": sum(f.blocking for f in findings), "fixed_by_plan": sum(f.blocking for f in findings)
                 - len(unfixed), "warnings": sum(f.severity == "warning" and not f.suppressed for f in findings)},
        "prechecks": [r.as_dict() for r in prechecks],
        "table_sizes": sizes,
        "production_table_bytes": sum(v["bytes"] for v in sizes.values()),
        **facts,
    }
    for mp in summary["migrations"]:
        log.info("plan %s (%s): %d steps, %d rewritten for online mode", mp["name"], mp["checksum"][:12],
                 len(mp["steps"]), sum(bool(s["rewritten"]) for s in mp["steps"]))
    names = ", ".join(m["name"] for m in summary["migrations"]) or "nothing pending"
    sent = notify("started", {"migrations": names, "who": facts.get("triggered by", "?"),
                              "where": "staging, then production" if not params.get("dry_run") else "staging only (dry run)",
                              "online": online, "run": facts.get("run", "")}, log)
    summary["slack_ts"] = sent.get("ts")
    return summary


@fail_fast
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
    if not check.ok:
        from schema_deploy.errors import VerifyFailed

        raise VerifyFailed(result.uri, check.problems)
    log.info("backup %s (%d bytes, sha256 %s) verified by %s", result.uri, result.size, result.sha256, check.method)
    return {"uri": result.uri, "sha256": result.sha256, "size": result.size, "rows": sum(result.row_counts.values()),
            "verified": check.method}


def touched_tables(summary: dict[str, Any]) -> list[str]:
    return sorted({t for m in summary.get("migrations", []) for s in m["steps"] for t in s["locks"] if "." not in t})


@fail_fast
def apply_to(env: str, params: dict[str, Any], summary: dict[str, Any], log) -> dict[str, Any]:
    """Apply pending migrations to one target with the online plan and lock retries.

    Before applying: exact row counts of the touched tables and the representative
    queries' timings, so verification can report before/after. When nothing was left
    to apply (a retry after the work was done), the ledger's own durations stand in
    for the measured time, so the window estimate stays honest.
    """
    from schema_deploy.apply import Settings, apply, connect
    from schema_deploy.ledger import read_rows
    from schema_deploy.plan import table_sizes
    from schema_deploy.verify import query_timings, row_counts

    cfg = deploy_config.load()
    retries = params.get("lock_retries")
    settings = Settings(lock_timeout_ms=cfg.lock_timeout_ms, max_lock_timeout_ms=cfg.max_lock_timeout_ms,
                        lock_retries=cfg.lock_retries if retries is None else int(retries))
    url = connections.database_url(connections.DB_CONNECTIONS[env])
    bundle = bundle_for(params)
    tables = touched_tables(summary)
    with connect(url) as conn:
        analyze(conn, tables)
        before = {"rows": row_counts(conn, tables), "query_ms": query_timings(conn, cfg.verify_dir / "explain")}
    log.info("%s before: rows %s", env, before["rows"])
    t0 = time.monotonic()
    result = apply(url, bundle, settings, online=bool(params.get("online", True)), log=log.info)
    seconds = time.monotonic() - t0
    this_run = summary.get("pending", {}).get(env, [])
    with connect(url) as conn:
        size = sum(v["bytes"] for v in table_sizes(conn, tables).values())
        ledger_seconds = sum((r.finished_at - r.started_at).total_seconds() for r in read_rows(conn)
                             if r.migration_name in this_run and r.applied)
    log.info("%s: applied %s in %.2f s (%d lock retries)", env, [m.name for m in result.applied] or "nothing",
             seconds, sum(m.lock_retries for m in result.applied))
    return {"env": env, "seconds": round(seconds if result.applied else ledger_seconds, 3),
            "table_bytes": size, "migrations": this_run, "before": before,
            "lock_retries": sum(m.lock_retries for m in result.applied),
            "applied": [m.as_dict() for m in result.applied]}


def analyze(conn, tables: list[str]) -> None:
    """Fresh planner statistics (ANALYZE takes SHARE UPDATE EXCLUSIVE: reads and writes go on)."""
    from psycopg import sql as psycopg_sql

    for table in tables:
        conn.execute(psycopg_sql.SQL("ANALYZE {}").format(psycopg_sql.Identifier(table)))


class VerificationFailed(SchemaDeployError):
    exit_code = 1

    def __init__(self, env: str, failures: list[str]) -> None:
        super().__init__(f"verification of {env} failed: " + "; ".join(failures[:10])
                         + ". The change is applied; investigate, then roll back from the backup if needed.")


@fail_fast
def verify_target(env: str, params: dict[str, Any], applied: dict[str, Any], log) -> dict[str, Any]:
    """Expectations of this run's migrations, sql/verify, EXPLAIN checks, and the facts of the change.

    Raises on a failed check. Row counts that changed are a failure (no data loss);
    index sizes and timings are reported against the plan's expectations as facts.
    """
    from schema_deploy.apply import connect
    from schema_deploy.parse import parse_migration
    from schema_deploy.verify import (criteria, index_sizes, performance_facts, query_timings, row_counts,
                                      verify)

    cfg = deploy_config.load()
    bundle = bundle_for(params)
    names = applied.get("migrations") or []
    statements = [s for m in bundle.migrations if m.name in names for s in parse_migration(m)]
    tables = sorted(applied.get("before", {}).get("rows", {}))
    url = connections.database_url(connections.DB_CONNECTIONS[env])
    with connect(url) as conn:
        analyze(conn, tables)
        report = verify(conn, statements, cfg.verify_dir)
        rows_after = row_counts(conn, tables)
        new_indexes = [s.node.idxname for s in statements if s.kind == "CREATE INDEX" and s.node.idxname]
        sizes = index_sizes(conn, new_indexes)
        after_ms = query_timings(conn, cfg.verify_dir / "explain")
    for check in report.checks:
        log.info("%s %s: %s", "ok  " if check.ok else "FAIL", check.name, check.detail)
    rows_before = applied.get("before", {}).get("rows", {})
    lost = {t: (rows_before.get(t), rows_after.get(t)) for t in tables if rows_before.get(t) != rows_after.get(t)}
    perf = performance_facts(sizes, applied.get("before", {}).get("query_ms", {}), after_ms,
                             cfg.expect_index_mb, cfg.expect_speedup_pct)
    for line in perf["lines"]:
        log.info("fact: %s", line)
    outcome = criteria(report, lost, perf)
    for name, (ok, detail) in outcome.items():
        log.info("success criterion %-40s %s  %s", name, "MET " if ok else "NOT MET", detail)
    if not report.ok or lost:
        raise VerificationFailed(env, [f"{c.name}: {c.detail}" for c in report.failed]
                                 + [f"row count of {t} changed {b} -> {a}" for t, (b, a) in lost.items()])
    return {"env": env, "checks": len(report.checks), "failed": 0,
            "rows_before": rows_before, "rows_after": rows_after, "index_bytes": sizes,
            "query_ms_before": applied.get("before", {}).get("query_ms", {}), "query_ms_after": after_ms,
            "facts": perf["lines"], "criteria": {k: {"met": ok, "detail": d} for k, (ok, d) in outcome.items()}}


@fail_fast
def run_gate(params: dict[str, Any], backup_uri: str | None, log) -> dict[str, Any]:
    """The configured test commands against staging (DATABASE_URL), with a timeout; JUnit XML kept
    beside the backup in S3."""
    from schema_deploy.backup_store import parse_s3_uri
    from schema_deploy.gate import GateFailed, run_commands

    cfg = deploy_config.load()
    url = connections.database_url(connections.DB_CONNECTIONS["staging"])
    with tempfile.TemporaryDirectory(prefix="schema-deploy-gate-") as tmp:
        results = run_commands(list(cfg.gate_commands), database_url=url, cwd=deploy_config.ROOT,
                               timeout_s=cfg.gate_timeout.total_seconds(), workdir=Path(tmp), log=log.info)
        uploaded = []
        if backup_uri:
            bucket, key = parse_s3_uri(backup_uri)
            s3 = connections.s3_client()
            for i, r in enumerate(results, 1):
                if r.junit_path:
                    junit_key = f"{key.rsplit('.', 1)[0]}.gate-{i}.junit.xml"
                    s3.upload_file(r.junit_path, bucket, junit_key)
                    uploaded.append(f"s3://{bucket}/{junit_key}")
                    log.info("JUnit report of gate command %d kept at s3://%s/%s", i, bucket, junit_key)
    failed = [r for r in results if not r.ok]
    names = [n for r in failed if r.junit for n in r.junit.failed]
    tests = sum(r.junit.tests for r in results if r.junit)
    notify("gate_failed" if failed else "gate_passed",
           {"commands": f"{len(results) - len(failed)}/{len(results)} passed",
            "tests": f"{tests} run" if tests else "",
            "failing tests": "\n".join(names[:10]) or ("see the log" if failed else "")}, log)
    if failed:
        raise GateFailed(failed)
    return {"commands": [r.as_dict() for r in results], "junit": uploaded, "tests": tests}


TASKS = ("preflight", "backup_production", "apply_staging", "test_gate", "production_requested", "approval_needed",
         "approve_production", "wait_for_window", "apply_production", "verify_production")


@fail_fast
def record_audit(context: dict[str, Any], log) -> dict[str, Any]:
    """The run's audit record: chained into each database the run changed, and kept in S3.

    Idempotent: a retry finds its rows already in the chain and writes the same S3 object again.
    """
    import hashlib
    import json
    from urllib.parse import quote

    from schema_deploy import audit
    from schema_deploy.apply import connect
    from schema_deploy.backup_store import Sse, parse_s3_uri
    from schema_deploy.deploy_record import build

    ti, dag_run, params = context["ti"], context["dag_run"], dict(context["params"])
    states = (ti.get_task_states(dag_id=ti.dag_id, run_ids=[dag_run.run_id]) or {}).get(dag_run.run_id, {})
    states = {t: (str(s) if s else None) for t, s in states.items() if t in TASKS}
    results = {t: ti.xcom_pull(task_ids=t) for t in TASKS}
    results["approval"] = ti.xcom_pull(task_ids="approve_production", key="approval")
    base = (getattr(ti, "log_url", "") or "").split("/dags/")[0]
    run = {"run_id": dag_run.run_id, "url": f"{base}/dags/{ti.dag_id}/runs/{quote(dag_run.run_id, safe='')}",
           **{k: v for k, v in run_facts(context).items() if k != "run"},
           "started": str(getattr(dag_run, "start_date", "") or "")}
    record = build(run, params, results, states)
    chained = []
    for env, task in (("staging", "apply_staging"), ("production", "apply_production")):
        if states.get(task) not in ("success", "failed"):
            continue  # this run did not touch that database
        with connect(connections.database_url(connections.DB_CONNECTIONS[env])) as conn:
            audit.ensure_table(conn)
            mine = [r for r in audit.read_rows(conn) if r.run_id == dag_run.run_id and r.kind == "deploy"
                    and r.environment == env]
            row = mine[0] if mine else audit.append(conn, "deploy", dag_run.run_id, env, record)
            chained.append(row)
            log.info("audit: %s row %d (%s) %s", env, row.id, row.row_hash[:16], "already there" if mine else "added")
    cfg = deploy_config.load()
    backup_uri = (results.get("backup_production") or {}).get("uri")
    if backup_uri:
        bucket, key = parse_s3_uri(backup_uri)
        key = key.rsplit(".", 1)[0] + ".audit.json"
    else:
        bucket, key = cfg.backup_bucket, f"{cfg.backup_prefix}/audit/{quote(dag_run.run_id, safe='')}.audit.json"
    body = json.dumps({"record": record, "chain": [r.as_dict() for r in chained]}, indent=2, sort_keys=True,
                      default=str).encode() + b"\n"
    digest = hashlib.sha256(body).hexdigest()
    s3, sse = connections.s3_client(), Sse(cfg.backup_sse, cfg.backup_kms_key_id).put_args()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", Metadata={"sha256": digest},
                  **sse)
    s3.put_object(Bucket=bucket, Key=key + ".sha256", Body=f"{digest}  {key.rsplit('/', 1)[-1]}\n".encode(), **sse)
    log.info("audit: record of %s (%s) kept at s3://%s/%s sha256 %s", dag_run.run_id, record["outcome"], bucket, key,
             digest)
    return {"outcome": record["outcome"], "s3": f"s3://{bucket}/{key}", "sha256": digest,
            "chain": {r.environment: {"id": r.id, "row_hash": r.row_hash} for r in chained}}
