"""What each pipeline step returns: frozen dataclasses that travel as versioned JSON.

`to_xcom()` gives a JSON-safe dict tagged with the type and its version, the form
Airflow's XCom (or any queue, or a file) carries between workers; `from_xcom()`
reads it back and refuses another type or an unknown version, so a worker running
an older release of this package never misreads a newer result.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from schema_deploy.errors import UsageError

R = TypeVar("R", bound="Result")


@dataclass(frozen=True)
class Result:
    """Base of every step's result."""

    VERSION = 1

    def to_xcom(self) -> dict[str, Any]:
        body = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        # A round trip through JSON makes tuples lists and proves the value is JSON-safe now,
        # not when a worker on another machine tries to read it.
        return {"type": type(self).__name__, "version": self.VERSION, **json.loads(json.dumps(body, default=str))}

    @classmethod
    def from_xcom(cls: type[R], data: dict[str, Any] | None) -> R:
        if not isinstance(data, dict) or data.get("type") != cls.__name__:
            got = data.get("type") if isinstance(data, dict) else type(data).__name__
            raise UsageError(f"expected a {cls.__name__} from the earlier step, got {got!r}: the run's results "
                             "were made by another version of schema_deploy, or by another step. Clear the run "
                             "from its first task.")
        if data.get("version") != cls.VERSION:
            raise UsageError(f"{cls.__name__} version {data.get('version')!r} from the earlier step; this worker "
                             f"reads version {cls.VERSION}. Run every worker on the same schema_deploy version.")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as exc:  # a field missing: not this version's shape after all
            raise UsageError(f"{cls.__name__} from the earlier step cannot be read ({exc}): run every worker on "
                             "the same schema_deploy version, and clear the run from its first task.") from None

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access for report code that reads a result or its XCom alike."""
        return getattr(self, key, default)


@dataclass(frozen=True)
class ReleaseRef(Result):
    """Where the run's release is and what it holds, in short."""

    uri: str
    sha256: str
    short: str
    bundle: str
    source: dict[str, Any] = field(default_factory=dict)
    migrations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class BundleCheck(Result):
    """Preflight's first part, with no database: the bundle read, linted and frozen as a release
    without plans (or the release given to deploy), which each target's survey then loads."""

    release: dict[str, Any]  # ReleaseRef.to_xcom() of that release
    lint: dict[str, int]  # errors (blocking findings, before any plan fixes them), warnings
    given: bool = False  # the release was given (`deploy --release`), not frozen from the folder now

    @property
    def release_uri(self) -> str:
        return self.release["uri"]


@dataclass(frozen=True)
class TargetSurvey(Result):
    """One target before the change, read by a worker that holds only its connection: what is
    pending there, its schema fingerprint, its plan of the release; production also its prechecks
    and the sizes of the tables the plan touches."""

    env: str  # the target's name
    release: str  # sha256 of the release surveyed
    pending: list[str]
    fingerprint: dict[str, dict[str, str]]  # fingerprint.schema_fingerprint: section -> object -> definition
    plan: dict[str, Any]  # release.plan_summary
    prechecks: list[dict[str, Any]] = field(default_factory=list)
    table_sizes: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class PreflightResult(Result):
    """Nothing changed yet: the release, what is pending where, lint, prechecks and the production plan."""

    release: dict[str, Any]  # ReleaseRef.to_xcom()
    migrations: list[dict[str, Any]]  # production's plan: name, checksum, digest, steps (sql, locks, rewritten)
    online: bool
    pending: dict[str, list[str]]
    lint: dict[str, int]
    prechecks: list[dict[str, Any]]
    table_sizes: dict[str, dict[str, int]]
    production_table_bytes: int
    run: dict[str, str] = field(default_factory=dict)  # run id, run type, triggered by
    slack_ts: str | None = None

    @property
    def release_uri(self) -> str:
        return self.release["uri"]

    @property
    def triggered_by(self) -> str:
        return self.run.get("triggered_by", "?")


@dataclass(frozen=True)
class BackupResult(Result):
    uri: str
    sha256: str
    size: int
    rows: int
    verified: str


@dataclass(frozen=True)
class ApplyResult(Result):
    """One target migrated: how long it took, lock retries, and the facts measured before."""

    env: str
    seconds: float
    table_bytes: int
    migrations: list[str]  # what this run had pending there
    before: dict[str, Any]  # rows and representative query timings before the change
    lock_retries: int
    applied: list[dict[str, Any]]
    release: str = ""  # the release's sha256


@dataclass(frozen=True)
class GateResult(Result):
    commands: list[dict[str, Any]]
    junit: list[str]
    tests: int


@dataclass(frozen=True)
class StagingGate(Result):
    """The gate step on staging: its commands' result and staging's verification (each to_xcom())."""

    gate: dict[str, Any]
    verification: dict[str, Any]


@dataclass(frozen=True)
class Verification(Result):
    env: str
    checks: int
    failed: int
    rows_before: dict[str, int]
    rows_after: dict[str, int]
    index_bytes: dict[str, int]
    query_ms_before: dict[str, float]
    query_ms_after: dict[str, float]
    facts: list[str]
    criteria: dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Approval(Result):
    """Who decided, when, and how (the Airflow UI, or --approved-by on the command line)."""

    approved: bool
    approver: str
    responded_at: str
    triggered_by: str | None = None
    approver_id: str | None = None
    via: str = "airflow"


