"""A fleet's members: who they are (targets, prefix, catalog), and one member deployed in process
(`deploy_member`: reachable, ledger, drift, prechecks, backup, apply, verification, audit), retrying
transient errors a few times; a member's failure is an outcome, never an exception."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from schema_deploy.config.fleets import FleetSpec
from schema_deploy.errors import UsageError, is_transient, shorten
from schema_deploy.ops import release as releases
from schema_deploy.ops.errors import ReleaseInvalid
from schema_deploy.pipeline.deploy import load_release, lock_settings, tables_created, verified_backup
from schema_deploy.pipeline.errors import DeployVerificationFailed
from schema_deploy.pipeline.fleet.windows import check_windows
from schema_deploy.pipeline.record import chain_into
from schema_deploy.pipeline.results import MemberOutcome, PreflightResult, TargetSurvey
from schema_deploy.pipeline.target import MEMBER, Deployment, Target
from schema_deploy.redact import scrub
from schema_deploy.retrying import Failure, Policy, run


URL_SCHEMES = ("postgresql://", "postgres://")
FLEET_ROLE = "fleet"  # the release's plan for every member (members share one plan: they share one schema)
RECORD_VERSION = 1
# Each step of a member (survey, backup, apply, verification, audit row): 3 tries in all for a
# transient error (errors.is_transient), 0.5 s then 1 s between them; any other error at once.
STEP_RETRY = Policy(attempts=3, first_wait_s=0.5, factor=2.0, transient=is_transient)
TRIES = STEP_RETRY.attempts  # a member whose step failed transiently on every try has this many tries


@dataclass(frozen=True)
class Member(Target):
    """A database of a fleet: a Target with role `member` and the attributes its catalog row gave."""

    attributes: tuple[tuple[str, str], ...] = ()

    @property
    def attrs(self) -> dict[str, str]:
        return dict(self.attributes)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


def resolve_members(spec: FleetSpec, *, url_of: Callable[[str], str], conn_ids: Callable[[], list[str]],
                    catalog: Callable[[str, str], list[dict[str, Any]]]) -> list[Member]:
    """The fleet's members, sorted by name: from its list, its connection-id prefix, or its catalog
    query (first column a connection id or a postgresql:// URL, the others attributes). The caller
    says how connections are looked up. Duplicates, an empty fleet and members without a window
    (when the fleet has windows by attribute) are refused."""
    if spec.source == "targets":
        rows = [(c, {}) for c in spec.targets]
    elif spec.source == "prefix":
        rows = [(c, {}) for c in sorted(conn_ids()) if c.startswith(spec.prefix)]
    else:
        rows = [_catalog_row(spec, row) for row in catalog(spec.catalog_conn, spec.catalog_query)]
    members = sorted((_member(ref, attrs, url_of) for ref, attrs in rows), key=lambda m: m.name)
    names = [m.name for m in members]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"fleet {spec.name}: {', '.join(dupes)} listed more than once by its {spec.source}; "
                         "each database must be a member once (fix the list or the catalog query).")
    if not members:
        where = {"targets": "its list", "prefix": f"no connection id starts with {spec.prefix!r}",
                 "catalog": f"the catalog query on {spec.catalog_conn} returned no rows"}[spec.source]
        raise UsageError(f"fleet {spec.name} has no members: {where}. Add the connections, or fix deploy.yaml's "
                         f"fleets.{spec.name}.")
    check_windows(spec, members)
    return members


def _catalog_row(spec: FleetSpec, row: dict[str, Any]) -> tuple[str, dict[str, str]]:
    items = list(row.items())
    if not items or not isinstance(items[0][1], str) or not items[0][1].strip():
        raise UsageError(f"fleet {spec.name}: the catalog query returned a row whose first column is "
                         f"{scrub(repr(items[0][1])) if items else 'missing'}; its first column must be a "
                         "connection id or a postgresql:// URL.")
    return items[0][1].strip(), {str(k): "" if v is None else str(v) for k, v in items[1:]}


def _member(ref: str, attrs: dict[str, str], url_of: Callable[[str], str]) -> Member:
    if ref.startswith(URL_SCHEMES):
        from schema_deploy.pg.tools import target_of

        t = target_of(ref)
        return Member(f"{t.host}/{t.dbname}", MEMBER, ref, tuple(sorted(attrs.items())))
    return Member(ref, MEMBER, url_of(ref), tuple(sorted(attrs.items())))


def catalog_rows(url: str, query: str) -> list[dict[str, Any]]:
    """A catalog query's rows as {column: value}, in a read-only session (the orchestrator's `catalog`)."""
    from schema_deploy.pg.db import connect

    with connect(url, settings={"default_transaction_read_only": "on", "statement_timeout": "30000"}) as conn:
        cur = conn.execute(query)
        columns = [d.name for d in cur.description or ()]
        return [dict(zip(columns, row)) for row in cur.fetchall()]


def fleet_prefix(ctx: Deployment, fleet: str) -> str:
    """s3://BUCKET/PREFIX/fleets/<fleet>/runs/<run id>: the run's backups and its fleet record."""
    from schema_deploy.backups.store import key_segment

    return f"{ctx.store.root}/fleets/{key_segment(fleet, 'fleet')}/runs/{key_segment(ctx.run.run_id, 'run id')}"


