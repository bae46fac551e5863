"""Task callbacks: a failed run tells Slack once what failed, in which DAG, and where its log is.

`on_failure_callback` fires for every task that fails, and after the first failure more may
follow in the same run (deploy_fleet's `windowed` runs whatever happened and fails when the
waves did not run; a teardown may fail too). Only the run's first failed task posts; the later
ones log that the run's failure was already announced.

"First" is read from the run's task states, not from a marker written by the first callback:
a task's FAILED state reaches Airflow only after its process ran its callbacks (task_runner
sends the terminal state, the supervisor reports it when the process exits), so a task already
`failed` when another fails has had its own chance to post. The states are the scheduler's
truth and survive retries and clears: a try that goes up for retry is not `failed`, and a
cleared task is no longer `failed`, so a re-run that fails again is announced again. Two tasks
failing at the same moment each see the other still running and both post: the rule errs
towards two messages, never none. If the states cannot be read, the callback posts.
"""
from __future__ import annotations

from typing import Any


def earlier_failures(task_id: str, states: dict[str, Any]) -> list[str]:
    """The tasks of this run other than `task_id` that already failed (mapped ones as `task_map`)."""
    return sorted(t for t, s in states.items()
                  if t != task_id and s is not None and str(s).split(".")[-1].lower() == "failed")


def run_states(ti: Any) -> dict[str, Any] | None:
    """This run's task states by task id, or None when they cannot be read (then the callback posts)."""
    from schema_deploy_airflow.steps import run_states as states_of

    try:
        return states_of(ti)
    except Exception:  # noqa: BLE001 - outside a task runner, or the API is unreachable
        return None


# The Schema deployments page (ui.URL_PREFIX, not imported here: a callback stays light). It shows the
# run's record: which task failed, its backup, its decision.
PAGE_PATH = "/schema-deploy/"


def failure_links(ti: Any) -> dict[str, str]:
    """The task's log and the Schema deployments page, both on the Airflow the log link is on."""
    log_url = getattr(ti, "log_url", "") or ""
    if not log_url:
        return {}
    base = log_url.split("/dags/")[0]
    return {"Task log": log_url, "Schema deployments page": f"{base}{PAGE_PATH}"}


def failure_facts(ti: Any, error: BaseException | None) -> dict[str, object]:
    """What the FAILED message says: the DAG (in the text, not only in the link), task, try, error."""
    from schema_deploy.redact import scrub

    # fail_fast's exception is wrapped for the log; Slack gets the message as written.
    text = (getattr(error, "unwrapped", None) or str(error)) if error else ""
    return {"DAG": getattr(ti, "dag_id", "?"), "task": getattr(ti, "task_id", "?"),
            "try": getattr(ti, "try_number", "?"), "error": scrub(text)[:600] if text else "see the task log"}


def notify_failure(context: Any, event: str = "failed") -> None:
    """on_failure_callback of every task of the three DAGs (`event`: rollback_schema's is
    rollback_failed); posts only for the run's first failed task. Never raises."""
    from schema_deploy.redact import scrub
    from schema_deploy_airflow.steps import notify, run_preflight, task_log, thread_of

    log = task_log()
    try:
        ti = context.get("ti") or context.get("task_instance")
        facts = failure_facts(ti, context.get("exception"))
        states = run_states(ti)
        earlier = earlier_failures(str(facts["task"]), states) if states is not None else []
        if earlier:
            log.info("Slack: not posting '%s' for %s: this run's failure was already announced when %s failed",
                     event, facts["task"], ", ".join(earlier))
            return
        notify(event, facts, log, links=failure_links(ti) or None, **thread_of(run_preflight(context)))
    except Exception as exc:  # noqa: BLE001 - a callback must never raise
        log.warning("the failure notification could not be sent: %s", scrub(str(exc)))
