"""Every decision and attempt on record: a rejection in the target's chain (production's too) and in
S3 with who, when and why; failed, refused and nothing-to-do runs keep their record in S3; the page's
summary of a run says its decision exactly and never "approved" for a rejection.

The pipeline's record functions are called as the DAGs' audit tasks call them, with results and
task states shaped like those of real runs, against real PostgreSQL databases and the stack's S3.
"""
from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from schema_deploy.audit import chain
from schema_deploy.backups.store import parse_s3_uri
from schema_deploy.config.settings import DeployConfig
from schema_deploy.ops.notify import message
from schema_deploy.pipeline import Approval, Deployment, RunInfo, RunParams, Store, Target, record, rollback
from schema_deploy.pipeline.record import decision_of, index_key
from schema_deploy.views import overview
from tests.conftest import drop_database, with_database

UNREACHABLE = "postgresql://deployer:not-the-password@127.0.0.1:9/production?connect_timeout=1"
APPLIES = {"apply_staging": "staging", "apply_production": "production"}
TASK_IDS = {"backup": "backup_production", "gate": "test_gate", "approval": "approve_production",
            "window": "wait_for_window", "verification": "verify_production"}
REASON = "the index build overlaps the billing batch tonight"
# A run rejected at the approval: staging migrated and gated, production skipped by the Reject.
REJECTED = {"preflight_bundle": "success", "preflight_staging": "success", "preflight_production": "success",
            "preflight": "success", "backup": "success", "apply_staging": "success", "gate": "success",
            "production_requested": "success", "approval_needed": "success", "approval": "success",
            "window": "skipped", "apply_production": "skipped", "verification": "skipped"}


