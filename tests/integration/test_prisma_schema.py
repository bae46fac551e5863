"""prisma/schema.prisma against the real Prisma CLI: it validates, and it is exactly what sql/migrations creates.

The diffs run through `schema_deploy.plan.prisma_check` (the optional preflight check) with tests/prisma's CLI,
each on a scratch database that the check creates on the staging server and drops again.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from engine_support import MIGRATIONS, REPO
from prisma_support import PRISMA_DIR, Prisma, outcome, prisma_bundle, run_parallel

from schema_deploy.plan.errors import PrismaCheckFailed, PrismaSchemaMismatch
from schema_deploy.plan.prisma_check import require_schema_matches, schema_differences

SCHEMA = REPO / "prisma" / "schema.prisma"
SCORE = "  metrics      Json? // Epic 5\n"


def variant(tmp: Path, name: str, edit) -> Path:
    path = tmp / f"{name}.prisma"
    path.write_text(edit(SCHEMA.read_text()))
    return path


@pytest.fixture(scope="module")
def diffs(prisma: Prisma, stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("schema")
    shadow = stack_env["STAGING_DATABASE_URL"]
    extra_field = variant(tmp, "extra-field", lambda s: s.replace(SCORE, SCORE + "  score        Float?\n"))
    many = variant(tmp, "many", lambda s: (
        s.replace(SCORE, SCORE + "  score        Float?\n")
         .replace("  @@index([userId, avgReward]) // Epic 5\n", "")
         .replace("  variant      String\n", "  variant      Int\n")
         .replace("  SEARCH_PERFORMED\n", "  SEARCH_PERFORMED\n  LOGGED_OUT\n")
         .replace('  @@map("struggle_predictions")\n}\n', '  @@map("struggle_predictions")\n}\n\nmodel AuditNote {\n'
                  '  id String @id\n\n  @@map("audit_notes")\n}\n')))
    broken = prisma_bundle(tmp / "broken", {"20251101000000_boom": "SELECT 1 / 0;\n"}, base=MIGRATIONS)
    logs: dict[str, list[str]] = {k: [] for k in ("same", "extra_field", "many", "broken")}

    def diff(key: str, schema: Path, migrations: Path = MIGRATIONS):
        return lambda: schema_differences(schema, migrations, shadow, logs[key].append, cli_dir=PRISMA_DIR)

    def raised(job):
        def run():
            try:
                return job()
            except (PrismaCheckFailed, PrismaSchemaMismatch) as exc:
                return [exc]  # a list: outcome() re-raises a bare exception
        return run

    def preflight():
        return require_schema_matches(extra_field, MIGRATIONS, shadow, logs["extra_field"].append, cli_dir=PRISMA_DIR)

    results = run_parallel({
        "validate": lambda: prisma.run("validate", db=shadow, migrations=MIGRATIONS, schema=SCHEMA),
        "same": diff("same", SCHEMA), "extra_field": raised(preflight), "many": diff("many", many),
        "broken": raised(diff("broken", SCHEMA, broken))})
    results["logs"] = logs
    results["extra_field_schema"] = extra_field
    return results


@pytest.mark.slow
def test_prisma_validate_accepts_the_schema(diffs: dict) -> None:
    result = outcome(diffs, "validate")
    assert result.code == 0 and "is valid 🚀" in result.output, result


def test_migrate_diff_from_the_migrations_to_the_schema_is_empty(diffs: dict) -> None:
    assert outcome(diffs, "same") == []
    (said,) = diffs["logs"]["same"]
    assert re.fullmatch(rf"prisma migrate diff: {re.escape(str(MIGRATIONS))} against {re.escape(str(SCHEMA))} "
                        r"\(scratch database schema_deploy_shadow_[0-9a-f]{12}, dropped after\)", said), said


@pytest.mark.slow
def test_preflight_says_when_the_schema_matches(stack_env: dict[str, str], prisma: Prisma) -> None:
    """Read from the same kind of run as above, through the preflight entry point (one more diff, ~2 s)."""
    logs: list[str] = []
    require_schema_matches(SCHEMA, MIGRATIONS, stack_env["STAGING_DATABASE_URL"], logs.append, cli_dir=PRISMA_DIR)
    assert logs[-1] == f"{SCHEMA} matches what the migrations create (prisma migrate diff is empty)"


def test_a_field_the_migrations_do_not_create_makes_the_diff_name_it_and_preflight_stop(diffs: dict) -> None:
    (exc,), schema = outcome(diffs, "extra_field"), diffs["extra_field_schema"]
    assert isinstance(exc, PrismaSchemaMismatch) and exc.exit_code == 1
    assert exc.differences == ["schema.prisma has field experiment_assignments.score that no migration creates"]
    assert str(exc) == (
        f"{schema} does not match what the migrations in {MIGRATIONS} create (`prisma migrate diff`); nothing was "
        "changed:\n- schema.prisma has field experiment_assignments.score that no migration creates\n"
        f"Add a migration that makes them agree (`prisma migrate diff --from-migrations {MIGRATIONS} "
        f"--to-schema-datamodel {schema} --script` writes its SQL), or correct schema.prisma.")


def test_every_kind_of_difference_is_one_sentence(diffs: dict) -> None:
    assert outcome(diffs, "many") == [
        "schema.prisma has a model for table audit_notes that no migration creates",
        "schema.prisma has variant LOGGED_OUT on enum EventType that no migration creates",
        "schema.prisma has field experiment_assignments.score that no migration creates",
        "schema.prisma and the migrations disagree on table experiment_assignments: Column variant would be "
        "dropped and recreated (type changed)",
        "the migrations create index on columns (userId, avgReward) on table personalization_configs, which "
        "schema.prisma does not declare"]


def test_a_migration_that_fails_on_the_shadow_database_is_a_failed_check(diffs: dict,
                                                                        stack_env: dict[str, str]) -> None:
    (exc,) = outcome(diffs, "broken")
    assert isinstance(exc, PrismaCheckFailed) and exc.exit_code == 1
    assert re.search(r"^`prisma migrate diff` of \S+/broken against \S+/prisma/schema\.prisma failed \(exit 1\):\n",
                     str(exc))
    assert "Migration `20251101000000_boom` failed to apply cleanly to the shadow database." in str(exc)
    assert "ERROR: division by zero" in str(exc)
    assert urlsplit(stack_env["STAGING_DATABASE_URL"]).password not in str(exc)
    assert str(exc).endswith("Fix what it names (a migration that fails on an empty database, or a schema "
                             "`prisma validate` rejects), or remove prisma.schema from deploy.yaml to skip this check.")


def test_the_scratch_databases_are_dropped(diffs: dict, stack_env: dict[str, str]) -> None:
    # This module's own, by the names the check logged: other processes' checks may be running meanwhile.
    made = re.findall(r"scratch database (schema_deploy_shadow_[0-9a-f]{12})", "\n".join(
        line for lines in diffs["logs"].values() for line in lines))
    assert len(made) >= 3, diffs["logs"]
    with psycopg.connect(stack_env["STAGING_DATABASE_URL"]) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (made,)).fetchall()
    assert left == []