def first_line(exc: BaseException) -> str:
    """An error's first line, scrubbed; a line that ends in ':' takes the next (a precheck's headline)."""
    lines = [ln.strip() for ln in (scrub(str(exc)).strip() or type(exc).__name__).splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    if line.endswith(":") and len(lines) > 1:
        line = f"{line} {lines[1]}"
    return shorten(line, 400)


class _Tries:
    """A member's steps run under `STEP_RETRY`; counts the tries for the outcome (across its steps)."""

    def __init__(self, ctx: Deployment, member: Member) -> None:
        self.ctx, self.member, self.count = ctx, member, 1

    def __call__(self, step: Callable[[], Any]) -> Any:
        return run(step, STEP_RETRY, on_failure=self._retrying)

    def _retrying(self, failure: Failure) -> None:
        if failure.last:
            return
        self.count += 1
        self.ctx.log.warning("%s: %s; try %d of %d in %.1f s", self.member.name, first_line(failure.error),
                             failure.attempt + 1, STEP_RETRY.attempts, failure.wait_s)


def deploy_member(ctx: Deployment, member: Member, pre: PreflightResult, *, fleet: str, backup: bool,
                  dry_run: bool, wave: int = 0) -> MemberOutcome:
    """One member, in process: survey (reachable, ledger, drift, prechecks), then unless it is at the
    release already or this is a dry run: backup, apply, verification and the audit row in its own
    database. Never raises for the member's own trouble: that is a failed outcome."""
    started, t0, tries = now_utc(), time.monotonic(), _Tries(ctx, member)
    facts: dict[str, Any] = {}
    release: releases.Release | None = None

    def outcome(state: str, **more: Any) -> MemberOutcome:
        return MemberOutcome(member=member.name, state=state, wave=wave, attributes=member.attrs, tries=tries.count,
                             started=started.isoformat(), ended=now_utc().isoformat(),
                             seconds=round(time.monotonic() - t0, 3), **{**facts, **more})

    try:
        release = fleet_release(ctx, pre)
        survey = tries(lambda: survey_member(ctx, member, release))
        facts["pending"] = survey.pending
        if not survey.pending:
            return outcome("already")
        if dry_run:
            return outcome("would_apply")
        if backup:
            facts["backup"] = tries(lambda: verified_backup(ctx, member, f"{fleet_prefix(ctx, fleet)}/backups",
                                                            restore_check=False)).uri
        applied = apply_member(ctx, member, release, survey.pending, facts, tries)
        verify_s = time.monotonic()
        tries(lambda: verify_member(ctx, member, release, survey.pending))
        facts["verify_s"] = round(time.monotonic() - verify_s, 3)
        row = tries(lambda: chain_into(ctx, member, "fleet", member_record(ctx, fleet, member, release, facts,
                                                                           "done", applied)))
        return outcome("done", audit={"id": row.id, "row_hash": row.row_hash})
    except Exception as exc:  # noqa: BLE001 - one member's failure is its outcome, never the wave's
        facts["error"] = first_line(exc)
        failed = outcome("failed", detail=shorten(scrub(str(exc)), 2000))
        if facts.get("apply_started") and release is not None:  # it may have changed: its trail says so
            _record_failure(ctx, fleet, member, release, facts)
        ctx.log.error("%s failed: %s", member.name, failed.error)
        return failed


def fleet_release(ctx: Deployment, pre: PreflightResult) -> releases.Release:
    """The run's release, which must hold a fleet plan (else members would run unapproved plans)."""
    release = load_release(ctx, pre)
    if release.plan(FLEET_ROLE) is None:
        raise ReleaseInvalid(release.uri or release.short, f"the release holds no {FLEET_ROLE!r} plan",
                             "Freeze the fleet's release with fleet_preflight (deploy_fleet's preflight), "
                             "then deploy the members from it.")
    return release


def survey_member(ctx: Deployment, member: Member, release: releases.Release) -> TargetSurvey:
    """The member before any change: its ledger (failed or drifted migrations refused, naming the
    file), its plan against the release's fleet plan, the data prechecks, and, when its pending set is
    the rehearsal's, its schema against staging's before the rehearsal."""
    from schema_deploy.pg.fingerprint import diff_fingerprints
    from schema_deploy.pipeline.deploy import survey_target
    from schema_deploy.plan.prechecks import require_clean
    from schema_deploy.state.errors import LedgerBlocked

    def prechecks(conn: Any, plan: Any) -> dict[str, Any]:
        checked = require_clean(conn, plan, lock_settings(ctx), waive=ctx.params.waive_prechecks or None,
                                log=ctx.log.warning)
        return {"prechecks": [r.as_dict() for r in checked]}

    survey = survey_target(ctx, member, release, release.to_bundle(), prechecks, plan_role=FLEET_ROLE)
    before = (release.plan(FLEET_ROLE) or {}).get("before") or {}
    if survey.pending and survey.pending == before.get("pending"):
        diff = diff_fingerprints(before.get("fingerprint") or {}, survey.fingerprint, "staging", member.name)
        if diff:
            raise LedgerBlocked(f"{member.name}'s schema differs from staging's before the rehearsal, so the "
                                f"rehearsal proved nothing for it: {'; '.join(diff[:10])}. Bring {member.name} "
                                "to the fleet's schema, then run it again (only these targets).")
    return survey


def apply_member(ctx: Deployment, member: Member, release: releases.Release, pending: list[str],
                 facts: dict[str, Any], tries: _Tries) -> list[dict[str, Any]]:
    """The release's pending migrations, online, with lock retries, under the release's fleet plan; a
    declared backfill runs before its contract migration, from its checkpoint in the member (a tenant's
    rows are few; the member's own log has its progress). Records the apply's start, end and work seconds,
    and the backfills' figures, in `facts`."""
    from schema_deploy.backfill.engine import Runner, run_to_done
    from schema_deploy.engine.apply import apply as run_apply

    bundle = release.to_bundle()
    facts["apply_started"] = now_utc().isoformat()
    t0 = time.monotonic()
    log = lambda m: ctx.log.info("%s: %s", member.name, m)  # noqa: E731
    result = tries(lambda: run_apply(
        member.url, bundle, lock_settings(ctx), online=ctx.params.online, log=log,
        created=lambda status: tables_created(bundle, set(status.names("applied")) & set(pending)),
        approve=lambda plan: releases.check_plan(release, FLEET_ROLE, plan),
        backfill=lambda spec: run_to_done(Runner(member.url, spec, release=release.digest, log=log)).as_dict()))
    facts.update(apply_ended=now_utc().isoformat(), apply_s=round(time.monotonic() - t0, 3),
                 migrations=[m.name for m in result.applied])
    if result.backfills:
        facts["backfills"] = result.backfills
    return [m.as_dict() for m in result.applied]


INVALID_INDEXES = """
SELECT n.nspname || '.' || c.relname FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT (x.indisvalid AND x.indisready) AND n.nspname NOT IN ('pg_catalog', 'pg_toast') ORDER BY 1
"""


def verify_member(ctx: Deployment, member: Member, release: releases.Release, pending: list[str]) -> int:
    """Every migration of the release applied with the release's checksum, what the pending ones
    create there (each index valid, each constraint validated, each column as declared), no INVALID
    index anywhere. No EXPLAIN timings: a small tenant's planner proves little. Returns the checks run."""
    from schema_deploy.bundle.parse import parse_migration
    from schema_deploy.engine.apply import load_state
    from schema_deploy.engine.verify import check_expectations
    from schema_deploy.pg.db import connect
    from schema_deploy.state.status import APPLIED

    bundle = release.to_bundle()
    statements = [s for m in bundle.migrations if m.name in pending for s in parse_migration(m)]
    with connect(member.url) as conn:
        status, _ = load_state(conn, bundle)
        checks = check_expectations(conn, statements)
        invalid = [r[0] for r in conn.execute(INVALID_INDEXES).fetchall()]
    problems = [f"{s.name} is {s.state} in _prisma_migrations, not applied with the release's checksum"
                for s in status.states if s.state != APPLIED]
    problems += [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    problems += [f"index {name} is INVALID" for name in invalid]
    if problems:
        raise DeployVerificationFailed(member.name, problems)
    return len(status.states) + len(checks) + 1


def member_record(ctx: Deployment, fleet: str, member: Member, release: releases.Release, facts: dict[str, Any],
                  outcome: str, applied: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The member's audit record, chained into its own database."""
    return {"record_version": RECORD_VERSION, "kind": "fleet member", "fleet": fleet, "member": member.name,
            "attributes": member.attrs, "outcome": outcome,
            "run": {**ctx.run.facts(), "url": ctx.run.url, "started": ctx.run.started},
            "parameters": ctx.params.__dict__,
            "release": {"uri": release.uri, "sha256": release.digest, "short": release.short, "bundle": release.bundle},
            "sql_executed": [{"migration": m["name"], **step} for m in applied or [] for step in m.get("steps", [])],
            **{k: facts.get(k) for k in ("pending", "migrations", "backup", "apply_started", "apply_ended",
                                         "apply_s", "verify_s", "error")}}


def _record_failure(ctx: Deployment, fleet: str, member: Member, release: releases.Release,
                    facts: dict[str, Any]) -> None:
    """Best effort: a member that failed after its apply began gets a failed record in its chain."""
    try:
        chain_into(ctx, member, "fleet", member_record(ctx, fleet, member, release, facts, "failed"))
    except Exception as exc:  # noqa: BLE001 - the outcome says it failed; the trail is a bonus here
        ctx.log.warning("%s: the failure could not be recorded in its audit chain: %s", member.name, first_line(exc))


def failed_outcome(member: Member, exc: BaseException, started: datetime, wave: int = 0) -> MemberOutcome:
    return MemberOutcome(member=member.name, state="failed", wave=wave, attributes=member.attrs, tries=1,
                         started=started.isoformat(), ended=now_utc().isoformat(),
                         seconds=round((now_utc() - started).total_seconds(), 3), error=first_line(exc),
                         detail=shorten(scrub(str(exc)), 2000))
