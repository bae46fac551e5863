"""The bodies of rollback_schema's tasks: each a few calls into `schema_deploy`.

Every function takes plain values (the run's params, earlier results) and returns a
JSON-serialisable dict for XCom. Retries are safe: preflight only reads; the safety
backup starts clean; a restore is all-or-nothing and may run again; the down
migrations undo only what preflight chose and is still applied.
"""
from __future__ import annotations

from typing import Any

from schema_deploy import config as deploy_config
from schema_deploy.errors import SchemaDeployError, UsageError
from schema_deploy_airflow import connections
from schema_deploy_airflow.steps import bundle_for, current_context, fail_fast, notify, run_facts

BACKUP, DOWN = "backup", "down_migrations"
TASKS = ("preflight", "approval_needed", "approve_rollback", "safety_backup", "rollback", "verify_rollback")


class ConfirmationMismatch(UsageError):
    """The production database name typed in the trigger form does not match the target."""

    def __init__(self, given: str, database: str) -> None:
        self.given, self.database = given, database
        shown = repr(given) if given else "empty"
        super().__init__(
            f"confirm_database is {shown}, but the production database is {database!r}: a production rollback "
            f"needs its database name typed exactly in confirm_database. Nothing was changed; trigger again with "
            f"confirm_database = {database}.")


class NoBackupToRestore(SchemaDeployError):
    exit_code = 1

    def __init__(self, environment: str, database: str, where: str, found: int) -> None:
        super().__init__(
            f"no verified backup of {environment} database {database!r} under {where} ({found} backup(s) there, "
            "none complete and verified). Nothing was changed. Pick one explicitly in backup_uri (see the list in "
            "this log or `python -m schema_deploy backups list`), or roll back with down_migrations.")


def target(environment: str) -> tuple[str, str]:
    """(url, database name) of the environment's connection."""
    from schema_deploy.pg_tools import target_of

    if environment not in connections.DB_CONNECTIONS:
        raise UsageError(f"environment {environment!r} is not one of {', '.join(connections.DB_CONNECTIONS)}.")
    url = connections.database_url(connections.DB_CONNECTIONS[environment])
    return url, target_of(url).dbname


def backups_root() -> str:
    cfg = deploy_config.load()
    return f"s3://{cfg.backup_bucket}/{cfg.backup_prefix}".rstrip("/")


@fail_fast
def preflight(params: dict[str, Any], log) -> dict[str, Any]:
    """Confirmation first, then the backup or the down migrations to use. Changes nothing."""
    env, method = params["environment"], params["method"]
    url, database = target(env)
    if env == "production" and str(params.get("confirm_database") or "").strip() != database:
        raise ConfirmationMismatch(str(params.get("confirm_database") or "").strip(), database)
    facts = run_facts(current_context())
    summary: dict[str, Any] = {"environment": env, "database": database, "method": method, **facts}
    if method == BACKUP:
        summary["backup"] = choose_backup(env, database, str(params.get("backup_uri") or "").strip(), log)
        what = f"restore {summary['backup']['uri']}"
    elif method == DOWN:
        summary["migrations"] = choose_down(url, params, log)
        what = "down migrations of " + ", ".join(m["name"] for m in summary["migrations"])
    else:
        raise UsageError(f"method {method!r} is not one of {BACKUP}, {DOWN}.")
    summary["approval_body"] = approval_body(summary)
    sent = notify("rollback_started", {"target": f"{env} ({database})", "how": what,
                                       "who": facts.get("triggered by", "?"), "run": facts.get("run", "")}, log)
    summary["slack_ts"] = sent.get("ts")
    return summary


