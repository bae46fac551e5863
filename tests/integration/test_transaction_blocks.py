"""Explicit `BEGIN; … COMMIT;` blocks, as `prisma migrate dev` writes around an enum change, deploy.

A file that is one block is one transaction with its ledger row; a block among other statements is
one step of its own, run as written (no online rewrite inside it); a failure inside a block leaves
nothing of it behind. And a bundle holding such a file goes through the DAG's preflight.
"""
from __future__ import annotations

import logging
import uuid
from pathlib import Path

import psycopg
import pytest
from engine_support import FAST, ledger, rows, scalar
from prisma_support import prisma_bundle

from schema_deploy.bundle.discover import load_bundle
from schema_deploy.config.settings import DeployConfig
from schema_deploy.engine.apply import apply
from schema_deploy.engine.errors import MigrationFailed
from schema_deploy.pipeline import Deployment, RunInfo, RunParams, Store, Target, deploy
from schema_deploy.plan.planner import plan_for
from schema_deploy.state.ledger import read_rows
from schema_deploy.state.status import compute_status

INIT = """\
CREATE TYPE "SurveyStatus" AS ENUM ('draft', 'inProgress', 'archived', 'completed');
CREATE TABLE "Survey" ("id" TEXT PRIMARY KEY, "status" "SurveyStatus" NOT NULL DEFAULT 'draft', "a" INT, "b" INT);
CREATE TABLE "Owner" ("id" INT PRIMARY KEY);
INSERT INTO "Survey" ("id", "status", "a", "b") VALUES ('s1', 'inProgress', 1, 1), ('s2', 'completed', 1, 1);
INSERT INTO "Owner" VALUES (1);
"""
# What `prisma migrate dev` generates when an enum value is removed (formbricks' 20230915143725).
ALTER_ENUM = """\
/*
  Warnings:

  - The values [archived] on the enum `SurveyStatus` will be removed. If these variants are still used in the database, this will fail.

*/
-- AlterEnum
BEGIN;
CREATE TYPE "SurveyStatus_new" AS ENUM ('draft', 'inProgress', 'paused', 'completed');
ALTER TABLE "Survey" ALTER COLUMN "status" DROP DEFAULT;
ALTER TABLE "Survey" ALTER COLUMN "status" TYPE "SurveyStatus_new" USING ("status"::text::"SurveyStatus_new");
ALTER TYPE "SurveyStatus" RENAME TO "SurveyStatus_old";
ALTER TYPE "SurveyStatus_new" RENAME TO "SurveyStatus";
DROP TYPE "SurveyStatus_old";
ALTER TABLE "Survey" ALTER COLUMN "status" SET DEFAULT 'draft';
COMMIT;
"""


def enum_values(url: str) -> list[str]:
    return [r["enumlabel"] for r in rows(url, "SELECT enumlabel FROM pg_enum WHERE enumtypid = "
                                              "'\"SurveyStatus\"'::regtype ORDER BY enumsortorder")]


def test_prismas_alter_enum_block_applies_in_one_transaction_with_its_ledger_row(fresh_db: str,
                                                                                 tmp_path: Path) -> None:
    root = prisma_bundle(tmp_path / "m", {"20230101000000_init": INIT, "20230915143725_remove_archived": ALTER_ENUM})
    bundle = load_bundle(root)
    with psycopg.connect(fresh_db) as conn:
        plan = plan_for(conn, bundle, compute_status(bundle, []), online=True)
    enum_plan = plan.migrations[1]
    assert enum_plan.atomic and len(enum_plan.steps[0].statements) == 7  # BEGIN and COMMIT are not statements
    assert enum_plan.notes == [f"{root}/20230915143725_remove_archived/migration.sql:8: BEGIN … COMMIT block "
                               "(lines 8-16, 7 statement(s)) runs as written, in one transaction; online rewrites "
                               "are not applied inside it (a CONCURRENTLY build cannot run in a transaction block)"]

    result = apply(fresh_db, bundle, FAST, online=True)

    assert [m.name for m in result.applied] == ["20230101000000_init", "20230915143725_remove_archived"]
    assert enum_values(fresh_db) == ["draft", "inProgress", "paused", "completed"]
    row = ledger(fresh_db, "20230915143725_remove_archived")[-1]
    assert (row["finished_at"] is not None, row["applied_steps_count"], row["logs"]) == (True, 1, None)


