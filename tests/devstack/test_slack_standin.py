"""Integration tests for devstack/slack_standin.py, driven by the real slack_sdk clients."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import pytest
import requests
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import RateLimitErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from tests.conftest import stop_process

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "devstack" / "slack_standin.py"
TOKEN = "xoxb-standin-test-0123456789-abcdefSECRET"
WEBHOOK_PATH = "/services/T0STANDIN/B0STANDIN/abcdef123456"


class Standin(NamedTuple):
    base_url: str
    token: str
    messages_file: Path
    log_file: Path

    @property
    def webhook_url(self) -> str:
        return self.base_url + WEBHOOK_PATH


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(base_url: str, proc: subprocess.Popen, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"stand-in exited early with code {proc.returncode}")
        try:
            if requests.get(base_url + "/_standin/health", timeout=1).json() == {"ok": True}:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError("stand-in did not become healthy in time")


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Standin]:
    tmp = tmp_path_factory.mktemp("slack_standin")
    port = _free_port()
    messages, log, pid = tmp / "messages.jsonl", tmp / "standin.log", tmp / "standin.pid"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--host", "127.0.0.1", "--port", str(port),
         "--messages-file", str(messages), "--token", TOKEN,
         "--pid-file", str(pid), "--log-file", str(log)],
        cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base_url, proc)
        assert pid.read_text().strip() == str(proc.pid)
        yield Standin(base_url, TOKEN, messages, log)
    finally:
        stop_process(proc)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        proc.stderr and proc.stderr.close()
    assert proc.returncode == 0, stderr
    assert not pid.exists(), "pid file should be removed on SIGTERM"


@pytest.fixture(autouse=True)
def _reset(standin: Standin) -> None:
    assert requests.delete(standin.base_url + "/_standin/fail", timeout=5).ok
    assert requests.delete(standin.base_url + "/_standin/messages", timeout=5).ok


def _messages(standin: Standin) -> list[dict[str, Any]]:
    lines = standin.messages_file.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _arm(standin: Standin, **rule: Any) -> None:
    resp = requests.post(standin.base_url + "/_standin/fail", json=rule, timeout=5)
    assert resp.status_code == 200, resp.text


def _stats(standin: Standin) -> dict[str, dict[str, int]]:
    return requests.get(standin.base_url + "/_standin/stats", timeout=5).json()


def _web(standin: Standin, token: str | None = None, **kwargs: Any) -> WebClient:
    return WebClient(token=token or standin.token, base_url=standin.base_url + "/api/", **kwargs)


BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*deploy* `v42` succeeded"}}]


# ------------------------------------------------------------------ incoming webhooks
def test_webhook_send_records_text_and_blocks(standin: Standin) -> None:
    resp = WebhookClient(standin.webhook_url).send(text="deploy v42 ok", blocks=BLOCKS)
    assert resp.status_code == 200
    assert resp.body == "ok"
    [msg] = _messages(standin)
    assert msg["kind"] == "webhook"
    assert msg["path"] == WEBHOOK_PATH
    assert msg["text"] == "deploy v42 ok"
    assert msg["blocks"] == BLOCKS
    assert msg["payload"]["blocks"] == BLOCKS
    assert msg["received_at"].endswith("+00:00")
    assert requests.get(standin.base_url + "/_standin/messages", timeout=5).json() == [msg]


def test_webhook_accepts_form_encoded_payload(standin: Standin) -> None:
    payload = json.dumps({"text": "from a form", "username": "schema-bot"})
    resp = requests.post(standin.webhook_url, data={"payload": payload}, timeout=5)
    assert (resp.status_code, resp.text) == (200, "ok")
    assert resp.headers["Content-Type"].startswith("text/plain")
    [msg] = _messages(standin)
    assert msg["text"] == "from a form"
    assert msg["payload"]["username"] == "schema-bot"


def test_webhook_invalid_json_is_invalid_payload(standin: Standin) -> None:
    resp = requests.post(standin.webhook_url, data=b"{not json",
                         headers={"Content-Type": "application/json"}, timeout=5)
    assert (resp.status_code, resp.text) == (400, "invalid_payload")
    assert _messages(standin) == []


def test_webhook_without_text_is_no_text(standin: Standin) -> None:
    resp = WebhookClient(standin.webhook_url).send_dict({"username": "schema-bot"})
    assert (resp.status_code, resp.body) == (400, "no_text")
    assert _messages(standin) == []


def test_webhook_bad_path_is_no_service(standin: Standin) -> None:
    resp = requests.post(standin.base_url + "/services/nope", json={"text": "x"}, timeout=5)
    assert (resp.status_code, resp.text) == (404, "no_service")


# ------------------------------------------------------------------ Web API
def test_post_message_and_threaded_reply(standin: Standin) -> None:
    client = _web(standin)
    first = client.chat_postMessage(channel="#deploys", text="migration 0042 started")
    assert first["ok"] is True
    assert first["channel"].startswith("C") and len(first["channel"]) == 11
    assert first["message"]["user"] == "U0STANDIN"
    # the same name (with or without '#') maps to the same stable id
    second = client.chat_postMessage(channel="deploys", text="reply", thread_ts=first["ts"],
                                     blocks=BLOCKS)
    assert second["channel"] == first["channel"]
    assert float(second["ts"]) > float(first["ts"])
    assert second["message"]["thread_ts"] == first["ts"]
    assert second["message"]["blocks"] == BLOCKS

    top, reply = _messages(standin)
    assert top["kind"] == reply["kind"] == "chat.postMessage"
    assert top["ts"] == first["ts"] and top["thread_ts"] is None
    assert reply["thread_ts"] == first["ts"]
    assert reply["channel"] == first["channel"]
    assert reply["blocks"] == BLOCKS


def test_chat_update_existing_message(standin: Standin) -> None:
    client = _web(standin)
    posted = client.chat_postMessage(channel="#deploys", text="migration running")
    updated = client.chat_update(channel=posted["channel"], ts=posted["ts"], text="migration done")
    assert updated["ok"] and updated["ts"] == posted["ts"]
    assert updated["message"]["text"] == "migration done"
    kinds = [(m["kind"], m["ts"], m["text"]) for m in _messages(standin)]
    assert kinds == [("chat.postMessage", posted["ts"], "migration running"),
                     ("chat.update", posted["ts"], "migration done")]
    with pytest.raises(SlackApiError) as exc:
        client.chat_update(channel=posted["channel"], ts="1.000001", text="nope")
    assert exc.value.response["error"] == "message_not_found"


@pytest.mark.filterwarnings("ignore:The top-level `text` argument is missing")
def test_post_message_validation(standin: Standin) -> None:
    client = _web(standin)
    with pytest.raises(SlackApiError) as exc:
        client.chat_postMessage(channel="#deploys")
    assert exc.value.response["error"] == "no_text"
    resp = requests.post(standin.base_url + "/api/chat.postMessage", json={"text": "x"},
                         headers={"Authorization": f"Bearer {standin.token}"}, timeout=5)
    assert resp.json() == {"ok": False, "error": "channel_not_found"}
    assert _messages(standin) == []


def test_auth_test_and_api_test(standin: Standin) -> None:
    client = _web(standin)
    auth = client.auth_test()
    assert auth["ok"] and auth["team_id"] == "T0STANDIN" and auth["user_id"] == "U0STANDIN"
    assert auth["bot_id"] == "B0STANDIN" and auth["team"] == "Standin"
    echo = client.api_test(foo="bar")
    assert echo["args"] == {"foo": "bar"}


def test_wrong_or_missing_token(standin: Standin) -> None:
    with pytest.raises(SlackApiError) as exc:
        _web(standin, token="xoxb-wrong").chat_postMessage(channel="#deploys", text="x")
    assert exc.value.response["error"] == "invalid_auth"
    resp = requests.post(standin.base_url + "/api/auth.test", timeout=5)
    assert resp.status_code == 200 and resp.json() == {"ok": False, "error": "not_authed"}
    # a token form field is accepted too (form-encoded, as older clients send it)
    resp = requests.post(standin.base_url + "/api/chat.postMessage",
                         data={"token": standin.token, "channel": "#deploys", "text": "form",
                               "blocks": json.dumps(BLOCKS)}, timeout=5)
    assert resp.json()["ok"] is True
    [msg] = _messages(standin)
    assert msg["blocks"] == BLOCKS and "token" not in msg["payload"]


def test_unknown_method(standin: Standin) -> None:
    with pytest.raises(SlackApiError) as exc:
        _web(standin).api_call("chat.doesNotExist", json={"channel": "x"})
    assert exc.value.response.status_code == 404
    assert exc.value.response["error"] == "unknown_method"


# ------------------------------------------------------------------ failure switch
def test_fail_500(standin: Standin) -> None:
    _arm(standin, status=500)
    before = _stats(standin)["failed"]
    resp = WebhookClient(standin.webhook_url).send(text="will fail")
    assert (resp.status_code, resp.body) == (500, "internal_error")
    with pytest.raises(SlackApiError) as exc:
        _web(standin).chat_postMessage(channel="#deploys", text="will fail")
    assert exc.value.response.status_code == 500
    assert exc.value.response["error"] == "internal_error"
    assert _messages(standin) == []
    after = _stats(standin)["failed"]
    assert after["webhook"] == before.get("webhook", 0) + 1
    assert after["chat.postMessage"] == before.get("chat.postMessage", 0) + 1


def test_fail_count_and_scope(standin: Standin) -> None:
    _arm(standin, status=500, count=2, paths="webhook")
    client = WebhookClient(standin.webhook_url)
    assert _web(standin).chat_postMessage(channel="#deploys", text="api unaffected")["ok"]
    assert [client.send(text="x").status_code for _ in range(3)] == [500, 500, 200]
    assert [m["kind"] for m in _messages(standin)] == ["chat.postMessage", "webhook"]


def test_fail_429_webhook_sees_retry_after(standin: Standin) -> None:
    _arm(standin, status=429, retry_after=2)
    resp = WebhookClient(standin.webhook_url).send(text="rate limited")
    assert (resp.status_code, resp.body) == (429, "rate_limited")
    assert resp.headers.get("Retry-After") == "2"
    assert _messages(standin) == []


@pytest.mark.slow
def test_fail_429_web_client_retries_once(standin: Standin) -> None:
    _arm(standin, status=429, retry_after=1, count=1)
    before = _stats(standin)
    client = _web(standin, retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)])
    resp = client.chat_postMessage(channel="#deploys", text="after retry")
    assert resp["ok"] is True
    after = _stats(standin)
    assert after["failed"]["chat.postMessage"] == before["failed"].get("chat.postMessage", 0) + 1
    assert after["accepted"]["chat.postMessage"] == before["accepted"].get("chat.postMessage", 0) + 1
    [msg] = _messages(standin)
    assert msg["text"] == "after retry" and msg["ts"] == resp["ts"]


def test_fail_429_without_retry_raises_ratelimited(standin: Standin) -> None:
    _arm(standin, status=429, retry_after=3, paths="api")
    with pytest.raises(SlackApiError) as exc:
        _web(standin).chat_postMessage(channel="#deploys", text="x")
    assert exc.value.response.status_code == 429
    assert exc.value.response["error"] == "ratelimited"
    assert exc.value.response.headers["Retry-After"] == "3"


# ------------------------------------------------------------------ secrets
def test_token_never_written(standin: Standin) -> None:
    assert WebhookClient(standin.webhook_url).send(text="webhook").status_code == 200
    client = _web(standin)
    client.chat_postMessage(channel="#deploys", text="bearer auth")
    requests.post(standin.base_url + f"/api/chat.postMessage?token={standin.token}",
                  data={"channel": "#deploys", "text": "query-string auth"}, timeout=5)
    requests.post(standin.base_url + "/api/chat.postMessage",
                  data={"token": standin.token, "channel": "#deploys", "text": "form auth"},
                  timeout=5)
    with pytest.raises(SlackApiError):
        _web(standin, token=standin.token + "x").auth_test()
    assert len(_messages(standin)) == 4
    assert standin.token not in standin.messages_file.read_text(encoding="utf-8")
    log = standin.log_file.read_text(encoding="utf-8")
    assert "/api/chat.postMessage" in log
    assert standin.token not in log
    assert WEBHOOK_PATH.rsplit("/", 1)[-1] not in log, "webhook secret is masked in the log"
