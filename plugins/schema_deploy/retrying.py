"""Retrying transient I/O: one helper, each call site's policy declared as data.

A call site declares a `Policy` as a module-level constant (how many attempts, the first wait, how
fast waits grow and their cap, which errors are worth another attempt, optionally how to read a
server-given wait, optionally a time budget) and runs its call with `run(call, POLICY, ...)`.
tenacity does the mechanics; `on_failure` sees each transient failure (to log it, to record it),
and `sleep`/`clock` can be injected so tests never wait.

PostgreSQL lock retries are not this: they raise `lock_timeout` as they go (`pg.retry`).
Imports only `errors`.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_never
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_exponential

from schema_deploy.errors import is_transient

T = TypeVar("T")


@dataclass(frozen=True)
class Policy:
    """How one call site retries. Before retry n (n = 1 after the first failure) it waits
    `first_wait_s * factor**(n-1)`, at most `cap_s`; a server-given wait (`server_wait` returns
    seconds, or None to use the backoff) replaces that wait, between 0 and `cap_s`. It stops after
    `attempts` attempts (None: no limit), or before a wait that would end more than `budget_s`
    seconds after the first attempt began (None: no budget); one of the two must bound it."""

    attempts: int | None
    first_wait_s: float
    factor: float = 2.0
    cap_s: float | None = None
    transient: Callable[[BaseException], bool] = is_transient
    server_wait: Callable[[BaseException], float | None] | None = None
    budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"a retry policy's attempts must be at least 1, not {self.attempts}")
        if self.attempts is None and self.budget_s is None:
            raise ValueError("a retry policy with neither attempts nor budget_s would retry forever")


@dataclass(frozen=True)
class Failure:
    """One transient failure, as `on_failure` sees it: the attempt (1 for the first), its error, and
    the wait before the next attempt, or None when there is none (the error is raised then)."""

    attempt: int
    error: BaseException
    wait_s: float | None

    @property
    def last(self) -> bool:
        return self.wait_s is None


def run(call: Callable[[], T], policy: Policy, *, on_failure: Callable[[Failure], None] | None = None,
        sleep: Callable[[float], None] | None = None, clock: Callable[[], float] | None = None) -> T:
    """`call()` under `policy`: its result, or the error it last raised, as it was (never wrapped).
    An error the policy does not count as transient (and a BaseException that is not an Exception,
    such as KeyboardInterrupt) is raised at once, without a callback. `on_failure` runs on each
    transient failure, before the wait it announces. `sleep` and `clock` default to `time.sleep` and
    `time.monotonic`, looked up at call time."""
    clock = clock or time.monotonic
    report = on_failure or (lambda _: None)

    def give_up(state: RetryCallState) -> T:
        report(Failure(state.attempt_number, state.outcome.exception(), None))
        return state.outcome.result()  # raises the last error

    retrying = Retrying(
        stop=(stop_after_attempt(policy.attempts) if policy.attempts is not None else stop_never)
        | _OutOfBudget(policy.budget_s, clock),
        wait=_Wait(policy),
        retry=retry_if_exception(lambda exc: isinstance(exc, Exception) and policy.transient(exc)),
        before_sleep=lambda state: report(Failure(state.attempt_number, state.outcome.exception(),
                                                  state.upcoming_sleep)),
        retry_error_callback=give_up,
        sleep=sleep or time.sleep,
    )
    return retrying(call)


class _Wait(wait_base):
    """The policy's exponential backoff, or the server's wait when it gave one (capped)."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.backoff = wait_exponential(multiplier=policy.first_wait_s, exp_base=policy.factor,
                                        **({"max": policy.cap_s} if policy.cap_s is not None else {}))

    def __call__(self, retry_state: RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        given = self.policy.server_wait(error) if self.policy.server_wait and error is not None else None
        if given is None:
            return float(self.backoff(retry_state))
        capped = given if self.policy.cap_s is None else min(self.policy.cap_s, given)
        return float(max(0.0, capped))


class _OutOfBudget(stop_base):
    """Stop before a wait that would end more than `budget_s` after the first attempt began."""

    def __init__(self, budget_s: float | None, clock: Callable[[], float]) -> None:
        self.budget_s, self.clock, self.started = budget_s, clock, clock()

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.budget_s is not None and self.clock() + retry_state.upcoming_sleep > self.started + self.budget_s