def choose_backup(env: str, database: str, uri: str, log) -> dict[str, Any]:
    """The named backup, or the newest complete and verified one of this database; logs every candidate."""
    from schema_deploy.backup_store import list_backups
    from schema_deploy.restore import load_backup

    s3, root = connections.s3_client(), backups_root()
    mine = [b for b in list_backups(s3, root) if b.environment == env and b.database == database]
    log.info("backups of %s database %s under %s (oldest first):", env, database, root)
    for b in mine:
        m = b.manifest or {}
        log.info("  %s  %s  %s bytes  %s rows  sha256 %s  run %s  verified: %s", b.created.isoformat(), b.state,
                 m.get("size", b.dump_size), m.get("total_rows"), (m.get("sha256") or "?")[:16], m.get("run_id"),
                 (b.verification or {}).get("method") if b.verified else "no")
    if uri:
        _, _, manifest = load_backup(s3, uri)
        if (manifest.get("database"), manifest.get("environment")) != (database, env):
            log.warning("backup %s was taken of %s database %s, not of %s database %s", uri,
                        manifest.get("environment"), manifest.get("database"), env, database)
        chosen_uri = uri
    else:
        verified = [b for b in mine if b.verified]
        if not verified:
            raise NoBackupToRestore(env, database, root, len(mine))
        chosen_uri, manifest = verified[-1].uri, verified[-1].manifest or {}
    log.info("chosen: %s", chosen_uri)
    return {"uri": chosen_uri, "sha256": manifest.get("sha256"), "size": manifest.get("size"),
            "started_at": manifest.get("started_at"), "run_id": manifest.get("run_id"),
            "row_counts": manifest.get("row_counts") or {}, "total_rows": manifest.get("total_rows"),
            "verified": bool((manifest.get("verification") or {}).get("ok"))}


def choose_down(url: str, params: dict[str, Any], log) -> list[dict[str, Any]]:
    """The newest applied migrations to undo and their planned down steps (refusals raise here)."""
    from schema_deploy import ledger
    from schema_deploy.apply import connect
    from schema_deploy.rollback import choose, plan_downs
    from schema_deploy.status import compute_status

    steps = int(params.get("steps") or 1)
    bundle = bundle_for(params)
    with connect(url) as conn:
        targets = choose(bundle, compute_status(bundle, ledger.read_rows(conn)), steps=steps, to=None)
        plans = plan_downs(conn, targets, online=True)
    out = []
    for mp in plans:
        log.info("down %s (%s): %d steps", mp.migration.name, mp.migration.path, len(mp.steps))
        out.append({"name": mp.migration.name, "down_sql": str(mp.migration.path), "down_sha256": mp.migration.checksum,
                    "steps": [{"number": s.number, "transactional": s.transactional,
                               "sql": [p.sql for p in s.statements]} for s in mp.steps]})
    if not out:
        raise UsageError("nothing to roll back: no migration is applied on this database.")
    return out


def approval_body(summary: dict[str, Any]) -> str:
    lines = [f"### Roll back {summary['environment']} database `{summary['database']}`"]
    if summary["method"] == BACKUP:
        b = summary["backup"]
        lines += [f"Restore backup `{b['uri']}` (taken {b['started_at']}, sha256 `{(b['sha256'] or '?')[:16]}…`, "
                  f"{b['total_rows']} rows, verified: {b['verified']}).",
                  "Everything written since that backup is replaced. A safety backup of the current state is "
                  "taken first."]
    else:
        lines.append("Down migrations, newest first:")
        lines += [f"* **{m['name']}** — {len(m['steps'])} steps from `{m['down_sql']}`" for m in summary["migrations"]]
    return "\n".join(lines)


@fail_fast
def safety_backup(env: str, run_id: str, log) -> dict[str, Any]:
    """pg_dump of the target as it is now, streamed to S3 and verified: the way back from the rollback."""
    from schema_deploy.backup import backup
    from schema_deploy.errors import VerifyFailed
    from schema_deploy.restore import verify_backup

    cfg = deploy_config.load()
    s3 = connections.s3_client()
    url, _ = target(env)
    result = backup(s3, url, backups_root(), environment=env, run_id=f"{run_id}-before-rollback", sse=cfg.backup_sse,
                    kms_key_id=cfg.backup_kms_key_id, log=log.info)
    check = verify_backup(s3, result.uri, restore_check=cfg.backup_restore_check, admin_url=url, log=log.info)
    if not check.ok:
        raise VerifyFailed(result.uri, check.problems)
    log.info("safety backup %s (%d bytes, sha256 %s) verified by %s", result.uri, result.size, result.sha256,
             check.method)
    return {"uri": result.uri, "sha256": result.sha256, "size": result.size, "verified": check.method}


@fail_fast
def rollback(params: dict[str, Any], summary: dict[str, Any], log) -> dict[str, Any]:
    """Restore the chosen backup (streamed, clean), or run the chosen down migrations."""
    env = summary["environment"]
    url, database = target(env)
    if summary["method"] == BACKUP:
        from schema_deploy.rollback_restore import restore_over

        done = restore_over(connections.s3_client(), summary["backup"]["uri"], url,
                            confirm_production=database if env == "production" else None, environment=env,
                            force=bool(params.get("force")), log=log.info)
        return {"method": BACKUP, **done.as_dict()}
    return run_down(url, params, summary, log)


