"""Our ledger and the real Prisma CLI's, both directions, in every state a ledger row can be in.

One module-scoped fixture drives six independent chains (each on its own new database of the
staging cluster) side by side, because every Prisma run costs seconds (a successful `migrate
deploy` ~11 s, mostly an idle engine timer); the tests then read what each step showed. The
table in docs/prisma.md ("What each tool says in each ledger state") is this module's findings.

The bundle is sql/migrations up to Epic 5: the example after it has a PL/pgSQL trigger function, which
the Prisma CLI here (6, through the driver adapter, which cuts scripts at every `;`) cannot deploy
(tests/integration/test_prisma_splitter.py); the ledger facts do not depend on which migrations they are.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from engine_support import BASELINE, EPIC5, FAST, ledger
from engine_support import MIGRATIONS as SHIPPED
from prisma_support import Prisma, databases, outcome, prisma_bundle, run_parallel

from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply, load_state
from schema_deploy.engine.down import down
from schema_deploy.engine.errors import MigrationFailed
from schema_deploy.engine.resolve import resolve_applied, resolve_rolled_back
from schema_deploy.pg.db import connect
from schema_deploy.state.errors import LedgerBlocked

UP_TO_DATE = "Database schema is up to date!"
BOOM = "20251101000000_boom"
# Fails after a first statement that persists (Prisma, through the adapter, runs a script statement by statement).
BOOM_SQL = 'CREATE TABLE "boom_before" ("id" TEXT NOT NULL);\nSELECT 1 / 0;\n'
# A stepped migration for our engine (CONCURRENTLY cannot run in a transaction) that fails at its second step.
BOOM_STEPPED_SQL = ('CREATE INDEX CONCURRENTLY "boom_idx" ON "recommendations" ("title");\n'
                    'INSERT INTO "no_such_table" VALUES (1);\n')


class Crash(BaseException):
    """Stands for the worker dying: raised from apply's log callback, so nothing of ours runs after it."""


def ours(url: str, bundle) -> dict[str, object]:
    """Our status of every migration: {name: MigrationState}."""
    with connect(url) as conn:
        status, _ = load_state(conn, bundle)
    return {s.name: s for s in status.states}


def crlf_copy(root: Path, source: Path) -> Path:
    """The bundle with every migration.sql converted to CRLF line endings (what a Windows checkout gives)."""
    target = root / "crlf"
    shutil.copytree(source, target)
    for sql in target.glob("*/migration.sql"):
        sql.write_bytes(sql.read_bytes().replace(b"\n", b"\r\n"))
    return target


@pytest.fixture(scope="module")
def epic5_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """sql/migrations up to Epic 5 (see the module's docstring)."""
    folder = tmp_path_factory.mktemp("epic5") / "migrations"
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns("*_event_date_*"))
    return folder


