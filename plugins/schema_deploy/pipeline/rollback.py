"""The rollback pipeline, one function per step, free of any orchestrator.

    preflight  →  [approval]  →  safety_backup  →  rollback  →  verify  →  record

Two ways back. `backup`: restore a backup over the target — the one named, or the
newest complete and verified backup of that target's database. `down_migrations`:
run the down.sql of the newest applied migrations. For the down path preflight is
the only step that reads the migrations folder: it plans the downs from the
declared bundle and freezes that bundle into a release in the store, as the
deploy's preflight does; the rollback and its verification load the release by
its URI (its sha256 checked), so the down.sql that runs is the one that was
planned and approved, on any worker, whatever the folder holds by then.

A production target needs its database name typed (checked before anything else)
and a human approval; retries are safe: preflight only reads, the safety backup
starts clean, a restore is all or nothing, and the down migrations undo only what
preflight chose and is still applied.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from schema_deploy.bundle.discover import load_declared
from schema_deploy.errors import UsageError
from schema_deploy.ops import release as releases
from schema_deploy.ops.release import Release
from schema_deploy.pipeline.deploy import load_release, release_fact
from schema_deploy.pipeline.errors import ConfirmationMismatch, NoBackupToRestore, RollbackVerificationFailed
from schema_deploy.pipeline.record import RECORD_VERSION, chain_into, decision_of, failed_at, keep_document
from schema_deploy.pipeline.results import (AuditRecord, BackupRef, BackupResult, ChainRowRef, ReleaseRef,
                                            RollbackPlan, RollbackResult, RollbackVerification)
from schema_deploy.pipeline.target import PRODUCTION, STAGING, Deployment, Target

BACKUP, DOWN = "backup", "down_migrations"
METHODS = (BACKUP, DOWN)
# The rollback pipeline's steps, as the record names them (the orchestrator maps its task ids here).
STEPS = ("preflight", "approval_needed", "approval", "safety_backup", "rollback", "verify")
ENVIRONMENTS = (STAGING, PRODUCTION)  # what a rollback can target, one per run


@dataclass(frozen=True)
class RollbackRequest:
    """The rollback's choices (the trigger form, or a caller's arguments); the bundle is the
    deployment's (`RunParams.bundle`)."""

    method: str = BACKUP
    backup_uri: str = ""  # empty: the newest verified backup of the target's database
    steps: int = 1  # down_migrations: how many applied migrations to undo, newest first
    confirm_database: str = ""  # a production target's database name, typed by the operator
    force: bool = False  # restore with other sessions connected
    allow_other_source: bool = False  # restore a backup of another environment or database (recorded, announced)

    @classmethod
    def from_mapping(cls, params: dict[str, Any]) -> RollbackRequest:
        """From the trigger form."""
        return cls(method=str(params.get("method") or BACKUP), backup_uri=str(params.get("backup_uri") or "").strip(),
                   steps=int(params.get("steps") or 1),
                   confirm_database=str(params.get("confirm_database") or "").strip(),
                   force=bool(params.get("force", False)),
                   allow_other_source=bool(params.get("allow_other_source") or False))

    @classmethod
    def or_defaults(cls, params: dict[str, Any]) -> RollbackRequest:
        """From the trigger form for the attempt's record: a field the form would not have let through
        (not a number where one belongs) is recorded as the defaults."""
        try:
            return cls.from_mapping(params)
        except (TypeError, ValueError):
            return cls()

    def check(self, environment: str) -> None:
        """The rules across the form's fields, which Airflow's form cannot check (it validates each
        field alone and sends an empty field as None), checked by the first task and again by
        preflight, so any caller gets them: a production rollback needs its confirmation (its exact
        value is checked by preflight, which knows the database), and a field of one method is not
        given with the other. Nothing was changed when this refuses."""
        if self.method not in METHODS:
            raise UsageError(f"'Method' (method) is {self.method!r}, not one of {', '.join(METHODS)}. Nothing was "
                             "changed; trigger again with one of them.")
        if environment == PRODUCTION and not self.confirm_database:
            raise UsageError("'Confirm the database name' (confirm_database) is empty, but 'Environment' "
                             "(environment) is production: a production rollback needs the production database's "
                             "name typed there. Nothing was changed; trigger again with it.")
        if self.method == DOWN and self.backup_uri:
            raise UsageError(f"'Backup URI' (backup_uri) is {self.backup_uri!r}, but 'Method' (method) is {DOWN}, "
                             f"which restores no backup. Nothing was changed; trigger again with backup_uri empty "
                             f"to run down migrations, or with method = {BACKUP} to restore that backup.")


