"""The deploy pipeline's steps called directly, without Airflow, on the local stack.

Each step gets a `Deployment` and `Target`s built here, and the results of earlier steps after a
round trip through their XCom form (as they travel between workers). The migrations folder is
gone after preflight, as on a worker that never had it: every later step works from the release.
"""
from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path

import psycopg
import pytest

from schema_deploy.audit import chain
from schema_deploy.backups.store import parse_s3_uri
from schema_deploy.config.settings import DeployConfig
from schema_deploy.ops.errors import ReleaseMissing, ReleaseTampered
from schema_deploy.pipeline import (ApplyResult, BackupResult, Deployment, GateResult, RunInfo, RunParams, Store,
                                    Target, Verification, deploy, record)
from schema_deploy.pipeline.results import ChainRowRef
from schema_deploy.state.ledger import read_rows
from seed import reset
from tests.conftest import drop_database, with_database

REPO = Path(__file__).resolve().parents[2]
EPIC5 = "20251017120000_epic5_schema_completion"
# The example trio after Epic 5 (sql/migrations): a nullable column with a trigger, its backfill, then, as
# Prisma writes it, NOT NULL and an index (the online plan makes them a validated check and a concurrent build).
EXPAND = "20251103090000_event_date_expand"
CONTRACT = "20251103090100_event_date_contract"
PENDING = [EPIC5, EXPAND, CONTRACT]  # what staging and production have pending: the shipped bundle after the baseline


