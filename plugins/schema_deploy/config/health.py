"""The health gate's thresholds: deploy.yaml's `health:` section as `settings.from_mapping` builds it
(the gate itself is `schema_deploy.health`)."""
from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024


def mb(n: float) -> str:
    return f"{n / MB:.1f} MB"


@dataclass(frozen=True)
class HealthSettings:
    """deploy.yaml's `health:` section (config.settings builds it), with production-sane defaults."""

    enabled: bool = True
    max_replica_lag_bytes: int = 64 * MB
    max_wal_bytes_per_s: int = 64 * MB
    max_transaction_age_s: float = 600.0
    max_lock_waiters: int = 0
    poll_s: float = 2.0
    max_wait_s: float = 600.0

    def describe(self) -> str:
        """One line for `plan` and the logs."""
        if not self.enabled:
            return "health gate: off (deploy.yaml health: {enabled: false})"
        return (f"health gate before each online step: replica replay lag under {mb(self.max_replica_lag_bytes)}, "
                f"WAL under {mb(self.max_wal_bytes_per_s)}/s, no transaction open longer than "
                f"{self.max_transaction_age_s:.0f} s, at most {self.max_lock_waiters} session(s) waiting on our "
                f"locks, no wraparound autovacuum on the step's tables; checked every {self.poll_s:g} s, for at "
                f"most {self.max_wait_s:.0f} s")