# --- the environment ------------------------------------------------------------------

def chosen_environment(params: dict[str, Any], group: str | None = None) -> str:
    """The environment the trigger form chose, refused unless it is one of `ENVIRONMENTS`. `group`:
    the environment the asking step belongs to (the orchestrator runs each environment's steps
    apart); a step of the other one is refused, so it never reaches that environment's database."""
    env = params.get("environment")
    if env not in ENVIRONMENTS:
        raise UsageError(f"environment {env!r} is not one of {', '.join(ENVIRONMENTS)}. Nothing was changed; "
                         f"trigger again with one of them.")
    if group is not None and group != env:
        raise UsageError(f"this run rolls back {env} (the form's environment), not {group}: a {group} step does "
                         f"not run in it. Nothing was changed; trigger a run with environment = {group} to roll "
                         f"back {group}.")
    return env


# --- preflight -----------------------------------------------------------------------

def preflight(ctx: Deployment, target: Target, request: RollbackRequest) -> RollbackPlan:
    """Confirmation first (a production target's database name, typed exactly), then the backup to
    restore, or the down migrations planned and frozen into a release. Changes no database."""
    request.check(target.role)  # the form's rules across fields, as choose_environment checked them
    database = target.database
    if target.role == PRODUCTION and request.confirm_database != database:
        raise ConfirmationMismatch(request.confirm_database, database)
    if request.method not in METHODS:
        raise UsageError(f"method {request.method!r} is not one of {', '.join(METHODS)}.")
    ctx.cfg.bundle_path(ctx.params.bundle)  # an undeclared bundle is refused whichever the method
    backup, migrations, release = None, [], None
    if request.method == BACKUP:
        backup = choose_backup(ctx, target, request.backup_uri, allow_other_source=request.allow_other_source)
        what = f"restore {backup.uri}"
    else:
        frozen, migrations = plan_downs(ctx, target, request.steps)
        release = ReleaseRef(**frozen.summary())
        what = f"down migrations of {', '.join(m['name'] for m in migrations)} (release {frozen.short})"
    plan = RollbackPlan(environment=target.name, database=database, method=request.method,
                        needs_approval=target.role == PRODUCTION, backup=backup, migrations=migrations,
                        release=release, confirmed=request.confirm_database, force=request.force, run=ctx.run.facts())
    facts = {"target": f"{target.name} ({database})", **other_source_fact(plan, done=False), "how": what,
             "who": ctx.run.triggered_by, "run": ctx.run.run_id}
    sent = ctx.notify("rollback_started", {**facts, "release": release_fact(release)} if release else facts, None)
    return dataclasses.replace(plan, approval_body=approval_body(plan), slack_ts=sent.get("ts"))


