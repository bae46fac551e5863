"""default_args shared by the project's DAGs: one owner, retries with exponential backoff."""
from __future__ import annotations

from datetime import timedelta

DEFAULT_ARGS = {
    "owner": "platform-db",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}
