"""The audit record of one deployment run, built from what its tasks returned.

Pure: takes the run's facts and each task's result (XCom) and state, returns one
JSON-able dict — who, what, where, when, with which exact SQL, which backup,
which tests, who approved, in which window, what verification found, how it
ended. `schema_deploy.audit.append` chains it into the target database; the same
dict goes into a document beside the backup in S3.
"""
from __future__ import annotations

from typing import Any

RECORD_VERSION = 1


def _steps(applied: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [{"migration": m["name"], **step} for m in (applied or {}).get("applied", []) for step in m.get("steps", [])]


def build(run: dict[str, Any], params: dict[str, Any], results: dict[str, Any],
          states: dict[str, str | None]) -> dict[str, Any]:
    """`run`: run_id, url, run_type, triggered_by, started; `results`: task_id -> its XCom (or None)."""
    preflight = results.get("preflight") or {}
    backup = results.get("backup_production") or {}
    gate = results.get("test_gate") or {}
    approval = results.get("approval") or {}
    window = results.get("wait_for_window") or {}
    staging, production = results.get("apply_staging"), results.get("apply_production")
    verification = results.get("verify_production") or {}
    failed = sorted(t for t, s in states.items() if s in ("failed", "upstream_failed"))
    outcome = ("failed" if failed else "production migrated" if states.get("verify_production") == "success"
               else "nothing to deploy" if states.get("preflight") == "skipped"
               else "rejected" if approval and not approval.get("approved")
               else "dry run" if states.get("apply_staging") == "success" and params.get("dry_run")
               else "incomplete")
    return {
        "record_version": RECORD_VERSION,
        "run": run,
        "parameters": params,
        "outcome": outcome,
        "failed_tasks": failed,
        "task_states": states,
        "bundle": [{"name": m["name"], "checksum": m["checksum"]} for m in preflight.get("migrations", [])],
        "sql_executed": [{"migration": m["name"], "step": s["number"], "sql": s["sql"], "rewritten": s["rewritten"],
                          "locks": s["locks"]} for m in preflight.get("migrations", []) for s in m["steps"]],
        "lint": preflight.get("lint"),
        "prechecks": preflight.get("prechecks"),
        "backup": {k: backup.get(k) for k in ("uri", "sha256", "size", "rows", "verified")} if backup else None,
        "gate": {"commands": [{k: c.get(k) for k in ("command", "exit_code", "seconds", "junit")}
                              for c in gate.get("gate", {}).get("commands", [])],
                 "junit_uris": gate.get("gate", {}).get("junit", []),
                 "staging_verification": gate.get("verification", {}).get("criteria")} if gate else None,
        "approval": approval or None,
        "window": window or None,
        "staging": {"seconds": staging.get("seconds"), "lock_retries": staging.get("lock_retries"),
                    "steps": _steps(staging)} if staging else None,
        "production": {"seconds": production.get("seconds"), "lock_retries": production.get("lock_retries"),
                       "steps": _steps(production)} if production else None,
        "verification": {k: verification.get(k) for k in ("checks", "failed", "criteria", "facts", "rows_before",
                                                          "rows_after", "index_bytes")} if verification else None,
    }