def run_down(url: str, params: dict[str, Any], summary: dict[str, Any], log) -> dict[str, Any]:
    """Undo the migrations preflight chose that are still applied (a retry never undoes one more)."""
    from schema_deploy import ledger
    from schema_deploy.apply import Settings, connect
    from schema_deploy.rollback import RollbackRefused, down
    from schema_deploy.status import APPLIED, compute_status

    cfg = deploy_config.load()
    bundle = bundle_for(params)
    chosen = [m["name"] for m in summary["migrations"]]
    with connect(url) as conn:
        states = compute_status(bundle, ledger.read_rows(conn)).states
    applied = [s.name for s in states if s.state == APPLIED]
    todo = [n for n in chosen if n in applied]
    if not todo:
        log.info("already rolled back: %s (an earlier try finished)", ", ".join(chosen))
        return {"method": DOWN, "rolled_back": [], "already_rolled_back": chosen}
    if applied[-len(todo):] != list(reversed(todo)):
        raise RollbackRefused(f"the ledger changed since preflight: the newest applied migrations are now "
                              f"{', '.join(applied[-len(todo):])}, not {', '.join(reversed(todo))}. Nothing more "
                              "was changed; trigger a new rollback run.")
    settings = Settings(lock_timeout_ms=cfg.lock_timeout_ms, max_lock_timeout_ms=cfg.max_lock_timeout_ms,
                        lock_retries=cfg.lock_retries)
    result = down(url, bundle, steps=len(todo), settings=settings, online=True, log=log.info)
    return {"method": DOWN, **result.as_dict()}


class RollbackVerificationFailed(SchemaDeployError):
    exit_code = 1

    def __init__(self, env: str, problems: list[str]) -> None:
        super().__init__(f"verification of the {env} rollback failed: " + "; ".join(problems[:10])
                         + ". Investigate; the safety backup taken before the rollback holds the state before it.")