def choose_backup(ctx: Deployment, target: Target, uri: str = "", *, allow_other_source: bool = False
                  ) -> BackupRef:
    """The named backup, or the newest complete and verified one of this target's database; every
    candidate is logged. A backup taken of another environment or database (or of one its manifest
    does not record) is refused (`RestoreFromOtherSource`) unless `allow_other_source`: then the
    choice, who asked and from where to where, goes into the plan (`other_source`)."""
    from schema_deploy.backups.restore import check_source, load_backup
    from schema_deploy.backups.store import list_backups

    s3, root, log, database = ctx.store.s3, ctx.store.root, ctx.log, target.database
    mine = [b for b in list_backups(s3, root) if b.environment == target.name and b.database == database]
    log.info("backups of %s database %s under %s (oldest first):", target.name, database, root)
    for b in mine:
        m = b.manifest or {}
        log.info("  %s  %s  %s bytes  %s rows  sha256 %s  run %s  verified: %s", b.created.isoformat(), b.state,
                 m.get("size", b.dump_size), m.get("total_rows"), (m.get("sha256") or "?")[:16], m.get("run_id"),
                 (b.verification or {}).get("method") if b.verified else "no")
    if uri:
        _, _, manifest = load_backup(s3, uri)
    else:
        verified = [b for b in mine if b.verified]
        if not verified:
            raise NoBackupToRestore(target.name, database, root, len(mine))
        uri, manifest = verified[-1].uri, verified[-1].manifest or {}
    source = check_source(uri, manifest, target.name, database, allow_other_source=allow_other_source,
                          log=log.warning)
    log.info("chosen: %s", uri)
    other = ({**source.as_dict(), "asked_by": ctx.run.triggered_by, "run": ctx.run.run_id,
              "planned": source.fact(done=False)} if source.other else None)
    return BackupRef(uri=uri, sha256=manifest.get("sha256"), size=manifest.get("size"),
                     started_at=manifest.get("started_at"), run_id=manifest.get("run_id"),
                     row_counts=manifest.get("row_counts") or {}, total_rows=manifest.get("total_rows"),
                     verified=bool((manifest.get("verification") or {}).get("ok")),
                     source=source.as_dict()["from"], other_source=other)


def other_source_fact(plan: RollbackPlan | dict[str, Any], done: bool = True) -> dict[str, str]:
    """The Slack fact of a restore of another environment's or database's data, asked for explicitly
    (empty when the backup is the target's own); `plan`: the result, or a record's copy of it."""
    if isinstance(plan, dict):
        other = (plan.get("backup") or {}).get("other_source")
    else:
        other = plan.backup.other_source if plan.backup else None
    if not other:
        return {}
    said = other["fact"] if done else other.get("planned", other["fact"])
    return {"data from another environment or database": f"{said}, asked for by {other.get('asked_by') or '?'} "
                                                         "(allow_other_source)"}


def plan_downs(ctx: Deployment, target: Target, steps: int) -> tuple[Release, list[dict[str, Any]]]:
    """The `steps` newest applied migrations and their down steps, planned from the declared bundle
    (refusals raise here: a failed ledger, no down.sql); then that bundle, down.sql included, is
    frozen into a release in the store. Returns (the stored release, the migrations, newest first)."""
    from schema_deploy.engine import down
    from schema_deploy.pg.db import connect
    from schema_deploy.state import ledger
    from schema_deploy.state.status import compute_status

    if steps < 1:
        raise UsageError(f"steps must be 1 or more (got {steps}).")
    log, name = ctx.log, ctx.params.bundle or ctx.cfg.default_bundle
    bundle = load_declared(ctx.cfg, name)
    with connect(target.url) as conn:
        chosen = down.choose(bundle, compute_status(bundle, ledger.read_rows(conn)), steps=steps, to=None)
        plans = down.plan_downs(conn, chosen, online=True)
    if not plans:
        raise UsageError(f"nothing to roll back: no migration is applied on {target.name} database "
                         f"{target.database!r}.")
    release = releases.store(ctx.store.s3, releases.freeze(bundle, name), ctx.store.root, ctx.store.sse)
    log.info("release %s frozen: %s (sha256 %s); the rollback runs its down.sql", release.short, release.uri,
             release.digest)
    migrations = []
    for mp in plans:
        log.info("down %s (%s): %d steps", mp.migration.name, mp.migration.path, len(mp.steps))
        migrations.append({"name": mp.migration.name, "down_sql": str(mp.migration.path),
                           "down_sha256": mp.migration.checksum,
                           "steps": [{"number": s.number, "transactional": s.transactional,
                                      "sql": [p.sql for p in s.statements]} for s in mp.steps]})
    return release, migrations


