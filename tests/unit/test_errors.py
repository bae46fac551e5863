"""Passwords never reach a message: `scrub` and the root error class."""
from __future__ import annotations

import pytest

from schema_deploy.errors import SchemaDeployError
from schema_deploy.redact import scrub


@pytest.mark.parametrize("text, expected", [
    ("cannot connect to postgresql://migrator:s3cret@db:5432/app: refused",
     "cannot connect to postgresql://migrator:****@db:5432/app: refused"),
    ("postgres://u:pa/ss:word@h/db", "postgres://u:****@h/db"),
    # An unencoded '@' in the password: mask up to the URL's last '@', not its first.
    ("postgresql://migrator:Spl1t@Secret@127.0.0.1:5432/x", "postgresql://migrator:****@127.0.0.1:5432/x"),
    ("host=db user=u password=s3cret dbname=app", "host=db user=u password=**** dbname=app"),
    ("password = 'with spaces' port=5432", "password = **** port=5432"),
    ("postgresql://a:one@h/x and postgresql://b:two@h/y", "postgresql://a:****@h/x and postgresql://b:****@h/y"),
    ("postgresql://migrator@h/db has no password", "postgresql://migrator@h/db has no password"),
    ("postgresql://h:5432/db has a port, not a password", "postgresql://h:5432/db has a port, not a password"),
], ids=["url", "slash-in-password", "at-in-password", "keyword", "quoted-keyword", "two-urls", "no-password",
        "port-only"])
def test_scrub_masks_passwords_and_keeps_the_rest(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_every_package_error_is_scrubbed_when_built() -> None:
    error = SchemaDeployError("failed on postgresql://migrator:s3cret@db/app")
    assert "s3cret" not in str(error) and "migrator:****@db/app" in error.message


def test_a_connection_missing_on_the_worker_names_the_connection_the_queue_and_the_route() -> None:
    from schema_deploy.pipeline.errors import ConnectionNotOnWorker

    wrong_queue = ConnectionNotOnWorker("production_db", queue="staging", host="worker-staging", wanted="production",
                                        setting="queues.production")
    assert str(wrong_queue) == ("connection production_db is not defined on this worker (worker-staging, queue "
                                "staging): route the task to queue production (deploy.yaml queues.production), "
                                "whose workers hold production_db")
    right_queue = ConnectionNotOnWorker("production_db", queue="production", host="w2", wanted="production")
    assert str(right_queue) == ("connection production_db is not defined on this worker (w2, queue production): "
                                "define production_db on the workers of queue production "
                                "(AIRFLOW_CONN_PRODUCTION_DB or the worker's secrets backend)")
