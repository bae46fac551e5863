"""The audit record of a run, and the approval's rules: the last steps of both pipelines.

`deploy_record` builds the document from the results of the run's steps (keyed by
step name, see `STEPS`) and their states: who, what, where, when, with which exact
SQL (the release), which backup, which tests, who decided (approved by X / rejected
by X: reason / not reached / failed at task T), in which window, what verification
found, what it changed where, how it ended. `record` chains it into each target the
run changed, and into a target a decision concerned though nothing changed there (a
rejected production change is in production's history), in `schema_deploy.audit_events`,
and keeps it, with its sha256, in the store; every run keeps its document, failed,
refused and nothing-to-do runs included, and an index object per run
(`audit/runs/<kind>/<run id>.json`) lets the page find it by run id.
In three parts (`compose` with no database, `chain` per target with only that
target's, `keep` with none), so each can run on the worker of its own environment.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any
from urllib.parse import quote

from schema_deploy.engine.criteria import MET, Verdicts, summary_of
from schema_deploy.pipeline.errors import ApproverRefused
from schema_deploy.pipeline.results import (Approval, AuditLink, AuditRecord, BackupResult, ChainRowRef,
                                            PreflightResult, RunRecord, StagingGate, decision_text)
from schema_deploy.pipeline.target import Deployment, RunParams, Target

RECORD_VERSION = 2
# The deploy pipeline's steps, as the record names them (the orchestrator maps its task ids here).
STEPS = ("preflight_bundle", "preflight_staging", "preflight_production", "preflight", "backup", "apply_staging",
         "gate", "production_requested", "approval_needed", "approval", "window", "apply_production",
         "backfill_production", "contract_production", "verification")
# Run as three steps (`deploy.expand` → `backfill` → `contract`), production's whole result is the last one's.
PRODUCTION_STEPS = ("contract_production", "apply_production")


def production_result(results: dict[str, Any]) -> dict[str, Any] | None:
    """Production's apply result: the contract step's, which holds the expand step's and the backfills, when
    the run had one (and it ran); else the one apply step's."""
    return next((results[s] for s in PRODUCTION_STEPS if results.get(s)), None)


def backfill_record(applied: dict[str, Any] | None) -> list[dict[str, Any]]:
    """A target's backfills as the record keeps them: their figures, pauses and who stopped them."""
    keep = ("id", "table", "state", "rows_done", "rows_this_run", "batches_this_run", "wal_bytes_this_run", "seconds",
            "passes", "lock_retries", "pauses", "requested_by")
    return [{k: b.get(k) for k in keep} for b in (applied or {}).get("backfills") or []]


