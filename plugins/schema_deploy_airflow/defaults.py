"""default_args shared by the project's DAGs: one owner, retries with exponential backoff, and no
"Done. Returned value was: {…}" line: a task's result is a whole release, plan or record on one line
(the XCom tab shows it); the task's own log lines say what it did. Operators without the option
(the approval, the window waits) are not given it: default_args only fill parameters they accept.

The first retry waits 30 s; SCHEMA_DEPLOY_RETRY_DELAY_S in the DAG processor's environment sets
another (the tests that kill a worker use 3 s, so the retry they wait for comes sooner)."""
from __future__ import annotations

import os
from datetime import timedelta

DEFAULT_ARGS = {
    "owner": "platform-db",
    "retries": 2,
    "retry_delay": timedelta(seconds=float(os.environ.get("SCHEMA_DEPLOY_RETRY_DELAY_S") or 30)),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "show_return_value_in_logs": False,
}
