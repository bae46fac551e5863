"""Slack messages for a deployment, and sending them without ever failing the deployment.

`message(event, facts)` builds Block Kit that reads well on a phone: a header
line with an emoji for the state, a few short fields, at most one context line
with links. Every text goes through `scrub`, so no password or token from a
connection URL can reach a channel.

`deliver(post, msg)` calls `post` (a webhook or Web API call made by the
caller, e.g. the Slack provider's hook) with retries and backoff (the policy
`SLACK_RETRY`, run by `retrying`), honouring Retry-After on HTTP 429, and
returns what happened instead of raising: a notification that cannot be sent
is logged and recorded, never a reason to stop a production change.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from schema_deploy import retrying
from schema_deploy.redact import scrub

EMOJI = {
    "started": ":rocket:", "gate_passed": ":white_check_mark:", "gate_failed": ":x:",
    "awaiting_approval": ":raised_hand:", "approved": ":ok_hand:", "rejected": ":no_entry:", "waiting_window": ":hourglass_flowing_sand:",
    "production_done": ":tada:", "failed": ":rotating_light:", "dry_run_done": ":test_tube:",
    "nothing_pending": ":zzz:",
}
TITLES = {
    "started": "Schema deployment started", "gate_passed": "Staging test gate passed",
    "gate_failed": "Staging test gate FAILED — production untouched",
    "awaiting_approval": "Waiting for approval to change production",
    "approved": "Production change approved",
    "rejected": "Production change rejected — skipped", "waiting_window": "Waiting for the maintenance window",
    "production_done": "Production migrated and verified", "failed": "Schema deployment FAILED",
    "dry_run_done": "Dry run finished — production untouched",
    "nothing_pending": "Nothing to deploy — every migration is applied",
}
# A success criterion not met (criteria.py): the gate and production never say just "passed"/"verified" then.
EMOJI.update({"gate_criteria_not_met": ":warning:", "production_done_unmet": ":warning:"})
TITLES.update({"gate_criteria_not_met": "Staging tests passed, but a success criterion was NOT met — read it "
                                        "before approving",
               "production_done_unmet": "Production migrated; its checks passed, but a success criterion was "
                                        "NOT met"})
# rollback_schema's events.
EMOJI.update({"rollback_started": ":rewind:", "rollback_done": ":leftwards_arrow_with_hook:",
              "rollback_failed": ":rotating_light:"})
TITLES.update({"rollback_started": "Schema rollback started", "rollback_done": "Schema rollback done and verified",
               "rollback_failed": "Schema rollback FAILED"})
# A rejected rollback: the decision, never "done".
EMOJI["rollback_rejected"] = ":no_entry:"
TITLES["rollback_rejected"] = "Schema rollback rejected — nothing changed"

# deploy_fleet's events: one message per wave and one summary, never one per member.
EMOJI.update({"fleet_wave": ":ocean:", "fleet_done": ":checkered_flag:"})
TITLES.update({"fleet_wave": "Fleet wave finished", "fleet_done": "Fleet deployment finished"})


# Production's health gate held an online step back (once per step's wait, never per check).
EMOJI["health_wait"] = ":stethoscope:"
TITLES["health_wait"] = "Production waits for the database's health before an online step"


# A backfill between its expand and contract migrations: start, first pause, each quarter, end.
EMOJI.update({"backfill_started": ":arrow_forward:", "backfill_paused": ":double_vertical_bar:",
              "backfill_progress": ":hourglass:", "backfill_done": ":white_check_mark:"})
TITLES.update({"backfill_started": "Backfill started", "backfill_paused": "Backfill paused for the database's health",
               "backfill_progress": "Backfill progress", "backfill_done": "Backfill done"})


def message(event: str, facts: dict[str, object], links: dict[str, str] | None = None) -> dict[str, object]:
    """A Slack message (`text` fallback + `blocks`) for a deployment event."""
    if event not in TITLES:
        raise ValueError(f"unknown notification event {event!r}; one of {', '.join(TITLES)}")
    title = f"{EMOJI[event]} {TITLES[event]}"
    fields = [{"type": "mrkdwn", "text": scrub(f"*{key}*\n{value}")[:1900]} for key, value in facts.items()
              if value not in (None, "", [])][:10]
    blocks: list[dict[str, object]] = [{"type": "section", "text": {"type": "mrkdwn", "text": f"*{title}*"}}]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    if links:
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": " · ".join(f"<{url}|{label}>" for label, url in links.items())}]})
    summary = "; ".join(f"{k}: {v}" for k, v in facts.items() if v not in (None, "", []))
    return {"text": scrub(f"{TITLES[event]} — {summary}")[:3000], "blocks": blocks}


@dataclass
class Delivery:
    """What happened to one notification."""

    event: str
    ok: bool
    attempts: int
    errors: list[str] = field(default_factory=list)
    ts: str | None = None  # the Web API's message timestamp (for threading)

    def as_dict(self) -> dict[str, object]:
        return self.__dict__.copy()


class RetryAfter(Exception):
    """Raised by a `post` callable on HTTP 429, carrying Slack's Retry-After seconds."""

    def __init__(self, seconds: float, detail: str = "rate limited") -> None:
        self.seconds = seconds
        super().__init__(detail)