def _steps(applied: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [{"migration": m["name"], **step} for m in (applied or {}).get("applied", []) for step in m.get("steps", [])]


def outcome_of(params: RunParams, results: dict[str, Any], states: dict[str, str | None]) -> str:
    approval = results.get("approval") or {}
    failed = [t for t, s in states.items() if s in ("failed", "upstream_failed")]
    return ("failed" if failed else "production migrated" if states.get("verification") == "success"
            else "nothing to deploy" if states.get("preflight") == "skipped"
            else "rejected" if approval and not approval.get("approved")
            else "dry run" if states.get("apply_staging") == "success" and params.dry_run
            else "incomplete")


WAITING_STATES = ("awaiting_input", "deferred", "running", "queued", "scheduled", "up_for_reschedule")


def failed_at(states: dict[str, str | None], order: tuple[str, ...] = STEPS,
              task_ids: dict[str, str] | None = None) -> list[str]:
    """The tasks that failed themselves (not those only upstream_failed), in the pipeline's order, by
    the orchestrator's task id when `task_ids` (step -> task id) names it."""
    failed = [s for s in order if states.get(s) == "failed"] + sorted(
        s for s, st in states.items() if st == "failed" and s not in order)
    return [(task_ids or {}).get(s, s) for s in failed]


def decision_of(approval: dict[str, Any] | None, states: dict[str, str | None], *, approval_error: str | None = None,
                order: tuple[str, ...] = STEPS, task_ids: dict[str, str] | None = None) -> str:
    """The run's decision in words: approved by X / rejected by X: reason / awaiting approval / timed
    out / not required / failed at task T / not reached. `states` are keyed by step name, with the
    approval step named "approval" and the policy's branch "approval_needed"."""
    step = (task_ids or {}).get("approval", "approval")
    state = states.get("approval")
    if approval:
        if approval.get("approved") and state == "failed":
            return f"failed at task {step}: the approval by {approval.get('approver') or '?'} was refused"
        return decision_text(approval)
    if approval_error == "timeout":
        return "timed out"
    if state in WAITING_STATES:
        return "awaiting approval"
    if state == "failed":
        return f"failed at task {step}"
    if state == "skipped" and states.get("approval_needed") == "success":
        return "not required"
    failed = failed_at(states, order, task_ids)
    return f"failed at task {failed[0]}" if failed else "not reached"


def deploy_record(ctx: Deployment, results: dict[str, Any], states: dict[str, str | None],
                  task_ids: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON-able record of a deploy run; `results`: step name -> its result's to_xcom() (or None);
    `task_ids`: step name -> the orchestrator's task id, to name a failed task as its log does."""
    preflight = results.get("preflight") or {}
    backup = results.get("backup") or {}
    gate = results.get("gate") or {}
    approval = results.get("approval") or {}
    window = results.get("window") or {}
    staging, production = results.get("apply_staging"), production_result(results)
    verification = results.get("verification") or {}
    release = preflight.get("release") or {}
    run = {**ctx.run.facts(), "url": ctx.run.url, "started": ctx.run.started}
    return {
        "record_version": RECORD_VERSION,
        "run": run,
        "parameters": ctx.params.__dict__,
        "outcome": outcome_of(ctx.params, results, states),
        "decision": decision_of(approval or None, states, approval_error=results.get("approval_error"),
                                task_ids=task_ids),
        "failed_at": failed_at(states, STEPS, task_ids),
        "failed_tasks": sorted(t for t, s in states.items() if s in ("failed", "upstream_failed")),
        "task_states": states,
        "release": {k: release.get(k) for k in ("uri", "sha256", "short", "bundle", "source")} if release else None,
        "bundle": [{"name": m["name"], "checksum": m["checksum"]} for m in preflight.get("migrations", [])],
        "sql_executed": [{"migration": m["name"], "step": s["number"], "sql": s["sql"], "rewritten": s["rewritten"],
                          "locks": s["locks"]} for m in preflight.get("migrations", []) for s in m["steps"]],
        "lint": preflight.get("lint"),
        "prechecks": preflight.get("prechecks"),
        "backup": {k: backup.get(k) for k in ("uri", "sha256", "size", "rows", "verified")} if backup else None,
        "gate": {"commands": [{k: c.get(k) for k in ("command", "exit_code", "seconds", "junit")}
                              for c in gate.get("gate", {}).get("commands", [])],
                 "junit_uris": gate.get("gate", {}).get("junit", []),
                 "staging_verification": verdict_record(gate.get("verification"), gate.get("outcome"))}
        if gate else None,
        "approval": approval or None,
        "window": window or None,
        "staging": {"seconds": staging.get("seconds"), "lock_retries": staging.get("lock_retries"),
                    "steps": _steps(staging), "backfills": backfill_record(staging)} if staging else None,
        "production": {"seconds": production.get("seconds"), "lock_retries": production.get("lock_retries"),
                       "steps": _steps(production), "backfills": backfill_record(production)}
        if production else None,
        "verification": {**verdict_record(verification), **{k: verification.get(k) for k in (
            "facts", "rows_before", "rows_after", "index_bytes")}} if verification else None,
    }


def chain_into(ctx: Deployment, target: Target, kind: str, record_: dict[str, Any]) -> Any:
    """The run's row in the target's audit chain: appended once, found again on a retry."""
    from schema_deploy.audit import chain as audit
    from schema_deploy.pg.db import connect

    with connect(target.url) as conn:
        audit.ensure_table(conn)
        mine = [r for r in audit.read_rows(conn) if r.run_id == ctx.run.run_id and r.kind == kind
                and r.environment == target.name]
        row = mine[0] if mine else audit.append(conn, kind, ctx.run.run_id, target.name, record_)
    ctx.log.info("audit: %s row %d (%s) %s", target.name, row.id, row.row_hash[:16],
                 "already there" if mine else "added")
    return row


def keep_document(ctx: Deployment, record_: dict[str, Any], chain: list[Any], beside: str | None,
                  kind: str = "deploy") -> tuple[str, str]:
    """The record and its chain rows (`audit.AuditRow`s or their as_dict()) as a JSON document in the
    store, beside `beside` (a backup's URI) or under audit/; written again identically on a retry.
    Then the run's index object (`index_key`): the document's URI, sha256 and record, where the page
    finds any run's record by its id, one without a chain row (failed, refused, nothing to do) too.
    Returns (uri, sha256)."""
    from schema_deploy.backups.store import parse_s3_uri

    if beside:
        bucket, key = parse_s3_uri(beside)
        key = key.rsplit(".", 1)[0] + ".audit.json"
    else:
        bucket, prefix = parse_s3_uri(ctx.store.root)
        key = f"{prefix}/audit/{quote(ctx.run.run_id, safe='')}.audit.json".lstrip("/")
    rows = [r if isinstance(r, dict) else r.as_dict() for r in chain]
    uri, digest = put_document(ctx, bucket, key, {"record": record_, "chain": rows})
    ctx.log.info("audit: record of %s kept at %s sha256 %s", ctx.run.run_id, uri, digest)
    index_bucket, index = index_key(ctx.store.root, kind, ctx.run.run_id)
    put_document(ctx, index_bucket, index, {"kind": kind, "run_id": ctx.run.run_id, "uri": uri, "sha256": digest,
                                            "chain": {r["environment"]: r["id"] for r in rows}, "record": record_})
    return uri, digest


def index_key(root: str, kind: str, run_id: str) -> tuple[str, str]:
    """(bucket, key) of a run's index object under the store's root `s3://BUCKET/PREFIX`:
    PREFIX/audit/runs/<kind>/<run id, URL-quoted>.json (a deploy and a rollback run may share an id)."""
    from schema_deploy.backups.store import parse_s3_uri

    bucket, prefix = parse_s3_uri(root)
    return bucket, f"{prefix}/audit/runs/{kind}/{quote(run_id, safe='')}.json".lstrip("/")


def put_document(ctx: Deployment, bucket: str, key: str, document: dict[str, Any]) -> tuple[str, str]:
    """A JSON document in the store at s3://bucket/key, its sha256 in its metadata and in a `.sha256`
    object beside it; the same document gives the same bytes, so a retry writes it again identically.
    An S3 failure is the package's (transient) S3TransferFailed naming the call and the object."""
    from botocore.exceptions import BotoCoreError, ClientError

    from schema_deploy.backups.errors import S3TransferFailed
    from schema_deploy.backups.store import s3_error

    body = json.dumps(document, indent=2, sort_keys=True, default=str).encode() + b"\n"
    digest = hashlib.sha256(body).hexdigest()
    s3 = ctx.store.s3
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType="application/json",
                      Metadata={"sha256": digest}, **ctx.store.sse)
        s3.put_object(Bucket=bucket, Key=key + ".sha256", Body=f"{digest}  {key.rsplit('/', 1)[-1]}\n".encode(),
                      **ctx.store.sse)
    except (ClientError, BotoCoreError) as exc:
        code, detail = s3_error(exc)
        raise S3TransferFailed("PutObject", bucket, key, code, detail, "The document was not kept.",
                               context="audit record") from None
    return f"s3://{bucket}/{key}", digest


def release_check(ctx: Deployment, uri: str) -> str:
    """Whether the run's release is still in the store as it was frozen, in words for the record
    (the record is written whatever the answer)."""
    from schema_deploy.ops import release
    from schema_deploy.ops.errors import ReleaseError

    try:
        release.load(ctx.store.s3, uri)
    except ReleaseError as exc:
        return f"FAILED: {exc}"
    return "present, sha256 matches its name"


# The apply step whose target the approval decides on: a decision there is in that target's chain.
DECIDED_STEP = "apply_production"


def compose(ctx: Deployment, applies: dict[str, str], results: dict[str, Any],
            states: dict[str, str | None], task_ids: dict[str, str] | None = None) -> RunRecord:
    """The run's record, once, with no database: every target's chain row and the document in the
    store carry these very bytes. `applies`: each apply step's name -> its target's name; a target
    was changed when its apply step ran (succeeded or failed); the target of `DECIDED_STEP` is
    concerned by an answered approval even when nothing changed there (a rejection), and the record
    says what changed where (`targets`). `task_ids`: step name -> the orchestrator's task id."""
    record_ = deploy_record(ctx, results, states, task_ids)
    if record_["release"]:
        record_["release"]["check"] = release_check(ctx, record_["release"]["uri"])
    release = (results.get("preflight") or {}).get("release") or {}
    changed = list(dict.fromkeys(t for step, t in applies.items() if states.get(step) in ("success", "failed")))
    decided = applies.get(DECIDED_STEP)
    concerned = [decided] if results.get("approval") and decided and decided not in changed else []
    record_["targets"] = {t: "changed" if t in changed else f"nothing changed ({record_['decision']})"
                          if t in concerned else "nothing changed" for t in applies.values()}
    return RunRecord(record=record_, changed=changed, concerned=concerned,
                     beside=(results.get("backup") or {}).get("uri") or "", release=release.get("sha256", ""))


def chain(ctx: Deployment, target: Target, composed: RunRecord) -> AuditLink | None:
    """The record's row in `target`'s audit chain, when the run changed it or a decision concerned
    it (else None, and the target is not opened). Idempotent: a retry finds the row it added."""
    if target.name not in composed.chained:
        ctx.log.info("audit: %s was not changed by this run, nor concerned by its decision; its chain is left "
                     "alone", target.name)
        return None
    return AuditLink(env=target.name, row=chain_into(ctx, target, "deploy", composed.record).as_dict())


def keep(ctx: Deployment, composed: RunRecord, links: list[AuditLink]) -> AuditRecord:
    """The record and its chain rows kept as one document in the store, with no database; written
    again identically on a retry."""
    uri, digest = keep_document(ctx, composed.record, [link.row for link in links], composed.beside or None)
    return AuditRecord(outcome=composed.record["outcome"], s3=uri, sha256=digest,
                       chain={link.env: ChainRowRef(link.row["id"], link.row["row_hash"]) for link in links},
                       release=composed.release)


def record(ctx: Deployment, targets: dict[str, Target], results: dict[str, Any],
           states: dict[str, str | None], task_ids: dict[str, str] | None = None) -> AuditRecord:
    """Chain the deploy run's record into every target it changed or its decision concerned and keep
    it in the store: the composition of `compose`, `chain` per target and `keep`, the parts the DAG
    runs as separate tasks. `targets`: each apply step's name -> its target."""
    composed = compose(ctx, {step: t.name for step, t in targets.items()}, results, states, task_ids)
    links = [chain(ctx, t, composed) for t in targets.values()]
    return keep(ctx, composed, [link for link in links if link is not None])


# --- approval -------------------------------------------------------------------------

def check_approval(ctx: Deployment, approval: Approval) -> None:
    """deploy.yaml's rule that someone else must approve; announces the decision."""
    if approval.approved and ctx.cfg.approver_must_differ and approval.triggered_by \
            and approval.approver == approval.triggered_by:
        ctx.notify("rejected", {"decision": f"approval by {approval.approver} refused: the approver must differ "
                                            "from who triggered the run"}, None)
        raise ApproverRefused(approval.approver)
    ctx.notify("approved" if approval.approved else "rejected",
               {"decision": approval.decision, "at": approval.responded_at, "via": approval.via,
                "production": "next: the maintenance window" if approval.approved else "skipped, untouched"}, None)


def approval_body(pre: PreflightResult | dict[str, Any], backup: BackupResult | dict[str, Any],
                  gate: StagingGate | dict[str, Any]) -> str:
    """Markdown for the approval page: the release, what will run, the backup, what the gate found
    (its outcome, and staging's success criteria in the words Slack, the report and the record use).
    Reads the results or their XComs alike (`Result.get`)."""
    from schema_deploy.bundle.parse import LOCK_MODES
    from schema_deploy.pipeline.results import verification_counts

    release = pre.get("release") or {}
    lines = [f"### Release `{release.get('short', '?')}`",
             f"`{release.get('uri', '?')}` (bundle {release.get('bundle', '?')}, sha256 `{release.get('sha256', '?')}`)",
             "", "### Plan"]
    for m in pre.get("migrations", []):
        rewritten = sum(bool(s["rewritten"]) for s in m["steps"])
        steps = len(m["steps"])
        lines.append(f"* **{m['name']}** — sha256 `{m['checksum'][:16]}…`, {steps} step{'s' if steps != 1 else ''}, "
                     f"{rewritten} rewritten for online mode")
    strongest: dict[str, str] = {}
    for m in pre.get("migrations", []):
        for s in m["steps"]:
            for table, mode in s["locks"].items():
                if table not in strongest or LOCK_MODES.index(mode) > LOCK_MODES.index(strongest[table]):
                    strongest[table] = mode
    if strongest:
        lines.append("\n**Strongest lock per table**: " + "; ".join(f"{t}: {m}" for t, m in sorted(strongest.items())))
    sizes = pre.get("table_sizes", {})
    if sizes:
        lines.append("\n**Tables** (production): " + ", ".join(
            f"{t} ~{v.get('rows_estimate', '?')} rows / {v['bytes'] / 1e6:.1f} MB" for t, v in sorted(sizes.items())))
    lines += ["\n### Backup", f"`{backup.get('uri', 'none')}` sha256 `{backup.get('sha256', '?')}`, "
              f"verified by {backup.get('verified', '?')}"]
    cmds = gate.get("gate", {}).get("commands", [])
    verification = gate.get("verification") or {}
    lines += ["\n### Staging gate", (f"**{gate.get('outcome')}**: " if gate.get("outcome") else "")
              + f"{sum(c['exit_code'] == 0 for c in cmds)}/{len(cmds)} commands passed, "
              f"{gate.get('gate', {}).get('tests', 0)} tests; verification: "
              + (verification_counts(verification) if verification else "not run")]
    if verification:
        verdicts = Verdicts.from_list(verification.get("criteria"))
        lines.append(f"\n**Success criteria on staging**: {verification.get('verdict') or verdicts.summary()}\n")
        lines += [f"* {'**' + c.verdict.upper() + '**' if c.verdict != MET else c.verdict.upper()} — {c.name}: "
                  f"{c.detail}" for c in verdicts.criteria]
    return "\n".join(lines)


def verdict_record(verification: dict[str, Any] | None, gate_outcome: str | None = None) -> dict[str, Any] | None:
    """A verification's verdicts as the record keeps them: the check counts, each criterion's
    verdict with its evidence or reason, and the summary line every other report shows."""
    if not verification:
        return None
    kept = {"checks": verification.get("checks"), "failed": verification.get("failed"),
            "not_measurable": verification.get("not_measurable", 0), "criteria": verification.get("criteria"),
            "verdict": verification.get("verdict") or summary_of(verification.get("criteria"))}
    return {**kept, "gate_outcome": gate_outcome} if gate_outcome is not None else kept


def approval_request(pre: PreflightResult, backup: BackupResult, gate: StagingGate) -> tuple[str, str, dict[str, str]]:
    """What the production approval asks: its subject (the migrations and the release), the page's
    body (`approval_body`) and the facts of Slack's 'awaiting approval' message."""
    names = [m["name"] for m in pre.migrations]
    subject = f"Apply {', '.join(names) or 'nothing'} (release {pre.release.short}) to production?"
    facts = {"migrations": ", ".join(names), "triggered by": pre.triggered_by, "backup": backup.uri or "?"}
    return subject, approval_body(pre, backup, gate), facts
