"""Preflight's lint gate: which blocking findings the deployment plan fixes, and LintBlocked's message.

Plans are built with `plan_migration` for a Prisma-layout bundle written into tmp_path and linted the
way preflight lints it; online mode is `existing` given (the tables production already has).
"""
from __future__ import annotations

from pathlib import Path

import pytest

from schema_deploy.bundle.discover import Bundle, load_bundle
from schema_deploy.lint.engine import Finding, lint_bundle
from schema_deploy.lint.errors import LintBlocked
from schema_deploy.lint.registry import RULES
from schema_deploy.plan.planner import FIXED_BY_ONLINE, Plan, plan_migration, unfixed_findings

EXISTING = {"orders", "users"}
PLAIN_INDEX = 'CREATE INDEX "orders_userId_idx" ON "orders" ("userId");'
COLUMN_TYPE = 'ALTER TABLE "orders" ALTER COLUMN "total" TYPE bigint;'
FOREIGN_KEY = ('ALTER TABLE "orders" ADD CONSTRAINT "orders_userId_fkey" FOREIGN KEY ("userId") '
               'REFERENCES "users"("id");')


def bundle_of(tmp_path: Path, *migrations: str) -> Bundle:
    """A Prisma-layout bundle, one `<ts>_<name>/migration.sql` per SQL text given."""
    root = tmp_path / "migrations"
    for i, sql in enumerate(migrations, 1):
        folder = root / f"2025010{i}000000_change_{i}"
        folder.mkdir(parents=True)
        (folder / "migration.sql").write_text(sql)
    return load_bundle(root)


def plan_of(bundle: Bundle, existing: set[str] | None) -> Plan:
    created: set[str] = set()
    return Plan([plan_migration(m, created, existing) for m in bundle.migrations], online=existing is not None)


def unfixed(bundle: Bundle, existing: set[str] | None) -> list[tuple[str, int]]:
    return [(f.rule, f.line) for f in unfixed_findings(lint_bundle(bundle), plan_of(bundle, existing))]


def test_online_plan_fixes_a_plain_create_index_on_an_existing_table(tmp_path: Path) -> None:
    bundle = bundle_of(tmp_path, PLAIN_INDEX)
    assert [f.rule for f in lint_bundle(bundle) if f.blocking] == ["require-concurrent-index"]

    assert unfixed(bundle, EXISTING) == []


# rule -> a statement on an existing table that breaks it and that online mode rewrites
ONLINE_REWRITES = {
    "require-concurrent-index": PLAIN_INDEX,
    "adding-foreign-key-constraint": FOREIGN_KEY,
    "constraint-missing-not-valid": 'ALTER TABLE "orders" ADD CONSTRAINT "orders_total_check" CHECK ("total" >= 0);',
    "adding-not-nullable-field": 'ALTER TABLE "orders" ALTER COLUMN "userId" SET NOT NULL;',
    "disallowed-unique-constraint": 'ALTER TABLE "orders" ADD CONSTRAINT "orders_ref_key" UNIQUE ("ref");',
    "adding-serial-primary-key-field": 'ALTER TABLE "orders" ADD CONSTRAINT "orders_pkey" PRIMARY KEY ("id");',
}


@pytest.mark.parametrize("rule, sql", ONLINE_REWRITES.items(), ids=ONLINE_REWRITES)
def test_online_plan_fixes_each_finding_its_rewrite_addresses(tmp_path: Path, rule: str, sql: str) -> None:
    bundle = bundle_of(tmp_path, sql)
    assert [f.rule for f in lint_bundle(bundle) if f.blocking] == [rule]

    assert unfixed(bundle, EXISTING) == []
    assert unfixed(bundle, None) == [(rule, 1)]


def test_the_rules_the_plan_counts_as_fixed_are_exactly_those_its_rewrites_address() -> None:
    assert FIXED_BY_ONLINE == set(ONLINE_REWRITES)
    assert {RULES[rid].severity for rid in FIXED_BY_ONLINE} == {"error"}


def test_a_column_type_change_has_no_online_form_so_its_finding_still_stands(tmp_path: Path) -> None:
    bundle = bundle_of(tmp_path, PLAIN_INDEX + "\n" + COLUMN_TYPE)

    assert unfixed(bundle, EXISTING) == [("changing-column-type", 2)]


def test_a_drop_column_beside_a_rewritten_foreign_key_in_one_statement_still_stands(tmp_path: Path) -> None:
    # The statement is rewritten for its foreign key; that does not make dropping the column safe.
    bundle = bundle_of(tmp_path, FOREIGN_KEY[:-1] + ', DROP COLUMN "legacy";')
    assert {f.rule for f in lint_bundle(bundle) if f.blocking} == {"adding-foreign-key-constraint",
                                                                     "ban-drop-column"}

    assert unfixed(bundle, EXISTING) == [("ban-drop-column", 1)]


