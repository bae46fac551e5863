"""The approval page's markdown: what will run on production, where the backup is, what the gate found.

The inputs have the shape of the results of the pipeline's preflight, backup and gate steps as they
travel (`to_xcom()`; see schema_deploy.pipeline and dags/deploy_schema.py).
"""
from __future__ import annotations

from typing import Any

import pytest

from schema_deploy.ops.gate import CommandResult, JUnitSummary
from schema_deploy.pipeline.record import approval_body

EPIC5 = "20251017120000_epic5_schema_completion"
FOLLOW_UP = "20251020090000_recommendations_applied_at"
EPIC5_SHA = "3f9a1c0e7b2d4a6f8e1c3b5d7f9a0b2c4d6e8f0a1b3c5d7e9f1a2b4c6d8e0f1a"
FOLLOW_UP_SHA = "a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1"
BACKUP_URI = "s3://schema-deploy-backups/backups/production/app/20261126T024218Z_manual__2026-11-26.dump"
RELEASE_SHA = "5b0e2f4a6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d8e0f"
RELEASE_URI = f"s3://schema-deploy-backups/backups/releases/{RELEASE_SHA}.json"
BACKUP_SHA = "9c1e5d0f2a4b6c8d0e2f4a6b8c0d2e4f6a8b0c2d4e6f8a0b2c4d6e8f0a2b4c6d"


def step(number: int, sql: list[str], locks: dict[str, str], rewritten: list[str] | None = None,
         transactional: bool = True) -> dict[str, Any]:
    return {"number": number, "transactional": transactional, "sql": sql, "rewritten": rewritten or [],
            "locks": locks}


@pytest.fixture
def summary() -> dict[str, Any]:
    """preflight's return value for two pending migrations in online mode."""
    return {
        "release": {"uri": RELEASE_URI, "sha256": RELEASE_SHA, "short": RELEASE_SHA[:12], "bundle": "main"},
        "migrations": [
            {"name": EPIC5, "checksum": EPIC5_SHA, "resume_from": 0, "steps": [
                step(1, ['CREATE INDEX CONCURRENTLY "behavioral_events_userId_idx" ON behavioral_events ("userId")'],
                     {"behavioral_events": "SHARE UPDATE EXCLUSIVE"},
                     ["built CONCURRENTLY: the plain form holds SHARE on behavioral_events (blocks writes) for "
                      "the whole build"], transactional=False),
                step(2, ['ALTER TABLE experiment_assignments ADD CONSTRAINT "experiment_assignments_experimentId_fkey" '
                         'FOREIGN KEY ("experimentId") REFERENCES personalization_experiments (id) NOT VALID'],
                     {"experiment_assignments": "SHARE ROW EXCLUSIVE",
                      "personalization_experiments": "SHARE ROW EXCLUSIVE"},
                     ["FOREIGN KEY added NOT VALID: takes its lock briefly, without scanning experiment_assignments"]),
                step(3, ['ALTER TABLE experiment_assignments VALIDATE CONSTRAINT '
                         '"experiment_assignments_experimentId_fkey"'],
                     {"experiment_assignments": "SHARE UPDATE EXCLUSIVE", "personalization_experiments": "ROW SHARE"},
                     ["validated separately under SHARE UPDATE EXCLUSIVE: experiment_assignments stays writable"]),
                step(4, ['ALTER TABLE "experiment_assignments" ADD COLUMN "metrics" jsonb'],
                     {"experiment_assignments": "ACCESS EXCLUSIVE"}),
            ]},
            {"name": FOLLOW_UP, "checksum": FOLLOW_UP_SHA, "resume_from": 0, "steps": [
                step(1, ['ALTER TABLE "study_schedule_recommendations" ADD COLUMN "appliedAt" timestamp(3)'],
                     {"study_schedule_recommendations": "ACCESS EXCLUSIVE"}),
            ]},
        ],
        "online": True,
        "pending": {"staging": [EPIC5, FOLLOW_UP], "production": [EPIC5, FOLLOW_UP]},
        "lint": {"errors": 2, "fixed_by_plan": 2, "warnings": 1},
        "prechecks": [],
        "table_sizes": {
            "experiment_assignments": {"rows_estimate": 48_000, "bytes": 6_553_600},
            "behavioral_events": {"rows_estimate": 1_250_000, "bytes": 412_000_000},
        },
        "production_table_bytes": 418_553_600,
        "run": {"run_id": "manual__2026-11-26T02:40:00+00:00", "run_type": "manual", "triggered_by": "alice"},
        "slack_ts": None,
    }