def approval_body(plan: RollbackPlan) -> str:
    """Markdown for the approval page: what will be put back, and from what."""
    lines = [f"### Roll back {plan.environment} database `{plan.database}`"]
    if plan.method == BACKUP:
        b = plan.backup or BackupRef(uri="")
        lines += [f"Restore backup `{b.uri or None}` (taken {b.started_at}, sha256 "
                  f"`{(b.sha256 or '?')[:16]}…`, {b.total_rows} rows, verified: {b.verified}).",
                  "Everything written since that backup is replaced. A safety backup of the current state is "
                  "taken first."]
        if b.other_source:
            other = b.other_source
            lines.append(f"**Data from another environment or database**: {other.get('planned', other['fact'])}, "
                         f"asked for by {other.get('asked_by') or '?'} (allow_other_source).")
    else:
        release = plan.release
        lines.append(f"Down migrations from release `{release.short if release else '?'}` (bundle "
                     f"{release.bundle if release else '?'}, sha256 `{release.sha256 if release else '?'}`), "
                     "newest first:")
        lines += [f"* **{m['name']}** — {len(m['steps'])} steps from `{m['down_sql']}` "
                  f"(sha256 `{m['down_sha256'][:16]}…`)" for m in plan.migrations]
    return "\n".join(lines)


# --- safety backup --------------------------------------------------------------------

def safety_backup(ctx: Deployment, target: Target, plan: RollbackPlan) -> BackupResult:
    """pg_dump of the target as it is now, streamed to the store and verified: the way back from the rollback."""
    from schema_deploy.backups.dump import backup as take_backup
    from schema_deploy.backups.errors import BackupVerificationFailed
    from schema_deploy.backups.restore import verify_backup

    cfg, log = ctx.cfg, ctx.log
    if plan.release:
        load_release(ctx, plan)  # a release gone or altered stops the run before anything else
    result = take_backup(ctx.store.s3, target.url, ctx.store.root, environment=target.name,
                         run_id=f"{ctx.run.run_id}-before-rollback", sse=cfg.backup_sse,
                         kms_key_id=cfg.backup_kms_key_id, log=log.info)
    check = verify_backup(ctx.store.s3, result.uri, restore_check=cfg.backup_restore_check, admin_url=target.url,
                          log=log.info)
    if not check.ok:
        raise BackupVerificationFailed(result.uri, check.problems)
    log.info("safety backup %s (%d bytes, sha256 %s) verified by %s", result.uri, result.size, result.sha256,
             check.method)
    return BackupResult(uri=result.uri, sha256=result.sha256, size=result.size,
                        rows=sum(result.row_counts.values()), verified=check.method)


# --- rollback -------------------------------------------------------------------------

def rollback(ctx: Deployment, target: Target, plan: RollbackPlan) -> RollbackResult:
    """Restore the chosen backup over the target (streamed, clean, one transaction), or run the
    chosen down migrations from the release."""
    if plan.method == BACKUP:
        from schema_deploy.backups.restore_over import restore_over

        chosen = plan.restoring
        done = restore_over(ctx.store.s3, chosen.uri, target.url,
                            confirm_production=plan.confirmed or None, environment=target.role, force=plan.force,
                            log=ctx.log.info, allow_other_source=bool(chosen.other_source))
        return RollbackResult(method=BACKUP, **done.as_dict())
    return run_downs(ctx, target, plan)


def run_downs(ctx: Deployment, target: Target, plan: RollbackPlan) -> RollbackResult:
    """Undo the migrations preflight chose that are still applied, with the release's down.sql
    (a retry never undoes one more)."""
    from schema_deploy.engine.down import down
    from schema_deploy.engine.errors import RollbackRefused
    from schema_deploy.pg.db import connect
    from schema_deploy.pg.retry import Settings
    from schema_deploy.state import ledger
    from schema_deploy.state.status import APPLIED, compute_status

    cfg, params, log = ctx.cfg, ctx.params, ctx.log
    release = load_release(ctx, plan)
    bundle = release.to_bundle()
    chosen = [m["name"] for m in plan.migrations]
    with connect(target.url) as conn:
        states = compute_status(bundle, ledger.read_rows(conn)).states
    applied = [s.name for s in states if s.state == APPLIED]
    todo = [n for n in chosen if n in applied]
    if not todo:
        log.info("already rolled back: %s (an earlier try finished)", ", ".join(chosen))
        return RollbackResult(method=DOWN, already_rolled_back=chosen, release=release.digest)
    if applied[-len(todo):] != list(reversed(todo)):
        raise RollbackRefused(f"the ledger changed since preflight: the newest applied migrations are now "
                              f"{', '.join(applied[-len(todo):])}, not {', '.join(reversed(todo))}. Nothing more "
                              "was changed; trigger a new rollback run.")
    settings = Settings(lock_timeout_ms=cfg.lock_timeout_ms, max_lock_timeout_ms=cfg.max_lock_timeout_ms,
                        lock_retries=cfg.lock_retries if params.lock_retries is None else params.lock_retries)
    result = down(target.url, bundle, steps=len(todo), settings=settings, online=True, log=log.info)
    log.info("%s: rolled back %s with the down.sql of release %s", target.name, ", ".join(result.names),
             release.short)
    return RollbackResult(method=DOWN, rolled_back=result.as_dict()["rolled_back"],
                          already_rolled_back=[n for n in chosen if n not in todo], release=release.digest)


