"""Fleets: one release to many databases (tenants, shards), in waves, free of any orchestrator.

    members (resolve_members) → waves (plan_waves) → per wave: window split → run_wave(deploy_member)
            → brake → [pause | approval after the canary] → … → fleet_record → keep_fleet_record

The release is frozen once (`fleet_preflight`) from staging's survey before the rehearsal: its
plans hold `staging` and `fleet` (FLEET_ROLE), and the fleet plan carries staging's pending set and
schema fingerprint before the change, so every member, on any worker and in any later run, is
checked against what was rehearsed. `deploy_member` does one member in process (reachable, ledger,
drift, prechecks, backup, apply, verification, audit), retrying transient errors a few times; a
member's failure is an outcome, never an exception, so the others of its wave go on.
"""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from schema_deploy.backup_store import parse_s3_uri

from schema_deploy import release as releases
from schema_deploy.config_fleets import FleetSpec, WavesSpec
from schema_deploy.errors import ReleaseInvalid, UsageError, VerificationFailed, is_transient, scrub, shorten
from schema_deploy.pipeline.deploy import load_release, lock_settings, tables_created, verified_backup
from schema_deploy.pipeline.record import chain_into, put_document
from schema_deploy.pipeline.results import (BrakeDecision, BundleCheck, MemberOutcome, PreflightResult, ReleaseRef,
                                            TargetSurvey)
from schema_deploy.pipeline.target import MEMBER, Deployment, Target
from schema_deploy.window import Window, next_slot

FLEET_ROLE = "fleet"  # the release's plan for every member (members share one plan: they share one schema)
TRIES = 3  # per step of a member, for transient errors (errors.is_transient)
BACKOFF_S = 0.5  # before retry i: BACKOFF_S * 2**i
RECORD_VERSION = 1
URL_SCHEMES = ("postgresql://", "postgres://")


@dataclass(frozen=True)
class Member(Target):
    """A database of a fleet: a Target with role `member` and the attributes its catalog row gave."""

    attributes: tuple[tuple[str, str], ...] = ()

    @property
    def attrs(self) -> dict[str, str]:
        return dict(self.attributes)


def now_utc() -> datetime:
    return datetime.now(timezone.utc)


# --- members ------------------------------------------------------------------------------

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
        from schema_deploy.pg_tools import target_of

        t = target_of(ref)
        return Member(f"{t.host}/{t.dbname}", MEMBER, ref, tuple(sorted(attrs.items())))
    return Member(ref, MEMBER, url_of(ref), tuple(sorted(attrs.items())))


def catalog_rows(url: str, query: str) -> list[dict[str, Any]]:
    """A catalog query's rows as {column: value}, in a read-only session (the orchestrator's `catalog`)."""
    from schema_deploy.db import connect

    with connect(url, settings={"default_transaction_read_only": "on", "statement_timeout": "30000"}) as conn:
        cur = conn.execute(query)
        columns = [d.name for d in cur.description or ()]
        return [dict(zip(columns, row)) for row in cur.fetchall()]


# --- waves and the brake --------------------------------------------------------------------

def canary_first(spec: FleetSpec, members: Sequence[Member], now: datetime) -> list[Member]:
    """`members` with the canary picked among those whose window is open now (the first by name),
    so a canary is not left waiting while the waves after it run; unchanged without a canary or
    when no window is open."""
    if not spec.waves.canary:
        return list(members)
    open_now, _ = split_by_window(spec, members, now)
    picked = open_now[:spec.waves.canary] if open_now else []
    return picked + [m for m in members if m not in picked]


def plan_waves(members: Sequence[Member], waves: WavesSpec) -> list[list[Member]]:
    """The canary wave (the first `canary` members; none when 0), then chunks of `size` (a percentage
    of the whole fleet is rounded up, and a wave holds at least one member)."""
    members = list(members)
    canary = min(waves.canary, len(members))
    size = max(1, waves.size.of(len(members), round_up=True))
    rest = members[canary:]
    return ([members[:canary]] if canary else []) + [rest[i:i + size] for i in range(0, len(rest), size)]