@pytest.fixture(scope="module")
def chains(prisma: Prisma, stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory,
           epic5_bundle: Path) -> dict:
    root = tmp_path_factory.mktemp("interop")
    bundle = load_bundle(epic5_bundle)
    crlf = crlf_copy(root, epic5_bundle)
    failing = prisma_bundle(root / "boom", {BOOM: BOOM_SQL}, base=epic5_bundle)
    stepped = prisma_bundle(root / "boom-stepped", {BOOM: BOOM_STEPPED_SQL}, base=epic5_bundle)

    def ours_then_prisma(url: str) -> dict:
        seen: dict[str, object] = {"applied": apply(url, bundle, FAST)}
        seen["status"] = prisma.status(url, epic5_bundle)
        seen["status_crlf"] = prisma.status(url, crlf)
        seen["ours_crlf"] = ours(url, load_bundle(crlf))
        logs: list[str] = []
        seen["rollback"] = down(url, bundle, settings=FAST, log=logs.append)
        seen["rollback_log"] = logs
        seen["ledger_rolled_back"] = ledger(url)
        seen["status_after_rollback"] = prisma.status(url, epic5_bundle)
        seen["deploy_after_rollback"] = prisma.deploy(url, epic5_bundle)
        seen["ledger_redeployed"] = ledger(url)
        seen["ours_redeployed"] = ours(url, bundle)
        return seen

    def prisma_then_ours(url: str) -> dict:
        seen: dict[str, object] = {"deploy": prisma.deploy(url, epic5_bundle)}
        seen["ledger"] = ledger(url)
        seen["ours"] = ours(url, bundle)
        seen["ours_crlf"] = ours(url, load_bundle(crlf))
        seen["apply"] = apply(url, bundle, FAST)
        return seen

    def prisma_fails(url: str) -> dict:
        seen: dict[str, object] = {"deploy": prisma.deploy(url, failing)}
        seen["ledger"] = ledger(url, BOOM)
        seen["ours"] = ours(url, load_bundle(failing))
        try:
            apply(url, load_bundle(failing), FAST)
        except LedgerBlocked as exc:
            seen["apply_refused"] = str(exc)
        seen["resolved"] = resolve_rolled_back(url, load_bundle(failing), BOOM, FAST)
        seen["ours_rolled_back"] = ours(url, load_bundle(failing))
        seen["status_rolled_back"] = prisma.status(url, failing)
        seen["deploy_rolled_back"] = prisma.deploy(url, failing)
        seen["prisma_resolve_applied"] = prisma.resolve(url, failing, "--applied", BOOM)
        seen["ledger_resolved"] = ledger(url, BOOM)
        seen["ours_resolved"] = ours(url, load_bundle(failing))
        return seen

    def ours_fails_stepped(url: str) -> dict:
        seen: dict[str, object] = {}
        try:
            apply(url, load_bundle(stepped), FAST)
        except MigrationFailed as exc:
            seen["error"] = str(exc)
        seen["ledger"] = ledger(url, BOOM)
        seen["status"] = prisma.status(url, stepped)
        seen["deploy"] = prisma.deploy(url, stepped)
        seen["prisma_resolve_rolled_back"] = prisma.resolve(url, stepped, "--rolled-back", BOOM)
        seen["ledger_after"] = ledger(url, BOOM)
        return seen

    def ours_fails_atomic_then_resolves(url: str) -> dict:
        seen: dict[str, object] = {}
        try:
            apply(url, load_bundle(failing), FAST)
        except MigrationFailed as exc:
            seen["error"] = str(exc)
        seen["ledger"] = ledger(url, BOOM)
        seen["status"] = prisma.status(url, failing)
        resolve_applied(url, load_bundle(failing), BOOM, FAST)
        seen["status_resolved"] = prisma.status(url, failing)
        seen["ledger_resolved"] = ledger(url, BOOM)
        return seen

    def ours_interrupted(url: str) -> dict:
        apply(url, bundle, FAST, to=BASELINE)

        def crash_after_third_step(line: str) -> None:
            if f"{EPIC5}: step 3/" in line:
                raise Crash(line)

        seen: dict[str, object] = {}
        try:
            apply(url, bundle, FAST, online=True, log=crash_after_third_step)
        except Crash:
            pass
        seen["ledger"] = ledger(url, EPIC5)
        seen["ours"] = ours(url, bundle)
        seen["status"] = prisma.status(url, epic5_bundle)
        seen["deploy"] = prisma.deploy(url, epic5_bundle)
        seen["resumed"] = apply(url, bundle, FAST, online=True)
        seen["status_resumed"] = prisma.status(url, epic5_bundle)
        return seen

    jobs = [ours_then_prisma, prisma_then_ours, prisma_fails, ours_fails_stepped, ours_fails_atomic_then_resolves,
            ours_interrupted]
    with databases(stack_env["STAGING_DATABASE_URL"], len(jobs)) as urls:
        return run_parallel({job.__name__: (lambda j=job, u=url: j(u)) for job, url in zip(jobs, urls)})


def applied_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["finished_at"] is not None and r["rolled_back_at"] is None]


# --- both tools agree on a clean deployment ----------------------------------------------------------

@pytest.mark.slow
def test_after_our_apply_prisma_migrate_status_is_up_to_date(chains: dict) -> None:
    seen = outcome(chains, "ours_then_prisma")
    assert [m.name for m in seen["applied"].applied] == [BASELINE, EPIC5]
    status = seen["status"]
    assert status.code == 0 and "2 migrations found in prisma/migrations" in status.output, status
    assert UP_TO_DATE in status.output, status


