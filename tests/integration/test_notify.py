"""Slack notifications through the real slack-sdk against the stack's Slack stand-in."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import requests
from slack_sdk import WebClient
from slack_sdk.webhook import WebhookClient

from schema_deploy.ops.notify import api_poster, deliver, message, webhook_poster


@pytest.fixture
def slack(private_slack: dict[str, str]):
    control = private_slack["SLACK_CONTROL_URL"]  # a stand-in of the test's own: its failures hit no other test
    requests.delete(f"{control}/fail", timeout=5)
    yield private_slack
    requests.delete(f"{control}/fail", timeout=5)


def recorded(env: dict[str, str], marker: str) -> list[dict]:
    lines = Path(env["SLACK_MESSAGES_FILE"]).read_text().splitlines()
    return [m for m in map(json.loads, lines) if marker in (m.get("text") or "")]


def test_a_message_never_carries_a_password_from_a_url() -> None:
    msg = message("failed", {"target": "postgresql://migrator:s3cret@db:5432/app", "error": "boom"})
    assert "s3cret" not in json.dumps(msg)
    assert "postgresql://migrator:****@db:5432/app" in msg["text"]


def test_unknown_events_are_a_programming_error() -> None:
    with pytest.raises(ValueError, match="unknown notification event 'nope'"):
        message("nope", {})


def test_webhook_delivery_is_recorded_with_its_blocks(slack: dict[str, str]) -> None:
    marker = uuid.uuid4().hex
    msg = message("started", {"run": marker, "migrations": "20251017120000_epic5_schema_completion"},
                  {"Airflow run": "http://localhost:8080/dags/deploy_schema"})
    outcome = deliver(webhook_poster(WebhookClient(slack["SLACK_WEBHOOK_URL"])), msg, "started", sleep=lambda _: None)
    assert outcome.ok and outcome.attempts == 1
    [got] = recorded(slack, marker)
    assert got["blocks"][0]["text"]["text"].startswith("*:rocket: Schema deployment started")


def test_api_delivery_threads_replies_under_the_first_message(slack: dict[str, str]) -> None:
    marker = uuid.uuid4().hex
    client = WebClient(token=slack["SLACK_API_TOKEN"], base_url=slack["SLACK_API_URL"])
    first = deliver(api_poster(client, "#deploys"), message("started", {"run": marker}), "started")
    reply = deliver(api_poster(client, "#deploys", first.ts), message("gate_passed", {"run": marker}), "gate_passed")
    assert first.ok and reply.ok and first.ts
    msgs = recorded(slack, marker)
    assert [m.get("thread_ts") for m in msgs] == [None, first.ts]


def test_a_failing_slack_is_retried_and_never_raises(slack: dict[str, str]) -> None:
    requests.post(f"{slack['SLACK_CONTROL_URL']}/fail", json={"status": 500}, timeout=5).raise_for_status()
    waits: list[float] = []
    logs: list[str] = []
    outcome = deliver(webhook_poster(WebhookClient(slack["SLACK_WEBHOOK_URL"])), message("failed", {"x": "y"}),
                      "failed", attempts=3, sleep=waits.append, log=logs.append)
    assert not outcome.ok and outcome.attempts == 3
    assert "HTTP 500" in outcome.errors[0] and waits == [1.0, 2.0]
    assert logs[-1].startswith("giving up on Slack notification 'failed' after 3 attempts")


def test_rate_limiting_waits_for_retry_after_then_succeeds(slack: dict[str, str]) -> None:
    requests.post(f"{slack['SLACK_CONTROL_URL']}/fail", json={"status": 429, "retry_after": 2, "count": 1},
                  timeout=5).raise_for_status()
    waits: list[float] = []
    marker = uuid.uuid4().hex
    outcome = deliver(webhook_poster(WebhookClient(slack["SLACK_WEBHOOK_URL"])), message("started", {"run": marker}),
                      "started", sleep=waits.append)
    assert outcome.ok and outcome.attempts == 2 and waits == [2.0]
    assert len(recorded(slack, marker)) == 1