def halt_limit(waves: WavesSpec, fleet_size: int) -> int:
    """How many failed members the run tolerates: `halt_after`, a percentage of the fleet rounded
    down (5% of 30 is 1), so a percentage never tolerates more than it says."""
    return waves.halt_after.of(fleet_size, round_up=False)


def wave_limit(waves: WavesSpec, fleet_size: int, index: int) -> int:
    """The brake's limit after wave `index`: 0 after the canary (a failed canary stops the run), else halt_limit."""
    return 0 if index == 0 and waves.canary else halt_limit(waves, fleet_size)


def brake(outcomes: Sequence[MemberOutcome], limit: int, wave: int = 0) -> BrakeDecision:
    """Go on or halt, from every outcome so far: the run halts when more than `limit` members failed."""
    states = Counter(o.state for o in outcomes)
    failed = [o for o in outcomes if o.failed]
    halt = len(failed) > limit
    names = "; ".join(f"{o.member}: {o.error}" for o in failed[:5]) + ("; …" if len(failed) > 5 else "")
    reason = (f"{len(failed)} member(s) failed so far, more than the limit of {limit}: the run stops ({names})"
              if halt else f"{len(failed)} member(s) failed so far, within the limit of {limit}: the run goes on"
              + (f" ({names})" if failed else ""))
    return BrakeDecision(wave=wave, halt=halt, failed=len(failed), done=states["done"], already=states["already"],
                         limit=limit, reason=reason)


def not_attempted(members: Sequence[Member], reason: str, wave: int = 0) -> list[MemberOutcome]:
    """Outcomes for members the run did not reach (a halt, a refused approval), with the reason."""
    return [MemberOutcome(member=m.name, state="not_attempted", wave=wave, attributes=m.attrs, reason=reason)
            for m in members]


# --- windows by attribute ---------------------------------------------------------------------

def member_window(spec: FleetSpec, member: Member) -> Window | None:
    """The window `member` changes in: by its `window.by` attribute, else the fleet's default; None
    when the fleet has no window. A member whose value has no window and no default is refused."""
    fw = spec.window
    if fw.by is None:
        return fw.default
    value = member.attrs.get(fw.by)
    found = dict(fw.windows).get(value) if value is not None else None
    if found is None and fw.default is None:
        raise UsageError(f"fleet {spec.name}: member {member.name} has {fw.by}={value!r}, which "
                         f"fleets.{spec.name}.window.windows does not name, and there is no default: add "
                         f"{value!r} there or a window.default.")
    return found or fw.default


def check_windows(spec: FleetSpec, members: Sequence[Member]) -> None:
    """Every member has a window (or the fleet has none): refused before the canary, all at once."""
    problems = []
    for m in members:
        try:
            member_window(spec, m)
        except UsageError as exc:
            problems.append(str(exc))
    if problems:
        raise UsageError("\n".join(problems))


def split_by_window(spec: FleetSpec, members: Sequence[Member], now: datetime
                    ) -> tuple[list[Member], list[tuple[Member, datetime]]]:
    """The members whose window is open now (or who have none), and those waiting, with when their
    window opens next. Kept simple: open now is enough, however little of it is left."""
    open_now: list[Member] = []
    waiting: list[tuple[Member, datetime]] = []
    for m in members:
        window = member_window(spec, m)
        if window is None:
            open_now.append(m)
            continue
        slot = next_slot([window], now, timedelta(0))
        if slot.start <= now:
            open_now.append(m)
        else:
            waiting.append((m, slot.start))
    return open_now, waiting


def waiting_outcomes(spec: FleetSpec, waiting: Sequence[tuple[Member, datetime]], wave: int = 0) -> list[MemberOutcome]:
    """Outcomes for members whose window is closed: the window, and when it opens next (UTC)."""
    outcomes = []
    for m, at in waiting:
        label = getattr(member_window(spec, m), "label", "?")
        outcomes.append(MemberOutcome(member=m.name, state="waiting_window", wave=wave, attributes=m.attrs,
                                      reason=f"its maintenance window {label} is closed",
                                      next_window=at.astimezone(timezone.utc).isoformat()))
    return outcomes


# --- the release for a fleet ---------------------------------------------------------------------