def test_prisma_migrate_deploy_of_the_bundle_succeeds_and_our_status_agrees_row_by_row(chains: dict,
                                                                                      epic5_bundle: Path) -> None:
    seen = outcome(chains, "prisma_then_ours")
    deploy = seen["deploy"]
    assert deploy.code == 0 and "All migrations have been successfully applied." in deploy.output, deploy
    rows = seen["ledger"]
    assert [r["migration_name"] for r in rows] == [BASELINE, EPIC5]
    bundle = {m.name: m for m in load_bundle(epic5_bundle).migrations}
    for row in rows:
        state = seen["ours"][row["migration_name"]]
        assert (state.state, state.ledger_checksum, state.checksum) == ("applied", row["checksum"],
                                                                        bundle[state.name].checksum)
        assert row["checksum"] == bundle[state.name].checksum  # the same sha256 of the raw file
        assert (state.applied_steps, row["applied_steps_count"]) == (1, 1)
        assert state.applied_at == row["finished_at"].isoformat() and row["rolled_back_at"] is None
        assert row["logs"] is None and len(row["id"]) == 36
    assert seen["apply"].applied == []  # nothing pending for us either


def test_a_crlf_copy_of_the_bundle_is_no_drift_for_either_tool(chains: dict) -> None:
    ours_first, prisma_first = outcome(chains, "ours_then_prisma"), outcome(chains, "prisma_then_ours")
    status = ours_first["status_crlf"]
    assert status.code == 0 and UP_TO_DATE in status.output, status
    for states in (ours_first["ours_crlf"], prisma_first["ours_crlf"]):
        assert {n: s.state for n, s in states.items()} == {BASELINE: "applied", EPIC5: "applied"}
        assert all(s.checksum != s.ledger_checksum for s in states.values())  # CRLF bytes, LF checksum: matched


# --- failures ------------------------------------------------------------------------------------------

def test_a_failure_under_prisma_is_failed_for_us_and_our_apply_refuses_like_p3009(chains: dict) -> None:
    seen = outcome(chains, "prisma_fails")
    deploy = seen["deploy"]
    assert deploy.code == 1 and "Error querying the database: ERROR: division by zero" in deploy.output, deploy
    (row,) = seen["ledger"]
    assert (row["finished_at"], row["rolled_back_at"], row["applied_steps_count"]) == (None, None, 0)
    assert "division by zero" in row["logs"]
    state = seen["ours"][BOOM]
    assert (state.state, state.ledger_checksum) == ("failed", row["checksum"])
    assert seen["apply_refused"].startswith(
        "refusing to apply: the ledger is not in a state to build on.\n"
        f"- {BOOM} failed in an earlier run (after 0 step(s)); ledger logs: external connector error\n"
        "Error querying the database: ERROR: division by zero")
    assert f"`python -m schema_deploy resolve --rolled-back {BOOM}`" in seen["apply_refused"]


def test_a_failure_of_our_stepped_run_is_p3009_for_prisma_status_and_deploy(chains: dict) -> None:
    seen = outcome(chains, "ours_fails_stepped")
    assert seen["error"].startswith(f"migration {BOOM} failed at step 2 of 2")
    (row,) = seen["ledger"]
    assert (row["finished_at"], row["rolled_back_at"], row["applied_steps_count"]) == (None, None, 1)
    status = seen["status"]
    assert status.code == 1 and f"Following migration have failed:\n{BOOM}\n" in status.output, status
    assert f'prisma migrate resolve --rolled-back "{BOOM}"' in status.output
    deploy = seen["deploy"]
    assert deploy.code == 1 and "Error: P3009" in deploy.output, deploy
    assert re.search(rf"The `{BOOM}` migration started at \S+ \S+ UTC failed", deploy.output), deploy
    assert seen["ledger_after"] == seen["ledger"]  # deploy refused without touching the ledger


def test_a_failure_of_our_atomic_run_leaves_a_rolled_back_row_that_prisma_status_calls_up_to_date(
        chains: dict) -> None:
    seen = outcome(chains, "ours_fails_atomic_then_resolves")
    assert "Nothing of it was applied: its transaction rolled back." in seen["error"]
    (row,) = seen["ledger"]
    assert row["finished_at"] is None and row["rolled_back_at"] is not None
    status = seen["status"]  # the known disagreement: we say pending, Prisma's status says nothing is
    assert status.code == 0 and UP_TO_DATE in status.output, status


