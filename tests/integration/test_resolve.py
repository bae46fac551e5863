"""`resolve --applied` / `--rolled-back`: Prisma's semantics, and Prisma's refusals."""
from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from engine_support import BASELINE, CONTRACT, EPIC5, EXPAND, FAST, MIGRATIONS, ledger, plain_bundle, table_exists

from schema_deploy.bundle.discover import load_bundle
from schema_deploy.engine.apply import apply, load_state
from schema_deploy.engine.errors import MigrationFailed, ResolveRefused
from schema_deploy.engine.resolve import resolve_applied, resolve_rolled_back
from schema_deploy.pg.db import connect

SETUP = "20250101000000_setup"
STEPPED = "20250102000000_stepped"


@pytest.fixture
def bundle():
    return load_bundle(MIGRATIONS)


def states(url: str, bundle) -> dict[str, str]:
    with connect(url) as conn:
        status, _ = load_state(conn, bundle)
    return {s.name: s.state for s in status.states}


def failed_stepped_migration(url: str, tmp_path: Path):
    """A bundle whose second migration failed after its first step (a failed row in the ledger)."""
    bundle = plain_bundle(tmp_path / "m", {
        SETUP: "CREATE TABLE t (a int);\n",
        STEPPED: "CREATE INDEX CONCURRENTLY t_a_idx ON t (a);\nINSERT INTO no_such_table VALUES (1);\n",
    })
    with pytest.raises(MigrationFailed):
        apply(url, bundle, FAST)
    return bundle


# --- refusals ---------------------------------------------------------------------------

def test_rolled_back_is_refused_for_an_applied_migration(fresh_db: str, bundle) -> None:
    apply(fresh_db, bundle, FAST)
    with pytest.raises(ResolveRefused, match=rf"^cannot mark {BASELINE} as rolled back: it is not in a failed state "
                                             r"\(applied\)\. Only a failed migration can be resolved as rolled back "
                                             r"\(Prisma P3012\)\.$"):
        resolve_rolled_back(fresh_db, bundle, BASELINE, FAST)


def test_rolled_back_is_refused_for_a_migration_whose_only_attempt_rolled_back(fresh_db: str, tmp_path: Path) -> None:
    broken = plain_bundle(tmp_path / "m", {SETUP: "CREATE TABLE t (a int);\nINSERT INTO nope VALUES (1);\n"})
    with pytest.raises(MigrationFailed):
        apply(fresh_db, broken, FAST)
    with pytest.raises(ResolveRefused, match=r"not in a failed state \(already rolled back\).*\(Prisma P3012\)"):
        resolve_rolled_back(fresh_db, broken, SETUP, FAST)


def test_rolled_back_is_refused_for_a_migration_never_applied(fresh_db: str, bundle) -> None:
    apply(fresh_db, bundle, FAST, to=BASELINE)
    with pytest.raises(ResolveRefused, match=rf"^cannot mark {EPIC5} as rolled back: it was never applied to the "
                                             r"database \(Prisma P3011\)\."):
        resolve_rolled_back(fresh_db, bundle, EPIC5, FAST)


def test_applied_is_refused_for_an_applied_migration(fresh_db: str, bundle) -> None:
    apply(fresh_db, bundle, FAST)
    with pytest.raises(ResolveRefused, match=rf"^cannot mark {EPIC5} as applied: it is already recorded as applied "
                                             r"\(Prisma P3008\)\.$"):
        resolve_applied(fresh_db, bundle, EPIC5, FAST)
    assert len(ledger(fresh_db, EPIC5)) == 1


@pytest.mark.parametrize("resolve", [resolve_applied, resolve_rolled_back], ids=["applied", "rolled-back"])
def test_a_name_not_in_the_bundle_is_refused_listing_the_latest_names(fresh_db: str, bundle, resolve) -> None:
    with pytest.raises(ResolveRefused, match=rf"^migration 20250101000000_typo is not in {MIGRATIONS} \(Prisma "
                                             rf"P3017\)\. Use the folder name exactly; the latest ones are: "
                                             rf"{BASELINE}, {EPIC5}, {EXPAND}, {CONTRACT}\.$"):
        resolve(fresh_db, bundle, "20250101000000_typo", FAST)
    assert not table_exists(fresh_db, "_prisma_migrations")


# --- what they record -------------------------------------------------------------------

def test_applied_on_a_database_without_ledger_baselines_it(fresh_db: str, bundle) -> None:
    # An existing database built by hand: the baseline's objects, no ledger.
    with psycopg.connect(fresh_db) as conn:
        conn.execute(bundle.by_name()[BASELINE].sql)
    assert not table_exists(fresh_db, "_prisma_migrations")

    resolve_applied(fresh_db, bundle, BASELINE, FAST)
    (row,) = ledger(fresh_db)
    assert row["migration_name"] == BASELINE
    assert row["checksum"] == bundle.by_name()[BASELINE].checksum
    assert row["logs"] == ""
    assert row["started_at"] == row["finished_at"]
    assert row["rolled_back_at"] is None
    assert states(fresh_db, bundle) == {BASELINE: "applied", EPIC5: "pending", EXPAND: "pending", CONTRACT: "pending"}

    assert [m.name for m in apply(fresh_db, bundle, FAST).applied] == [EPIC5, EXPAND, CONTRACT]
    assert set(states(fresh_db, bundle).values()) == {"applied"}


def test_rolled_back_marks_the_failed_row_so_a_fixed_file_can_be_applied(fresh_db: str, tmp_path: Path) -> None:
    bundle = failed_stepped_migration(fresh_db, tmp_path)
    assert resolve_rolled_back(fresh_db, bundle, STEPPED, FAST) == 1
    (row,) = ledger(fresh_db, STEPPED)
    assert row["rolled_back_at"] is not None and row["finished_at"] is None
    assert states(fresh_db, bundle)[STEPPED] == "pending"


def test_applied_on_a_failed_migration_rolls_back_the_failed_row_and_adds_an_applied_one(
        fresh_db: str, tmp_path: Path) -> None:
    bundle = failed_stepped_migration(fresh_db, tmp_path)
    resolve_applied(fresh_db, bundle, STEPPED, FAST)
    failed, applied = ledger(fresh_db, STEPPED)
    assert failed["rolled_back_at"] is not None and failed["finished_at"] is None and "42P01" in failed["logs"]
    assert applied["finished_at"] is not None and applied["rolled_back_at"] is None and applied["logs"] == ""
    assert applied["checksum"] == bundle.by_name()[STEPPED].checksum
    assert states(fresh_db, bundle) == {SETUP: "applied", STEPPED: "applied"}