def fleet_preflight(ctx: Deployment, checked: BundleCheck, staging: TargetSurvey) -> PreflightResult:
    """The fleet's release, with no database: staging's plan frozen for staging and for the fleet, the
    fleet plan carrying staging's pending set and fingerprint before the change (what each member is
    compared with). A given release that holds a fleet plan is used as it is (a resume)."""
    planless = load_release(ctx, checked)
    if checked.given and planless.plan(FLEET_ROLE) is not None:
        release = planless
    elif not staging.pending:  # staging is at the release: a run again of a rehearsed release (resume)
        release = earlier_fleet_release(ctx, planless)
    else:
        fleet_plan = {**staging.plan, "before": {"pending": staging.pending, "fingerprint": staging.fingerprint}}
        frozen = releases.freeze(planless.to_bundle(), planless.bundle, lint=checked.lint, prechecks=staging.prechecks,
                                 plans={staging.env: staging.plan, FLEET_ROLE: fleet_plan},
                                 source={**planless.source, "release": planless.uri} if checked.given
                                 else planless.source, verify=planless.verify)
        release = releases.store(ctx.store.s3, frozen, ctx.store.root, ctx.store.sse)
        bucket, key = parse_s3_uri(rehearsed_key(ctx, planless))
        put_document(ctx, bucket, key, {"bundle": planless.uri, "release": release.uri, "run": ctx.run.run_id})
    ctx.log.info("fleet release %s: %s", release.short, release.uri)
    plan = release.plan(FLEET_ROLE) or {}
    return PreflightResult(release=ReleaseRef(**release.summary()).to_xcom(), migrations=plan.get("migrations", []),
                           online=ctx.params.online, pending={staging.env: staging.pending}, lint=checked.lint,
                           prechecks=list(release.prechecks), table_sizes=staging.table_sizes,
                           production_table_bytes=0, run=ctx.run.facts())


def rehearsed_key(ctx: Deployment, planless: releases.Release) -> str:
    """Where the fleet release rehearsed from this bundle's content is named: PREFIX/fleets/rehearsed/<digest>.json."""
    return f"{ctx.store.root.rstrip('/')}/fleets/rehearsed/{planless.digest}.json"


