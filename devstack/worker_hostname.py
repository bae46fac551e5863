"""The hostname a local Celery worker reports to Airflow (`[core] hostname_callable`).

Both workers of `make airflow EXECUTOR=celery` run on this one machine; each stands
for a machine of its own network, so each reports its own name ($DEVSTACK_WORKER_HOSTNAME),
which Airflow records on every task instance it runs.
"""
from __future__ import annotations

import os
import socket


def hostname() -> str:
    return os.environ.get("DEVSTACK_WORKER_HOSTNAME") or socket.getfqdn()
