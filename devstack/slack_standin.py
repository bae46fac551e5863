#!/usr/bin/env python3
"""Loopback Slack stand-in for the local dev stack, tests and the demo.

Speaks just enough of Slack's HTTP surface for real clients (``slack_sdk``'s
``WebhookClient`` and ``WebClient``, ``requests``, Airflow's Slack hooks):

* incoming webhooks: ``POST /services/T…/B…/<secret>``;
* Web API: ``POST /api/<method>`` for ``chat.postMessage``, ``chat.update``,
  ``auth.test`` and ``api.test``;
* control routes under ``/_standin/`` (loopback clients only): failure switch,
  recorded messages, health and stats.

Every accepted message is appended as one JSON line to ``--messages-file``.
The bot token is never written to the messages file or the log.
Standard library only.
"""
from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qsl, urlsplit

WEBHOOK_PATH = re.compile(r"^/services/(T[A-Z0-9]+)/(B[A-Z0-9]+)/([A-Za-z0-9]+)$")
CHANNEL_ID = re.compile(r"^[CGD][A-Z0-9]{8,}$")
TEAM_ID, USER_ID, BOT_ID = "T0STANDIN", "U0STANDIN", "B0STANDIN"
MAX_BODY = 5 * 1024 * 1024
REDACTED = "[redacted]"
LOG = logging.getLogger("slack_standin")


class BadRequest(Exception):
    """Request body could not be parsed; ``code`` is the Slack error string."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


# --------------------------------------------------------------------------- helpers
def utc_now_iso() -> str:
    """Current time as ISO-8601 UTC with microseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def channel_id_for(channel: str) -> str:
    """Map a channel name (``#deploys`` / ``deploys``) to a stable Slack-like id."""
    if CHANNEL_ID.match(channel):
        return channel
    name = channel.lstrip("#").strip().lower()
    prefix = "D" if re.match(r"^[UW][A-Z0-9]{8,}$", channel) else "C"
    return prefix + hashlib.sha1(name.encode("utf-8")).hexdigest()[:10].upper()


def redact(value: Any, secret: str) -> Any:
    """Return ``value`` with any ``token`` key dropped and ``secret`` masked."""
    if isinstance(value, dict):
        return {k: redact(v, secret) for k, v in value.items() if k != "token"}
    if isinstance(value, list):
        return [redact(v, secret) for v in value]
    if isinstance(value, str) and secret and secret in value:
        return value.replace(secret, REDACTED)
    return value


def has_content(args: dict[str, Any]) -> bool:
    """True when a message carries text, blocks or attachments (Slack's no_text rule)."""
    return any(args.get(key) for key in ("text", "blocks", "attachments"))


def parse_form(raw: bytes) -> dict[str, str]:
    """Decode an ``application/x-www-form-urlencoded`` body (last value wins)."""
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