def earlier_fleet_release(ctx: Deployment, planless: releases.Release) -> releases.Release:
    """The fleet release an earlier run froze and rehearsed from the same bundle content, for a run
    again after staging is at it (members at it are 'already', the others get the rehearsed plan)."""
    from schema_deploy.backup_store import not_found
    from schema_deploy.errors import NothingToRehearse

    uri = rehearsed_key(ctx, planless)
    bucket, key = parse_s3_uri(uri)
    try:
        pointer = json.loads(ctx.store.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except Exception as exc:  # noqa: BLE001 - not found is the user's case; anything else is S3's
        if getattr(exc, "response", None) is not None and not_found(exc):
            raise NothingToRehearse(planless.short, uri) from None
        raise
    release = releases.load(ctx.store.s3, pointer["release"])
    if release.plan(FLEET_ROLE) is None:
        raise ReleaseInvalid(release.uri, f"the release {uri} names holds no {FLEET_ROLE!r} plan",
                             "Run the fleet from its migrations folder with staging before the change.")
    ctx.log.info("staging is at this bundle already: the fleet release rehearsed by run %s is used (%s)",
                 pointer.get("run", "?"), release.uri)
    return release


def fleet_prefix(ctx: Deployment, fleet: str) -> str:
    """s3://BUCKET/PREFIX/fleets/<fleet>/runs/<run id>: the run's backups and its fleet record."""
    from schema_deploy.backup_store import key_segment

    return f"{ctx.store.root}/fleets/{key_segment(fleet, 'fleet')}/runs/{key_segment(ctx.run.run_id, 'run id')}"


# --- one member ----------------------------------------------------------------------------------

def first_line(exc: BaseException) -> str:
    """An error's first line, scrubbed; a line that ends in ':' takes the next (a precheck's headline)."""
    lines = [ln.strip() for ln in (scrub(str(exc)).strip() or type(exc).__name__).splitlines() if ln.strip()]
    line = lines[0] if lines else type(exc).__name__
    if line.endswith(":") and len(lines) > 1:
        line = f"{line} {lines[1]}"
    return shorten(line, 400)


class _Tries:
    """Transient errors retried in process, with backoff; counts the tries for the outcome."""

    def __init__(self, ctx: Deployment, member: Member) -> None:
        self.ctx, self.member, self.count = ctx, member, 1

    def __call__(self, step: Callable[[], Any]) -> Any:
        for i in range(TRIES):
            try:
                return step()
            except Exception as exc:  # noqa: BLE001 - is_transient decides
                if i + 1 == TRIES or not is_transient(exc):
                    raise
                self.count += 1
                self.ctx.log.warning("%s: %s; try %d of %d in %.1f s", self.member.name, first_line(exc), i + 2,
                                     TRIES, BACKOFF_S * 2 ** i)
                time.sleep(BACKOFF_S * 2 ** i)
        raise AssertionError("unreachable")


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
    from schema_deploy.errors import LedgerBlocked
    from schema_deploy.fingerprint import diff_fingerprints
    from schema_deploy.pipeline.deploy import survey_target
    from schema_deploy.prechecks import require_clean

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
    """The release's pending migrations, online, with lock retries, under the release's fleet plan;
    records the apply's start, end and work seconds in `facts`."""
    from schema_deploy.apply import apply as run_apply

    bundle = release.to_bundle()
    facts["apply_started"] = now_utc().isoformat()
    t0 = time.monotonic()
    result = tries(lambda: run_apply(
        member.url, bundle, lock_settings(ctx), online=ctx.params.online,
        log=lambda m: ctx.log.info("%s: %s", member.name, m),
        created=lambda status: tables_created(bundle, set(status.names("applied")) & set(pending)),
        approve=lambda plan: releases.check_plan(release, FLEET_ROLE, plan)))
    facts.update(apply_ended=now_utc().isoformat(), apply_s=round(time.monotonic() - t0, 3),
                 migrations=[m.name for m in result.applied])
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
    from schema_deploy.apply import load_state
    from schema_deploy.db import connect
    from schema_deploy.parse import parse_migration
    from schema_deploy.status import APPLIED
    from schema_deploy.verify import check_expectations

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
        raise VerificationFailed(member.name, problems)
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


# --- a wave, and the whole run ---------------------------------------------------------------------

def failed_outcome(member: Member, exc: BaseException, started: datetime, wave: int = 0) -> MemberOutcome:
    return MemberOutcome(member=member.name, state="failed", wave=wave, attributes=member.attrs, tries=1,
                         started=started.isoformat(), ended=now_utc().isoformat(),
                         seconds=round((now_utc() - started).total_seconds(), 3), error=first_line(exc),
                         detail=shorten(scrub(str(exc)), 2000))


def run_wave(ctx: Deployment, members: Sequence[Member], *, parallel: int,
             fn: Callable[[Member], MemberOutcome], wave: int = 0) -> list[MemberOutcome]:
    """`fn` for each member on `parallel` threads, outcomes in the members' order; an exception in
    `fn` is that member's failed outcome, and never stops the others."""
    def guarded(m: Member) -> MemberOutcome:
        started = now_utc()
        try:
            return fn(m)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            ctx.log.error("%s failed: %s", m.name, first_line(exc))
            return failed_outcome(m, exc, started, wave)

    if not members:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(parallel, len(members))), thread_name_prefix="fleet") as pool:
        return list(pool.map(guarded, members))


@dataclass(frozen=True)
class FleetRun:
    """What `run_fleet` did: every member's outcome, the waves (member names) and the brake decisions."""

    outcomes: list[MemberOutcome]
    waves: list[list[str]]
    brakes: list[BrakeDecision]