@pytest.fixture
def backup() -> dict[str, Any]:
    """backup_production's return value."""
    return {"uri": BACKUP_URI, "sha256": BACKUP_SHA, "size": 73_400_320, "rows": 1_304_112,
            "verified": "sha256+toc+restore"}


@pytest.fixture
def gate() -> dict[str, Any]:
    """test_gate's return value: run_gate's result and staging's verification."""
    pytest_cmd = CommandResult(command="python -m pytest tests/gate -q -p no:cacheprovider --junitxml={junit}",
                               exit_code=0, seconds=14.2, output_tail="12 passed in 13.9s",
                               junit_path="/tmp/schema-deploy-gate-x/gate-1.junit.xml",
                               junit=JUnitSummary(tests=12))
    smoke = CommandResult(command="python -m app.smoke", exit_code=0, seconds=1.1, output_tail="ok")
    return {
        "gate": {"commands": [pytest_cmd.as_dict(), smoke.as_dict()],
                 "junit": [BACKUP_URI.removesuffix(".dump") + ".gate-1.junit.xml"], "tests": 12},
        "verification": {"env": "staging", "checks": 31, "failed": 0, "not_measurable": 0, "criteria": [
            {"name": "foreign key constraints enforced", "verdict": "met", "detail": "2/2 constraint checks passed"},
            {"name": "query performance meets expectations", "verdict": "met", "detail": "3/3 queries faster"}],
            "verdict": "2/2 success criteria met"},
        "outcome": "passed",
    }


def section(body: str, title: str) -> str:
    """The text of one '### title' section."""
    return body.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]


def test_each_migration_is_listed_with_its_checksum_prefix_and_step_and_rewrite_counts(
        summary: dict[str, Any], backup: dict[str, Any], gate: dict[str, Any]) -> None:
    plan = section(approval_body(summary, backup, gate), "Plan")

    assert plan.splitlines()[:2] == [
        f"* **{EPIC5}** — sha256 `{EPIC5_SHA[:16]}…`, 4 steps, 3 rewritten for online mode",
        f"* **{FOLLOW_UP}** — sha256 `{FOLLOW_UP_SHA[:16]}…`, 1 step, 0 rewritten for online mode",
    ]
    assert EPIC5_SHA[16:] not in plan


def test_the_strongest_lock_of_each_table_is_listed_once(summary: dict[str, Any], backup: dict[str, Any],
                                                     gate: dict[str, Any]) -> None:
    plan = section(approval_body(summary, backup, gate), "Plan")

    [locks] = [line for line in plan.splitlines() if line.startswith("**Strongest lock per table**: ")]
    listed = locks.removeprefix("**Strongest lock per table**: ").split("; ")
    assert listed == sorted(listed)
    tables = [entry.split(": ")[0] for entry in listed]
    assert len(tables) == len(set(tables))  # one entry per table
    assert {"behavioral_events: SHARE UPDATE EXCLUSIVE", "experiment_assignments: ACCESS EXCLUSIVE",
            "personalization_experiments: SHARE ROW EXCLUSIVE",
            "study_schedule_recommendations: ACCESS EXCLUSIVE"} <= set(listed)


def test_production_table_sizes_are_shown_in_rows_and_megabytes(summary: dict[str, Any], backup: dict[str, Any],
                                                                gate: dict[str, Any]) -> None:
    plan = section(approval_body(summary, backup, gate), "Plan")

    assert ("**Tables** (production): behavioral_events ~1250000 rows / 412.0 MB, "
            "experiment_assignments ~48000 rows / 6.6 MB") in plan.splitlines()


def test_the_backup_is_shown_with_its_uri_sha256_and_how_it_was_verified(
        summary: dict[str, Any], backup: dict[str, Any], gate: dict[str, Any]) -> None:
    shown = section(approval_body(summary, backup, gate), "Backup")

    assert shown.strip() == f"`{BACKUP_URI}` sha256 `{BACKUP_SHA}`, verified by sha256+toc+restore"


