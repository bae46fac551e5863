"""The deployment pipeline, one function per step, free of any orchestrator.

    preflight  →  backup  →  apply (staging)  →  gate  →  [approval]  →  window  →  apply (production)
               →  verify  →  record

`apply (production)` is one step here, running a declared backfill before its contract migration;
an orchestrator may run it as three (`expand` → `backfill` → `contract`), so that a long backfill is
a step of its own, retried and deferred on its own.

Each step takes the run's `Deployment` (settings, store, notifier, log), the
`Target`s it works on and the typed results of earlier steps, and returns a
frozen result (`results.py`). Preflight is the only step that reads the
migrations folder: it freezes the bundle into a release in the store, and every
later step loads that release by its URI (checking its sha256), so any worker
applies exactly what was planned and approved. Preflight itself is four parts, so
that no part opens two databases: the bundle (no database) → a survey of each
target (its own database only) → the release with both plans (no database).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from schema_deploy.bundle.discover import load_declared
from schema_deploy.config.settings import ROOT
from schema_deploy.lint.errors import LintBlocked
from schema_deploy.ops import release as releases
from schema_deploy.ops.errors import ReleaseInvalid
from schema_deploy.ops.release import Release
from schema_deploy.pipeline.errors import DeployVerificationFailed, NothingToDeploy
from schema_deploy.pipeline.results import (ApplyResult, BackfillPhase, BackupResult, BundleCheck, GateResult,
                                            PreflightResult, ReleaseRef, StagingGate, TargetSurvey, Verification,
                                            WindowSlot)
from schema_deploy.pipeline.target import Deployment, Target
from schema_deploy.state.errors import LedgerBlocked


def load_release(ctx: Deployment, pre: PreflightResult | BundleCheck) -> Release:
    """The run's release from the store (its bytes proven against its name). When this machine's
    migrations folder differs from it, the log says which files, and the release is used. Loaded
    once per Deployment: its bytes, once proven, cannot change."""
    if pre.release_uri in ctx.loaded:
        return ctx.loaded[pre.release_uri]
    release = releases.load(ctx.store.s3, pre.release_uri)
    try:
        folder = ctx.cfg.bundle_path(release.bundle)
    except Exception:  # noqa: BLE001 - the bundle is not declared on this worker: compare with its source
        folder = None
    changes = releases.changes_on_disk(release, folder)
    if changes:
        ctx.log.warning("the migrations folder here differs from release %s; applying the release, not the folder:"
                        "\n%s", release.short, "\n".join(f"  - {c}" for c in changes))
    ctx.log.info("release %s (%s, %d migrations) loaded from %s", release.short, release.bundle,
                 len(release.files), release.uri)
    ctx.loaded[pre.release_uri] = release
    return release


def release_fact(release: ReleaseRef | dict[str, Any]) -> str:
    """How every message names the release: its short digest, then where it is (from a result's
    `ReleaseRef`, or a record's copy of it)."""
    return f"{release.get('short', '?')} ({release.get('uri', '?')})"


def naming_release(facts: dict[str, Any], release: ReleaseRef | dict[str, Any] | None) -> dict[str, Any]:
    """A message's facts with the run's release, for notifiers that wrap the run's messages (those
    of the steps name it already; approvals, dry runs and failures are raised outside them)."""
    return facts if not release or "release" in facts else {**facts, "release": release_fact(release)}


# --- preflight -----------------------------------------------------------------------

def preflight(ctx: Deployment, staging: Target, production: Target, source: Release | None = None) -> PreflightResult:
    """Lint, both ledgers, staging and production schemas must match, production prechecks, the
    plan per target; then the release is frozen into the store. Changes no database.

    The composition of the four parts the DAG runs as separate tasks (each target's survey on a
    worker holding only that target's connection): `preflight_bundle`, `preflight_staging`,
    `preflight_production`, `preflight_release`. Between them the results travel as XCom does.
    """
    checked = preflight_bundle(ctx, source)
    surveys = [preflight_staging(ctx, staging, checked), preflight_production(ctx, production, checked)]
    return preflight_release(ctx, checked, *surveys)


def preflight_bundle(ctx: Deployment, source: Release | None = None) -> BundleCheck:
    """Preflight's first part, with no database: the run's choices checked, the declared bundle read
    and linted, and frozen into the store as a release without plans, which each target's survey
    loads (hash-checked). With `source` (a release from `release create`), that release is the bundle.

    Blocking findings are counted here but judged against production's plan (`preflight_production`):
    whether a finding blocks depends on which migrations are pending there and how the plan rewrites them.
    """
    from schema_deploy.lint.engine import lint_bundle

    cfg, params, log = ctx.cfg, ctx.params, ctx.log
    params.check(cfg, ctx.run.run_type)
    if source is not None:
        bundle, release = source.to_bundle(), source
        ctx.loaded.setdefault(source.uri, source)  # loaded and proven by the caller
        log.info("bundle from release %s (%s), not from a folder", source.short, source.uri)
    else:
        name = params.bundle or cfg.default_bundle
        bundle = load_declared(cfg, name)
        release = releases.store(ctx.store.s3, releases.freeze(bundle, name, verify=releases.verify_files(
            cfg.verify_dir)), ctx.store.root, ctx.store.sse)
        log.info("bundle %s (%d migrations) frozen without plans: %s", name, len(bundle.migrations), release.uri)
    findings = lint_bundle(bundle, config=cfg.lint)
    lint = {"errors": sum(f.blocking for f in findings),
            "warnings": sum(f.severity == "warning" and not f.suppressed for f in findings)}
    return BundleCheck(release=ReleaseRef(**release.summary()), lint=lint, given=source is not None)


def survey_target(ctx: Deployment, target: Target, release: Release, bundle: Any,
                  extra: Any = None, plan_role: str | None = None) -> TargetSurvey:
    """One target's ledger (refused when a migration failed or drifted), fingerprint and plan of the
    release; `extra(conn, plan)` adds the production facts. The plan is checked against the release's
    plan for `plan_role` (default: the target's name; a fleet's members share one)."""
    from schema_deploy.engine.apply import load_state
    from schema_deploy.pg.db import connect
    from schema_deploy.pg.fingerprint import schema_fingerprint
    from schema_deploy.plan.planner import check_applyable, plan_for

    with connect(target.url) as conn:
        status, interrupted = load_state(conn, bundle)
        check_applyable(status, bundle)
        ctx.log.info("%s: pending %s", target.name, ", ".join(status.pending) or "nothing")
        fingerprint = schema_fingerprint(conn)
        plan = plan_for(conn, bundle, status, interrupted, online=ctx.params.online)
        for warning in plan.warnings:
            ctx.log.warning("%s: %s", target.name, warning)
        releases.check_plan(release, plan_role or target.name, plan)  # a given release's plans must hold now
        facts = extra(conn, plan) if extra is not None else {}
    return TargetSurvey(env=target.name, release=release.digest, pending=list(status.pending),
                        fingerprint=fingerprint, plan=releases.plan_summary(plan), **facts)


def preflight_staging(ctx: Deployment, staging: Target, checked: BundleCheck) -> TargetSurvey:
    """Staging before the change, from the release (never a folder): deploy.yaml's schema.prisma
    check when configured (a scratch database on staging's server, the release's bytes), then its
    ledger, schema fingerprint and plan. Opens staging only."""
    release = load_release(ctx, checked)
    bundle = release.to_bundle()
    if ctx.cfg.prisma.schema is not None:
        check_prisma_schema(ctx, bundle, staging, on_disk=False)
    return survey_target(ctx, staging, release, bundle)


def preflight_production(ctx: Deployment, production: Target, checked: BundleCheck) -> TargetSurvey:
    """Production before the change: its ledger, fingerprint and plan, the blocking lint findings
    that plan leaves (LintBlocked), the data prechecks (orphans, duplicates, NULLs) and the sizes of
    the tables it touches. Opens production only."""
    from schema_deploy.lint.engine import lint_bundle
    from schema_deploy.plan.planner import table_sizes, unfixed_findings
    from schema_deploy.plan.prechecks import require_clean

    release = load_release(ctx, checked)
    bundle = release.to_bundle()

    def production_facts(conn: Any, plan: Any) -> dict[str, Any]:
        findings = lint_bundle(bundle, config=ctx.cfg.lint)
        unfixed = unfixed_findings(findings, plan)
        if unfixed:
            raise LintBlocked(unfixed)
        planned = {mp.migration.name for mp in plan.migrations}
        for f in findings:  # files this run does not deploy: history, said once, never a reason to stop
            if f.file_problem and f.migration not in planned:
                ctx.log.warning("%s is not deployed by this run, and could not be as written: %s",
                                f.migration, f.render())
        checked = require_clean(conn, plan, lock_settings(ctx), waive=ctx.params.waive_prechecks or None,
                                log=ctx.log.warning)
        prechecks = [r.as_dict() for r in checked]
        for r in checked:
            ctx.log.info("%s", r.describe())
        return {"prechecks": prechecks, "table_sizes": table_sizes(conn, plan.tables())}

    return survey_target(ctx, production, release, bundle, production_facts)


def preflight_release(ctx: Deployment, checked: BundleCheck, staging: TargetSurvey,
                      production: TargetSurvey) -> PreflightResult:
    """Preflight's last part, with no database: from both surveys, nothing to deploy (a skip), or
    schemas that differ before the change (LedgerBlocked); else the release with both plans is
    frozen into the store and the run announced. A given release planned for both targets, whose
    plans still hold, is the release as it is."""
    from schema_deploy.pg.fingerprint import diff_fingerprints

    cfg, params, log = ctx.cfg, ctx.params, ctx.log
    planless = load_release(ctx, checked)
    for survey in (staging, production):
        if survey.release != planless.digest:  # a part re-run alone, after the bundle was frozen again
            raise ReleaseInvalid(planless.uri or planless.short, f"the survey of {survey.env} read release "
                                 f"{survey.release[:12]}, not this one", "Clear the run from preflight_bundle, "
                                 "so that both targets are surveyed with the same release.")
    pending = {staging.env: staging.pending, production.env: production.pending}
    if not any(pending.values()):
        ctx.notify("nothing_pending", {"migrations": f"all {len(planless.files)} applied on "
                                                     f"{staging.env} and {production.env}",
                                       "run": ctx.run.run_id, "triggered by": ctx.run.triggered_by}, None)
        raise NothingToDeploy(len(planless.files), str(planless.to_bundle().root), [staging.env, production.env])
    diff = diff_fingerprints(staging.fingerprint, production.fingerprint, staging.env, production.env)
    if diff and staging.pending == production.pending:
        raise LedgerBlocked(f"{staging.env} and {production.env} schemas differ before the change, so a staging "
                            "rehearsal would prove nothing:\n" + "\n".join(f"- {d}" for d in diff[:30])
                            + f"\nBring {staging.env} to {production.env}'s schema (restore it from a production "
                              "backup), then run preflight again.")
    plans, prechecks, sizes = {staging.env: staging.plan, production.env: production.plan}, production.prechecks, \
        production.table_sizes
    # Production's survey raised LintBlocked for any blocking finding its plan leaves: the rest it fixes.
    lint = {"errors": checked.lint["errors"], "fixed_by_plan": checked.lint["errors"],
            "warnings": checked.lint["warnings"]}
    if checked.given and all(planless.plan(env) is not None for env in plans):
        release = planless  # planned for these targets already, and the plans hold: it is the release
        log.info("release %s is deployed as given: %s", release.short, release.uri)
    else:
        derived = {**planless.source, "release": planless.uri} if checked.given else planless.source
        frozen = releases.freeze(planless.to_bundle(), planless.bundle, lint=lint, prechecks=prechecks, plans=plans,
                                 source=derived, verify=planless.verify or releases.verify_files(cfg.verify_dir))
        release = releases.store(ctx.store.s3, frozen, ctx.store.root, ctx.store.sse)
        log.info("release %s frozen: %s (sha256 %s)", release.short, release.uri, release.digest)
    migrations = plans[production.env]["migrations"]
    for mp in migrations:
        log.info("plan %s (%s): %d steps, %d rewritten for online mode", mp["name"], mp["checksum"][:12],
                 len(mp["steps"]), sum(bool(s["rewritten"]) for s in mp["steps"]))
    names = ", ".join(m["name"] for m in migrations) or "nothing pending"
    sent = ctx.notify("started", {"migrations": names, "release": release_fact(release.summary()),
                                  "who": ctx.run.triggered_by,
                                  "where": f"{staging.env}, then {production.env}" if not params.dry_run
                                  else f"{staging.env} only (dry run)",
                                  "online": params.online, "run": ctx.run.run_id}, None)
    return PreflightResult(release=ReleaseRef(**release.summary()), migrations=migrations,
                           online=params.online, pending=pending, lint=lint, prechecks=prechecks, table_sizes=sizes,
                           production_table_bytes=sum(v["bytes"] for v in sizes.values()), run=ctx.run.facts(),
                           slack_ts=sent.get("ts"))


def check_prisma_schema(ctx: Deployment, bundle: Any, staging: Target, *, on_disk: bool) -> None:
    """deploy.yaml's `prisma.schema` must describe what the migrations create (`prisma migrate diff`
    with a scratch database on staging's server); skipped, once said, where Prisma is not installed.
    A bundle from a release is written to a scratch folder first (its bytes, not the folder's)."""
    from schema_deploy.plan.prisma_check import require_schema_matches

    schema, cli = ctx.cfg.prisma.schema, ctx.cfg.prisma.cli
    if on_disk:
        require_schema_matches(schema, bundle.root, staging.url, ctx.log.info, cli_dir=cli)
        return
    files = {str(m.path.relative_to(bundle.root)): m.raw for m in bundle.migrations}
    with releases.scratch_folder("migrations", {**files, "migration_lock.toml": b'provider = "postgresql"\n'}) as folder:
        require_schema_matches(schema, folder, staging.url, ctx.log.info, cli_dir=cli)


# --- backup ---------------------------------------------------------------------------

def backup(ctx: Deployment, target: Target, pre: PreflightResult) -> BackupResult:
    """pg_dump of the target streamed to the store, then verified (restore check per deploy.yaml)."""
    load_release(ctx, pre)  # a run whose release is gone or altered stops before anything else
    return verified_backup(ctx, target, ctx.store.root, restore_check=ctx.cfg.backup_restore_check)


def verified_backup(ctx: Deployment, target: Target, root: str, *, restore_check: bool) -> BackupResult:
    """pg_dump of `target` streamed under `root` (s3://BUCKET/PREFIX), then verified: `pg_restore
    --list`, and with `restore_check` a restore into a scratch database with row counts compared."""
    from schema_deploy.backups.dump import backup as take_backup
    from schema_deploy.backups.errors import BackupVerificationFailed
    from schema_deploy.backups.restore import verify_backup

    cfg, log = ctx.cfg, ctx.log
    result = take_backup(ctx.store.s3, target.url, root, environment=target.name, run_id=ctx.run.run_id,
                         sse=cfg.backup_sse, kms_key_id=cfg.backup_kms_key_id, log=log.info)
    check = verify_backup(ctx.store.s3, result.uri, restore_check=restore_check, admin_url=target.url,
                          log=log.info)
    if not check.ok:
        raise BackupVerificationFailed(result.uri, check.problems)
    log.info("backup %s (%d bytes, sha256 %s) verified by %s", result.uri, result.size, result.sha256, check.method)
    return BackupResult(uri=result.uri, sha256=result.sha256, size=result.size,
                        rows=sum(result.row_counts.values()), verified=check.method)


# --- apply ----------------------------------------------------------------------------

def touched_tables(pre: PreflightResult) -> list[str]:
    return sorted({t for m in pre.migrations for s in m["steps"] for t in s["locks"] if "." not in t})


def analyze(conn: Any, tables: list[str]) -> None:
    """Fresh planner statistics (ANALYZE takes SHARE UPDATE EXCLUSIVE: reads and writes go on)."""
    from psycopg import sql

    from schema_deploy.pg.db import ident

    for table in tables:
        conn.execute(sql.SQL("ANALYZE {}").format(ident(table)))


def deploying(pre: PreflightResult) -> list[str]:
    """The migrations this run deploys: pending on any target at preflight, in the bundle's order."""
    names = {n for pending in pre.pending.values() for n in pending}
    return [name for name in pre.release.names if name in names]


def tables_created(bundle: Any, names: set[str]) -> set[str]:
    """Tables the named migrations create."""
    from schema_deploy.bundle.parse import parse_migration

    return {t for m in bundle.migrations if m.name in names for s in parse_migration(m) for t in s.creates}


def measured_before(ctx: Deployment, target: Target, measure: Any) -> dict[str, Any]:
    """Row counts and query timings before the change, measured by the run's first try at this target
    and kept in the store: a retry after some steps committed compares with the state before them."""
    import json
    from urllib.parse import quote

    from botocore.exceptions import ClientError

    from schema_deploy.backups.store import not_found, parse_s3_uri

    bucket, prefix = parse_s3_uri(ctx.store.root)
    key = f"{prefix}/runs/{quote(ctx.run.run_id, safe='')}/{target.name}.before.json".lstrip("/")
    try:
        kept = json.loads(ctx.store.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        ctx.log.info("%s before: as the run's first try measured it (s3://%s/%s)", target.name, bucket, key)
        return kept
    except ClientError as exc:
        if not not_found(exc):
            raise
    before = measure()
    ctx.store.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(before, sort_keys=True).encode(),
                            ContentType="application/json", **ctx.store.sse)
    return before


def lock_settings(ctx: Deployment) -> Any:
    """deploy.yaml's lock timeouts and retries, with the run's lock_retries when it sets them."""
    from schema_deploy.pg.retry import Settings

    cfg, retries = ctx.cfg, ctx.params.lock_retries
    return Settings(lock_timeout_ms=cfg.lock_timeout_ms, max_lock_timeout_ms=cfg.max_lock_timeout_ms,
                    lock_retries=cfg.lock_retries if retries is None else retries,
                    precheck_timeout_ms=cfg.precheck_timeout_ms)


def health_gate(ctx: Deployment, target: Target) -> Any:
    """Production's health gate with deploy.yaml's `health:` thresholds (None for staging, or when the
    gate is turned off). With the run's `defer` hook (Airflow), a wait defers the task instead of sleeping;
    `health_waited_s` (and `health_wait_reason`) is what this task's earlier attempts already waited."""
    from schema_deploy.health.gate import HealthGate

    if target.name != "production" or not ctx.cfg.health.enabled:
        return None
    limit = ctx.cfg.health.max_wait_s

    def announce(what: str, reason: str) -> None:
        if what.startswith("backfill "):  # a backfill's pauses: its own first-pause message (run_backfill)
            return
        ctx.notify("health_wait", {"step": what, "waiting for": reason, "waits at most": f"{limit:.0f} s"}, None)

    return HealthGate(target.url, ctx.cfg.health, log=ctx.log.info, defer=ctx.defer,
                      waited_before_s=ctx.health_waited_s, wait_reason_before=ctx.health_wait_reason,
                      wait_what_before=ctx.health_wait_what,
                      announce=announce)


def apply(ctx: Deployment, target: Target, pre: PreflightResult, *, until_backfill: bool = False) -> ApplyResult:
    """Apply the release's pending migrations to one target with its frozen plan and lock retries.
    A declared backfill runs before the first migration after it (its contract); with `until_backfill`
    (`expand`), the apply stops before that migration instead, naming it and what it waits for.

    Before applying: exact row counts of the touched tables and the representative queries'
    timings (once per run and target), so verification can report before/after. Under the
    migration lock the plan is recomputed from the release and refused if it is not the one
    frozen for this target; tables that earlier migrations of this run created keep their plain
    forms, as at preflight, so a retry after a partial apply runs the same plan. When nothing was
    left to apply (a retry after the work was done, or a second `deploy` after the approval), the
    ledger's own durations stand in for the measured time, so the window estimate stays honest.
    """
    from schema_deploy.engine.apply import apply as run_apply
    from schema_deploy.engine.verify import query_timings, row_counts
    from schema_deploy.pg.db import connect
    from schema_deploy.plan.planner import table_sizes
    from schema_deploy.state.ledger import read_rows

    cfg, params, log = ctx.cfg, ctx.params, ctx.log
    release = load_release(ctx, pre)
    bundle = release.to_bundle()
    settings = lock_settings(ctx)
    tables, this_run, names = touched_tables(pre), set(pre.pending.get(target.name, [])), deploying(pre)

    def measure() -> dict[str, Any]:
        with connect(target.url) as conn, releases.verify_dir(release, cfg.verify_dir) as queries:
            analyze(conn, tables)
            return {"rows": row_counts(conn, tables), "query_ms": query_timings(conn, queries / "explain")}

    before = measured_before(ctx, target, measure)
    log.info("%s before: rows %s", target.name,
             ", ".join(f"{t} {n}" for t, n in sorted(before["rows"].items())) or "none counted")
    t0 = time.monotonic()
    gate = health_gate(ctx, target)
    try:
        result = run_apply(target.url, bundle, settings, online=params.online, log=log.info,
                           created=lambda status: tables_created(bundle, set(status.names("applied")) & this_run),
                           approve=lambda plan: releases.check_plan(release, target.name, plan), health=gate,
                           backfill=lambda spec: run_backfill(ctx, target, spec, release.digest, gate),
                           until_backfill=until_backfill)
    finally:
        if gate is not None:
            gate.close()
    seconds = time.monotonic() - t0
    with connect(target.url) as conn:
        size = sum(v["bytes"] for v in table_sizes(conn, tables).values())
        ledger_seconds = sum((r.finished_at - r.started_at).total_seconds() for r in read_rows(conn)
                             if r.migration_name in names and r.applied)
    retries = sum(m.lock_retries for m in result.applied)
    log.info("%s: applied %s from release %s in %.2f s (%d lock retries)", target.name,
             ", ".join(m.name for m in result.applied) or "nothing", release.short, seconds, retries)
    if result.stopped_before:
        log.info("%s: the expand phase ends before %s, which needs backfill %s done first", target.name,
                 result.stopped_before, ", ".join(result.waiting_for))
    return ApplyResult(env=target.name, seconds=round(seconds if result.applied else ledger_seconds, 3),
                       table_bytes=size, migrations=names, before=before, lock_retries=retries,
                       applied=[m.as_dict() for m in result.applied], release=release.digest,
                       backfills=result.backfills, stopped_before=result.stopped_before,
                       waiting_for=result.waiting_for)


# --- expand → backfill → contract, as three steps (the DAG's production tasks) ------------------

def expand(ctx: Deployment, target: Target, pre: PreflightResult) -> ApplyResult:
    """The expand phase: the pending migrations up to the first one that needs a backfill done (all of
    them when none does), with the gate, lock retries and resumption of `apply`."""
    return apply(ctx, target, pre, until_backfill=True)


def backfill(ctx: Deployment, target: Target, pre: PreflightResult, expanded: ApplyResult) -> BackfillPhase:
    """The backfill phase: each backfill the expand phase stopped for, in bundle order, throttled,
    checkpointed and gated (`run_backfill`). A retry goes on from each one's checkpoint; one already
    done is not run again. Nothing to do when the expand phase applied everything."""
    from schema_deploy.backfill.contract import backfills_before

    if not expanded.waiting_for:
        ctx.log.info("%s: no backfill to run (the expand phase left no migration waiting for one)", target.name)
        return BackfillPhase(env=target.name, backfills=[], seconds=0.0)
    release = load_release(ctx, pre)
    specs = {s.id: s for s in backfills_before(release.to_bundle().migrations, expanded.stopped_before or "")}
    t0, runs = time.monotonic(), []
    gate = health_gate(ctx, target)
    try:
        for backfill_id in expanded.waiting_for:
            runs.append(run_backfill(ctx, target, specs[backfill_id], release.digest, gate))
    finally:
        if gate is not None:
            gate.close()
    return BackfillPhase(env=target.name, backfills=runs, seconds=round(time.monotonic() - t0, 3))


def contract(ctx: Deployment, target: Target, pre: PreflightResult, expanded: ApplyResult,
             backfilled: BackfillPhase) -> ApplyResult:
    """The contract phase: the rest of the pending migrations, each refused while a backfill before it has
    rows left (a later expand → backfill → contract round in the same release runs its backfill here,
    inline). Returns the whole target's result: the expand phase's migrations, the backfills and these."""
    if not expanded.stopped_before:
        ctx.log.info("%s: no contract phase (the expand phase applied every pending migration)", target.name)
    rest = apply(ctx, target, pre)
    return replace(
        rest, seconds=round(expanded.seconds + rest.seconds if rest.applied else expanded.seconds, 3),
        lock_retries=expanded.lock_retries + rest.lock_retries, before=expanded.before,
        applied=[*expanded.applied, *rest.applied], backfills=[*backfilled.backfills, *rest.backfills])


def run_backfill(ctx: Deployment, target: Target, spec: Any, release: str, gate: Any) -> dict[str, Any]:
    """A declared backfill, run by `apply` before the first migration after it (its contract), on the
    target's connection, gated like production's online steps. Slack hears its start, its first pause and
    why, each quarter done, and its end, never each batch. Paused or cancelled by an operator: refused,
    so the contract migration does not run."""
    from schema_deploy.backfill.engine import Runner, run_to_done

    said: set[int] = set()
    where = {"backfill": spec.id, "target": target.name, "table": spec.table}

    def started(p: Any, resumed: bool) -> None:
        # A resume (a retry after a crash, a deferral's return) says nothing new: the quarters it had passed
        # were said by the run that passed them.
        said.update(q for q in (25, 50, 75) if (p.fraction or 0) * 100 >= q)
        if resumed:
            ctx.log.info("backfill %s on %s: resuming at %d of ~%s rows", spec.id, target.name, p.rows_done,
                         p.rows_estimated)
            return
        ctx.notify("backfill_started", {**where, "rows to do": f"~{p.rows_estimated}",
                                        "WAL budget": f"{spec.wal_budget_bytes_per_s / (1024 * 1024):g} MB/s"}, None)

    def progress(p: Any) -> None:
        quarter = int((p.fraction or 0) * 4) * 25
        if 0 < quarter < 100 and quarter not in said:
            said.add(quarter)
            ctx.notify("backfill_progress", {**where, "done": f"{quarter} % ({p.rows_done} of ~{p.rows_estimated} rows)",
                                             "rate": f"{p.rows_per_s:.0f} rows/s",
                                             "ETA": f"{p.eta_s:.0f} s" if p.eta_s is not None else "unknown",
                                             "batch": f"{p.batch_rows} rows"}, None)

    def paused(reason: str, first: bool) -> None:
        if first:
            ctx.notify("backfill_paused", {**where, "paused because": reason}, None)

    result = run_to_done(Runner(target.url, spec, release=release, gate=gate, log=ctx.log.info,
                                on_progress=progress, on_pause=paused, on_start=started))
    if result.already_done:
        return result.as_dict()  # done before this run (a retry's): said when it was
    ctx.notify("backfill_done", {**where, "rows": f"{result.rows_done}", "took": f"{result.seconds:.0f} s",
                                 "WAL": f"{result.wal_bytes_this_run / (1024 * 1024):.0f} MB",
                                 "pauses": f"{len(result.pauses)}"}, None)
    return result.as_dict()


# --- verify ---------------------------------------------------------------------------

def verify(ctx: Deployment, target: Target, pre: PreflightResult, applied: ApplyResult,
           backup: BackupResult | None = None) -> Verification:
    """Expectations of this run's migrations, the verification queries and EXPLAIN checks (all from
    the release), and the facts of the change; then the plan's success criteria, each judged once
    (`criteria.judge`: met, not met, or not measurable at this scale with the reason). A failed
    check or a changed row count raises; a criterion not met on timings or sizes is a verdict, not
    a failure. The log has one line per check and one per criterion."""
    from schema_deploy.bundle.parse import parse_migration
    from schema_deploy.engine.criteria import judge
    from schema_deploy.engine.verify import (index_sizes, performance_facts, query_timings, row_counts,
                                             verify as run_verify)
    from schema_deploy.pg.db import connect

    cfg, log = ctx.cfg, ctx.log
    release = load_release(ctx, pre)
    bundle = release.to_bundle()
    statements = [s for m in bundle.migrations if m.name in applied.migrations for s in parse_migration(m)]
    rows_before, before_ms = applied.before.get("rows", {}), applied.before.get("query_ms", {})
    tables = sorted(rows_before)
    index_tables = {s.node.idxname: s.node.relation.relname for s in statements
                    if s.kind == "CREATE INDEX" and s.node.idxname}
    with connect(target.url) as conn, releases.verify_dir(release, cfg.verify_dir) as queries:
        analyze(conn, tables)
        report = run_verify(conn, statements, queries)
        rows_after = row_counts(conn, tables)
        sizes = index_sizes(conn, list(index_tables))
        after_ms = query_timings(conn, queries / "explain")
    for i, check in enumerate(report.checks, 1):
        log.info("%s check %d/%d %s", target.name, i, len(report.checks), check.line())
    lost = {t: (rows_before.get(t), rows_after.get(t)) for t in tables if rows_before.get(t) != rows_after.get(t)}
    perf = performance_facts(sizes, before_ms, after_ms, cfg.expect_index_mb, cfg.expect_speedup_pct)
    for line in perf["lines"]:
        log.info("%s fact: %s", target.name, line)
    verdicts = judge(report.checks, rows_before, lost, perf, index_tables, cfg.expect_index_mb,
                     cfg.expect_speedup_pct, cfg.expect_measurable_rows)
    for criterion in verdicts.criteria:
        log.info("%s success criterion %s", target.name, criterion.line())
    log.info("%s: %s; %s", target.name, report.counts(), verdicts.summary())
    if not report.ok or lost:
        raise DeployVerificationFailed(target.name, [f"{c.name}: {c.detail}" for c in report.failed]
                                       + [f"row count of {t} changed {b} -> {a}" for t, (b, a) in lost.items()],
                                       backup.uri if backup else None)
    return Verification(env=target.name, checks=len(report.checks), failed=0, rows_before=rows_before,
                        rows_after=rows_after, index_bytes=sizes, query_ms_before=before_ms, query_ms_after=after_ms,
                        facts=perf["lines"], criteria=list(verdicts.criteria), verdict=verdicts.summary(),
                        not_measurable=len(report.unmeasured))


def verdict_facts(verification: dict[str, Any] | Verification) -> dict[str, str]:
    """How every message states a verification: its check counts and its criteria's summary
    (the same words as the approval page, the report and the record)."""
    from schema_deploy.engine.criteria import summary_of
    from schema_deploy.pipeline.results import verification_counts

    v = verification.to_xcom() if isinstance(verification, Verification) else (verification or {})
    if not v:
        return {"verification": "not run"}
    return {"verification": verification_counts(v), "success criteria": v.get("verdict") or summary_of(
        v.get("criteria"))}


def has_unmet(verification: dict[str, Any] | Verification) -> bool:
    """Whether a criterion of this verification was not met."""
    from schema_deploy.engine.criteria import NOT_MET

    v = verification.to_xcom() if isinstance(verification, Verification) else (verification or {})
    return any(c.get("verdict") == NOT_MET for c in v.get("criteria") or ())


def production_done(ctx: Deployment, applied: ApplyResult, verified: Verification, backup_: BackupResult,
                    pre: PreflightResult) -> None:
    """The closing Slack message of a successful deployment: its title says when a success
    criterion was not met, and the facts name it."""
    ctx.notify("production_done_unmet" if has_unmet(verified) else "production_done", {
        "release": release_fact(pre.release),
        "apply": f"{applied.seconds} s, {applied.lock_retries} lock retries",
        **verdict_facts(verified),
        "rows": "unchanged in every touched table", "backup": f"{backup_.uri} (sha256 {backup_.sha256[:12]}…)",
        "facts": "\n".join(verified.facts[:3])}, None)


def dry_run_facts(gated: StagingGate | dict[str, Any] | None) -> dict[str, str]:
    """The dry run's closing message, from the gate step's result (a StagingGate, or its XCom):
    staging's verification and criteria as the gate stated them."""
    checked = (gated or {}).get("verification") or {}
    return {"staging": "migrated and verified", **verdict_facts(checked), "production": "untouched"}


# --- gate -----------------------------------------------------------------------------

def gate(ctx: Deployment, staging: Target, pre: PreflightResult, backup_: BackupResult | None) -> GateResult:
    """The configured test commands against staging (DATABASE_URL), with a timeout; JUnit XML kept
    beside the backup in the store. Raises GateFailed naming the failing tests."""
    from schema_deploy.backups.store import parse_s3_uri
    from schema_deploy.ops.errors import GateFailed
    from schema_deploy.ops.gate import run_commands

    cfg, log = ctx.cfg, ctx.log
    load_release(ctx, pre)
    with tempfile.TemporaryDirectory(prefix="schema-deploy-gate-") as tmp:
        results = run_commands(list(cfg.gate_commands), database_url=staging.url, cwd=ROOT,
                               timeout_s=cfg.gate_timeout.total_seconds(), workdir=Path(tmp), log=log.info)
        uploaded = []
        if backup_ is not None:
            bucket, key = parse_s3_uri(backup_.uri)
            for i, r in enumerate(results, 1):
                if r.junit_path:
                    junit_key = f"{key.rsplit('.', 1)[0]}.gate-{i}.junit.xml"
                    ctx.store.s3.upload_file(r.junit_path, bucket, junit_key)
                    uploaded.append(f"s3://{bucket}/{junit_key}")
                    log.info("JUnit report of gate command %d kept at s3://%s/%s", i, bucket, junit_key)
    failed = [r for r in results if not r.ok]
    names = [n for r in failed if r.junit for n in r.junit.failed]
    tests = sum(r.junit.tests for r in results if r.junit)
    if failed:  # a passed gate is announced by staging_gate, once staging's criteria are judged too
        ctx.notify("gate_failed", {"release": release_fact(pre.release),
                                   "commands": f"{len(results) - len(failed)}/{len(results)} passed",
                                   "tests": f"{tests} run" if tests else "",
                                   "failing tests": "\n".join(names[:10]) or "see the log"}, None)
        raise GateFailed(failed)
    return GateResult(commands=[r.as_dict() for r in results], junit=uploaded, tests=tests)


# The gate's outcome in words (StagingGate.outcome), as Slack, the approval page and the report say it.
GATE_PASSED = "passed"
GATE_UNMET = "tests passed, but a success criterion was not met on staging"


def staging_gate(ctx: Deployment, staging: Target, pre: PreflightResult, backup_: BackupResult | None,
                 staged: ApplyResult) -> StagingGate:
    """The gate on staging: its test commands, then the verification of staging; production waits
    for both. A failing command or check stops the run here. A success criterion not met on staging
    (only timings and sizes can be, while every check passes: the plan's estimates) does not stop
    it, but the gate does not say "passed": Slack's title, the approval page and the report name the
    criterion, so the approver decides knowing it."""
    gated = gate(ctx, staging, pre, backup_)
    checked = verify(ctx, staging, pre, staged)
    unmet = has_unmet(checked)
    commands = gated.commands
    ctx.notify("gate_criteria_not_met" if unmet else "gate_passed", {
        "release": release_fact(pre.release),
        "commands": f"{len(commands)}/{len(commands)} passed", "tests": f"{gated.tests} run" if gated.tests else "",
        **verdict_facts(checked)}, None)
    return StagingGate(gate=gated, verification=checked, outcome=GATE_UNMET if unmet
                       else GATE_PASSED)


# --- window ---------------------------------------------------------------------------

def window(ctx: Deployment, pre: PreflightResult, staged: ApplyResult | None,
           now: datetime | None = None) -> tuple[WindowSlot, datetime | None]:
    """The maintenance window production may change in: open now (the slot, None), or the next one
    with time enough (the slot, when to wake up). A skipped window (with its reason) is open now.

    The expected production duration is staging's apply time scaled by the size ratio of the
    touched tables, times deploy.yaml's safety factor; a window too short for it is passed over.
    """
    from schema_deploy.ops.window import expected_duration, next_slot

    params, log = ctx.params, ctx.log
    if params.skip_window:
        log.warning("maintenance window skipped: %s", params.skip_window_reason)
        return WindowSlot(skipped=True, reason=params.skip_window_reason), None
    seconds = staged.seconds if staged is not None else 60.0
    needed = expected_duration(float(seconds), int(staged.table_bytes if staged else 0),
                               int(pre.production_table_bytes or 0), ctx.cfg.window_safety_factor)
    now = now or datetime.now(timezone.utc)
    slot = next_slot(list(ctx.cfg.windows), now, needed)
    found = WindowSlot(skipped=False, window=slot.window.label, opens=slot.start.isoformat(),
                       closes=slot.end.isoformat(), needed=str(needed), staging_seconds=seconds)
    if slot.start <= now:
        log.info("%s", replace(found, waited_s=0).describe())
        return replace(found, waited_s=0), None
    ctx.notify("waiting_window", {"until": slot.start.isoformat(), "window": slot.window.label,
                                  "expected duration": str(needed), "release": release_fact(pre.release)}, None)
    log.info("waiting for the next window with time enough: %s", found.describe())
    return found, slot.start + timedelta(seconds=1)