def run_waves(ctx: Deployment, spec: FleetSpec, members: Sequence[Member], pre: PreflightResult, *,
              start: int = 0, stop: int | None = None, prior: Sequence[MemberOutcome] = (),
              now: Callable[[], datetime] = now_utc, sleep: Callable[[float], None] = time.sleep,
              on_wave: Callable[[int, list[MemberOutcome], BrakeDecision], None] | None = None) -> FleetRun:
    """Waves `start` to `stop` (exclusive; None: the last) of the fleet's wave plan, in this process:
    `pause` before each wave but the first of the fleet, then its members whose window is open (all of
    them with skip_window), the others waiting; then the brake over `prior` (earlier waves' outcomes,
    e.g. the canary's from another task) and these. A halt lists every later member, beyond `stop`
    too, as not attempted. `on_wave(index, its outcomes, the brake)` is told after each wave (Slack).
    Returns only the outcomes of these waves; `waves` is the whole plan."""
    waves = plan_waves(members, spec.waves)
    stop = len(waves) if stop is None else min(stop, len(waves))
    outcomes: list[MemberOutcome] = []
    brakes: list[BrakeDecision] = []
    for i in range(start, stop):
        if i > 0 and spec.waves.pause and not ctx.params.dry_run:
            sleep(spec.waves.pause.total_seconds())
        if ctx.params.skip_window or ctx.params.dry_run:  # a dry run checks every member, window or not
            open_now, waiting = list(waves[i]), []
        else:
            open_now, waiting = split_by_window(spec, waves[i], now())
        done = waiting_outcomes(spec, waiting, i) + run_wave(
            ctx, open_now, parallel=spec.waves.parallel, wave=i, fn=lambda m, i=i: deploy_member(
                ctx, m, pre, fleet=spec.name, backup=spec.backup, dry_run=ctx.params.dry_run, wave=i))
        outcomes += done
        brakes.append(brake([*prior, *outcomes], wave_limit(spec.waves, len(members), i), i))
        if i == 0 and spec.waves.canary and waiting and not ctx.params.dry_run and not brakes[-1].halt:
            brakes[-1] = replace(brakes[-1], halt=True, reason=(
                f"the canary could not run: {', '.join(m.name for m, _ in waiting)} wait(s) for a closed window "
                f"(opens {min(at for _, at in waiting).isoformat()}); trigger the fleet again while a window is "
                "open (its canary is then a member whose window is open), or with skip_window and a reason"))
        if ctx.params.dry_run and brakes[-1].halt:  # a dry run checks every member: the brake only says
            brakes[-1] = replace(brakes[-1], halt=False, reason=f"dry run, every member is checked; a real run "
                                 f"would stop here: {brakes[-1].reason}")
        ctx.log.info("fleet %s wave %d: %s", spec.name, i, brakes[-1].reason)
        if on_wave is not None:
            on_wave(i, done, brakes[-1])
        if brakes[-1].halt:
            later = [m for w in waves[i + 1:] for m in w]
            outcomes += not_attempted(later, f"the brake halted the run after wave {i}: {brakes[-1].reason}", i + 1)
            break
    return FleetRun(outcomes=outcomes, waves=[[m.name for m in w] for w in waves], brakes=brakes)


def run_fleet(ctx: Deployment, spec: FleetSpec, members: Sequence[Member], pre: PreflightResult, *,
              now: Callable[[], datetime] = now_utc, sleep: Callable[[float], None] = time.sleep,
              approve: Callable[[list[MemberOutcome]], bool] | None = None) -> FleetRun:
    """The waves in one process (the `deploy` command's and the tests' orchestrator; the DAG runs the
    same `run_waves` as tasks: the canary, the approval, the rest): the canary wave, then the approval
    when the fleet asks for one, then the other waves."""
    if not ctx.params.skip_window:
        members = canary_first(spec, members, now())
    if not spec.waves.canary:
        return run_waves(ctx, spec, members, pre, now=now, sleep=sleep)
    canary = run_waves(ctx, spec, members, pre, stop=1, now=now, sleep=sleep)
    later = [m for w in plan_waves(members, spec.waves)[1:] for m in w]
    if canary.brakes[-1].halt or not later:
        return canary
    if spec.waves.approve_after_canary and not ctx.params.dry_run and (approve is None or not approve(canary.outcomes)):
        return replace(canary, outcomes=canary.outcomes + not_attempted(later, "not approved after the canary wave", 1))
    rest = run_waves(ctx, spec, members, pre, start=1, prior=canary.outcomes, now=now, sleep=sleep)
    return FleetRun(outcomes=canary.outcomes + rest.outcomes, waves=canary.waves, brakes=canary.brakes + rest.brakes)