def test_our_interrupted_stepped_run_is_p3009_for_prisma_until_we_resume_it(chains: dict) -> None:
    seen = outcome(chains, "ours_interrupted")
    (row,) = seen["ledger"]
    assert row["logs"].startswith("[schema-deploy: in progress] plan=") and row["applied_steps_count"] == 3
    assert row["finished_at"] is None and row["rolled_back_at"] is None
    assert seen["ours"][EPIC5].state == "interrupted"
    status = seen["status"]
    assert status.code == 1 and f"Following migration have failed:\n{EPIC5}\n" in status.output, status
    deploy = seen["deploy"]
    assert deploy.code == 1 and "Error: P3009" in deploy.output and f"The `{EPIC5}` migration started" in deploy.output
    (resumed,) = seen["resumed"].applied
    assert resumed.resumed_from == 3
    assert seen["status_resumed"].code == 0 and UP_TO_DATE in seen["status_resumed"].output


# --- resolve, by either tool ------------------------------------------------------------------------------

def test_our_resolve_rolled_back_is_pending_for_prisma_deploy_but_up_to_date_for_prisma_status(chains: dict) -> None:
    seen = outcome(chains, "prisma_fails")
    assert seen["resolved"] == 1 and seen["ours_rolled_back"][BOOM].state == "pending"
    status = seen["status_rolled_back"]
    assert status.code == 0 and UP_TO_DATE in status.output, status
    deploy = seen["deploy_rolled_back"]  # deploy does try it again; its first statement persisted the first time
    assert deploy.code == 1 and 'ERROR: relation "boom_before" already exists' in deploy.output, deploy


def test_prisma_resolve_applied_is_applied_for_us(chains: dict) -> None:
    seen = outcome(chains, "prisma_fails")
    resolved = seen["prisma_resolve_applied"]
    assert resolved.code == 0 and f"Migration {BOOM} marked as applied." in resolved.output, resolved
    (row,) = applied_rows(seen["ledger_resolved"])
    assert row["started_at"] == row["finished_at"] and row["logs"] == "" and row["applied_steps_count"] == 0
    assert all(r["rolled_back_at"] is not None for r in seen["ledger_resolved"] if r is not row)
    state = seen["ours_resolved"][BOOM]
    assert (state.state, state.ledger_checksum) == ("applied", row["checksum"])


def test_our_resolve_applied_is_up_to_date_for_prisma(chains: dict) -> None:
    seen = outcome(chains, "ours_fails_atomic_then_resolves")
    assert seen["status_resolved"].code == 0 and UP_TO_DATE in seen["status_resolved"].output
    assert len(applied_rows(seen["ledger_resolved"])) == 1


def test_prisma_resolve_rolled_back_cannot_run_through_the_driver_adapter(chains: dict) -> None:
    """Prisma 6.19.3 checks the database with its native schema engine before `resolve --rolled-back` (not before
    `--applied`), and that binary cannot be downloaded here: pinned, so an upgrade that fixes it shows up."""
    seen = outcome(chains, "ours_fails_stepped")
    resolved = seen["prisma_resolve_rolled_back"]
    assert resolved.code == 1 and "Could not find schema-engine binary" in resolved.output, resolved
    assert seen["ledger_after"] == seen["ledger"]


# --- after our down-migration rollback ------------------------------------------------------------------

def test_after_our_rollback_prisma_deploy_reapplies_but_prisma_status_says_up_to_date(chains: dict) -> None:
    seen = outcome(chains, "ours_then_prisma")
    assert seen["rollback"].names == [EPIC5]
    assert seen["rollback_log"][-1].endswith(
        "_prisma_migrations marks it rolled back, so it is pending again. Prisma disagrees in one place: "
        "`prisma migrate deploy` applies it again, but `prisma migrate status` still says \"Database schema is up "
        "to date!\" (it does not count a rolled-back row as pending); `python -m schema_deploy status` shows it "
        "pending.")
    status = seen["status_after_rollback"]  # the known disagreement, pinned
    assert status.code == 0 and UP_TO_DATE in status.output, status
    deploy = seen["deploy_after_rollback"]
    assert deploy.code == 0 and f"└─ {EPIC5}/" in deploy.output and f"└─ {BASELINE}/" not in deploy.output, deploy
    epic5_rows = [r for r in seen["ledger_redeployed"] if r["migration_name"] == EPIC5]
    assert [r["rolled_back_at"] is None for r in epic5_rows] == [False, True]
    assert {n: s.state for n, s in seen["ours_redeployed"].items()} == {BASELINE: "applied", EPIC5: "applied"}
