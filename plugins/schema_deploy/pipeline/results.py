"""What each pipeline step returns: frozen dataclasses that travel as versioned JSON.

`to_xcom()` gives a JSON-safe dict tagged with the type and its version, the form
Airflow's XCom (or any queue, or a file) carries between workers; `from_xcom()`
reads it back and refuses another type or an unknown version, so a worker running
an older release of this package never misreads a newer result.

A field whose shape is known is a small typed record (`Record`: a release or backup reference,
a chain row; or `criteria.Criterion`), never a `dict`: it travels as the plain dict of its fields
(a nested `Result`, as `ReleaseRef` is, as its own `to_xcom()`), and is made a record again when
the result is built, from `from_xcom()` or from a dict given to the constructor. `dict` stays only
for a shape that is truly open (a fingerprint's sections, row counts by table, timings by query).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar, Union

from schema_deploy.engine.criteria import Criterion
from schema_deploy.errors import UsageError

if TYPE_CHECKING:
    from schema_deploy.engine.criteria import Verdicts

R = TypeVar("R", bound="Result")


@dataclass(frozen=True)
class Record:
    """A small typed value inside a result. Its fields annotated with a record type (`ReleaseRef`,
    `list[Criterion]`, `BackupRef | None`) are made records when it is built, from their dicts as
    they travel; `plain()` gives it back as that dict."""

    def __post_init__(self) -> None:
        for name, annotation in record_fields(type(self)).items():
            value = getattr(self, name)
            built = _build(annotation, value)
            if built is not value:
                object.__setattr__(self, name, built)

    def get(self, key: str, default: Any = None) -> Any:
        """Dict-style access for report code that reads a result or its XCom alike."""
        return getattr(self, key, default)


def plain(value: Any) -> Any:
    """A record, a result or a value holding them as it travels: a result as its `to_xcom()`, any
    other dataclass (a `Record`, a `Criterion`) as the plain dict of its fields, with no tag."""
    if isinstance(value, Result):
        return value.to_xcom()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _fields_of(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _fields_of(value: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(value):
        v = getattr(value, f.name)
        # `none_as`: what an absent record travels as, where an older shape carried e.g. `{}` for it.
        out[f.name] = f.metadata["none_as"] if v is None and "none_as" in f.metadata else plain(v)
    return out


def _is_record(annotation: Any) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _mentions_record(annotation: Any) -> bool:
    return _is_record(annotation) or any(_mentions_record(a) for a in typing.get_args(annotation))


@cache
def record_fields(cls: type) -> dict[str, Any]:
    """The fields of `cls` whose annotation holds a record type, with that annotation."""
    try:
        hints = typing.get_type_hints(cls)
    except NameError:  # a hint names a type imported for type checking only: read the fields one by one
        hints = {f.name: _hint(cls, f) for f in dataclasses.fields(cls)}
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if _mentions_record(hints[f.name])}


def _hint(cls: type, f: dataclasses.Field[Any]) -> Any:
    """One field's annotation evaluated in its class's module; `Any` (no record) when it cannot be."""
    if not isinstance(f.type, str):
        return f.type
    module = sys.modules.get(cls.__module__)
    try:
        return eval(f.type, dict(vars(module)) if module else {})  # noqa: S307 - our own annotations
    except NameError:
        return Any


def _build(annotation: Any, value: Any) -> Any:
    """`value` as `annotation` says: a dict made its record, lists and dicts of them item by item."""
    if value is None:
        return None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value == {} and type(None) in args:  # an empty reference, as older shapes carried it: none
            return None
        arms = [a for a in args if a is not type(None) and _mentions_record(a)]
        return _build(arms[0], value) if arms else value
    if origin is list and isinstance(value, (list, tuple)):
        return [_build(args[0], v) for v in value]
    if origin is dict and isinstance(value, dict):
        return {k: _build(args[1], v) for k, v in value.items()}
    if _is_record(annotation) and isinstance(value, dict):
        if issubclass(annotation, Result) and "type" in value:
            return annotation.from_xcom(value)
        names = {f.name for f in dataclasses.fields(annotation)}
        return annotation(**{k: v for k, v in value.items() if k in names})
    return value


@dataclass(frozen=True)
class Result(Record):
    """Base of every step's result."""

    VERSION = 1

    def to_xcom(self) -> dict[str, Any]:
        body = _fields_of(self)
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


@dataclass(frozen=True)
class MigrationRef(Record):
    """One migration a release holds: its name and the checksum of its file."""

    name: str
    checksum: str


@dataclass(frozen=True)
class ReleaseRef(Result):
    """Where the run's release is and what it holds, in short (`Release.summary()`). A result of its
    own, so inside another it travels with its type and version, as it always has."""

    uri: str
    sha256: str
    short: str
    bundle: str
    source: dict[str, Any] = field(default_factory=dict)  # folder, git commit, dirty; symlinks when any
    migrations: list[MigrationRef] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """The migrations' names, in the release's order."""
        return [m.name for m in self.migrations]