def test_the_gate_section_counts_passed_commands_tests_and_verification_checks(
        summary: dict[str, Any], backup: dict[str, Any], gate: dict[str, Any]) -> None:
    shown = section(approval_body(summary, backup, gate), "Staging gate")

    assert shown.strip().splitlines() == [
        "**passed**: 2/2 commands passed, 12 tests; verification: 31 checks: 31 passed", "",
        "**Success criteria on staging**: 2/2 success criteria met", "",
        "* MET — foreign key constraints enforced: 2/2 constraint checks passed",
        "* MET — query performance meets expectations: 3/3 queries faster"]


def test_a_criterion_not_met_or_not_measurable_is_named_with_the_count_and_in_bold(
        summary: dict[str, Any], backup: dict[str, Any], gate: dict[str, Any]) -> None:
    from schema_deploy.engine.criteria import Criterion, Verdicts

    verdicts = Verdicts((Criterion("foreign key constraints enforced", "met", "1/1 constraint checks passed"),
                         Criterion("new indexes created and used by queries", "not measurable", "t has 10 rows"),
                         Criterion("query performance meets expectations", "not met", "index storage 3.01 MB")))
    gate["verification"].update(criteria=verdicts.as_list(), verdict=verdicts.summary(), checks=42, not_measurable=2)
    gate["outcome"] = "tests passed, but a success criterion was not met on staging"

    shown = section(approval_body(summary, backup, gate), "Staging gate")

    assert shown.strip().splitlines() == [
        "**tests passed, but a success criterion was not met on staging**: 2/2 commands passed, 12 tests; "
        "verification: 42 checks: 40 passed, 2 not measurable", "",
        "**Success criteria on staging**: 1/3 success criteria met; not met: query performance meets expectations "
        "(index storage 3.01 MB); not measurable: new indexes created and used by queries (t has 10 rows)", "",
        "* MET — foreign key constraints enforced: 1/1 constraint checks passed",
        "* **NOT MEASURABLE** — new indexes created and used by queries: t has 10 rows",
        "* **NOT MET** — query performance meets expectations: index storage 3.01 MB"]
    assert "checks ok" not in shown


def test_a_failed_gate_command_is_not_counted_as_passed(summary: dict[str, Any], backup: dict[str, Any],
                                                        gate: dict[str, Any]) -> None:
    gate["gate"]["commands"][1]["exit_code"] = 2
    del gate["outcome"]

    shown = section(approval_body(summary, backup, gate), "Staging gate")

    assert shown.startswith("1/2 commands passed, 12 tests")


def test_the_release_heads_the_body_with_its_short_digest_uri_and_bundle(
        summary: dict[str, Any], backup: dict[str, Any], gate: dict[str, Any]) -> None:
    body = approval_body(summary, backup, gate)

    assert body.splitlines()[0] == f"### Release `{RELEASE_SHA[:12]}`"
    assert section(body, "Release `" + RELEASE_SHA[:12] + "`").strip() == (
        f"`{RELEASE_URI}` (bundle main, sha256 `{RELEASE_SHA}`)")


def test_the_body_has_release_plan_backup_and_gate_sections_in_that_order(
        summary: dict[str, Any], backup: dict[str, Any], gate: dict[str, Any]) -> None:
    body = approval_body(summary, backup, gate)

    headings = [line for line in body.splitlines() if line.startswith("### ")]
    assert headings == [f"### Release `{RELEASE_SHA[:12]}`", "### Plan", "### Backup", "### Staging gate"]


def test_missing_xcoms_give_a_body_that_says_so_instead_of_failing() -> None:
    body = approval_body({}, {}, {})

    assert section(body, "Backup").strip() == "`none` sha256 `?`, verified by ?"
    assert section(body, "Staging gate").strip() == "0/0 commands passed, 0 tests; verification: not run"
    assert "Strongest lock" not in body and "**Tables**" not in body


def test_a_plan_without_table_sizes_omits_the_tables_line(summary: dict[str, Any], backup: dict[str, Any],
                                                          gate: dict[str, Any]) -> None:
    summary["table_sizes"] = {}

    assert "**Tables**" not in approval_body(summary, backup, gate)