@dataclass(frozen=True)
class WindowSlot(Result):
    skipped: bool
    reason: str = ""
    window: str = ""
    opens: str = ""
    closes: str = ""
    needed: str = ""
    staging_seconds: float | None = None
    waited_s: float | None = None


@dataclass(frozen=True)
class RunRecord(Result):
    """The run's audit record, computed once with no database; every chain row and the document in
    the store carry exactly this `record`."""

    record: dict[str, Any]
    changed: list[str]  # the targets the run changed (their apply step ran): the ones to chain it into
    beside: str = ""  # the backup's URI: the document is kept next to it (else under audit/)
    release: str = ""  # the release's sha256


@dataclass(frozen=True)
class AuditLink(Result):
    """The record's row in one target's audit chain (`audit.AuditRow.as_dict()`)."""

    env: str
    row: dict[str, Any]


@dataclass(frozen=True)
class AuditRecord(Result):
    outcome: str
    s3: str
    sha256: str
    chain: dict[str, dict[str, Any]]
    release: str = ""


# --- the rollback pipeline ----------------------------------------------------------------

@dataclass(frozen=True)
class RollbackPlan(Result):
    """What a rollback will do, decided before anything changes: the backup to restore (method
    `backup`), or the down migrations to run from the frozen release (`down_migrations`)."""

    environment: str  # the target's name
    database: str
    method: str
    needs_approval: bool  # a production target waits for a human
    backup: dict[str, Any] | None = None  # uri, sha256, size, started_at, run_id, row_counts, total_rows, verified
    migrations: list[dict[str, Any]] = field(default_factory=list)  # newest first: name, down_sql, down_sha256, steps
    release: dict[str, Any] | None = None  # ReleaseRef.to_xcom() of the down path's release
    confirmed: str = ""  # the database name the operator typed (production)
    force: bool = False  # restore with other sessions connected
    approval_body: str = ""
    run: dict[str, str] = field(default_factory=dict)
    slack_ts: str | None = None

    @property
    def release_uri(self) -> str:
        if not self.release:
            raise UsageError(f"the {self.method} rollback of {self.environment} has no release: only the "
                             "down_migrations path freezes one. Clear the run from preflight.")
        return self.release["uri"]


@dataclass(frozen=True)
class RollbackResult(Result):
    """What the rollback did: the down migrations undone (with their steps and SQL), or the restore."""

    method: str
    rolled_back: list[dict[str, Any]] = field(default_factory=list)  # down: newest first
    already_rolled_back: list[str] = field(default_factory=list)  # down: undone by an earlier try
    release: str = ""  # down: the release's sha256
    uri: str = ""  # backup: what was restored, and what the restore found
    database: str = ""
    size: int = 0
    seconds: float = 0.0
    row_counts: dict[str, int] = field(default_factory=dict)
    foreign_keys_dropped_first: list[str] = field(default_factory=list)
    audit_rows_put_back: int = 0
    manifest_sha256: str | None = None
    manifest_row_counts: dict[str, int] | None = None


@dataclass(frozen=True)
class RollbackVerification(Result):
    environment: str
    fingerprint_sha256: str
    ledger: dict[str, str]  # migration -> state after the rollback
    problems: list[str]
    row_counts: dict[str, int] = field(default_factory=dict)  # backup: the restored tables' exact counts


# --- the fleet pipeline ------------------------------------------------------------------

@dataclass(frozen=True)
class MemberOutcome(Result):
    """What one fleet member's deployment did. `state`: done | failed | already | not_attempted |
    waiting_window | would_apply (a dry run). Times are ISO 8601 UTC; `apply_s` and `verify_s` are
    the work seconds of those two steps alone (the benchmark's W)."""

    member: str
    state: str
    wave: int = 0
    attributes: dict[str, str] = field(default_factory=dict)
    tries: int = 0
    started: str = ""
    ended: str = ""
    seconds: float = 0.0
    apply_started: str = ""
    apply_ended: str = ""
    apply_s: float = 0.0
    verify_s: float = 0.0
    pending: list[str] = field(default_factory=list)  # what the release had pending there
    migrations: list[str] = field(default_factory=list)  # what this run applied there
    backup: str = ""  # the backup's URI
    audit: dict[str, Any] = field(default_factory=dict)  # the chain row: id, row_hash
    error: str = ""  # the first error line (scrubbed)
    detail: str = ""  # the whole error (scrubbed, shortened)
    reason: str = ""  # not_attempted / waiting_window: why
    next_window: str = ""  # waiting_window: when the member's window opens next

    @property
    def failed(self) -> bool:
        return self.state == "failed"


@dataclass(frozen=True)
class BrakeDecision(Result):
    """After a wave: go on to the next, or halt the run, with the counts so far and why."""

    wave: int
    halt: bool
    failed: int
    done: int
    already: int
    limit: int
    reason: str
