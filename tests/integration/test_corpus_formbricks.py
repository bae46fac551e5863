"""A real Prisma history deploys: Formbricks' first 97 migrations (../shared/corpora/formbricks-97).

Nobody here wrote them: they are a user's folder, Prisma's own `BEGIN; … COMMIT;` enum blocks
included. The engine's apply deploys them twice, as `python -m schema_deploy apply` does:
from empty in one run, and one migration at a time (`--to NAME`, online mode, so later indexes
and foreign keys land on tables that exist by then). Each way the ledger holds all 97 as
applied, the schema equals what `psql --single-transaction -f` of each file in order builds,
and the real Prisma CLI's `migrate status` reads our ledger as up to date.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from engine_support import FAST, REPO, ledger
from prisma_support import databases, outcome, run_parallel

from schema_deploy.bundle.discover import checksum_matches, load_bundle
from schema_deploy.engine.apply import apply
from schema_deploy.pg.tools import find_binary as tool

CORPORA = Path(os.environ.get("SCHEMA_DEPLOY_CORPORA", REPO.parent / "shared" / "corpora"))
FOLDER = CORPORA / "formbricks-97" / "migrations"
UP_TO_DATE = "Database schema is up to date!"


@pytest.fixture(scope="module")
def corpus() -> Path:
    if not FOLDER.is_dir():
        pytest.fail(f"{FOLDER} not found: the real histories live in ../shared/corpora beside the clone "
                    "(or set SCHEMA_DEPLOY_CORPORA to that folder).")
    return FOLDER


def schema(url: str) -> str:
    """`pg_dump --schema-only` without the ledger and our own schema, and without the dump's random
    \\restrict key: what the migrations built."""
    dump = subprocess.run([tool("pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
                           "--exclude-table=public._prisma_migrations", "--exclude-schema=schema_deploy", url],
                          capture_output=True, text=True, check=True).stdout
    return "\n".join(line for line in dump.splitlines()
                     if line and not line.startswith("--") and not re.match(r"\\(un)?restrict ", line))


def psql_each_file(url: str, folder: Path) -> None:
    for path in sorted(folder.glob("*/migration.sql")):
        subprocess.run([tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--single-transaction", "-d", url,
                        "-f", str(path)], capture_output=True, text=True, check=True)


@pytest.fixture(scope="module")
def deployed(corpus: Path, stack_env: dict[str, str], prisma) -> dict:
    """The three databases (psql's reference, ours from empty, ours one at a time) and what was seen."""
    bundle = load_bundle(corpus)
    with databases(stack_env["STAGING_DATABASE_URL"], 3) as (reference, whole, stepwise):
        psql_each_file(reference, corpus)
        cli = subprocess.run([os.sys.executable, "-m", "schema_deploy", "apply", "--db", whole, "--migrations",
                              str(corpus)], cwd=REPO, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "PYTHONPATH": f"{REPO / 'plugins'}:{REPO}"})
        stepped = [apply(stepwise, bundle, FAST, to=m.name, online=True).applied for m in bundle.migrations]
        seen = run_parallel({"whole": lambda: prisma.status(whole, corpus),
                             "stepwise": lambda: prisma.status(stepwise, corpus)})
        yield {"bundle": bundle, "cli": cli, "stepped": stepped, "status": seen,
               "schema": {name: schema(url) for name, url in
                          (("reference", reference), ("whole", whole), ("stepwise", stepwise))},
               "ledger": {"whole": ledger(whole), "stepwise": ledger(stepwise)}}


def test_the_corpus_holds_prismas_own_transaction_blocks(corpus: Path) -> None:
    blocks = [p.parent.name for p in sorted(corpus.glob("*/migration.sql")) if "\nBEGIN;\n" in p.read_text()]
    assert "20230915143725_remove_survey_status_archived" in blocks and len(load_bundle(corpus).migrations) == 97


@pytest.mark.slow
@pytest.mark.parametrize("way", ["whole", "stepwise"])
def test_every_migration_is_applied_in_the_ledger_with_its_files_checksum(deployed: dict, way: str) -> None:
    rows = deployed["ledger"][way]
    files = deployed["bundle"].by_name()
    assert [r["migration_name"] for r in rows] == list(files)
    for r in rows:
        assert r["finished_at"] is not None and r["rolled_back_at"] is None and r["applied_steps_count"] >= 1, r
        assert checksum_matches(r["checksum"], files[r["migration_name"]].raw)


def test_from_empty_the_cli_applies_all_97_in_one_run(deployed: dict) -> None:
    cli = deployed["cli"]
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert cli.stdout.count("applied 20") == 97


def test_one_at_a_time_each_run_applies_exactly_its_migration_and_online_rewrites_were_used(deployed: dict) -> None:
    stepped = deployed["stepped"]
    assert [[m.name for m in run] for run in stepped] == [[m.name] for m in deployed["bundle"].migrations]
    # Later indexes and keys landed on tables that existed: those migrations ran in several steps.
    assert sum(len(run[0].steps) > 1 for run in stepped) >= 10


@pytest.mark.parametrize("way", ["whole", "stepwise"])
def test_the_schema_equals_what_psql_builds_from_each_file(deployed: dict, way: str) -> None:
    assert deployed["schema"]["reference"].count("CREATE TABLE") >= 25  # a real schema, not an empty one
    assert deployed["schema"][way] == deployed["schema"]["reference"]


@pytest.mark.parametrize("way", ["whole", "stepwise"])
def test_prismas_migrate_status_reads_our_ledger_as_up_to_date(deployed: dict, way: str) -> None:
    status = outcome(deployed["status"], way)
    assert status.code == 0 and "97 migrations found in prisma/migrations" in status.output, status
    assert UP_TO_DATE in status.output, status
