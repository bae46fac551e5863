"""Task callbacks: a failed task tells Slack what failed, where, and where its log is."""
from __future__ import annotations

from typing import Any


def notify_failure(context: Any) -> None:
    """on_failure_callback for every task of deploy_schema; never raises."""
    from schema_deploy.errors import scrub
    from schema_deploy_airflow.steps import notify, task_log

    ti = context.get("ti") or context.get("task_instance")
    error = context.get("exception")
    facts = {
        "task": getattr(ti, "task_id", "?"),
        "try": getattr(ti, "try_number", "?"),
        "error": scrub(str(error))[:600] if error else "see the log",
    }
    log_url = getattr(ti, "log_url", "")
    try:
        notify("failed", facts, task_log(), links={"Task log": log_url} if log_url else None, context=context)
    except Exception:  # noqa: BLE001 - a callback must never raise
        pass
