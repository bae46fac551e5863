"""Never a silent success: what the ledger says ran is what ran, and a refusal says why.

Each test pins one way an earlier version reported success (or refused) wrongly: a second index
skipped because PostgreSQL cut two long names to the same 63 bytes, a migration that wrote the
ledger, a `SET ROLE` or `search_path` leaking into the next migration, a precheck that judged
today's rows instead of those its statement sees, a precheck stuck behind a lock or a timeout
with a bare driver error, and passwords or S3 keys taken from user input as they were.
"""
from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import psycopg
import pytest
from engine_support import FAST, ledger, rows, scalar, table_exists
from prisma_support import prisma_bundle

from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply
from schema_deploy.engine.errors import MigrationFailed
from schema_deploy.lint.engine import lint_bundle
from schema_deploy.pg.retry import Settings
from schema_deploy.plan.errors import PendingMigrationInvalid, PrecheckLocked, PrecheckTimedOut

NAME_63 = "Response_surveyId_createdAt_contactAttributeKeyId_environmentId"  # 63 bytes
assert len(NAME_63) == 63
BASE = "20240101000000_base"


def bundle(tmp_path: Path, migrations: dict[str, str]) -> Path:
    return prisma_bundle(tmp_path / f"m{uuid.uuid4().hex[:6]}", migrations)


# --- names PostgreSQL cuts to the same 63 bytes ---------------------------------------------------------

def test_two_long_index_names_that_collide_fail_the_migration_instead_of_skipping_the_second(
        fresh_db: str, tmp_path: Path) -> None:
    root = bundle(tmp_path, {
        BASE: 'CREATE TABLE "Response" ("a" INT, "b" INT);\n',
        "20240102000000_indexes": f'CREATE INDEX "{NAME_63}_a_idx" ON "Response" ("a");\n'
                                  f'CREATE INDEX "{NAME_63}_b_idx" ON "Response" ("b");\n'})
    apply(fresh_db, load_bundle(root), FAST, to=BASE)

    with pytest.raises(MigrationFailed, match=rf'(?s)migration 20240102000000_indexes failed at step 2 of 2, .*'
                                              rf'SQLSTATE 42P07: index "{NAME_63}" already exists with another '
                                              r'definition: CREATE INDEX .* USING btree \(a\); this migration asks '
                                              rf'for CREATE INDEX "{NAME_63}_b_idx" ON "Response" \("b"\)\. Nothing '
                                              r"was skipped"):
        apply(fresh_db, load_bundle(root), FAST, online=True)
    (row,) = ledger(fresh_db, "20240102000000_indexes")
    assert row["finished_at"] is None and row["applied_steps_count"] == 1  # failed, not applied

    collisions = [f for f in lint_bundle(load_bundle(root)) if f.rule == "identifier-collision"]
    assert [(Path(f.path).parent.name, f.line, f.severity) for f in collisions] == [
        ("20240102000000_indexes", 2, "error")]


def test_an_index_already_there_with_the_same_definition_is_still_skipped_on_a_retry(fresh_db: str,
                                                                                    tmp_path: Path) -> None:
    root = bundle(tmp_path, {BASE: "CREATE TABLE t (a INT, b INT);\n",
                             "20240102000000_index": 'CREATE INDEX "t_a_idx" ON t (a);\nCREATE INDEX t_b_idx ON t (b);\n'})
    apply(fresh_db, load_bundle(root), FAST, to=BASE)
    with psycopg.connect(fresh_db, autocommit=True) as conn:  # the first attempt built it, then died
        conn.execute('CREATE INDEX "t_a_idx" ON t (a)')
    result = apply(fresh_db, load_bundle(root), FAST, online=True)
    assert result.applied[0].steps[0].skipped == ['CREATE INDEX CONCURRENTLY t_a_idx ON t (a)']


# --- the ledger is ours -------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("statement", ['TRUNCATE "_prisma_migrations"', "DELETE FROM _prisma_migrations",
                                       "UPDATE public._prisma_migrations SET logs = 'x'"])