def parse_json_object(text: str | bytes) -> dict[str, Any]:
    """Parse a JSON object or raise ``ValueError``."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("JSON body is not an object")
    return value


def decode_json_fields(args: dict[str, Any]) -> None:
    """Form-encoded API calls carry ``blocks``/``attachments`` as JSON strings."""
    for key in ("blocks", "attachments"):
        if isinstance(args.get(key), str) and args[key]:
            try:
                args[key] = json.loads(args[key])
            except ValueError:
                raise BadRequest(f"invalid_{key}") from None


# --------------------------------------------------------------------------- state
@dataclass
class FailRule:
    """An armed failure: HTTP ``status`` for ``scope`` requests, ``count`` times (None = forever)."""

    status: int
    retry_after: int = 1
    count: int | None = None
    scope: str = "all"

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> FailRule:
        """Validate a ``POST /_standin/fail`` body."""
        status, count, scope = body.get("status"), body.get("count"), body.get("paths", "all")
        retry_after = body.get("retry_after", 1)
        if status not in (429, 500):
            raise BadRequest("status must be 429 or 500")
        if count is not None and (not isinstance(count, int) or count < 1):
            raise BadRequest("count must be a positive integer")
        if scope not in ("webhook", "api", "all"):
            raise BadRequest("paths must be webhook, api or all")
        if not isinstance(retry_after, int) or retry_after < 0:
            raise BadRequest("retry_after must be a non-negative integer")
        return cls(status=status, retry_after=retry_after, count=count, scope=scope)


@dataclass
class StandinState:
    """Everything shared between request threads; guarded by ``lock``."""

    token: str
    messages_file: str
    fail: FailRule | None = None
    stats: dict[str, dict[str, int]] = field(
        default_factory=lambda: {"accepted": {}, "failed": {}, "rejected": {}}
    )
    messages: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    last_ts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take_failure(self, scope: str) -> FailRule | None:
        """Return the armed rule if it applies to ``scope``, consuming one count."""
        with self.lock:
            rule = self.fail
            if rule is None or rule.scope not in ("all", scope):
                return None
            if rule.count is not None:
                rule.count -= 1
                if rule.count <= 0:
                    self.fail = None
            return rule

    def count(self, outcome: str, kind: str) -> None:
        """Increment the ``outcome`` counter for ``kind``."""
        with self.lock:
            bucket = self.stats[outcome]
            bucket[kind] = bucket.get(kind, 0) + 1

    def next_ts(self) -> str:
        """A unique, strictly increasing ``seconds.micro`` message timestamp."""
        with self.lock:
            self.last_ts = max(int(time.time() * 1_000_000), self.last_ts + 1)
            return f"{self.last_ts // 1_000_000}.{self.last_ts % 1_000_000:06d}"

    def record(self, kind: str, path: str, args: dict[str, Any], channel: str | None, ts: str,
               thread_ts: str | None) -> None:
        """Append one message as a JSON line (open/append/flush/close under the lock)."""
        payload = redact(args, self.token)
        entry = {
            "received_at": utc_now_iso(), "kind": kind, "path": path, "channel": channel,
            "ts": ts, "thread_ts": thread_ts, "text": payload.get("text"),
            "blocks": payload.get("blocks"), "attachments": payload.get("attachments"),
            "payload": payload,
        }
        line = json.dumps(entry, ensure_ascii=False, default=str) + "\n"
        with self.lock:
            with open(self.messages_file, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()

    def read_messages(self) -> list[dict[str, Any]]:
        """All recorded messages (complete lines only)."""
        with self.lock:
            try:
                with open(self.messages_file, encoding="utf-8") as handle:
                    lines = handle.readlines()
            except FileNotFoundError:
                return []
        return [json.loads(line) for line in lines if line.strip()]

    def truncate_messages(self) -> None:
        """Empty the messages file."""
        with self.lock:
            open(self.messages_file, "w", encoding="utf-8").close()


# --------------------------------------------------------------------------- Web API methods
ApiResult = dict[str, Any]


def message_view(args: dict[str, Any], ts: str, thread_ts: str | None) -> dict[str, Any]:
    """The ``message`` object Slack echoes back for a posted/updated message."""
    message: dict[str, Any] = {"type": "message", "text": args.get("text", ""), "ts": ts,
                               "user": USER_ID, "bot_id": BOT_ID}
    for key, value in (("thread_ts", thread_ts), ("blocks", args.get("blocks")),
                       ("attachments", args.get("attachments"))):
        if value:
            message[key] = value
    return message


def api_chat_post_message(state: StandinState, args: dict[str, Any], path: str) -> ApiResult:
    """``chat.postMessage``: validate, assign a ts, remember and record the message."""
    if not args.get("channel"):
        return {"ok": False, "error": "channel_not_found"}
    if not has_content(args):
        return {"ok": False, "error": "no_text"}
    channel, ts = channel_id_for(str(args["channel"])), state.next_ts()
    thread_ts = str(args["thread_ts"]) if args.get("thread_ts") else None
    message = message_view(args, ts, thread_ts)
    with state.lock:
        state.messages[(channel, ts)] = message
    state.record("chat.postMessage", path, args, channel, ts, thread_ts)
    return {"ok": True, "channel": channel, "ts": ts, "message": message}


def api_chat_update(state: StandinState, args: dict[str, Any], path: str) -> ApiResult:
    """``chat.update``: replace the content of a message posted earlier."""
    if not args.get("channel"):
        return {"ok": False, "error": "channel_not_found"}
    channel, ts = channel_id_for(str(args["channel"])), str(args.get("ts") or "")
    with state.lock:
        original = state.messages.get((channel, ts))
    if original is None:
        return {"ok": False, "error": "message_not_found"}
    if not has_content(args):
        return {"ok": False, "error": "no_text"}
    thread_ts = original.get("thread_ts")
    message = message_view(args, ts, thread_ts)
    with state.lock:
        state.messages[(channel, ts)] = message
    state.record("chat.update", path, args, channel, ts, thread_ts)
    return {"ok": True, "channel": channel, "ts": ts, "text": message["text"], "message": message}


def api_auth_test(state: StandinState, args: dict[str, Any], path: str) -> ApiResult:
    """``auth.test``: identity of the stand-in bot."""
    return {"ok": True, "url": "https://standin.slack.com/", "team": "Standin",
            "user": "schema-deploy", "team_id": TEAM_ID, "user_id": USER_ID, "bot_id": BOT_ID}


def api_api_test(state: StandinState, args: dict[str, Any], path: str) -> ApiResult:
    """``api.test``: echo the arguments (minus any token), like Slack."""
    result: ApiResult = {"ok": True, "args": redact(args, state.token)}
    if args.get("error"):
        result = {"ok": False, "error": args["error"], "args": result["args"]}
    return result


API_METHODS: dict[str, Callable[[StandinState, dict[str, Any], str], ApiResult]] = {
    "chat.postMessage": api_chat_post_message,
    "chat.update": api_chat_update,
    "auth.test": api_auth_test,
    "api.test": api_api_test,
}
NO_AUTH_METHODS = {"api.test"}  # Slack answers api.test without a token


# --------------------------------------------------------------------------- HTTP layer
class StandinServer(ThreadingHTTPServer):
    """Threading HTTP server carrying the shared ``StandinState``."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state: StandinState) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, StandinHandler)
        self.state = state


