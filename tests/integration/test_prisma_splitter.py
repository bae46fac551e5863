"""prisma-splitter-semicolon proven against the real Prisma CLI, not against our guess of its splitter.

Each file of tests/prisma/splitter_cases/ is deployed alone with `prisma migrate deploy` on an empty
database: every fails-* file fails there (with the PostgreSQL error pinned below) and lint names it;
deploys-near-misses.sql deploys and lint stays quiet. Our engine applies every one of them.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from engine_support import FAST, ledger, plain_bundle
from prisma_support import Prisma, PrismaUnavailable, databases, ensure_prisma, outcome, prisma_bundle, run_parallel

from schema_deploy.engine.apply import apply
from schema_deploy.lint.engine import lint_sql

CASES = Path(__file__).resolve().parents[1] / "prisma" / "splitter_cases"
RULE = "prisma-splitter-semicolon"
# What PostgreSQL says to the first piece Prisma's split sends wrong, per case.
PRISMA_ERRORS = {
    "fails-line-comment.sql": 'ERROR: syntax error at or near "the"',
    "fails-comment-in-statement.sql": "ERROR: syntax error at end of input",
    "fails-block-comment.sql": 'ERROR: unterminated /* comment at or near "/* the key"',
    "fails-string.sql": "ERROR: unterminated quoted string at or near \"'a\"",
    "fails-escape-string.sql": "ERROR: unterminated quoted string at or near \"E'it\\'s\"",
    "fails-plpgsql-function.sql": "ERROR: unterminated dollar-quoted string at or near \"$$",
    "fails-do-block.sql": 'ERROR: unterminated dollar-quoted string at or near "$body$ BEGIN PERFORM 1"',
    "fails-quoted-identifier.sql": 'ERROR: unterminated quoted identifier at or near ""splitter"',
    "fails-atomic-body.sql": "ERROR: syntax error at end of input",
}
FILES = sorted(p.name for p in CASES.glob("*.sql"))


def migration_name(case: str) -> str:
    return f"203001010000{FILES.index(case):02d}_" + case.removesuffix(".sql").replace("-", "_")


@pytest.fixture(scope="module")
def deployed(prisma: Prisma, stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Each case deployed by Prisma on its own empty database: {file: (result, ledger rows)}."""
    root = tmp_path_factory.mktemp("splitter")
    with databases(stack_env["STAGING_DATABASE_URL"], len(FILES)) as urls:
        def job(case: str, url: str):
            bundle = prisma_bundle(root / case, {migration_name(case): (CASES / case).read_text()})
            result = prisma.deploy(url, bundle)
            return result, ledger(url)

        results = run_parallel({case: (lambda c=case, u=url: job(c, u)) for case, url in zip(FILES, urls)})
    return results


def test_every_fails_case_has_its_prisma_error_pinned() -> None:
    assert set(PRISMA_ERRORS) == {f for f in FILES if f.startswith("fails-")}
    assert [f for f in FILES if not f.startswith("fails-")] == ["deploys-near-misses.sql"]


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PRISMA_ERRORS))
def test_prisma_migrate_deploy_fails_on_the_case_and_lint_names_it(case: str, deployed: dict) -> None:
    result, rows = outcome(deployed, case)
    assert result.code == 1, result
    assert f"Error querying the database: {PRISMA_ERRORS[case]}" in result.output, result
    assert f'migration_name="{migration_name(case)}"' in result.output, result
    (row,) = rows
    assert row["finished_at"] is None and row["rolled_back_at"] is None and row["logs"]  # Prisma's failed row

    findings = [f for f in lint_sql((CASES / case).read_text()) if f.rule == RULE]
    assert findings and all("`prisma migrate deploy` through a driver adapter will fail here" in f.message
                            for f in findings)


def test_prisma_migrate_deploy_applies_the_near_misses_and_lint_stays_quiet(deployed: dict) -> None:
    case = "deploys-near-misses.sql"
    result, rows = outcome(deployed, case)
    assert result.code == 0 and "All migrations have been successfully applied." in result.output, result
    (row,) = rows
    assert row["finished_at"] is not None and row["applied_steps_count"] == 1
    assert [f for f in lint_sql((CASES / case).read_text()) if f.rule == RULE] == []


def test_our_engine_applies_every_case_prisma_cannot(fresh_db: str, tmp_path: Path) -> None:
    bundle = plain_bundle(tmp_path / "cases", {migration_name(c): (CASES / c).read_text() for c in FILES})
    result = apply(fresh_db, bundle, FAST)
    assert [m.name for m in result.applied] == [migration_name(c) for c in FILES]
    assert all(r["finished_at"] is not None and r["rolled_back_at"] is None for r in ledger(fresh_db))


def test_without_node_the_prisma_tests_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(PrismaUnavailable, match=r"^node not found: the Prisma tests need Node\.js 20 and npm "
                                                r"\(Debian: apt-get install nodejs npm\); `npm ci` in tests/prisma "
                                                r"then installs the pinned Prisma CLI from the npm registry$"):
        ensure_prisma()
