"""default_args shared by the project's DAGs: one owner, retries with exponential backoff, and no
"Done. Returned value was: {…}" line: a task's result is a whole release, plan or record on one line
(the XCom tab shows it); the task's own log lines say what it did. Operators without the option
(the approval, the window waits) are not given it: default_args only fill parameters they accept.

The first retry waits 30 s; SCHEMA_DEPLOY_RETRY_DELAY_S in the DAG processor's environment sets
another (the tests that kill a worker use 3 s, so the retry they wait for comes sooner).

`param` makes the DAGs' (and the approval form's) params."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

DEFAULT_ARGS = {
    "owner": "platform-db",
    "retries": 2,
    "retry_delay": timedelta(seconds=float(os.environ.get("SCHEMA_DEPLOY_RETRY_DELAY_S") or 30)),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
    "show_return_value_in_logs": False,
}

# The params' JSON Schema draft. Airflow checks a param's schema against its draft's metaschema each
# time it resolves the param, and serializing a DAG resolves every param of every task (ParamsDict
# comparisons). Without `$schema` that is draft 2020-12, whose check took 0.25 ms here against draft
# 7's 0.10 ms; serializing deploy_schema took 0.107 s against 0.046 s (7 Dec, this machine). The
# keywords the params use (type, enum, minimum, maximum, items) mean the same in both drafts.
PARAM_DRAFT = "http://json-schema.org/draft-07/schema#"


def param(default: Any, **schema: Any):
    """An Airflow Param (`description` and `source` as Param takes them, the rest its JSON schema),
    declared as draft 7 (PARAM_DRAFT)."""
    from airflow.sdk import Param

    return Param(default, **schema, **{"$schema": PARAM_DRAFT})