class StandinHandler(BaseHTTPRequestHandler):
    """Routes requests to the webhook, Web API and control handlers."""

    protocol_version = "HTTP/1.1"
    server_version = "SlackStandin/1.0"
    server: StandinServer

    # ---- plumbing
    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._dispatch()

    do_POST = do_DELETE = do_PUT = do_GET

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silence the default access log; ``_dispatch`` writes its own line."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Route http.server's own error messages through the redacting logger."""
        self._log(f"{self.client_address[0]} error {format % args}")

    def _log(self, line: str) -> None:
        token = self.server.state.token
        LOG.info(line.replace(token, REDACTED) if token else line)

    def _read_body(self) -> bytes:
        """Read the request body (Content-Length or chunked)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True
            raise BadRequest("request_too_large")
        return self.rfile.read(length) if length > 0 else b""

    def _send(self, status: int, body: bytes, content_type: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self._status = status

    def _send_text(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, text.encode("utf-8"), "text/plain; charset=utf-8", headers)

    def _send_json(self, status: int, value: Any, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(value, ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8", headers)

    def _dispatch(self) -> None:
        """Read the body, route the request, and write one log line."""
        started, self._status, self._kind = time.monotonic(), 0, "-"
        url = urlsplit(self.path)
        try:
            body = self._read_body()
            if url.path.startswith("/_standin/"):
                self._handle_control(url.path, body)
            elif url.path.startswith("/services/") or url.path == "/services":
                self._handle_webhook(url.path, body)
            elif url.path.startswith("/api/"):
                self._handle_api(url.path, url.query, body)
            else:
                self._send_text(404, "not_found")
        except BadRequest as exc:
            self._send_text(413 if exc.code == "request_too_large" else 400, exc.code)
        except Exception as exc:  # keep serving; report like Slack's generic failure
            self._log(f"{self.client_address[0]} unhandled {type(exc).__name__}: {exc}")
            self.close_connection = True
            if not self._status:
                self._send_text(500, "internal_error")
        elapsed = (time.monotonic() - started) * 1000
        shown = WEBHOOK_PATH.sub(r"/services/\1/\2/****", url.path)  # webhook secret stays out
        self._log(f"{self.client_address[0]} {self.command} {shown} "
                  f"{self._status} kind={self._kind} {elapsed:.1f}ms")

    def _injected_failure(self, scope: str, kind: str) -> bool:
        """Answer with the armed failure, if any, and report whether one was sent."""
        rule = self.server.state.take_failure(scope)
        if rule is None:
            return False
        self.server.state.count("failed", kind)
        headers = {"Retry-After": str(rule.retry_after)} if rule.status == 429 else None
        if scope == "webhook":
            self._send_text(rule.status, "rate_limited" if rule.status == 429 else "internal_error",
                            headers)
        else:
            error = "ratelimited" if rule.status == 429 else "internal_error"
            self._send_json(rule.status, {"ok": False, "error": error}, headers)
        return True

    # ---- incoming webhooks
    def _handle_webhook(self, path: str, body: bytes) -> None:
        """``POST /services/T…/B…/secret`` with a JSON (or ``payload=`` form) body."""
        state, self._kind = self.server.state, "webhook"
        if self._injected_failure("webhook", "webhook"):
            return
        if not WEBHOOK_PATH.match(path) or self.command != "POST":
            state.count("rejected", "webhook")
            self._send_text(404, "no_service")
            return
        error, args = self._parse_webhook_body(body)
        if error:
            state.count("rejected", "webhook")
            self._send_text(400, error)
            return
        thread_ts = str(args["thread_ts"]) if args.get("thread_ts") else None
        channel = channel_id_for(str(args["channel"])) if args.get("channel") else None
        state.record("webhook", path, args, channel, state.next_ts(), thread_ts)
        state.count("accepted", "webhook")
        self._send_text(200, "ok")

    def _parse_webhook_body(self, body: bytes) -> tuple[str | None, dict[str, Any]]:
        """Return ``(error, payload)`` following Slack's webhook validation."""
        content_type = self.headers.get("Content-Type", "").lower()
        try:
            form = parse_form(body) if "form-urlencoded" in content_type else {}
            # like Slack, fall back to a raw JSON body (curl -d '{...}' sends a form type)
            args = parse_json_object(form["payload"] if "payload" in form else body or b"")
        except (ValueError, UnicodeDecodeError):
            return "invalid_payload", {}
        return (None if has_content(args) else "no_text"), args

    # ---- Web API
    def _handle_api(self, path: str, query: str, body: bytes) -> None:
        """``/api/<method>``: failure switch, method lookup, auth, then the method."""
        state = self.server.state
        method = path[len("/api/"):]
        self._kind = method if method in API_METHODS else "unknown_method"
        if self._injected_failure("api", self._kind):
            return
        handler = API_METHODS.get(method)
        if handler is None:
            state.count("rejected", self._kind)
            self._send_json(404, {"ok": False, "error": "unknown_method", "req_method": method})
            return
        try:
            args = self._parse_api_args(query, body)
        except BadRequest as exc:
            state.count("rejected", method)
            self._send_json(200, {"ok": False, "error": exc.code})
            return
        result = self._check_auth(args) if method not in NO_AUTH_METHODS else None
        result = result or handler(state, args, path)
        state.count("accepted" if result.get("ok") else "rejected", method)
        self._send_json(200, result)

    def _parse_api_args(self, query: str, body: bytes) -> dict[str, Any]:
        """Merge query-string params with a JSON or form-encoded body (body wins)."""
        args: dict[str, Any] = parse_form(query.encode("utf-8")) if query else {}
        content_type = self.headers.get("Content-Type", "").lower()
        if body and content_type.startswith("application/json"):
            try:
                args.update(parse_json_object(body))
            except (ValueError, UnicodeDecodeError):
                raise BadRequest("invalid_json") from None
        elif body:
            args.update(parse_form(body))
        decode_json_fields(args)
        return args

    def _check_auth(self, args: dict[str, Any]) -> ApiResult | None:
        """Slack's auth errors (HTTP 200): ``not_authed`` / ``invalid_auth``; None if fine."""
        header = self.headers.get("Authorization", "")
        supplied = header[7:].strip() if header.lower().startswith("bearer ") else None
        supplied = supplied or args.get("token")
        if not supplied:
            return {"ok": False, "error": "not_authed"}
        if supplied != self.server.state.token:
            return {"ok": False, "error": "invalid_auth"}
        return None

    # ---- control routes
    def _handle_control(self, path: str, body: bytes) -> None:
        """``/_standin/{health,fail,messages,stats}`` for tests and demos (loopback only)."""
        state, self._kind = self.server.state, "control"
        host = self.client_address[0].removeprefix("::ffff:")
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            self._send_json(403, {"ok": False, "error": "loopback_only"})
            return
        route = (self.command, path.rstrip("/"))
        if route == ("GET", "/_standin/health"):
            self._send_json(200, {"ok": True})
        elif route == ("GET", "/_standin/stats"):
            with state.lock:
                self._send_json(200, json.loads(json.dumps(state.stats)))
        elif route == ("GET", "/_standin/messages"):
            self._send_json(200, state.read_messages())
        elif route == ("DELETE", "/_standin/messages"):
            state.truncate_messages()
            self._send_json(200, {"ok": True})
        elif route == ("GET", "/_standin/fail"):
            with state.lock:
                rule = state.fail
                self._send_json(200, {"ok": True, "fail": rule.__dict__ if rule else None})
        elif route == ("POST", "/_standin/fail"):
            self._arm_failure(body)
        elif route == ("DELETE", "/_standin/fail"):
            with state.lock:
                state.fail = None
            self._send_json(200, {"ok": True})
        else:
            self._send_json(404, {"ok": False, "error": "not_found"})

    def _arm_failure(self, body: bytes) -> None:
        """Validate and install a failure rule."""
        try:
            rule = FailRule.from_json(parse_json_object(body or b"{}"))
        except ValueError:
            rule, error = None, "invalid_json"
        except BadRequest as exc:
            rule, error = None, exc.code
        if rule is None:
            self._send_json(400, {"ok": False, "error": error})
            return
        with self.server.state.lock:
            self.server.state.fail = rule
        self._send_json(200, {"ok": True, "fail": rule.__dict__})