# --- verify ---------------------------------------------------------------------------

def ledger_states(rows: list[Any]) -> dict[str, str]:
    """Each migration's state as the ledger alone says it (a restore has no release to compare with)."""
    return {r.migration_name: "applied" if r.applied else "failed" if r.failed else "rolled back" for r in rows}


def verify(ctx: Deployment, target: Target, plan: RollbackPlan,
           safety: BackupResult | None = None) -> RollbackVerification:
    """Row counts equal the backup's manifest (restore), the undone migrations pending in the release's
    terms (down), no INVALID index; the schema fingerprint and the ledger's states are recorded. A failure
    names `safety`, the backup taken before the rollback, as the way back."""
    from schema_deploy.pg.db import connect
    from schema_deploy.pg.fingerprint import fingerprint_digest, schema_fingerprint
    from schema_deploy.pg.tools import compare_counts
    from schema_deploy.state import ledger
    from schema_deploy.state.status import PENDING, compute_status

    log = ctx.log
    bundle = load_release(ctx, plan).to_bundle() if plan.method == DOWN else None
    problems: list[str] = []
    counts: dict[str, int] = {}
    with connect(target.url) as conn:
        fingerprint = fingerprint_digest(schema_fingerprint(conn))
        rows = ledger.read_rows(conn)
        invalid = [r[0] for r in conn.execute("SELECT indexrelid::regclass::text FROM pg_index WHERE NOT indisvalid")]
        if plan.method == BACKUP:
            # The audit trail keeps the rows recorded since the backup (put back on purpose): not compared.
            expected = {t: n for t, n in (plan.backup.row_counts if plan.backup else {}).items()
                        if not t.startswith("schema_deploy.")}
            counts, diffs = compare_counts(conn, expected)
            problems += [f"row count {d}" for d in diffs]
    if bundle is not None:
        states = {s.name: s.state for s in compute_status(bundle, rows).states}
        problems += [f"{m['name']} is {states.get(m['name'])}, not pending" for m in plan.migrations
                     if states.get(m["name"]) != PENDING]
    else:
        states = ledger_states(rows)
    problems += [f"index {name} is INVALID" for name in invalid]
    for name, state in states.items():
        log.info("ledger: %s %s", name, state)
    log.info("schema fingerprint sha256 %s", fingerprint)
    if problems:
        raise RollbackVerificationFailed(target.name, problems, safety.uri if safety else None)
    return RollbackVerification(environment=target.name, fingerprint_sha256=fingerprint, ledger=states,
                                problems=problems, row_counts=counts)


# --- record ---------------------------------------------------------------------------

def outcome_of(results: dict[str, Any], states: dict[str, str | None]) -> str:
    """How the run ended, from its steps' states (keyed by `STEPS`) and the approval."""
    approval = results.get("approval") or {}
    return ("rolled back and verified" if states.get("verify") == "success"
            else "rejected" if approval and not approval.get("approved")
            else "failed" if any(s in ("failed", "upstream_failed") for s in states.values()) else "incomplete")


# The steps of a rollback run in order, the orchestrator's own first ones included (a refusal there
# leaves a record too, see `record_attempt`).
ATTEMPT_STEPS = ("choose_environment", "check_environment", *STEPS)


