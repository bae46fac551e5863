"""Errors of the health gate."""
from __future__ import annotations

from schema_deploy.errors import SchemaDeployError


class HealthGateRefused(SchemaDeployError):
    """The gate cannot read what it must judge: it refuses to start rather than pass on NULLs."""

    exit_code = 1

    def __init__(self, database: str, role: str) -> None:
        self.database, self.role = database, role
        super().__init__(
            f"health gate on {database}: the role {role} cannot read replication and session statistics "
            f"(pg_stat_replication's positions, other roles' sessions in pg_stat_activity), so replica lag, "
            f"long transactions and autovacuum cannot be judged. Grant it, as a superuser: "
            f"GRANT pg_read_all_stats TO {role}; (or turn the gate off for this environment with deploy.yaml's "
            f"health: {{enabled: false}}). Nothing was changed.")


class HealthGateTimedOut(SchemaDeployError):
    """A step waited for the database's health longer than `health.max_wait`; it did not start."""

    exit_code = 1
    transient = True

    def __init__(self, what: str, waited_s: float, reason: str, steps_done: str = "") -> None:
        self.what, self.waited_s, self.reason = what, waited_s, reason
        super().__init__(
            f"{what}: did not start: the database stayed unhealthy for {waited_s:.0f} s, longer than "
            f"health.max_wait allows: {reason}. {steps_done}The step and what follows it are still to do: "
            f"run the deployment again once that is resolved (it resumes at this step), or raise "
            f"health.max_wait / the threshold in deploy.yaml.")


class HealthGateWaiting(SchemaDeployError):
    """The gate said wait, and the caller asked to be told rather than have the gate sleep (Airflow
    defers the task instead of holding a worker slot). Nothing of the step ran."""

    exit_code = 1
    transient = True

    def __init__(self, what: str, reason: str, retry_in_s: float, waited_s: float) -> None:
        self.what, self.reason, self.retry_in_s, self.waited_s = what, reason, retry_in_s, waited_s
        super().__init__(f"{what}: waiting for the database's health ({reason}); checking again in "
                         f"{retry_in_s:.0f} s (waited {waited_s:.0f} s so far)")
