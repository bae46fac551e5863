"""Timeouts and the lock-retry schedule every session of a deployment runs with.

`Settings` is built from the command line or deploy.yaml's `lock:` section; `engine.apply` and
`plan.prechecks` both retry a statement that timed out waiting for a lock (SQLSTATE 55P03) on its
schedule, with capped exponential backoff and jitter.
"""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    """Timeouts and the lock-retry schedule (modelled on GitLab's with_lock_retries)."""

    lock_timeout_ms: int = 100  # first attempt; grows each retry up to max_lock_timeout_ms
    max_lock_timeout_ms: int = 2000
    lock_retries: int = 10
    backoff_s: float = 0.5  # sleep before retry i: min(backoff_cap_s, backoff_s * 2**i) * jitter
    backoff_cap_s: float = 10.0
    statement_timeout_ms: int = 3_600_000  # long index builds are legitimate; 0 disables
    # A concurrent index build takes SHARE UPDATE EXCLUSIVE, which does not block reads or
    # writes, then waits for older transactions; a short lock_timeout would throw the
    # finished build away and start over, so it gets a long one.
    concurrent_lock_timeout_ms: int = 600_000
    advisory_lock_timeout_s: float = 60.0
    schema: str = "public"  # where _prisma_migrations lives
    precheck_timeout_ms: int = 60_000  # statement_timeout of each data precheck (a scan of the table)

    def lock_timeout_for(self, attempt: int) -> int:
        return min(self.max_lock_timeout_ms, self.lock_timeout_ms * 2 ** attempt)

    def sleep_before(self, attempt: int) -> float:
        return min(self.backoff_cap_s, self.backoff_s * 2 ** attempt) * random.uniform(0.5, 1.0)