@dataclass(frozen=True)
class BundleCheck(Result):
    """Preflight's first part, with no database: the bundle read, linted and frozen as a release
    without plans (or the release given to deploy), which each target's survey then loads."""

    release: ReleaseRef
    lint: dict[str, int]  # errors (blocking findings, before any plan fixes them), warnings
    given: bool = False  # the release was given (`deploy --release`), not frozen from the folder now

    @property
    def release_uri(self) -> str:
        return self.release.uri


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

    release: ReleaseRef
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
        return self.release.uri

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
class BackfillRun(Record):
    """One declared backfill run between its expand and contract migrations (backfill.engine's result)."""

    id: str
    table: str
    state: str
    rows_done: int
    rows_this_run: int = 0
    batches_this_run: int = 0
    wal_bytes_this_run: int = 0
    seconds: float = 0.0
    resumed_after_key: str | None = None
    passes: int = 1
    lock_retries: int = 0
    pauses: list[dict[str, Any]] = field(default_factory=list)
    requested_by: str | None = None


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
    backfills: list[BackfillRun] = field(default_factory=list)  # run between expand and contract migrations
    # The expand phase alone (deploy.expand): the contract migration it stopped before, and the
    # backfills that one waits for (both empty when nothing waits: it applied every pending migration).
    stopped_before: str | None = None
    waiting_for: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class BackfillPhase(Result):
    """The backfill phase on one target (deploy.backfill): the backfills the expand phase left to do."""

    env: str
    backfills: list[BackfillRun]
    seconds: float


@dataclass(frozen=True)
class GateResult(Result):
    commands: list[dict[str, Any]]
    junit: list[str]
    tests: int


@dataclass(frozen=True)
class StagingGate(Result):
    """The gate step on staging: its commands' result and staging's verification (each travels as
    its own tagged `to_xcom()`, as it always has), and the gate's outcome in words
    (`deploy.GATE_PASSED` or `deploy.GATE_UNMET`), as Slack, the approval page and the report say it."""

    gate: GateResult
    verification: Verification
    outcome: str = ""


@dataclass(frozen=True)
class Verification(Result):
    """What verification found on one target. `criteria`: the plan's success criteria
    (`criteria.Criterion`: name, verdict, detail), judged once by the verify step;
    `verdict`: their summary (`criteria.Verdicts.summary()`), the one line every report shows;
    `checks`: every check run, `not_measurable` of them could not be judged at this scale."""

    VERSION = 2

    env: str
    checks: int
    failed: int
    rows_before: dict[str, int]
    rows_after: dict[str, int]
    index_bytes: dict[str, int]
    query_ms_before: dict[str, float]
    query_ms_after: dict[str, float]
    facts: list[str]
    criteria: list[Criterion]
    verdict: str = ""
    not_measurable: int = 0

    @property
    def verdicts(self) -> Verdicts:
        """The criteria as `criteria.Verdicts`."""
        from schema_deploy.engine.criteria import Verdicts

        return Verdicts(tuple(self.criteria))

    @property
    def check_counts(self) -> str:
        """`42 checks: 40 passed, 2 not measurable`."""
        return verification_counts(self.to_xcom())


def verification_counts(verification: dict[str, Any]) -> str:
    """How every report counts a Verification's checks (from its XCom, or a record's copy)."""
    from schema_deploy.engine.criteria import check_counts

    total, failed = int(verification.get("checks") or 0), int(verification.get("failed") or 0)
    unmeasured = int(verification.get("not_measurable") or 0)
    return check_counts(total, total - failed - unmeasured, failed, unmeasured)


@dataclass(frozen=True)
class Approval(Result):
    """Who decided, when, how (the Airflow UI, or --approved-by on the command line) and why (the
    optional reason the responder typed)."""

    approved: bool
    approver: str
    responded_at: str
    triggered_by: str | None = None
    approver_id: str | None = None
    via: str = "airflow"
    reason: str = ""

    @property
    def decision(self) -> str:
        """The decision in words, as the page, Slack and the record say it."""
        return decision_text(self.to_xcom())


