"""Airflow connections → what `schema_deploy` takes: libpq URLs, a boto3 S3 client, a Slack poster.

Connection ids are the design's: `staging_db`, `production_db` (postgres),
`backup_s3` (aws; `endpoint_url` read from extra by the hook), `slack_deploys`
(`slackwebhook` with the webhook URL as password, or `slack` with an API token as
password for threaded replies under one message per run). Only named fields are read.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from urllib.parse import quote, urlencode

DB_CONNECTIONS = {"staging": "staging_db", "production": "production_db"}
S3_CONNECTION = "backup_s3"
SLACK_CONNECTION = "slack_deploys"


class ConnectionMissing(LookupError):
    """The connection is defined nowhere this process can see (env, secrets backend, metastore)."""


def get_connection(conn_id: str):
    """The connection, or ConnectionMissing (not Airflow's exception, which names no fix)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        return BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise ConnectionMissing(f"{conn_id} is not defined for this process (environment, secrets backend "
                                "or metadata database); on Celery only the worker of its environment holds it") from None


def database_url(conn_id: str) -> str:
    """A postgresql:// URL (password percent-encoded) from a postgres connection."""
    from schema_deploy.config.errors import ConfigError

    conn = get_connection(conn_id)
    if not conn.host or not conn.schema:
        raise ConfigError(f"Airflow connection {conn_id!r}", "has no host or no database (schema field)",
                          "Set host, port, login, password and the database name in it.")
    auth = quote(conn.login or "", safe="")
    if conn.password:
        auth += ":" + quote(conn.password, safe="")
    url = f"postgresql://{auth}@{conn.host}:{conn.port or 5432}/{quote(conn.schema, safe='')}"
    # TLS settings from the connection's extra, by name (never the whole extra).
    extra = conn.extra_dejson or {}
    tls = {k: str(extra[k]) for k in ("sslmode", "sslrootcert", "sslcert", "sslkey") if extra.get(k)}
    return url + ("?" + urlencode(tls) if tls else "")


def s3_client(conn_id: str = S3_CONNECTION):
    """boto3 S3 client from the aws connection (path-style addressing for S3-compatible endpoints).

    One client per connection as it is now, per process: a new boto3 session reads botocore's service
    models again (about 35 ms of JSON each time, a dozen times per task). A changed connection (its
    URI, extras included) gets a client of its own. Without the connection, the hook uses boto3's own
    credential chain (environment, instance role), as it always did."""
    import hashlib

    try:
        version = hashlib.sha256(get_connection(conn_id).get_uri().encode()).hexdigest()
    except ConnectionMissing:
        version = ""
    return _s3_client(conn_id, version)


@functools.lru_cache(maxsize=4)
def _s3_client(conn_id: str, _version: str):
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    return S3Hook(aws_conn_id=conn_id, config={"s3": {"addressing_style": "path"}}).get_conn()


def slack_poster(channel: str, thread_ts: str | None = None,
                 conn_id: str = SLACK_CONNECTION) -> Callable[[dict[str, object]], str | None]:
    """A `notify.deliver` poster through the Slack provider's hooks.

    A `slack` (API token) connection posts with chat.postMessage to `channel`,
    as a reply in `thread_ts` when given; a `slackwebhook` connection posts to
    its webhook (one channel, fixed by the webhook; no threads).
    """
    from airflow.providers.slack.hooks.slack import SlackHook
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook
    from schema_deploy.ops.notify import api_poster, webhook_poster

    if SlackHook.get_connection(conn_id).conn_type == "slack":
        return api_poster(SlackHook(slack_conn_id=conn_id).client, channel, thread_ts)
    return webhook_poster(SlackWebhookHook(slack_webhook_conn_id=conn_id).client)