@fail_fast
def verify(params: dict[str, Any], summary: dict[str, Any], log) -> dict[str, Any]:
    """Row counts equal the backup's manifest (restore), rolled-back migrations pending (down), no
    INVALID index; the schema fingerprint and the ledger's states are recorded."""
    from schema_deploy import ledger
    from schema_deploy.apply import connect
    from schema_deploy.fingerprint import fingerprint_digest, schema_fingerprint
    from schema_deploy.pg_tools import compare_counts
    from schema_deploy.status import PENDING, compute_status

    url, _ = target(summary["environment"])
    bundle = bundle_for(params)
    problems: list[str] = []
    out: dict[str, Any] = {}
    with connect(url) as conn:
        fp = schema_fingerprint(conn)
        states = {s.name: s.state for s in compute_status(bundle, ledger.read_rows(conn)).states}
        invalid = [r[0] for r in conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")]
        if summary["method"] == BACKUP:
            # The audit trail keeps the rows recorded since the backup (put back on purpose): not compared.
            expected = {t: n for t, n in summary["backup"]["row_counts"].items() if not t.startswith("schema_deploy.")}
            counts, diffs = compare_counts(conn, expected)
            problems += [f"row count {d}" for d in diffs]
            out["row_counts"] = counts
    if summary["method"] == DOWN:
        problems += [f"{m['name']} is {states.get(m['name'])}, not pending" for m in summary["migrations"]
                     if states.get(m["name"]) != PENDING]
    problems += [f"index {name} is INVALID" for name in invalid]
    out.update({"environment": summary["environment"], "fingerprint_sha256": fingerprint_digest(fp),
                "ledger": states, "problems": problems})
    for name, state in states.items():
        log.info("ledger: %s %s", name, state)
    log.info("schema fingerprint sha256 %s", out["fingerprint_sha256"])
    if problems:
        raise RollbackVerificationFailed(summary["environment"], problems)
    return out


@fail_fast
def record(context: dict[str, Any], log) -> dict[str, Any]:
    """kind 'rollback' in the target's audit chain (when the rollback ran) and a JSON document in S3;
    Slack hears that it is done when verification passed. Idempotent on retry."""
    import hashlib
    import json
    from urllib.parse import quote

    from schema_deploy import audit
    from schema_deploy.apply import connect
    from schema_deploy.backup_store import Sse, parse_s3_uri

    ti, dag_run, params = context["ti"], context["dag_run"], dict(context["params"])
    states = (ti.get_task_states(dag_id=ti.dag_id, run_ids=[dag_run.run_id]) or {}).get(dag_run.run_id, {})
    states = {t: (str(s) if s else None) for t, s in states.items() if t in TASKS}
    results = {t: ti.xcom_pull(task_ids=t) for t in TASKS}
    summary = {k: v for k, v in (results.get("preflight") or {}).items() if k not in ("slack_ts", "approval_body")}
    approval = results.get("approve_rollback") or {}
    outcome = ("rolled back and verified" if states.get("verify_rollback") == "success"
               else "rejected" if approval.get("chosen_options") == ["Reject"]
               else "failed" if "failed" in states.values() or "upstream_failed" in states.values() else "incomplete")
    base = (getattr(ti, "log_url", "") or "").split("/dags/")[0]
    record_ = {"kind": "rollback", "outcome": outcome, "run": {
        "run_id": dag_run.run_id, "url": f"{base}/dags/{ti.dag_id}/runs/{quote(dag_run.run_id, safe='')}",
        **{k: v for k, v in run_facts(context).items() if k != "run"},
        "started": str(getattr(dag_run, "start_date", "") or "")},
        "params": params, "plan": summary,
        "approval": {"approved": approval.get("chosen_options") == ["Approve"],
                     "approver": (approval.get("responded_by_user") or {}).get("name"),
                     "responded_at": str(approval.get("responded_at"))} if approval else None,
        "safety_backup": results.get("safety_backup"), "rollback": results.get("rollback"),
        "verification": results.get("verify_rollback"), "task_states": states}
    env = params.get("environment")
    chained = None
    if states.get("rollback") in ("success", "failed") and env in connections.DB_CONNECTIONS:
        with connect(target(env)[0]) as conn:
            audit.ensure_table(conn)
            mine = [r for r in audit.read_rows(conn) if r.run_id == dag_run.run_id and r.kind == "rollback"]
            chained = mine[0] if mine else audit.append(conn, "rollback", dag_run.run_id, env, record_)
            log.info("audit: %s row %d (%s) %s", env, chained.id, chained.row_hash[:16],
                     "already there" if mine else "added")
    cfg = deploy_config.load()
    safety = (results.get("safety_backup") or {}).get("uri")
    if safety:
        bucket, key = parse_s3_uri(safety)
        key = key.rsplit(".", 1)[0] + ".audit.json"
    else:
        bucket, key = cfg.backup_bucket, f"{cfg.backup_prefix}/audit/{quote(dag_run.run_id, safe='')}.audit.json"
    body = json.dumps({"record": record_, "chain": [chained.as_dict()] if chained else []}, indent=2,
                      sort_keys=True, default=str).encode() + b"\n"
    digest = hashlib.sha256(body).hexdigest()
    s3, sse = connections.s3_client(), Sse(cfg.backup_sse, cfg.backup_kms_key_id).put_args()
    s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json", Metadata={"sha256": digest},
                  **sse)
    log.info("audit: record of %s (%s) kept at s3://%s/%s sha256 %s", dag_run.run_id, outcome, bucket, key, digest)
    if outcome == "rolled back and verified":
        verification = results.get("verify_rollback") or {}
        notify("rollback_done", {"target": f"{env} ({summary.get('database')})", "method": summary.get("method"),
                                 "ledger": ", ".join(f"{n}: {s}" for n, s in verification.get("ledger", {}).items()),
                                 "schema": f"fingerprint {verification.get('fingerprint_sha256', '?')[:16]}…",
                                 "safety backup": safety}, log)
    return {"outcome": outcome, "s3": f"s3://{bucket}/{key}", "sha256": digest,
            "chain": {"id": chained.id, "row_hash": chained.row_hash} if chained else None}


def notify_failure(context: Any) -> None:
    """on_failure_callback of rollback_schema's tasks; never raises."""
    from schema_deploy.errors import scrub
    from schema_deploy_airflow.steps import task_log

    ti = context.get("ti") or context.get("task_instance")
    error = context.get("exception")
    facts = {"task": getattr(ti, "task_id", "?"), "try": getattr(ti, "try_number", "?"),
             "error": scrub(str(error))[:600] if error else "see the log"}
    log_url = getattr(ti, "log_url", "")
    try:
        notify("rollback_failed", facts, task_log(), links={"Task log": log_url} if log_url else None, context=context)
    except Exception:  # noqa: BLE001 - a callback must never raise
        pass
