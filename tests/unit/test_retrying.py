"""`retrying`: the one helper for transient I/O, and the three call sites that use it (Slack posts,
a fleet member's steps, aborting a multipart upload), each keeping the behaviour it had."""
from __future__ import annotations

import logging
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from schema_deploy.errors import SchemaDeployError, UsageError
from schema_deploy.retrying import Failure, Policy, run


class Flaky:
    """A callable that raises the given errors in turn, then returns `result`; counts its calls."""

    def __init__(self, *errors: BaseException, result: object = "done") -> None:
        self.errors, self.result, self.calls = list(errors), result, 0

    def __call__(self, *args: object, **kwargs: object) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


class Busy(SchemaDeployError):
    transient = True


class Clock:
    """A clock that moves only when slept on: `sleep` records each wait and advances it."""

    def __init__(self) -> None:
        self.now, self.waits = 100.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


QUICK = Policy(attempts=4, first_wait_s=0.5, factor=2.0)


# --- the helper -------------------------------------------------------------------------------

def test_a_call_that_succeeds_at_once_runs_once_and_never_sleeps() -> None:
    step, clock = Flaky(), Clock()
    assert run(step, QUICK, sleep=clock.sleep) == "done"
    assert step.calls == 1 and clock.waits == []


def test_transient_errors_are_retried_until_the_call_succeeds_and_each_attempt_is_counted() -> None:
    step, clock = Flaky(OSError("reset"), Busy("busy"), result=42), Clock()
    assert run(step, QUICK, sleep=clock.sleep) == 42
    assert step.calls == 3


def test_waits_grow_by_the_policys_factor_from_its_first_wait() -> None:
    step, clock = Flaky(*[OSError("away")] * 3), Clock()
    run(step, Policy(attempts=4, first_wait_s=0.25, factor=3.0), sleep=clock.sleep)
    assert clock.waits == [0.25, 0.75, 2.25]


def test_waits_stop_growing_at_the_policys_cap() -> None:
    step, clock = Flaky(*[OSError("away")] * 6), Clock()
    run(step, Policy(attempts=7, first_wait_s=1.0, factor=2.0, cap_s=5.0), sleep=clock.sleep)
    assert clock.waits == [1.0, 2.0, 4.0, 5.0, 5.0, 5.0]


def test_after_the_last_attempt_the_last_error_is_raised_as_it_was_without_a_last_wait() -> None:
    last = OSError("still away")
    step, clock = Flaky(OSError("away"), OSError("away"), last), Clock()
    with pytest.raises(OSError) as raised:
        run(step, Policy(attempts=3, first_wait_s=0.5), sleep=clock.sleep)
    assert raised.value is last and step.calls == 3 and clock.waits == [0.5, 1.0]


def test_a_non_transient_error_is_raised_at_once_without_a_wait_or_a_callback() -> None:
    step, clock, seen = Flaky(UsageError("bad input")), Clock(), []
    with pytest.raises(UsageError, match="bad input"):
        run(step, QUICK, sleep=clock.sleep, on_failure=seen.append)
    assert step.calls == 1 and clock.waits == [] and seen == []


def test_what_counts_as_transient_is_the_policys_to_say() -> None:
    only_timeouts = replace(QUICK, transient=lambda exc: isinstance(exc, TimeoutError))
    with pytest.raises(OSError):
        run(Flaky(OSError("refused")), only_timeouts, sleep=Clock().sleep)
    assert run(Flaky(TimeoutError("slow")), only_timeouts, sleep=Clock().sleep) == "done"