# --------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--messages-file", required=True)
    parser.add_argument("--token", default=os.environ.get("SLACK_STANDIN_TOKEN"),
                        help="bot token accepted by the Web API (or $SLACK_STANDIN_TOKEN)")
    parser.add_argument("--pid-file")
    parser.add_argument("--log-file")
    parser.add_argument("--fail-status", type=int, choices=(429, 500),
                        help="start with the failure switch armed")
    parser.add_argument("--fail-retry-after", type=int, default=1)
    parser.add_argument("--fail-count", type=int)
    parser.add_argument("--fail-paths", choices=("webhook", "api", "all"), default="all")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("--token (or $SLACK_STANDIN_TOKEN) is required")
    return args


def configure_logging(log_file: str | None) -> None:
    """One plain line per event, to ``log_file`` or stderr."""
    handler: logging.Handler = (logging.FileHandler(log_file, encoding="utf-8") if log_file
                                else logging.StreamHandler(sys.stderr))
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def write_pid_file(path: str) -> None:
    """Atomically write our pid."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove_pid_file(path: str) -> None:
    """Remove the pid file if it is still ours."""
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read().strip() == str(os.getpid()):
                os.remove(path)
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Bind, write the pid file, serve until SIGTERM/SIGINT, then clean up."""
    args = parse_args(argv)
    configure_logging(args.log_file)
    state = StandinState(token=args.token, messages_file=args.messages_file)
    if args.fail_status:
        state.fail = FailRule(status=args.fail_status, retry_after=args.fail_retry_after,
                              count=args.fail_count, scope=args.fail_paths)
    open(args.messages_file, "a", encoding="utf-8").close()
    server = StandinServer((args.host, args.port), state)
    if args.pid_file:
        write_pid_file(args.pid_file)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="slack-standin", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    LOG.info(f"listening on http://{host}:{port} pid={os.getpid()} messages={args.messages_file}"
             + (f" fail={state.fail.__dict__}" if state.fail else ""))
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        server.server_close()
        if args.pid_file:
            remove_pid_file(args.pid_file)
        LOG.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