def test_an_unnamed_index_is_not_rewritten_online_so_its_finding_still_stands(tmp_path: Path) -> None:
    assert unfixed(bundle_of(tmp_path, 'CREATE INDEX ON "orders" ("userId");'), EXISTING) == [
        ("require-concurrent-index", 1)]


def test_an_as_written_plan_fixes_nothing(tmp_path: Path) -> None:
    bundle = bundle_of(tmp_path, PLAIN_INDEX, FOREIGN_KEY + "\n" + COLUMN_TYPE)

    assert unfixed(bundle, None) == [("require-concurrent-index", 1), ("adding-foreign-key-constraint", 1),
                                     ("changing-column-type", 2)]


def test_suppressed_errors_and_warnings_never_block(tmp_path: Path) -> None:
    bundle = bundle_of(tmp_path, "-- schema-deploy: ignore changing-column-type orders is empty in production\n"
                                 + COLUMN_TYPE + '\nDROP INDEX "orders_old_idx";')
    findings = lint_bundle(bundle)
    assert {(f.rule, f.suppressed, f.severity) for f in findings} >= {("changing-column-type", True, "error"),
                                                                      ("require-concurrent-index-deletion", False,
                                                                       "warning")}

    assert unfixed_findings(findings, plan_of(bundle, None)) == []


def test_a_finding_in_another_file_at_a_rewritten_line_number_still_stands(tmp_path: Path) -> None:
    # Both files have their finding on line 1: only the rewritten one's is fixed.
    bundle = bundle_of(tmp_path, PLAIN_INDEX, 'CREATE INDEX ON "users" ("email");')

    findings = unfixed_findings(lint_bundle(bundle), plan_of(bundle, EXISTING))

    assert [(f.rule, f.migration) for f in findings] == [("require-concurrent-index", "20250102000000_change_2")]


def test_findings_in_migrations_the_plan_does_not_run_are_history(tmp_path: Path) -> None:
    # The first file was applied in an earlier deployment; only the pending one is planned.
    bundle = bundle_of(tmp_path, COLUMN_TYPE, PLAIN_INDEX)
    pending_only = Plan([plan_migration(bundle.migrations[1], set(), EXISTING)], online=True)

    assert unfixed_findings(lint_bundle(bundle), pending_only) == []
    assert unfixed_findings(lint_bundle(bundle), Plan([], online=True)) == []


# --- LintBlocked ---------------------------------------------------------------------------

def test_lint_blocked_names_each_finding_with_file_line_rule_and_fix(tmp_path: Path) -> None:
    bundle = bundle_of(tmp_path, PLAIN_INDEX + "\n" + COLUMN_TYPE)
    [finding] = unfixed_findings(lint_bundle(bundle), plan_of(bundle, EXISTING))

    error = LintBlocked([finding])

    path = bundle.migrations[0].path
    assert error.exit_code == 1 and error.findings == [finding]
    assert str(error) == (
        "1 lint error(s) that the deployment plan does not fix; nothing was changed:\n"
        f"- {path}:2: [changing-column-type] {finding.message} Fix: {finding.help}\n"
        "Fix the SQL, or suppress a finding with a '-- schema-deploy: ignore <rule> <reason>' comment right "
        "above the statement.")
    assert 'ALTER COLUMN "total" TYPE bigint' in finding.message and "Add a column of the new type" in finding.help


def test_lint_blocked_lists_twenty_findings_and_counts_the_rest() -> None:
    findings = [Finding(rule="ban-drop-column", severity="error", path="sql/migrations/x/migration.sql", line=i,
                        message=f"DROP COLUMN c{i}.", help="Ship the code first.") for i in range(1, 26)]

    message = str(LintBlocked(findings))

    assert message.startswith("25 lint error(s) that the deployment plan does not fix; nothing was changed:\n"
                              "- sql/migrations/x/migration.sql:1: [ban-drop-column] DROP COLUMN c1. "
                              "Fix: Ship the code first.\n")
    assert "migration.sql:20:" in message and "migration.sql:21:" not in message
    assert "\n…and 5 more\nFix the SQL" in message


def test_lint_blocked_scrubs_a_password_quoted_in_a_finding() -> None:
    finding = Finding(rule="ban-session-set", severity="error", path="m.sql", line=1,
                      message="SET x = 'postgresql://u:hunter2@h/db'.", help="Use SET LOCAL.")

    assert "hunter2" not in str(LintBlocked([finding]))


@pytest.mark.parametrize("existing", [EXISTING, None], ids=["online", "as-written"])
def test_a_table_created_by_the_plan_needs_no_fix_in_either_mode(tmp_path: Path, existing: set[str] | None) -> None:
    bundle = bundle_of(tmp_path, 'CREATE TABLE "carts" ("id" bigint PRIMARY KEY, "userId" bigint);\n'
                                 'CREATE INDEX "carts_userId_idx" ON "carts" ("userId");')

    assert unfixed(bundle, existing) == []