def rollback_record(ctx: Deployment, target: Target | str, request: RollbackRequest, results: dict[str, Any],
                    states: dict[str, str | None], task_ids: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON-able record of a rollback run; `results`: step name -> its result's to_xcom() (or None);
    `target`: the Target, or only its environment's name when no step reached it; `task_ids`: step
    name -> the orchestrator's task id, to name a failed task as its log does."""
    plan = {k: v for k, v in (results.get("preflight") or {}).items()
            if k not in ("type", "version", "slack_ts", "approval_body")}
    release = plan.get("release") or {}
    environment = target if isinstance(target, str) else target.name
    decision = decision_of(results.get("approval"), states, approval_error=results.get("approval_error"),
                           order=ATTEMPT_STEPS, task_ids=task_ids)
    ran = states.get("rollback") in ("success", "failed")
    return {
        "record_version": RECORD_VERSION,
        "kind": "rollback",
        "outcome": outcome_of(results, states),
        "decision": decision,
        "failed_at": failed_at(states, ATTEMPT_STEPS, task_ids),
        "targets": {environment: "changed" if ran else f"nothing changed ({decision})" if results.get("approval")
                    else "nothing changed"},
        "run": {**ctx.run.facts(), "url": ctx.run.url, "started": ctx.run.started},
        "params": {"environment": environment, "bundle": ctx.params.bundle or ctx.cfg.default_bundle,
                   **dataclasses.asdict(request)},
        "release": {k: release.get(k) for k in ("uri", "sha256", "short", "bundle", "source")} if release else None,
        "plan": plan,
        "approval": results.get("approval"),
        "safety_backup": results.get("safety_backup"),
        "rollback": results.get("rollback"),
        "verification": results.get("verify"),
        "failed_tasks": sorted(t for t, s in states.items() if s in ("failed", "upstream_failed")),
        "task_states": states,
    }


def record(ctx: Deployment, target: Target, request: RollbackRequest, results: dict[str, Any],
           states: dict[str, str | None], task_ids: dict[str, str] | None = None) -> AuditRecord:
    """Kind 'rollback' chained into the target's audit trail when the rollback ran or a human decided
    on it (a rejection is in the target's history, nothing changed), and the record kept in the
    store beside the safety backup (or under audit/) whatever happened, a refusal included; Slack
    hears that it is done when verification passed, and "rejected by X: reason" on a rejection.
    Idempotent: a retry finds its row in the chain and writes the same document."""
    record_ = rollback_record(ctx, target, request, results, states, task_ids)
    ran = states.get("rollback") in ("success", "failed")
    chained = [chain_into(ctx, target, "rollback", record_)] if ran or results.get("approval") else []
    safety = (results.get("safety_backup") or {}).get("uri")
    uri, digest = keep_document(ctx, record_, chained, safety, kind="rollback")
    if record_["outcome"] == "rejected":
        ctx.notify("rollback_rejected", {"target": f"{target.name} ({record_['plan'].get('database')})",
                                         "decision": record_["decision"], "changed": "nothing"}, None)
    if record_["outcome"] == "rolled back and verified":
        verification = results.get("verify") or {}
        ctx.notify("rollback_done", {
            "target": f"{target.name} ({record_['plan'].get('database')})", **other_source_fact(record_["plan"]),
            "method": record_["plan"].get("method"),
            "ledger": ", ".join(f"{n}: {s}" for n, s in verification.get("ledger", {}).items()),
            "schema": f"fingerprint {verification.get('fingerprint_sha256', '?')[:16]}…",
            "safety backup": safety}, None)
    return AuditRecord(outcome=record_["outcome"], s3=uri, sha256=digest,
                       chain={r.environment: ChainRowRef(r.id, r.row_hash) for r in chained},
                       release=(record_["release"] or {}).get("sha256") or "")


def record_attempt(ctx: Deployment, environment: str, request: RollbackRequest, results: dict[str, Any],
                   states: dict[str, str | None], task_ids: dict[str, str] | None = None) -> AuditRecord:
    """The record of a rollback attempt refused before its environment's steps could record it (the
    environment or the form's fields refused): kept in the store under audit/ only, no database
    opened, no chain (nothing changed, nobody decided)."""
    record_ = rollback_record(ctx, environment, request, results, states, task_ids)
    uri, digest = keep_document(ctx, record_, [], None, kind="rollback")
    return AuditRecord(outcome=record_["outcome"], s3=uri, sha256=digest, chain={})