def decision_text(approval: dict[str, Any]) -> str:
    """"approved by X" / "rejected by X: reason" from an Approval's XCom (or a record's copy of it)."""
    who = approval.get("approver") or "?"
    reason = str(approval.get("reason") or "").strip()
    if approval.get("approved"):
        return f"approved by {who}" + (f": {reason}" if reason else "")
    return f"rejected by {who}: {reason or 'no reason given'}"


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

    def describe(self) -> str:
        """The slot in a sentence, for logs and Slack (never the dataclass repr)."""
        if self.skipped:
            return f"the maintenance window was skipped: {self.reason or 'no reason given'}"
        text = (f"maintenance window {self.window or '?'} is open from {_moment(self.opens)} "
                f"until {_moment(self.closes)}")
        if self.needed:
            text += f"; the change needs about {_span(self.needed)}"
            if self.staging_seconds is not None:
                text += f" (staging took {_seconds(self.staging_seconds)}, scaled to production's size)"
        if self.waited_s is not None:
            text += "; no wait" if self.waited_s <= 0 else f"; waited {_seconds(self.waited_s)} for it"
        return text

    def __str__(self) -> str:
        return self.describe()


def _moment(iso: str) -> str:
    """An ISO 8601 time as `2026-12-06 07:48 UTC` (as given when it does not parse)."""
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return iso or "?"
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _seconds(seconds: float) -> str:
    """`42.0 s`, `3 min 20 s`, `2 h 5 min`."""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def _span(text: str) -> str:
    """A `str(timedelta)` (`0:01:30`, `1 day, 2:00:00`) in words; as given when it is not one."""
    import re

    found = re.fullmatch(r"(?:(\d+) days?, )?(\d+):(\d{2}):(\d{2}(?:\.\d+)?)", text.strip())
    if not found:
        return text
    days, hours, minutes, secs = found.groups()
    return _seconds(((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + float(secs))


@dataclass(frozen=True)
class RunRecord(Result):
    """The run's audit record, computed once with no database; every chain row and the document in
    the store carry exactly this `record`."""

    record: dict[str, Any]
    changed: list[str]  # the targets the run changed (their apply step ran): the ones to chain it into
    beside: str = ""  # the backup's URI: the document is kept next to it (else under audit/)
    release: str = ""  # the release's sha256
    concerned: list[str] = field(default_factory=list)  # unchanged targets a decision concerned: chained too

    @property
    def chained(self) -> list[str]:
        """The targets whose audit chain gets the record: those changed and those a decision concerned."""
        return [*self.changed, *(t for t in self.concerned if t not in self.changed)]


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
    chain: dict[str, ChainRowRef]  # target -> its chain row
    release: str = ""


# --- the rollback pipeline ----------------------------------------------------------------

@dataclass(frozen=True)
class BackupRef(Record):
    """The backup a rollback restores, as its manifest describes it (`rollback.choose_backup`).
    Not a `BackupResult`: that is a backup this run took (its rows, how it was verified); this is
    one chosen from the store, with its manifest's facts and where its data came from."""

    uri: str
    sha256: str | None = None
    size: int | None = None
    started_at: str | None = None
    run_id: str | None = None
    row_counts: dict[str, int] = field(default_factory=dict)  # table -> exact rows
    total_rows: int | None = None
    verified: bool = False
    source: dict[str, Any] = field(default_factory=dict)  # the manifest's source: environment, database, ...
    # a restore of another environment's or database's data, asked for: from, to, asked_by, run, fact, planned
    other_source: dict[str, Any] | None = None

@dataclass(frozen=True)
class RollbackPlan(Result):
    """What a rollback will do, decided before anything changes: the backup to restore (method
    `backup`), or the down migrations to run from the frozen release (`down_migrations`)."""

    environment: str  # the target's name
    database: str
    method: str
    needs_approval: bool  # a production target waits for a human
    backup: BackupRef | None = None  # method backup: the backup to restore
    migrations: list[dict[str, Any]] = field(default_factory=list)  # newest first: name, down_sql, down_sha256, steps
    release: ReleaseRef | None = None  # method down_migrations: the down path's release
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
        return self.release.uri

    @property
    def restoring(self) -> BackupRef:
        """The backup this plan restores (method `backup`)."""
        if self.backup is None:
            raise UsageError(f"the {self.method} rollback of {self.environment} has no backup to restore: only the "
                             "backup path chooses one. Clear the run from preflight.")
        return self.backup


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
    other_source: dict[str, Any] | None = None  # backup: from where into where, when asked for explicitly


@dataclass(frozen=True)
class RollbackVerification(Result):
    environment: str
    fingerprint_sha256: str
    ledger: dict[str, str]  # migration -> state after the rollback
    problems: list[str]
    row_counts: dict[str, int] = field(default_factory=dict)  # backup: the restored tables' exact counts


# --- the fleet pipeline ------------------------------------------------------------------

@dataclass(frozen=True)
class ChainRowRef(Record):
    """A row of a target's audit chain: its id and its hash (`audit.AuditRow`)."""

    id: int
    row_hash: str

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
    backfills: list[BackfillRun] = field(default_factory=list)  # declared backfills run there, before their contract
    backup: str = ""  # the backup's URI
    # the member's chain row (done); travels as {} when there is none, as it always has
    audit: ChainRowRef | None = field(default=None, metadata={"none_as": {}})
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