class Notes:
    """A second notifier implementation: keeps what it was told, as Slack would show it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def __call__(self, event: str, facts: dict, links: dict | None = None) -> dict:
        self.events.append((event, facts))
        return {"event": event, "ok": True, "ts": f"{len(self.events)}.0"}


@pytest.fixture
def targets(stack_env: dict[str, str]):
    name = f"t_pipe_{uuid.uuid4().hex[:8]}"
    urls = {env: with_database(stack_env[f"{env.upper()}_DATABASE_URL"], name) for env in ("staging", "production")}
    for url in urls.values():
        reset(url, seed=5, log=lambda _: None)
    yield {env: Target(env, env, url) for env, url in urls.items()}
    for env in ("staging", "production"):
        drop_database(stack_env[f"{env.upper()}_DATABASE_URL"], name)


@pytest.fixture
def ctx(stack_env: dict[str, str], tmp_path: Path, s3, caplog) -> Deployment:
    folder = tmp_path / "migrations"
    shutil.copytree(REPO / "sql" / "migrations", folder)
    cfg = DeployConfig(bundles=(("main", folder),), verify_dir=REPO / "sql" / "verify",
                       gate_commands=(("python", "-m", "pytest", "tests/gate", "-q", "-p", "no:cacheprovider",
                                       "-p", "no:hypothesispytest", "--junitxml={junit}"),), approval_manual=False)
    store = Store(s3, f"s3://{stack_env['BACKUP_BUCKET']}/pipeline-{uuid.uuid4().hex[:8]}",
                  {"ServerSideEncryption": "AES256"})
    caplog.set_level(logging.INFO, logger="schema_deploy")
    return Deployment(cfg=cfg, store=store, run=RunInfo(run_id=f"test__{uuid.uuid4().hex[:6]}", triggered_by="ci"),
                      params=RunParams(skip_window=True, skip_window_reason="a test"), notify=Notes())


def travel(result):
    """What the next step gets: the result after its trip through XCom."""
    return type(result).from_xcom(result.to_xcom())


def applied(target: Target) -> dict[str, str]:
    with psycopg.connect(target.url) as conn:
        return {r.migration_name: r.checksum for r in read_rows(conn) if r.applied}


@pytest.mark.slow
def test_each_step_runs_without_airflow_from_the_release_on_a_worker_without_the_folder(
        ctx: Deployment, targets: dict[str, Target], caplog) -> None:
    from dataclasses import replace

    staging, production = targets["staging"], targets["production"]
    folder = ctx.cfg.migrations
    pre = travel(deploy.preflight(ctx, staging, production))
    frozen = {m.name: m.checksum for m in pre.release.migrations}
    assert pre.pending == {"staging": PENDING, "production": PENDING} and pre.migrations[0]["name"] == EPIC5
    shutil.rmtree(folder)  # the next steps run "elsewhere": no migrations folder, no verification queries
    ctx = replace(ctx, cfg=replace(ctx.cfg, verify_dir=folder.parent / "no-verify-here"))

    backup = travel(deploy.backup(ctx, production, pre))
    staged = travel(deploy.apply(ctx, staging, pre))
    staged_gate = travel(deploy.staging_gate(ctx, staging, pre, backup, staged))
    gated, checked = staged_gate.gate, staged_gate.verification
    assert isinstance(gated, GateResult) and isinstance(checked, Verification)
    slot, wake_at = deploy.window(ctx, pre, staged)
    production_applied = travel(deploy.apply(ctx, production, pre))
    verified = travel(deploy.verify(ctx, production, pre, production_applied))
    results = {"preflight": pre.to_xcom(), "backup": backup.to_xcom(), "apply_staging": staged.to_xcom(),
               "gate": staged_gate.to_xcom(), "window": slot.to_xcom(),
               "apply_production": production_applied.to_xcom(), "verification": verified.to_xcom()}
    states = {step: "success" for step in results}
    kept = record.record(ctx, {"apply_staging": staging, "apply_production": production}, results, states)

    assert applied(staging) == applied(production) == frozen
    assert backup.verified.endswith("restore") and gated.tests > 0 and gated.junit
    assert slot.skipped and wake_at is None
    assert verified.rows_before == verified.rows_after and verified.verdicts.criteria[2].verdict == "met"
    assert production_applied.release == pre.release.sha256 == kept.release
    assert checked.checks > 0 and staged.migrations == PENDING
    assert len(verified.query_ms_after) == 12  # the release's EXPLAIN queries, one per Epic 5 index
    (backfilled,) = production_applied.backfills  # the example's, between its expand and its contract
    assert backfilled.state == "done" and backfilled.rows_done == verified.rows_after["behavioral_events"]
    assert kept.outcome == "production migrated" and set(kept.chain) == {"staging", "production"}
    bucket, key = parse_s3_uri(kept.s3)
    document = json.loads(ctx.store.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert document["record"]["release"]["check"] == "present, sha256 matches its name"
    assert document["record"]["release"]["sha256"] == pre.release.sha256
    for target in (staging, production):
        with psycopg.connect(target.url) as conn:
            assert chain.verify_chain(conn).ok
    assert "the migrations folder is not on this machine (the release is used)" in caplog.text
    assert [e for e, _ in ctx.notify.events if not e.startswith("backfill_")] == ["started", "gate_passed"]
    assert ctx.notify.events[0][1]["release"] == f"{pre.release.short} ({pre.release_uri})"


@pytest.mark.slow
def test_a_tampered_or_deleted_release_stops_the_next_step_before_it_changes_anything(
        ctx: Deployment, targets: dict[str, Target]) -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from schema_deploy_airflow.steps import fail_fast

    staging, production = targets["staging"], targets["production"]
    pre = travel(deploy.preflight(ctx, staging, production))
    bucket, key = parse_s3_uri(pre.release_uri)
    s3 = ctx.store.s3
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body.replace(b"CREATE INDEX", b"CREATE UNIQUE INDEX", 1))

    with pytest.raises(ReleaseTampered, match=f"release {pre.release_uri} was changed after it was written"):
        deploy.apply(ctx, staging, pre)
    with pytest.raises(AirflowFailException, match=r"(?s)ReleaseTampered: release\s.* Nothing was\s+changed"):
        fail_fast(deploy.backup)(ctx, production, pre)  # as a task: failed, not retried
    s3.delete_object(Bucket=bucket, Key=key)
    with pytest.raises(ReleaseMissing, match=f"release {pre.release_uri} does not exist"):
        deploy.apply(ctx, production, pre)

    assert EPIC5 not in applied(staging) and EPIC5 not in applied(production)
    results = {"preflight": pre.to_xcom()}
    kept = record.record(ctx, {"apply_staging": staging, "apply_production": production}, results,
                         {"preflight": "success", "backup": "failed"})
    assert kept.outcome == "failed"
    bucket_, key_ = parse_s3_uri(kept.s3)
    document = json.loads(s3.get_object(Bucket=bucket_, Key=key_)["Body"].read())
    assert document["record"]["release"]["check"].startswith(f"FAILED: release {pre.release_uri} does not exist")
    _, prefix = parse_s3_uri(ctx.store.root)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix + "/").get("Contents", [])]
    assert not [k for k in keys if k.endswith(".dump")]  # no backup was started either


def test_results_refuse_another_steps_or_versions_xcom() -> None:
    from schema_deploy.errors import UsageError

    backup = BackupResult(uri="s3://b/k.dump", sha256="0" * 64, size=1, rows=2, verified="sha256")
    with pytest.raises(UsageError, match="expected a ApplyResult from the earlier step, got 'BackupResult'"):
        ApplyResult.from_xcom(backup.to_xcom())
    with pytest.raises(UsageError, match="BackupResult version 99 from the earlier step; this worker reads version 1"):
        BackupResult.from_xcom({**backup.to_xcom(), "version": 99})
    assert BackupResult.from_xcom(backup.to_xcom()) == backup
    short = {k: v for k, v in backup.to_xcom().items() if k != "sha256"}
    with pytest.raises(UsageError, match=r"BackupResult from the earlier step cannot be read \(.*sha256.*\): run "
                                         "every worker on the same schema_deploy version"):
        BackupResult.from_xcom(short)


@pytest.mark.slow
def test_preflight_stops_on_a_schema_prisma_the_releases_migrations_do_not_create(
        ctx: Deployment, targets: dict[str, Target], prisma, tmp_path: Path) -> None:
    from dataclasses import replace

    from prisma_support import PRISMA_DIR

    from schema_deploy.bundle.discover import load_bundle
    from schema_deploy.config.settings import PrismaSettings
    from schema_deploy.ops import release
    from schema_deploy.plan.errors import PrismaSchemaMismatch

    schema = tmp_path / "schema.prisma"
    shipped = (REPO / "prisma" / "schema.prisma").read_text()
    schema.write_text(shipped.replace("  metrics      Json? // Epic 5\n",
                                      "  metrics      Json? // Epic 5\n  score        Float?\n"))
    checked = replace(ctx, cfg=replace(ctx.cfg, prisma=PrismaSettings(schema=schema, cli=PRISMA_DIR)))
    frozen = release.store(ctx.store.s3, release.freeze(load_bundle(ctx.cfg.migrations), "main"), ctx.store.root)
    shutil.rmtree(ctx.cfg.migrations)  # the check reads the release's bytes, not a folder

    with pytest.raises(PrismaSchemaMismatch, match="schema.prisma has field experiment_assignments.score that no "
                                                   "migration creates"):
        deploy.preflight(checked, targets["staging"], targets["production"], source=frozen)
    assert ctx.notify.events == []  # stopped before the run was announced

    schema.write_text(shipped)
    pre = deploy.preflight(checked, targets["staging"], targets["production"], source=frozen)
    assert pre.pending["production"] == PENDING


@pytest.mark.slow
def test_a_retry_after_some_migrations_committed_runs_the_frozen_plan_and_converges(
        ctx: Deployment, targets: dict[str, Target], tmp_path: Path) -> None:
    from dataclasses import replace

    from schema_deploy.engine.apply import apply as engine_apply
    from schema_deploy.pg.retry import Settings

    folder = tmp_path / "bundle"
    shutil.copytree(REPO / "sql" / "migrations", folder, ignore=shutil.ignore_patterns("*epic5*", "*_event_date_*"))
    for name, text in (("20251101000000_a_new_table", "CREATE TABLE scores (id bigint PRIMARY KEY, v int);\n"),
                       ("20251101000001_b_its_index",
                        "-- schema-deploy: ignore require-concurrent-index scores is new: created just before\n"
                        "CREATE INDEX scores_v_idx ON scores (v);\n")):
        (folder / name).mkdir()
        (folder / name / "migration.sql").write_text(text)
    run = replace(ctx, cfg=replace(ctx.cfg, bundles=(("main", folder),)))
    production = targets["production"]
    pre = travel(deploy.preflight(run, targets["staging"], production))
    frozen = {m["name"]: m for m in pre.migrations}
    assert frozen["20251101000001_b_its_index"]["steps"][0]["sql"] == ["CREATE INDEX scores_v_idx ON scores (v)"]

    # The first try committed A, then died: on the retry, B's table exists, but B keeps the plan it was given.
    engine_apply(production.url, deploy.load_release(run, pre).to_bundle(), Settings(), online=True,
                 to="20251101000000_a_new_table")
    applied_now = travel(deploy.apply(run, production, pre))

    assert [m["name"] for m in applied_now.applied] == ["20251101000001_b_its_index"]
    assert applied_now.applied[0]["sql"] == ["CREATE INDEX scores_v_idx ON scores (v)"]
    assert set(applied(production)) >= set(frozen)


# --- preflight and the record in parts, as the DAG runs them on each environment's worker -----------

UNREACHABLE = "postgresql://deployer:not-the-password@127.0.0.1:9/production?connect_timeout=1"


@pytest.mark.slow
def test_the_preflight_parts_apart_freeze_the_release_the_whole_preflight_freezes(
        ctx: Deployment, targets: dict[str, Target]) -> None:
    from schema_deploy.ops import release
    from schema_deploy.pipeline import BundleCheck, TargetSurvey

    staging, production = targets["staging"], targets["production"]
    checked = travel(deploy.preflight_bundle(ctx))
    planless = release.load(ctx.store.s3, checked.release_uri)
    assert planless.plans == {} and planless.names == checked.release.names
    assert isinstance(checked, BundleCheck) and not checked.given and checked.lint["errors"] > 0
    whole = deploy.preflight(ctx, staging, production)  # the folder is still there for this one
    shutil.rmtree(ctx.cfg.migrations)  # the surveys and the release work from the plan-less release

    surveys = [deploy.preflight_staging(ctx, staging, checked), deploy.preflight_production(ctx, production, checked)]
    for survey in surveys:
        assert travel(survey) == survey and isinstance(survey, TargetSurvey)  # the fingerprint round-trips too
        assert survey.pending == PENDING and survey.release == planless.digest
        assert survey.fingerprint["columns"] and survey.plan["migrations"][0]["name"] == EPIC5
    staged, produced = (travel(s) for s in surveys)
    assert staged.fingerprint == produced.fingerprint and not staged.prechecks and produced.prechecks
    assert produced.table_sizes and set(produced.table_sizes) == set(whole.table_sizes)
    pre = travel(deploy.preflight_release(ctx, checked, staged, produced))

    assert pre.release.sha256 == whole.release.sha256  # the same content, so the same release
    assert pre.release.source == planless.source and "release" not in pre.release.source
    assert (pre.pending, pre.lint, pre.prechecks, pre.migrations) == (whole.pending, whole.lint, whole.prechecks,
                                                                       whole.migrations)
    assert set(release.load(ctx.store.s3, pre.release_uri).plans) == {"staging", "production"}


@pytest.mark.slow
def test_the_staging_survey_opens_staging_only_and_production_stays_unreachable(
        ctx: Deployment, targets: dict[str, Target], monkeypatch) -> None:
    from schema_deploy.pg import db
    from schema_deploy.pg.errors import DatabaseError

    staging = targets["staging"]
    production = Target("production", "production", UNREACHABLE)
    opened, connect = [], db.connect
    monkeypatch.setattr(db, "connect", lambda url, **kw: opened.append(url) or connect(url, **kw))

    checked = travel(deploy.preflight_bundle(ctx))
    assert opened == []  # the bundle part opens no database
    survey = travel(deploy.preflight_staging(ctx, staging, checked))
    assert survey.pending == PENDING and opened and set(opened) == {staging.url}
    with pytest.raises(DatabaseError, match=r"^cannot connect to postgresql://deployer:\*\*\*\*@127.0.0.1:9/production"
                                            r"\?connect_timeout=1: "):
        deploy.preflight_production(ctx, production, checked)
    with pytest.raises(DatabaseError):  # the whole preflight needs both, as the CLI's deploy does
        deploy.preflight(ctx, staging, production)


@pytest.mark.slow
def test_the_release_part_stops_on_schemas_that_differ_or_nothing_pending_and_on_a_survey_of_another_release(
        ctx: Deployment, targets: dict[str, Target]) -> None:
    from dataclasses import replace

    from schema_deploy.ops.errors import ReleaseInvalid
    from schema_deploy.pipeline.errors import NothingToDeploy
    from schema_deploy.state.errors import LedgerBlocked

    checked = travel(deploy.preflight_bundle(ctx))
    staged = deploy.preflight_staging(ctx, targets["staging"], checked)
    produced = deploy.preflight_production(ctx, targets["production"], checked)
    columns = {**produced.fingerprint["columns"], "public.users.nickname": "text"}
    drifted = travel(replace(produced, fingerprint={**produced.fingerprint, "columns": columns}))

    with pytest.raises(LedgerBlocked, match=r"^staging and production schemas differ before the change, so a staging "
                                            r"rehearsal would prove nothing:\n- columns public.users.nickname: only "
                                            r"in production \(text\)\nBring staging to production's schema \(restore "
                                            r"it from a production backup\), then run preflight again.$"):
        deploy.preflight_release(ctx, checked, staged, drifted)
    with pytest.raises(NothingToDeploy, match=r"nothing to deploy: all 4 migrations of .*migrations are applied on "
                                              "staging and production"):
        deploy.preflight_release(ctx, checked, replace(staged, pending=[]), replace(produced, pending=[]))
    assert [e for e, _ in ctx.notify.events] == ["nothing_pending"]
    other = replace(produced, release="f" * 64)
    with pytest.raises(ReleaseInvalid, match=rf"^release {checked.release_uri}: the survey of production read release "
                                             "ffffffffffff, not this one. Nothing was changed. Clear the run from "
                                             "preflight_bundle, so that both targets are surveyed with the same "
                                             "release.$"):
        deploy.preflight_release(ctx, checked, staged, other)


@pytest.mark.slow
def test_the_record_composed_once_is_the_same_in_every_database_and_the_document(
        ctx: Deployment, targets: dict[str, Target]) -> None:
    from schema_deploy.pipeline import AuditLink, RunRecord

    pre = travel(deploy.preflight(ctx, targets["staging"], targets["production"]))
    results = {"preflight": pre.to_xcom()}
    states = {"preflight": "success", "apply_staging": "success", "apply_production": "failed"}
    composed = travel(record.compose(ctx, {"apply_staging": "staging", "apply_production": "production"},
                                     results, states))
    assert isinstance(composed, RunRecord) and composed.changed == ["staging", "production"]
    links = [travel(record.chain(ctx, targets[env], composed)) for env in ("staging", "production")]
    again = travel(record.chain(ctx, targets["staging"], composed))  # a retried task finds its row
    kept = travel(record.keep(ctx, composed, links))

    assert again == links[0] and all(isinstance(link, AuditLink) for link in links)
    bucket, key = parse_s3_uri(kept.s3)
    document = json.loads(ctx.store.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    payloads = []
    for target in targets.values():
        with psycopg.connect(target.url) as conn:
            payloads += [r.payload for r in chain.read_rows(conn) if r.run_id == ctx.run.run_id]
            assert chain.verify_chain(conn).ok
    assert payloads == [document["record"], document["record"]] and document["record"] == composed.record
    assert document["chain"] == [link.row for link in links]
    assert kept.chain == {link.env: ChainRowRef(link.row["id"], link.row["row_hash"]) for link in links}
    assert kept.outcome == "failed" and "preflight_staging" in record.STEPS

    untouched = record.compose(ctx, {"apply_production": "production"}, results, {"preflight": "success"})
    assert record.chain(ctx, Target("production", "production", UNREACHABLE), untouched) is None  # not opened


@pytest.mark.slow
def test_a_waiver_lets_preflight_go_on_past_failing_prechecks_and_the_run_keeps_the_reason(
        ctx: Deployment, targets: dict[str, Target]) -> None:
    from dataclasses import replace

    from schema_deploy.plan.errors import PrecheckFailed

    production = targets["production"]
    with psycopg.connect(production.url, autocommit=True) as conn:
        conn.execute('INSERT INTO "experiment_assignments" ("id", "userId", "experimentId", "variant") '
                     "VALUES ('orphan_1', 'user_000001', 'exp_missing_0001', 'A')")
    checked = travel(deploy.preflight_bundle(ctx))
    with pytest.raises(PrecheckFailed, match=r"1 rows of experiment_assignments whose \(experimentId\) has no row"):
        deploy.preflight_production(ctx, production, checked)

    waiving = replace(ctx, params=replace(ctx.params, waive_prechecks="orphans are archived rows, ticket 42"))
    survey = travel(deploy.preflight_production(waiving, production, checked))
    (waived,) = [p for p in survey.prechecks if p["waived"]]
    assert (waived["waived"], waived["violations"], waived["check"]) == ("orphans are archived rows, ticket 42", 1,
                                                                        "foreign-key")
    kept = record.deploy_record(waiving, {"preflight": {"prechecks": survey.prechecks}}, {})
    assert kept["parameters"]["waive_prechecks"] == "orphans are archived rows, ticket 42"
    assert [p["waived"] for p in kept["prechecks"] if p["violations"]] == ["orphans are archived rows, ticket 42"]


@pytest.mark.slow
def test_production_verification_that_finds_lost_rows_or_a_missing_index_fails_naming_each_and_the_way_back(
        ctx: Deployment, targets: dict[str, Target]) -> None:
    from schema_deploy.pipeline import BackupResult
    from schema_deploy.pipeline.errors import DeployVerificationFailed

    production = targets["production"]
    pre = travel(deploy.preflight(ctx, targets["staging"], production))
    production_applied = travel(deploy.apply(ctx, production, pre))
    with psycopg.connect(production.url, autocommit=True) as conn:  # what went wrong after the apply
        before = conn.execute('SELECT count(*) FROM "recommendations"').fetchone()[0]
        conn.execute('DELETE FROM "recommendations" WHERE ctid IN (SELECT ctid FROM "recommendations" LIMIT 3)')
        conn.execute('DROP INDEX "recommendations_userId_createdAt_idx"')

    backup = BackupResult(uri="s3://backups/prod/2026-12-06/backup.dump", sha256="ab" * 32, size=1, rows=1,
                          verified="restore")
    with pytest.raises(DeployVerificationFailed) as caught:
        deploy.verify(ctx, production, pre, production_applied, backup)

    message = str(caught.value)
    assert message.startswith("verification of production failed: index recommendations_userId_createdAt_idx: "
                              "missing; ")
    assert "; planner uses recommendations_userId_createdAt_idx: plan uses: " in message
    assert f"; row count of recommendations changed {before} -> {before - 3}. " in message
    assert message.endswith("The change is applied; investigate, then roll back from the run's backup if needed: "
                            "s3://backups/prod/2026-12-06/backup.dump (rollback_schema, method backup, that backup "
                            "URI).")
    assert caught.value.exit_code == 1 and caught.value.target == "production"


@pytest.mark.slow
def test_a_backfill_runs_between_expand_and_contract_and_an_operators_pause_stops_the_run_before_the_contract(
        ctx: Deployment, targets: dict[str, Target], caplog) -> None:
    from schema_deploy.backfill import checkpoint
    from schema_deploy.backfill.errors import BackfillStopped
    from schema_deploy.backfill.spec import load_spec

    folder = ctx.cfg.migrations
    staging, production = targets["staging"], targets["production"]
    pre = travel(deploy.preflight(ctx, staging, production))  # its NOT NULL precheck waits for the backfill
    assert pre.pending["staging"][-2:] == [EXPAND, CONTRACT]

    spec = load_spec(EXPAND, folder / EXPAND / "backfill.yaml", (folder / EXPAND / "backfill.yaml").read_bytes())
    with psycopg.connect(staging.url, autocommit=True) as conn:  # an operator paused it before the run got there
        checkpoint.start(conn, spec.id, spec.digest, None, spec.table, 0)
        checkpoint.request(conn, spec.id, "pause", "alice")
    with pytest.raises(BackfillStopped) as err:
        deploy.apply(ctx, staging, pre)
    assert str(err.value) == (
        f"backfill {EXPAND}: paused by alice at 0 rows, so the migrations after it were not applied; those before "
        "it, and the rows done, stay (its checkpoint keeps them). Resume it (python -m schema_deploy backfill resume "
        f"--name {EXPAND}), then retry this task: the backfill goes on from its checkpoint.")
    assert EXPAND in applied(staging) and CONTRACT not in applied(staging)

    with psycopg.connect(staging.url, autocommit=True) as conn:
        checkpoint.request(conn, spec.id, None, "bob")
    earlier = len(ctx.notify.events)
    (backfill,) = travel(deploy.apply(ctx, staging, pre)).backfills  # the retry: the rows, then the contract
    assert (backfill.id, backfill.state, backfill.table) == (EXPAND, "done", "behavioral_events")
    with psycopg.connect(staging.url) as conn:
        events = conn.execute("SELECT count(*) FROM behavioral_events").fetchone()[0]
        wrong = conn.execute('SELECT count(*) FROM behavioral_events WHERE "eventDate" IS DISTINCT FROM '
                             '"timestamp"::date').fetchone()[0]
        not_null = conn.execute("SELECT attnotnull FROM pg_attribute WHERE attrelid = 'behavioral_events'::regclass "
                                "AND attname = 'eventDate'").fetchone()[0]
    assert (backfill.rows_done, wrong, not_null) == (events, 0, True) and events > 0
    assert CONTRACT in applied(staging)
    told = [(event, facts) for event, facts in ctx.notify.events[earlier:] if event.startswith("backfill_")]
    said = [event for event, _ in told]
    # Its start was said by the run that began it (here: the checkpoint the operator paused): not again.
    assert said[-1] == "backfill_done" and "backfill_started" not in said and "backfill_paused" not in said
    assert said.count("backfill_progress") <= 3  # each quarter at most once, never one per batch
    assert told[-1][1]["rows"] == str(events) and told[-1][1]["target"] == "staging"
    assert f"backfill {EXPAND} on staging: resuming at 0 of ~{events} rows" in caplog.text

    # Production as deploy_schema runs it: expand, backfill and contract as three steps, the health gate
    # checked between batches (no replica here: no wait).
    earlier = len(ctx.notify.events)
    expanded = travel(deploy.expand(ctx, production, pre))
    assert [m["name"] for m in expanded.applied] == [EPIC5, EXPAND]
    assert (expanded.stopped_before, expanded.waiting_for) == (CONTRACT, [EXPAND])
    assert CONTRACT not in applied(production)
    # A retry of the expand task (its worker died after the migration committed): the contract's NOT NULL
    # precheck is still left to the statement, since the backfill phase runs before it.
    retried = travel(deploy.expand(ctx, production, pre))
    assert (retried.applied, retried.stopped_before, retried.waiting_for) == ([], CONTRACT, [EXPAND])
    backfilled = travel(deploy.backfill(ctx, production, pre, expanded))
    (gated,) = backfilled.backfills
    assert (gated.state, gated.pauses, gated.rows_done) == ("done", [], events)
    again = travel(deploy.backfill(ctx, production, pre, expanded))  # a retry of the task: nothing left to do
    assert again.backfills[0].rows_this_run == 0
    told = [(event, facts) for event, facts in ctx.notify.events[earlier:] if event.startswith("backfill_")]
    assert told[0] == ("backfill_started", {"backfill": EXPAND, "target": "production", "table": "behavioral_events",
                                            "rows to do": f"~{events}", "WAL budget": "16 MB/s"})
    assert [e for e, _ in told].count("backfill_done") == 1 and told[-1][0] == "backfill_done"  # not again
    whole = travel(deploy.contract(ctx, production, pre, expanded, backfilled))
    assert [m["name"] for m in whole.applied] == [EPIC5, EXPAND, CONTRACT] and whole.stopped_before is None
    assert [b.id for b in whole.backfills] == [EXPAND] and whole.before == expanded.before
    assert set(applied(production)) >= {EXPAND, CONTRACT}