def test_a_failure_inside_a_block_leaves_nothing_of_it_and_the_ledger_says_so(fresh_db: str, tmp_path: Path) -> None:
    failing = ALTER_ENUM.replace("('draft', 'inProgress', 'paused', 'completed')", "('draft', 'paused', 'completed')")
    root = prisma_bundle(tmp_path / "m", {"20230101000000_init": INIT, "20230915143725_remove_archived": failing})
    with pytest.raises(MigrationFailed, match=r"migration 20230915143725_remove_archived failed at .*migration\.sql:11: "
                                              r"SQLSTATE 22P02: invalid input value for enum \"SurveyStatus_new\": "
                                              r"\"inProgress\"\nNothing of it was applied: its transaction rolled back"):
        apply(fresh_db, load_bundle(root), FAST, online=True)
    assert enum_values(fresh_db) == ["draft", "inProgress", "archived", "completed"]
    assert scalar(fresh_db, "SELECT to_regtype('\"SurveyStatus_new\"') IS NULL") is True
    (row,) = ledger(fresh_db, "20230915143725_remove_archived")
    assert row["finished_at"] is None and row["rolled_back_at"] is not None


def test_a_block_among_other_statements_is_one_step_as_written_while_the_rest_goes_online(fresh_db: str,
                                                                                          tmp_path: Path) -> None:
    later = ('CREATE INDEX "Survey_a_idx" ON "Survey" ("a");\n'
             "BEGIN;\n"
             'CREATE INDEX "Survey_b_idx" ON "Survey" ("b");\n'
             'ALTER TABLE "Survey" ADD CONSTRAINT "Survey_a_fkey" FOREIGN KEY ("a") REFERENCES "Owner" ("id");\n'
             "COMMIT;\n"
             'ALTER TABLE "Survey" ADD CONSTRAINT "Survey_b_fkey" FOREIGN KEY ("b") REFERENCES "Owner" ("id");\n')
    root = prisma_bundle(tmp_path / "m", {"20230101000000_init": INIT, "20230201000000_keys": later})
    bundle = load_bundle(root)
    apply(fresh_db, bundle, FAST, to="20230101000000_init")
    with psycopg.connect(fresh_db) as conn:
        (mp,) = plan_for(conn, bundle, compute_status(bundle, read_rows(conn)), online=True).migrations

    kinds = [(s.transactional, [p.sql.split(" ON ")[0] if p.sql.startswith("CREATE") else p.sql.split(" FOREIGN")[0]
                                for p in s.statements]) for s in mp.steps]
    assert kinds == [
        (False, ['CREATE INDEX CONCURRENTLY "Survey_a_idx"']),  # outside the block: online
        (True, ['CREATE INDEX "Survey_b_idx"', 'ALTER TABLE "Survey" ADD CONSTRAINT "Survey_a_fkey"']),  # as written
        (True, ['ALTER TABLE "Survey" ADD CONSTRAINT "Survey_b_fkey"']),  # NOT VALID …
        (True, ['ALTER TABLE "Survey" VALIDATE CONSTRAINT "Survey_b_fkey"']),  # … then validated
    ]
    assert "NOT VALID" in mp.steps[2].statements[0].sql and not mp.steps[1].statements[1].source.sql.endswith("VALID")

    apply(fresh_db, bundle, FAST, online=True)
    (row,) = ledger(fresh_db, "20230201000000_keys")
    assert (row["finished_at"] is not None, row["applied_steps_count"]) == (True, 4)
    assert scalar(fresh_db, "SELECT count(*) FROM pg_constraint WHERE conname LIKE 'Survey\\__\\_fkey' "
                            "AND convalidated") == 2


def test_a_bundle_with_a_block_goes_through_the_dags_preflight(stack_env: dict[str, str], tmp_path: Path, s3,
                                                                fresh_db: str, caplog) -> None:
    root = prisma_bundle(tmp_path / "m", {"20230101000000_init": INIT, "20230915143725_remove_archived": ALTER_ENUM})
    cfg = DeployConfig(bundles=(("main", root),), approval_manual=False)
    store = Store(s3, f"s3://{stack_env['BACKUP_BUCKET']}/blocks-{uuid.uuid4().hex[:8]}",
                  {"ServerSideEncryption": "AES256"})
    caplog.set_level(logging.INFO, logger="schema_deploy")
    ctx = Deployment(cfg=cfg, store=store, run=RunInfo(run_id=f"test__{uuid.uuid4().hex[:6]}", triggered_by="ci"),
                     params=RunParams(skip_window=True, skip_window_reason="a test"), notify=lambda *a, **k: {})

    checked = deploy.preflight_bundle(ctx)
    survey = deploy.preflight_staging(ctx, Target("staging", "staging", fresh_db), checked)

    assert survey.pending == ["20230101000000_init", "20230915143725_remove_archived"]
    (enum_step,) = survey.plan["migrations"][1]["steps"]
    assert enum_step["transactional"] and enum_step["sql"][0].startswith('CREATE TYPE "SurveyStatus_new"')