class Notes:
    """A second notifier: keeps what it was told, rendered as Slack shows it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, event: str, facts: dict, links: dict | None = None) -> dict:
        self.events.append((event, facts))
        return {"event": event, "ok": True, "ts": f"{len(self.events)}.0"}

    def texts(self) -> str:
        return "\n".join(json.dumps(message(e, f)) for e, f in self.events)


@pytest.fixture
def targets(stack_env: dict[str, str]) -> Iterator[dict[str, Target]]:
    """An empty staging and production database (a chain needs no schema of the application)."""
    name = f"t_rec_{uuid.uuid4().hex[:8]}"
    urls = {}
    for env in ("staging", "production"):
        base = stack_env[f"{env.upper()}_DATABASE_URL"]
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        urls[env] = with_database(base, name)
    yield {env: Target(env, env, url) for env, url in urls.items()}
    for env in ("staging", "production"):
        drop_database(stack_env[f"{env.upper()}_DATABASE_URL"], name)


@pytest.fixture
def ctx(stack_env: dict[str, str], s3) -> Deployment:
    cfg = DeployConfig(backup_bucket=stack_env["BACKUP_BUCKET"], backup_prefix=f"records-{uuid.uuid4().hex[:8]}")
    return Deployment(cfg=cfg, store=Store.from_config(s3, cfg),
                      run=RunInfo(run_id=f"manual__{uuid.uuid4().hex[:8]}", triggered_by="alice",
                                  url="http://airflow/dags/deploy_schema/runs/x", started="2026-12-06T07:00:00+00:00"),
                      params=RunParams(), notify=Notes(), log=logging.getLogger("schema_deploy"))


def rejection(reason: str = REASON) -> dict:
    return Approval(approved=False, approver="bob", responded_at="2026-12-06T07:30:00+00:00", triggered_by="alice",
                    reason=reason).to_xcom()


def rows_of(target: Target, run_id: str) -> list[chain.AuditRow]:
    with psycopg.connect(target.url) as conn:
        if not conn.execute("SELECT to_regclass('schema_deploy.audit_events')").fetchone()[0]:
            return []
        assert chain.verify_chain(conn).ok
        return [r for r in chain.read_rows(conn) if r.run_id == run_id]


def read(ctx: Deployment, uri: str) -> dict:
    bucket, key = parse_s3_uri(uri)
    return json.loads(ctx.store.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


def index_of(ctx: Deployment, kind: str) -> dict:
    bucket, key = index_key(ctx.store.root, kind, ctx.run.run_id)
    return json.loads(ctx.store.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


# --- deploy -----------------------------------------------------------------------------------

def test_a_rejection_is_chained_into_production_saying_nothing_changed_and_kept_in_s3_with_who_when_why(
        ctx: Deployment, targets: dict[str, Target]) -> None:
    backup = f"{ctx.store.root}/production/db/20261206T070000Z-{ctx.run.run_id}.dump"
    results = {"approval": rejection(), "backup": {"uri": backup, "sha256": "ab" * 32}}

    kept = record.record(ctx, {"apply_staging": targets["staging"], "apply_production": targets["production"]},
                         results, REJECTED, TASK_IDS)

    decision = f"rejected by bob: {REASON}"
    assert kept.outcome == "rejected" and set(kept.chain) == {"staging", "production"}
    (row,) = rows_of(targets["production"], ctx.run.run_id)  # production's history has the decision
    assert row.kind == "deploy" and row.environment == "production"
    assert row.payload["decision"] == decision and row.payload["outcome"] == "rejected"
    assert row.payload["targets"] == {"staging": "changed", "production": f"nothing changed ({decision})"}
    assert {k: row.payload["approval"][k] for k in ("approved", "approver", "responded_at", "reason")} == {
        "approved": False, "approver": "bob", "responded_at": "2026-12-06T07:30:00+00:00", "reason": REASON}
    (staged,) = rows_of(targets["staging"], ctx.run.run_id)
    assert staged.payload == row.payload  # one record, the same bytes in every chain and in S3

    document = read(ctx, kept.s3)
    assert kept.s3 == backup.rsplit(".", 1)[0] + ".audit.json"  # beside the backup
    assert document["record"] == row.payload and {r["environment"] for r in document["chain"]} == {
        "staging", "production"}
    assert index_of(ctx, "deploy") == {"kind": "deploy", "run_id": ctx.run.run_id, "uri": kept.s3,
                                       "sha256": kept.sha256, "record": row.payload,
                                       "chain": {"staging": staged.id, "production": row.id}}

    runs = overview.read_runs([{"dag_id": "deploy_schema", "run_id": ctx.run.run_id, "state": "success",
                                "start_date": "2026-12-06T07:00:00+00:00", "url": "http://airflow/x", "tasks": {}}],
                              {env: t.url for env, t in targets.items()},
                              documents=overview.run_documents(ctx.store.s3, ctx.store.root))["runs"]
    (run,) = runs
    assert (run["summary"]["outcome"], run["summary"]["decision"]) == ("rejected", decision)
    assert run["summary"]["backup"]["uri"] == backup and run["document"]["uri"] == kept.s3
    assert [(a["environment"], a["decision"], a["effect"]) for a in run["audit"]] == [
        ("production", decision, f"nothing changed ({decision})"), ("staging", decision, "changed")]
    assert "approved" not in json.dumps(run["summary"]) + json.dumps([a["decision"] for a in run["audit"]])


def test_slack_says_rejected_by_whom_and_why_and_never_approved(ctx: Deployment) -> None:
    record.check_approval(ctx, Approval.from_xcom(rejection()))
    record.check_approval(ctx, Approval.from_xcom(rejection(reason="")))

    (event, facts), (_, bare) = ctx.notify.events
    assert event == "rejected" and facts["decision"] == f"rejected by bob: {REASON}"
    assert bare["decision"] == "rejected by bob: no reason given"
    texts = ctx.notify.texts()
    assert f"rejected by bob: {REASON}" in texts and "approved" not in texts.lower()


def test_a_nothing_to_deploy_run_keeps_its_record_in_s3_and_opens_no_database(ctx: Deployment) -> None:
    states = {"preflight_bundle": "success", "preflight_staging": "success", "preflight_production": "success",
              "preflight": "skipped", **{s: "skipped" for s in ("backup", "apply_staging", "gate", "approval",
                                                                 "apply_production", "verification")}}
    nowhere = {"apply_staging": Target("staging", "staging", UNREACHABLE),
               "apply_production": Target("production", "production", UNREACHABLE)}

    kept = record.record(ctx, nowhere, {}, states, TASK_IDS)  # an unreachable target would raise if opened

    assert (kept.outcome, kept.chain) == ("nothing to deploy", {})
    assert kept.s3 == f"{ctx.store.root}/audit/{ctx.run.run_id}.audit.json"
    kept_record = read(ctx, kept.s3)["record"]
    assert kept_record["decision"] == "not reached"
    assert kept_record["targets"] == {"staging": "nothing changed", "production": "nothing changed"}
    assert index_of(ctx, "deploy")["record"] == kept_record


@pytest.mark.slow
def test_a_run_failed_before_the_approval_names_the_task_and_chains_only_what_it_changed(
        ctx: Deployment, targets: dict[str, Target]) -> None:
    states = {**REJECTED, "gate": "failed", "production_requested": "upstream_failed",
              "approval_needed": "upstream_failed", "approval": "upstream_failed", "window": "upstream_failed",
              "apply_production": "upstream_failed", "verification": "upstream_failed"}

    kept = record.record(ctx, {"apply_staging": targets["staging"], "apply_production": targets["production"]},
                         {}, states, TASK_IDS)

    assert (kept.outcome, set(kept.chain)) == ("failed", {"staging"})
    assert rows_of(targets["production"], ctx.run.run_id) == []  # production untouched and nobody decided
    (row,) = rows_of(targets["staging"], ctx.run.run_id)
    assert row.payload["decision"] == "failed at task test_gate" and row.payload["failed_at"] == ["test_gate"]


@pytest.mark.parametrize(("approval", "states", "error", "said"), [
    ({"approved": True, "approver": "alice"}, {"approval": "success"}, None, "approved by alice"),
    ({"approved": False, "approver": "bob", "reason": "why"}, {"approval": "success"}, None, "rejected by bob: why"),
    ({"approved": True, "approver": "alice"}, {"approval": "failed"}, None,
     "failed at task approval: the approval by alice was refused"),
    (None, {"approval": "failed"}, "timeout", "timed out"),
    (None, {"approval": "awaiting_input"}, None, "awaiting approval"),
    (None, {"approval_needed": "success", "approval": "skipped"}, None, "not required"),
    (None, {"gate": "failed", "approval": "upstream_failed"}, None, "failed at task gate"),
    (None, {"production_requested": "success", "approval_needed": "skipped", "approval": "skipped"}, None,
     "not reached"),
])
def test_the_decision_is_said_exactly(approval: dict | None, states: dict, error: str | None, said: str) -> None:
    assert decision_of(approval, states, approval_error=error) == said


# --- rollback ---------------------------------------------------------------------------------

def test_a_rejected_rollback_is_chained_into_its_target_and_slack_says_rejected_by_whom(
        ctx: Deployment, targets: dict[str, Target]) -> None:
    production = targets["production"]
    plan = {"type": "RollbackPlan", "version": 1, "environment": "production", "database": production.database,
            "method": "backup", "needs_approval": True,
            "backup": {"uri": f"{ctx.store.root}/production/db/x.dump"}}
    states = {"preflight": "success", "approval_needed": "success", "approval": "success",
              "safety_backup": "skipped", "rollback": "skipped", "verify": "skipped"}
    request = rollback.RollbackRequest(confirm_database=production.database)

    kept = rollback.record(ctx, production, request, {"preflight": plan, "approval": rejection()}, states)

    decision = f"rejected by bob: {REASON}"
    (row,) = rows_of(production, ctx.run.run_id)
    assert (kept.outcome, row.kind, row.payload["decision"]) == ("rejected", "rollback", decision)
    assert row.payload["targets"] == {"production": f"nothing changed ({decision})"}
    assert index_of(ctx, "rollback")["record"] == row.payload
    (event, facts), = ctx.notify.events
    assert event == "rollback_rejected" and facts["decision"] == decision
    assert "Schema rollback rejected" in ctx.notify.texts() and "done" not in ctx.notify.texts()


def test_a_rollback_refused_at_preflight_keeps_its_record_in_s3_and_chains_nothing(
        ctx: Deployment, targets: dict[str, Target]) -> None:
    states = {"preflight": "failed", "approval_needed": "upstream_failed", "approval": "upstream_failed",
              "safety_backup": "upstream_failed", "rollback": "upstream_failed", "verify": "upstream_failed"}
    task_ids = {s: f"production.{t}" for s, t in (("preflight", "preflight"), ("approval", "approve_rollback"))}

    kept = rollback.record(ctx, targets["production"], rollback.RollbackRequest(confirm_database="wrong"), {},
                           states, task_ids)

    assert (kept.outcome, kept.chain) == ("failed", {})
    assert rows_of(targets["production"], ctx.run.run_id) == []
    kept_record = index_of(ctx, "rollback")["record"]
    assert kept_record == read(ctx, kept.s3)["record"]
    assert kept_record["decision"] == "failed at task production.preflight"
    assert kept_record["failed_at"] == ["production.preflight"]
    assert kept_record["targets"] == {"production": "nothing changed"} and ctx.notify.events == []


@pytest.mark.slow
def test_a_rollback_refused_before_any_group_ran_keeps_its_attempt_in_s3(ctx: Deployment) -> None:
    states = {"choose_environment": "failed", "check_environment": "upstream_failed",
              "preflight": "upstream_failed"}

    kept = rollback.record_attempt(ctx, "production", rollback.RollbackRequest(), {}, states)

    kept_record = index_of(ctx, "rollback")["record"]
    assert (kept.outcome, kept.chain, kept_record["outcome"]) == ("failed", {}, "failed")
    assert kept_record["decision"] == "failed at task choose_environment"
    runs = overview.read_runs([{"dag_id": "rollback_schema", "run_id": ctx.run.run_id, "state": "failed",
                                "start_date": "2026-12-06T07:00:00+00:00", "url": "", "tasks": {}}], {},
                              documents=overview.run_documents(ctx.store.s3, ctx.store.root))["runs"]
    assert runs[0]["summary"]["decision"] == "failed at task choose_environment"
    assert runs[0]["document"]["uri"] == kept.s3


# --- the page's read model ----------------------------------------------------------------------

def test_the_page_names_the_bundle_by_its_declared_name_and_its_normalised_folder() -> None:
    from pathlib import Path

    from schema_deploy.bundle.discover import load_bundle

    repo = Path(__file__).resolve().parents[2]
    got = overview.read_matrix(load_bundle(repo / "devstack" / ".." / "sql" / "migrations"), {}, name="main")
    assert got["bundle"]["root"] == str((repo / "sql" / "migrations").resolve()) and ".." not in got["bundle"]["root"]
    assert got["bundle"]["name"] == "main"


@pytest.mark.parametrize(("dag_id", "state", "tasks", "decision", "outcome"), [
    ("deploy_schema", "running", {"test_gate": "success", "approve_production": "awaiting_input"},
     "awaiting approval", "in progress"),
    ("rollback_schema", "running", {"production.approve_rollback": "awaiting_input"}, "awaiting approval",
     "in progress"),
    ("deploy_schema", "running", {"apply_staging": "running"}, "not reached yet", "in progress"),
    ("deploy_schema", "running", {"approve_production": "success", "apply_production": "deferred"}, "not reached yet",
     "in progress: production waits for the database's health before an online step"),
    ("deploy_schema", "failed", {"test_gate": "failed", "approve_production": "upstream_failed"},
     "failed at task test_gate", "failed at task test_gate"),
])
def test_a_run_without_a_record_yet_is_summarised_from_airflows_task_states(
        dag_id: str, state: str, tasks: dict, decision: str, outcome: str) -> None:
    (run,) = overview.merge_runs([{"dag_id": dag_id, "run_id": "r1", "state": state, "start_date": "2026-12-06",
                                   "tasks": tasks}], {}, documents=lambda kind, run_id: None)
    assert (run["summary"]["decision"], run["summary"]["outcome"], run["document"]) == (decision, outcome, None)


WAIT = {"since": "2026-12-06T21:50:02+00:00", "reason": "replica r1 (10.0.0.2, streaming) replay lag 3.0 MB (over 1.0 MB)",
        "latest": "replica r1 (10.0.0.2, streaming) replay lag 1.4 MB (over 1.0 MB)"}


STALE = {**WAIT, "latest": "an earlier wait of apply_production, over since"}


@pytest.mark.parametrize(("state", "tasks", "waits", "waiting"), [
    ("running", {"apply_production": "deferred"}, {"apply_production": WAIT},
     "waiting for: replica r1 (10.0.0.2, streaming) replay lag 1.4 MB (over 1.0 MB) "
     "(waiting since 2026-12-06T21:50:02+00:00)"),
    ("running", {"apply_production": "deferred"}, {"apply_production": {k: v for k, v in WAIT.items() if k != "latest"}},
     "waiting for: replica r1 (10.0.0.2, streaming) replay lag 3.0 MB (over 1.0 MB) "
     "(waiting since 2026-12-06T21:50:02+00:00)"),
    ("running", {"apply_production": "deferred"}, None, "waiting for: see apply_production's log"),
    # The backfill task waits; the expand task's wait, over since, is not what the page says.
    ("running", {"apply_production": "success", "backfill_production": "deferred"},
     {"apply_production": STALE, "backfill_production": {**WAIT, "what": "backfill 20261201000000_event_date_expand"}},
     "waiting for: replica r1 (10.0.0.2, streaming) replay lag 1.4 MB (over 1.0 MB) "
     "(waiting since 2026-12-06T21:50:02+00:00)"),
    ("running", {"apply_production": "success", "backfill_production": "deferred"}, {"apply_production": STALE},
     "waiting for: see backfill_production's log"),
    ("running", {"apply_production": "running"}, {"apply_production": WAIT}, None),  # it waited, and goes on
    ("failed", {"apply_production": "deferred"}, {"apply_production": WAIT}, None),  # the run ended (killed)
])
def test_a_run_held_by_the_health_gate_says_what_it_waits_for(state: str, tasks: dict[str, str], waits: dict | None,
                                                               waiting: str | None) -> None:
    (run,) = overview.merge_runs([{"dag_id": "deploy_schema", "run_id": "r1", "state": state, "start_date": "2026-12-06",
                                   "tasks": tasks, "health_wait": waits}], {})
    assert run["summary"]["waiting"] == waiting
    if waiting:
        assert run["summary"]["outcome"] == (
            "in progress: production's backfill is paused for the database's health"
            if "backfill_production" in (waits or {}) else
            "in progress: production waits for the database's health before an online step")


def test_an_unreadable_store_is_said_on_the_run_not_raised(stack_env: dict[str, str]) -> None:
    import boto3
    from botocore.config import Config

    s3 = boto3.session.Session().client("s3", endpoint_url="http://127.0.0.1:9", region_name="us-east-1",
                                        aws_access_key_id="x", aws_secret_access_key="y",
                                        config=Config(connect_timeout=1, retries={"max_attempts": 0}))
    got = overview.run_documents(s3, "s3://bucket/prefix")("deploy", "manual__1")
    assert got["error"].startswith("s3://bucket/prefix/audit/runs/deploy/manual__1.json: ")
    again = overview.run_documents(s3, "s3://bucket/prefix")
    first, second = again("deploy", "a"), again("deploy", "b")
    assert second["error"] == f"s3://bucket/prefix/audit/runs/deploy/b.json: not read ({first['error'].split(': ', 1)[1]})"