# Slack posts: 3 attempts, 1 s then 2 s between them; any error is worth another attempt (a
# notification must never break the deployment); a 429 waits what its Retry-After says. Every wait,
# a 429's too, is capped at 30 s. deliver()'s arguments can change attempts, first wait and cap.
SLACK_RETRY = retrying.Policy(attempts=3, first_wait_s=1.0, factor=2.0, cap_s=30.0,
                              transient=lambda exc: isinstance(exc, Exception),
                              server_wait=lambda exc: exc.seconds if isinstance(exc, RetryAfter) else None)


def deliver(post: Callable[[dict[str, object]], str | None], msg: dict[str, object], event: str, *,
            attempts: int = SLACK_RETRY.attempts, backoff_s: float = SLACK_RETRY.first_wait_s,
            max_wait_s: float = SLACK_RETRY.cap_s, log: Callable[[str], None] = lambda _: None,
            sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """Send `msg` with `post`, retrying under `SLACK_RETRY` (its attempts, first wait and cap can be
    given); never raises. `post` returns the message ts or None. Each failure, a 429 too, is logged
    and recorded in the outcome's `errors`."""
    outcome = Delivery(event=event, ok=False, attempts=0)
    policy = replace(SLACK_RETRY, attempts=attempts, first_wait_s=backoff_s, cap_s=max_wait_s)

    def failed(failure: retrying.Failure) -> None:
        exc = failure.error
        outcome.errors.append(scrub(f"attempt {failure.attempt}: HTTP 429, retry after {exc.seconds:g} s"
                                    if isinstance(exc, RetryAfter) else
                                    f"attempt {failure.attempt}: {type(exc).__name__}: {exc}"))
        log(f"Slack notification '{event}' not delivered ({outcome.errors[-1]})")

    def attempt() -> str | None:
        outcome.attempts += 1
        return post(msg)

    try:
        outcome.ts = retrying.run(attempt, policy, on_failure=failed, sleep=sleep)
        outcome.ok = True
    except Exception:  # noqa: BLE001 - a notification must never break the deployment; `failed` recorded it
        log(f"giving up on Slack notification '{event}' after {attempts} attempts; the deployment goes on")
    return outcome


def webhook_poster(client: object) -> Callable[[dict[str, object]], str | None]:
    """Adapt a slack_sdk `WebhookClient` (e.g. `SlackWebhookHook(...).client`) to `deliver`."""

    def post(msg: dict[str, object]) -> str | None:
        response = client.send_dict(msg)
        if response.status_code == 429:
            raise RetryAfter(float(response.headers.get("Retry-After", ["1"])[0]
                                   if isinstance(response.headers.get("Retry-After"), list)
                                   else response.headers.get("Retry-After", 1)))
        if response.status_code != 200:
            raise RuntimeError(f"webhook answered HTTP {response.status_code}: {response.body}")
        return None

    return post


def api_poster(client: object, channel: str, thread_ts: str | None = None) -> Callable[[dict[str, object]], str | None]:
    """Adapt a slack_sdk `WebClient` (e.g. `SlackHook(...).client`): chat.postMessage, threaded when given a ts."""
    from slack_sdk.errors import SlackApiError

    def post(msg: dict[str, object]) -> str | None:
        try:
            response = client.chat_postMessage(channel=channel, thread_ts=thread_ts, **msg)
        except SlackApiError as exc:
            if exc.response.status_code == 429:
                raise RetryAfter(float(exc.response.headers.get("Retry-After", 1))) from None
            raise RuntimeError(f"chat.postMessage failed: {exc.response.get('error')}") from None
        return response.get("ts")

    return post