def test_an_interrupt_is_never_retried() -> None:
    step = Flaky(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        run(step, replace(QUICK, transient=lambda exc: True), sleep=Clock().sleep)
    assert step.calls == 1


def test_callbacks_see_each_failure_with_its_attempt_its_error_and_the_wait_before_the_next() -> None:
    errors = [OSError("one"), OSError("two"), OSError("three")]
    seen: list[Failure] = []
    with pytest.raises(OSError, match="three"):
        run(Flaky(*errors), Policy(attempts=3, first_wait_s=0.5), sleep=Clock().sleep, on_failure=seen.append)
    assert [(f.attempt, f.error, f.wait_s) for f in seen] == [(1, errors[0], 0.5), (2, errors[1], 1.0),
                                                              (3, errors[2], None)]
    assert [f.last for f in seen] == [False, False, True]


def test_a_callback_runs_before_the_wait_it_announces() -> None:
    events: list[str] = []
    run(Flaky(OSError("away")), QUICK, sleep=lambda s: events.append(f"sleep {s}"),
        on_failure=lambda f: events.append(f"failed {f.attempt}, waiting {f.wait_s}"))
    assert events == ["failed 1, waiting 0.5", "sleep 0.5"]


class RateLimited(Exception):
    def __init__(self, seconds: float) -> None:
        super().__init__("429")
        self.seconds = seconds


SERVER_SAYS = Policy(attempts=4, first_wait_s=1.0, cap_s=30.0,
                     server_wait=lambda exc: exc.seconds if isinstance(exc, RateLimited) else None)


def test_a_server_given_wait_replaces_the_backoff() -> None:
    clock = Clock()
    run(Flaky(RateLimited(7), OSError("500"), RateLimited(0.5)), SERVER_SAYS, sleep=clock.sleep)
    assert clock.waits == [7.0, 2.0, 0.5]


def test_a_server_given_wait_is_capped_at_the_policys_cap() -> None:
    clock, seen = Clock(), []
    run(Flaky(RateLimited(120), RateLimited(3600)), SERVER_SAYS, sleep=clock.sleep, on_failure=seen.append)
    assert clock.waits == [30.0, 30.0] and [f.wait_s for f in seen] == [30.0, 30.0]


def test_a_negative_server_given_wait_is_no_wait() -> None:
    clock = Clock()
    run(Flaky(RateLimited(-5)), SERVER_SAYS, sleep=clock.sleep)
    assert clock.waits == [0.0]


def test_a_budget_stops_the_retries_before_a_wait_that_would_end_past_it() -> None:
    clock, seen = Clock(), []
    step = Flaky(*[OSError("away")] * 100)
    with pytest.raises(OSError):
        run(step, Policy(attempts=None, first_wait_s=1.0, cap_s=4.0, budget_s=10.0), sleep=clock.sleep,
            clock=clock, on_failure=seen.append)
    # 1 + 2 + 4 = 7 s slept; another 4 s would end at 11 s, past the budget of 10 s
    assert clock.waits == [1.0, 2.0, 4.0] and step.calls == 4 and seen[-1].wait_s is None


def test_the_time_a_call_takes_counts_against_the_budget() -> None:
    clock = Clock()

    def slow() -> None:
        clock.now += 3
        raise OSError("away")

    with pytest.raises(OSError):
        run(slow, Policy(attempts=None, first_wait_s=1.0, budget_s=10.0), sleep=clock.sleep, clock=clock)
    assert clock.waits == [1.0, 2.0]  # 3 + 1 + 3 + 2 + 3 = 12 s; a wait of 4 s after 12 s would end past 10 s


def test_a_policy_with_no_attempt_or_no_bound_is_refused() -> None:
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        Policy(attempts=0, first_wait_s=1.0)
    with pytest.raises(ValueError, match="neither attempts nor budget_s"):
        Policy(attempts=None, first_wait_s=1.0)


def test_a_policy_is_frozen_data() -> None:
    with pytest.raises(AttributeError):
        QUICK.attempts = 9  # type: ignore[misc]
    assert replace(QUICK, attempts=9).attempts == 9 and QUICK.attempts == 4


def test_without_an_injected_sleep_the_real_one_is_looked_up_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(time, "sleep", waits.append)
    run(Flaky(OSError("away")), QUICK)
    assert waits == [0.5]


# --- 1. Slack posts (ops.notify.deliver) ------------------------------------------------------

def test_slack_posts_retry_with_backoff_and_record_each_failure_and_never_raise() -> None:
    from schema_deploy.ops.notify import deliver

    post, waits, logs = Flaky(*[RuntimeError("webhook answered HTTP 500: boom")] * 3), [], []
    outcome = deliver(post, {"text": "x"}, "failed", sleep=waits.append, log=logs.append)
    assert not outcome.ok and outcome.attempts == 3 and post.calls == 3 and waits == [1.0, 2.0]
    assert outcome.errors == [f"attempt {n}: RuntimeError: webhook answered HTTP 500: boom" for n in (1, 2, 3)]
    assert logs == [f"Slack notification 'failed' not delivered ({e})" for e in outcome.errors] + [
        "giving up on Slack notification 'failed' after 3 attempts; the deployment goes on"]


def test_slack_429s_wait_as_retry_after_says_capped_at_30_s_and_each_is_recorded() -> None:
    from schema_deploy.ops.notify import RetryAfter, deliver

    post, waits = Flaky(RetryAfter(120), RetryAfter(2), result="1712.5"), []
    outcome = deliver(post, {"text": "x"}, "started", sleep=waits.append)
    assert outcome.ok and outcome.ts == "1712.5" and outcome.attempts == 3 and waits == [30.0, 2.0]
    assert outcome.errors == ["attempt 1: HTTP 429, retry after 120 s", "attempt 2: HTTP 429, retry after 2 s"]


def test_slack_backoff_counts_attempts_across_429s_and_other_errors() -> None:
    from schema_deploy.ops.notify import RetryAfter, deliver

    waits: list[float] = []
    outcome = deliver(Flaky(RetryAfter(5), OSError("reset"), RetryAfter(1)), {"text": "x"}, "started", attempts=4,
                      backoff_s=0.5, max_wait_s=3.0, sleep=waits.append)
    assert outcome.ok and outcome.attempts == 4 and waits == [3.0, 1.0, 1.0]


def test_a_slack_error_message_is_scrubbed_of_passwords() -> None:
    from schema_deploy.ops.notify import deliver

    outcome = deliver(Flaky(RuntimeError("postgresql://u:s3cret@db/app"), result=None), {"text": "x"}, "started",
                      sleep=lambda _: None)
    assert outcome.ok and outcome.attempts == 2 and "s3cret" not in outcome.errors[0]


def test_a_slack_delivery_whose_sleep_raises_gives_up_without_raising() -> None:
    from schema_deploy.ops.notify import deliver

    def interrupted(_: float) -> None:
        raise RuntimeError("sleep broke")

    outcome = deliver(Flaky(OSError("reset")), {"text": "x"}, "started", sleep=interrupted)
    assert not outcome.ok and outcome.attempts == 1 and outcome.errors == ["attempt 1: OSError: reset"]


# --- 2. a fleet member's steps (pipeline.fleet.members._Tries) --------------------------------

class Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def tries(monkeypatch: pytest.MonkeyPatch):
    from schema_deploy.pipeline.fleet.members import Member, _Tries

    log, handler, waits = logging.getLogger("test_retrying.member"), Warnings(), []
    log.addHandler(handler)
    log.propagate = False
    monkeypatch.setattr(time, "sleep", waits.append)
    yield _Tries(SimpleNamespace(log=log), Member("tenant_a", "member", "postgresql://u:p@db/a")), handler.lines, waits
    log.removeHandler(handler)


def test_a_member_step_retries_transient_errors_three_times_in_all_and_counts_each_try(tries) -> None:
    from schema_deploy.pipeline.fleet.members import TRIES

    step_tries, lines, waits = tries
    assert TRIES == 3
    assert step_tries(Flaky(OSError("connection reset"), Busy("lock busy"))) == "done"
    assert step_tries.count == 3 and waits == [0.5, 1.0]
    assert lines == ["tenant_a: connection reset; try 2 of 3 in 0.5 s", "tenant_a: lock busy; try 3 of 3 in 1.0 s"]


def test_a_member_step_raises_its_last_transient_error_after_three_tries(tries) -> None:
    step_tries, lines, waits = tries
    with pytest.raises(OSError, match="three"):
        step_tries(Flaky(OSError("one"), OSError("two"), OSError("three")))
    assert step_tries.count == 3 and waits == [0.5, 1.0] and len(lines) == 2


def test_a_member_step_raises_a_non_transient_error_at_once(tries) -> None:
    step_tries, lines, waits = tries
    with pytest.raises(UsageError):
        step_tries(Flaky(UsageError("bad release")))
    assert step_tries.count == 1 and waits == [] and lines == []


def test_a_members_tries_add_up_over_its_steps(tries) -> None:
    step_tries, _, waits = tries
    step_tries(Flaky(OSError("a")))
    step_tries(Flaky(OSError("b")))
    assert step_tries.count == 3 and waits == [0.5, 0.5]


# --- 3. aborting a multipart upload (backups.dump.MultipartStream.abort) ----------------------

def s3_error(code: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": f"{code} says no"}}, "AbortMultipartUpload")


class S3:
    def __init__(self, *errors: BaseException) -> None:
        self.abort_multipart_upload = Flaky(*errors)


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    monkeypatch.setattr(time, "sleep", clock.sleep)
    return clock


def stream(s3: S3, upload_id: str | None = "u-1"):
    from schema_deploy.backups.dump import MultipartStream

    out = MultipartStream(s3, "bkt", "db/x.dump", None)  # type: ignore[arg-type]
    out.upload_id = upload_id
    return out


def test_an_abort_is_retried_while_the_endpoint_is_away(fake_time: Clock) -> None:
    s3 = S3(EndpointConnectionError(endpoint_url="http://s3"), s3_error("ServiceUnavailable"),
            s3_error("InternalError"))
    assert stream(s3).abort(30) == "The multipart upload u-1 was aborted: nothing was stored."
    assert s3.abort_multipart_upload.calls == 4 and fake_time.waits == [0.25, 0.5, 1.0]


def test_an_abort_gives_up_before_a_wait_that_would_end_past_its_timeout(fake_time: Clock) -> None:
    s3 = S3(*[s3_error("ServiceUnavailable")] * 100)
    said = stream(s3).abort(30)
    assert fake_time.waits == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]  # 27.75 s; 4 more end past 30
    assert s3.abort_multipart_upload.calls == 11
    assert said == ("The multipart upload u-1 could not be aborted (ServiceUnavailable: ServiceUnavailable says "
                    "no); the next backup of this database aborts it before it starts (or run: aws s3api "
                    "abort-multipart-upload --bucket bkt --key db/x.dump --upload-id u-1).")


def test_an_upload_already_gone_is_not_retried(fake_time: Clock) -> None:
    s3 = S3(s3_error("NoSuchUpload"))
    assert stream(s3).abort(30) == "The multipart upload u-1 is gone: nothing was stored."
    assert s3.abort_multipart_upload.calls == 1 and fake_time.waits == []


def test_an_abort_error_that_is_not_s3s_is_raised(fake_time: Clock) -> None:
    with pytest.raises(ValueError):
        stream(S3(ValueError("bug"))).abort(30)
    assert fake_time.waits == []


def test_no_upload_nothing_to_abort(fake_time: Clock) -> None:
    s3 = S3()
    assert stream(s3, None).abort(30) == "No upload had started; nothing was stored."
    assert s3.abort_multipart_upload.calls == 0