def run_windowed(ctx: Deployment, spec: FleetSpec, members: Sequence[Member], pre: PreflightResult,
                 waiting: Sequence[MemberOutcome], *, prior: Sequence[MemberOutcome] = (),
                 now: Callable[[], datetime] = now_utc) -> tuple[FleetRun, datetime | None]:
    """The members the waves left waiting for their window (`waiting`, their outcomes), once: those
    whose window is open now are deployed, `parallel` at a time, each keeping its wave number; then
    the brake over `prior` (every outcome so far) and these. Returns these outcomes, the ones still
    waiting included, and when the next of their windows opens: None when nobody waits any more, or
    when the brake halted the run (the waiting ones are then not attempted, with its reason)."""
    by_name = {m.name: m for m in members}
    wave_of = {o.member: o.wave for o in waiting}
    open_now, still = split_by_window(spec, [by_name[o.member] for o in waiting], now())
    done = run_wave(ctx, open_now, parallel=spec.waves.parallel, fn=lambda m: deploy_member(
        ctx, m, pre, fleet=spec.name, backup=spec.backup, dry_run=False, wave=wave_of[m.name]))
    brakes: list[BrakeDecision] = []
    if done:
        brakes.append(brake([*prior, *done], halt_limit(spec.waves, len(members)), max(o.wave for o in done)))
        ctx.log.info("fleet %s, members whose window opened (%s): %s", spec.name,
                     ", ".join(o.member for o in done), brakes[-1].reason)
    if brakes and brakes[-1].halt:
        reason = f"the brake halted the run: {brakes[-1].reason}"
        return FleetRun(outcomes=done + [replace(o, state="not_attempted", reason=reason, next_window="")
                                         for o in waiting if o.member in {m.name for m, _ in still}],
                        waves=[], brakes=brakes), None
    later = [replace(o, next_window=at.astimezone(timezone.utc).isoformat())
             for o in waiting for m, at in still if m.name == o.member]
    return FleetRun(outcomes=done + later, waves=[], brakes=brakes), min((at for _, at in still), default=None)


# --- the fleet record ----------------------------------------------------------------------------

def fleet_outcome(outcomes: Sequence[MemberOutcome], brakes: Sequence[BrakeDecision], dry_run: bool) -> str:
    states = Counter(o.state for o in outcomes)
    return ("halted" if any(b.halt for b in brakes) else "failed" if states["failed"]
            else "not approved" if states["not_attempted"] else "dry run" if dry_run
            else "waiting for windows" if states["waiting_window"] else "done")


def fleet_record(ctx: Deployment, spec: FleetSpec, pre: PreflightResult, run: FleetRun) -> dict[str, Any]:
    """One JSON document for the run: the release, the settings, the waves, the brake's decisions
    and every member's outcome (not attempted and waiting ones too, with the reason)."""
    release = pre.release
    w = spec.waves
    return {"record_version": RECORD_VERSION, "kind": "fleet", "fleet": spec.name,
            "run": {**ctx.run.facts(), "url": ctx.run.url, "started": ctx.run.started},
            "parameters": ctx.params.__dict__,
            "release": {k: release.get(k) for k in ("uri", "sha256", "short", "bundle")},
            "settings": {"canary": w.canary, "size": str(w.size), "parallel": w.parallel,
                         "halt_after": str(w.halt_after), "pause_s": w.pause.total_seconds(),
                         "approve_after_canary": w.approve_after_canary, "backup": "each" if spec.backup else "none"},
            "outcome": fleet_outcome(run.outcomes, run.brakes, ctx.params.dry_run),
            "counts": dict(sorted(Counter(o.state for o in run.outcomes).items())),
            "waves": run.waves, "brakes": [b.to_xcom() for b in run.brakes],
            "members": [o.to_xcom() for o in sorted(run.outcomes, key=lambda o: (o.wave, o.member))]}


def keep_fleet_record(ctx: Deployment, spec: FleetSpec, document: dict[str, Any]) -> tuple[str, str]:
    """The fleet record in the store at PREFIX/fleets/<fleet>/runs/<run id>/fleet.json; (uri, sha256)."""
    bucket, key = parse_s3_uri(f"{fleet_prefix(ctx, spec.name)}/fleet.json")
    uri, digest = put_document(ctx, bucket, key, document)
    ctx.log.info("fleet record of %s kept at %s sha256 %s", quote(ctx.run.run_id), uri, digest)
    return uri, digest