def test_a_migration_that_writes_the_ledger_is_refused_before_anything_runs(fresh_db: str, tmp_path: Path,
                                                                           statement: str) -> None:
    root = bundle(tmp_path, {BASE: "CREATE TABLE t (a INT);\n",
                             "20240102000000_reset": f"CREATE TABLE u (a INT);\n{statement};\n"})
    apply(fresh_db, load_bundle(root), FAST, to=BASE)
    with pytest.raises(PendingMigrationInvalid, match=rf"migration\.sql:2:1: `{re.escape(statement)}` writes "
                                                      r"_prisma_migrations, the ledger that says which migrations ran"):
        apply(fresh_db, load_bundle(root), FAST)
    assert [r["migration_name"] for r in ledger(fresh_db)] == [BASE] and not table_exists(fresh_db, "u")


# --- a clean session per migration -----------------------------------------------------------------------

def test_a_search_path_set_by_one_migration_does_not_reach_the_next(fresh_db: str, tmp_path: Path) -> None:
    root = bundle(tmp_path, {BASE: "CREATE SCHEMA other;\nSET search_path = other;\nCREATE TABLE a (id INT);\n",
                             "20240102000000_next": "CREATE TABLE b (id INT);\n"})
    with psycopg.connect(fresh_db) as conn:
        from schema_deploy.plan.planner import plan_for
        from schema_deploy.state.status import compute_status
        plan = plan_for(conn, load_bundle(root), compute_status(load_bundle(root), []))
    assert any("SET search_path lasts until this migration ends" in n for n in plan.migrations[0].notes)

    apply(fresh_db, load_bundle(root), FAST)
    where = {r["relname"]: r["nspname"] for r in rows(
        fresh_db, "SELECT c.relname, n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                  "WHERE c.relname IN ('a', 'b')")}
    assert where == {"a": "other", "b": "public"}


@pytest.mark.slow
def test_a_role_set_by_one_migration_owns_only_that_migrations_objects(fresh_db: str, tmp_path: Path,
                                                                        stack_env: dict[str, str]) -> None:
    role = f"owner_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(stack_env["STAGING_ADMIN_URL"], autocommit=True) as admin:
        admin.execute(f'CREATE ROLE "{role}" NOLOGIN')
        admin.execute(f'GRANT "{role}" TO migrator')
    try:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute(f'GRANT CREATE ON SCHEMA public TO "{role}"')
        root = bundle(tmp_path, {BASE: f'SET ROLE "{role}";\nCREATE TABLE a (id INT);\n',
                                 "20240102000000_next": "CREATE TABLE b (id INT);\n"})
        apply(fresh_db, load_bundle(root), FAST)
        owners = {r["relname"]: r["owner"] for r in rows(
            fresh_db, "SELECT relname, pg_get_userbyid(relowner) AS owner FROM pg_class WHERE relname IN ('a', 'b')")}
        assert owners == {"a": role, "b": "migrator"}
        assert all(r["finished_at"] is not None for r in ledger(fresh_db))
    finally:
        with psycopg.connect(fresh_db, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS a")
            conn.execute(f'REVOKE CREATE ON SCHEMA public FROM "{role}"')
        with psycopg.connect(stack_env["STAGING_ADMIN_URL"], autocommit=True) as admin:
            admin.execute(f'DROP ROLE "{role}"')


# --- prechecks judge the rows the statement will see -----------------------------------------------------

BACKFILL = ('UPDATE "User" SET "url" = \'https://example.com/\' || "id" WHERE "url" IS NULL{cond};\n'
            'ALTER TABLE "User" ALTER COLUMN "url" SET NOT NULL;\n')
USERS = 'CREATE TABLE "User" ("id" INT PRIMARY KEY, "url" TEXT);\nINSERT INTO "User" VALUES (1, NULL), (2, NULL), (3, \'x\');\n'


@pytest.mark.slow
@pytest.mark.parametrize("online", [True, False])
def test_a_backfill_followed_by_set_not_null_in_one_file_deploys(fresh_db: str, tmp_path: Path, online: bool) -> None:
    root = bundle(tmp_path, {BASE: USERS, "20240102000000_backfill": BACKFILL.format(cond="")})
    apply(fresh_db, load_bundle(root), FAST, to=BASE)
    result = apply(fresh_db, load_bundle(root), FAST, online=online)
    assert [m.name for m in result.applied] == ["20240102000000_backfill"]
    assert scalar(fresh_db, "SELECT is_nullable FROM information_schema.columns WHERE table_name = 'User' "
                            "AND column_name = 'url'") == "NO"


@pytest.mark.slow
@pytest.mark.parametrize("online", [True, False])
def test_a_backfill_that_leaves_rows_fails_with_the_counts_of_the_rows_the_statement_saw(
        fresh_db: str, tmp_path: Path, online: bool) -> None:
    root = bundle(tmp_path, {BASE: USERS, "20240102000000_backfill": BACKFILL.format(cond=' AND "id" > 1')})
    apply(fresh_db, load_bundle(root), FAST, to=BASE)
    with pytest.raises(MigrationFailed, match=r"(?s)migration\.sql:2: SQLSTATE 23(502|514): .*; precheck: 1 rows of "
                                              r"User where url IS NULL when this statement ran \(after the statements "
                                              r"before it in this deployment\) \(samples: \(0,1\)\)"):
        apply(fresh_db, load_bundle(root), FAST, online=online)


@pytest.mark.slow
def test_a_precheck_behind_a_lock_is_retried_then_names_the_session_holding_it(fresh_db: str, tmp_path: Path) -> None:
    root = bundle(tmp_path, {BASE: USERS.replace("(1, NULL), (2, NULL)", "(1, 'a'), (2, 'b')"),
                             "20240102000000_not_null": 'ALTER TABLE "User" ALTER COLUMN "url" SET NOT NULL;\n'})
    apply(fresh_db, load_bundle(root), FAST, to=BASE)
    with psycopg.connect(fresh_db, application_name="nightly-report") as holder:
        holder.execute('LOCK TABLE "User" IN ACCESS EXCLUSIVE MODE')
        started = time.monotonic()
        with pytest.raises(PrecheckLocked, match=rf"data precheck for .*migration\.sql:1 \(rows of User where url IS "
                                                 rf"NULL\) could not read User in 21 attempts: .* Held by: pid "
                                                 rf"{holder.info.backend_pid} application 'nightly-report' state idle in "
                                                 r"transaction .*Nothing was changed"):
            apply(fresh_db, load_bundle(root), FAST)
        assert time.monotonic() - started < 20  # FAST's short lock_timeouts, not a 60 s statement_timeout
    assert ledger(fresh_db, "20240102000000_not_null") == []


@pytest.mark.slow
def test_a_precheck_that_times_out_names_the_check_the_table_and_the_setting(fresh_db: str, tmp_path: Path,
                                                                               cli) -> None:
    slow = "CREATE FUNCTION slow_positive(x INT) RETURNS BOOLEAN LANGUAGE sql AS $$ SELECT pg_sleep(0.05) IS NOT NULL AND x > 0 $$;\n"
    root = bundle(tmp_path, {BASE: slow + "CREATE TABLE t (a INT);\nINSERT INTO t SELECT g FROM generate_series(1, 40) g;\n",
                             "20240102000000_check": "ALTER TABLE t ADD CONSTRAINT t_a_positive CHECK (slow_positive(a));\n"})
    apply(fresh_db, load_bundle(root), FAST, to=BASE)
    settings = Settings(**{**FAST.__dict__, "precheck_timeout_ms": 200})
    with pytest.raises(PrecheckTimedOut, match=r"data precheck for .*migration\.sql:1 \(rows of t violating CHECK "
                                               r"\(slow_positive\(a\)\)\) did not finish within 200 ms on t \(~?[0-9,]+ rows|"
                                               r"size unknown: never analyzed\)"):
        apply(fresh_db, load_bundle(root), settings)
    result = cli("apply", "--db", fresh_db, "--migrations", str(root), "--precheck-timeout-ms", "200")
    assert result.returncode == 1 and "Give it longer with --precheck-timeout-ms" in result.stderr
    assert "QueryCanceled" not in result.stderr and "Traceback" not in result.stderr


def test_a_precheck_whose_query_fails_on_the_rows_says_so_by_name(fresh_db: str, tmp_path: Path) -> None:
    root = bundle(tmp_path, {BASE: "CREATE TABLE t (a INT);\nINSERT INTO t VALUES (1), (0);\n",
                             "20240102000000_check": "ALTER TABLE t ADD CONSTRAINT t_inv CHECK (10 / a > 0);\n"})
    apply(fresh_db, load_bundle(root), FAST, to=BASE)
    from schema_deploy.plan.errors import PrecheckCouldNotRun

    with pytest.raises(PrecheckCouldNotRun, match=r"data precheck for .*migration\.sql:1 \(rows of t violating CHECK "
                                                  r"\(10 / a > 0\)\) could not run: SQLSTATE 22012: division by zero\. "
                                                  r"Nothing was changed"):
        apply(fresh_db, load_bundle(root), FAST)


def test_failing_prechecks_can_be_waived_for_one_run_with_a_reason_that_is_said(fresh_db: str, tmp_path: Path,
                                                                                   cli) -> None:
    root = bundle(tmp_path, {BASE: USERS, "20240102000000_index": 'CREATE UNIQUE INDEX u_url ON "User" ("url");\n'})
    apply(fresh_db, load_bundle(root), FAST, to=BASE)
    with psycopg.connect(fresh_db, autocommit=True) as conn:
        conn.execute("""UPDATE "User" SET "url" = 'dup'""")
    refused = cli("apply", "--db", fresh_db, "--migrations", str(root))
    assert refused.returncode == 1 and "1 duplicate (url) groups in User" in refused.stderr
    assert cli("apply", "--db", fresh_db, "--migrations", str(root), "--waive-prechecks", " ").returncode == 2
    waived = cli("apply", "--db", fresh_db, "--migrations", str(root), "--waive-prechecks", "dedup runs nightly")
    assert "precheck waived (dedup runs nightly): " in waived.stderr and "1 duplicate (url) groups" in waived.stderr
    assert waived.returncode == 1 and "could not create unique index" in waived.stderr  # the statement still fails


# --- passwords and key segments from user input -------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("password", ["p%zzS3cret", "pa#ssS3cret", "pa ssS3cret", "p%2S3cret"])
def test_a_password_that_is_not_valid_percent_encoding_is_never_echoed(password: str, cli) -> None:
    url = f"postgresql://migrator:{password}@127.0.0.1:55432/x"
    for args in (("status", "--db", url), ("backup", "--db", url, "--to", "s3://b/p")):
        result = cli(*args)
        out = result.stdout + result.stderr
        assert result.returncode == 2, out
        assert "S3cret" not in out and "not valid percent-encoding" in out and "urllib.parse.quote" in out


@pytest.mark.slow
@pytest.mark.parametrize("environment", ["..", ".", "", "a/b", "x\ny"])
def test_an_environment_that_would_make_another_s3_key_is_refused(environment: str, cli, fresh_db: str, s3) -> None:
    result = cli("backup", "--db", fresh_db, "--to", "s3://schema-deploy-backups/x", "--environment", environment)
    assert result.returncode == 2
    assert (f"environment {environment!r} cannot be part of an S3 key: empty names, '.', '..', '/', '\\' and "
            "control characters are refused. Use letters, digits") in result.stderr


def test_a_migration_that_removes_its_own_ledger_row_indirectly_is_not_reported_applied(fresh_db: str,
                                                                                        tmp_path: Path) -> None:
    # A function hides the write from the parser: the check when the row is finished still sees it.
    forget = ("CREATE FUNCTION forget() RETURNS void LANGUAGE sql AS "
              "$$ DELETE FROM _prisma_migrations WHERE finished_at IS NULL $$;\n")
    root = bundle(tmp_path, {BASE: forget, "20240102000000_forgets": "CREATE TABLE u (a INT);\nSELECT forget();\n"})
    apply(fresh_db, load_bundle(root), FAST, to=BASE)
    from schema_deploy.state.errors import LedgerRowMissing

    with pytest.raises(LedgerRowMissing, match=r"the ledger row [0-9a-f-]{36} this run inserted into "
                                               r"public\._prisma_migrations was gone or already finished when the "
                                               r"migration ended: .*a migration that ran in one transaction rolled back"):
        apply(fresh_db, load_bundle(root), FAST)
    assert [r["migration_name"] for r in ledger(fresh_db)] == [BASE] and not table_exists(fresh_db, "u")
