"""Every error class the package raises has a test that pins its message (issue 26, point 3).

A message is what a person reads when a run stops: what failed, where, and the fix. `DIRECT` pins
the whole text of the classes (and the branches of a message) that no other test pins, each raised
through the public function that raises it where that needs no database, otherwise built with the
fields its raise site passes. `PINNED_ELSEWHERE` names, for every other class raised in the package,
the test that pins its message. The last test walks `plugins/schema_deploy/**/errors.py` and fails
when a class is raised in plugins/ or dags/ without one or the other.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "plugins" / "schema_deploy"
RAISED_IN = (REPO / "plugins", REPO / "dags")
EPIC5 = "20251017120000_epic5_schema_completion"


def raised_by(call: Callable[[], object]) -> BaseException:
    """The exception `call` raises (the test fails when it raises none)."""
    with pytest.raises(Exception) as info:
        call()
    return info.value


# --- direct pins: (class name, how it comes about, the whole message) -----------------------------

def _rollback_verification_failed() -> BaseException:
    from schema_deploy.pipeline.errors import RollbackVerificationFailed

    return RollbackVerificationFailed("production", [f"{EPIC5} is applied, not pending",
                                                     "index recommendations_userId_createdAt_idx is INVALID"])


def _rollback_verification_failed_naming_the_safety_backup() -> BaseException:
    from schema_deploy.pipeline.errors import RollbackVerificationFailed

    return RollbackVerificationFailed("staging", ["index events_kind_idx is INVALID"],
                                      "s3://backups/americano_staging/20261207T070000Z.dump")


def _audit_export_in_an_unknown_format() -> BaseException:
    from schema_deploy.audit.chain import export

    return raised_by(lambda: export(None, fmt="xml"))  # type: ignore[arg-type]  # refused before any query


def _parse(sql: str) -> Callable[[], BaseException]:
    def build() -> BaseException:
        from schema_deploy.bundle.parse import parse_sql

        return raised_by(lambda: parse_sql(sql, path="m.sql"))
    return build


def _advisory_lock_released_before_it_was_looked_up() -> BaseException:
    from schema_deploy.state.errors import AdvisoryLockTimeout

    return AdvisoryLockTimeout(30.04, [])


def _lock_retries_with_blockers_gone() -> BaseException:
    from schema_deploy.engine.errors import LockRetriesExhausted

    return LockRetriesExhausted(EPIC5, f"sql/migrations/{EPIC5}/migration.sql:3",
                                'ALTER TABLE "recommendations" ADD COLUMN "score" integer', 4, [])


def _precheck_timed_out_on_a_never_analyzed_table() -> BaseException:
    from schema_deploy.plan.errors import PrecheckTimedOut

    return PrecheckTimedOut(f"sql/migrations/{EPIC5}/migration.sql:12", "rows of recommendations where score IS NULL",
                            "public.recommendations", None, 60000)


def _precheck_locked_by_a_report() -> BaseException:
    from datetime import timedelta

    from schema_deploy.pg.db import Session
    from schema_deploy.plan.errors import PrecheckLocked

    report = Session(pid=48213, application="nightly-report", client="10.0.3.7", user="reporting",
                     state="idle in transaction", xact_age=timedelta(minutes=4, seconds=12),
                     query='SELECT count(*) FROM "User"')
    return PrecheckLocked(f"sql/migrations/{EPIC5}/migration.sql:1", "rows of User where url IS NULL", '"User"', 21,
                          [report])


def _precheck_locked_by_sessions_gone() -> BaseException:
    from schema_deploy.plan.errors import PrecheckLocked

    return PrecheckLocked(f"sql/migrations/{EPIC5}/migration.sql:1", "rows of User where url IS NULL", '"User"', 21, [])


def _manifest_upload_refused() -> BaseException:
    from schema_deploy.backups.errors import S3TransferFailed

    return S3TransferFailed("PutObject", "own-backups",
                            "nightly/staging/americano_staging/20261206T020000Z_r1.manifest.json", "AccessDenied",
                            "Access Denied", "The dump was deleted: without its manifest it would never count as a "
                            "backup.", context="backup manifest")


def _symlink_outside_a_named_bundle() -> BaseException:
    from schema_deploy.bundle.errors import SymlinkOutsideBundle

    return SymlinkOutsideBundle(f"sql/migrations/{EPIC5}", f"/srv/shared/{EPIC5}", "main")


DIRECT: list[tuple[str, Callable[[], BaseException], str]] = [
    ("RollbackVerificationFailed", _rollback_verification_failed,
     f"verification of the production rollback failed: {EPIC5} is applied, not pending; index "
     "recommendations_userId_createdAt_idx is INVALID. Investigate; the safety backup taken before the rollback "
     "holds the state before it."),
    ("RollbackVerificationFailed", _rollback_verification_failed_naming_the_safety_backup,
     "verification of the staging rollback failed: index events_kind_idx is INVALID. Investigate; the safety "
     "backup taken before the rollback, s3://backups/americano_staging/20261207T070000Z.dump, holds the state "
     "before it (rollback_schema with it as the Backup URI puts that back)."),
    ("AuditError", _audit_export_in_an_unknown_format,
     "export format 'xml' is not supported; use 'json' or 'csv'."),
    ("UnaccountedBytes", _parse("SELECT 1;\n-- note\x00\nSELECT 2;\n"),
     "m.sql:2:8: a NUL byte (0x00). Remove it (an editor or a bad merge can leave one; `tr -d '\\000'` does): "
     "PostgreSQL cannot take a NUL in SQL text, and tools that read the file as a C string stop at it, silently "
     "dropping everything after it."),
    ("ClientOnlyStatement", _parse("SELECT 1;\n\\copy t FROM 'rows.csv'\n"),
     "m.sql:2:1: psql meta-command `\\copy`. Meta-commands are read by psql, not by PostgreSQL, and a migration "
     "runner sends SQL only: write the data as INSERT statements (or COPY … FROM a file the server can read), and "
     "put the file's SQL itself in the migration instead of `\\i`/`\\include`."),
    ("ClientOnlyStatement", _parse("SELECT 1;\nCOPY t TO STDOUT;\n"),
     "m.sql:2:1: `COPY … TO STDOUT`: a migration has no client to receive the rows. Remove it from the migration; "
     "export data with psql or pg_dump outside the deployment."),
    ("AdvisoryLockTimeout", _advisory_lock_released_before_it_was_looked_up,
     "another migrator holds the migration lock (pg_advisory_lock 72707369, shared with `prisma migrate deploy`); "
     "waited 30.0 s. Held by: a session that released it just now. Wait for it to finish, or if it is stuck, end "
     "it with SELECT pg_terminate_backend(<pid>)."),
    ("LockRetriesExhausted", _lock_retries_with_blockers_gone,
     f"{EPIC5} (sql/migrations/{EPIC5}/migration.sql:3): gave up after 4 attempts: the statement could not get its "
     "lock within lock_timeout each time (SQLSTATE 55P03).\n"
     '    statement: ALTER TABLE "recommendations" ADD COLUMN "score" integer\n'
     "    the blocking sessions had finished by the time they were looked up.\n"
     "Retry when the blocking work is done (the migration resumes where it stopped), or raise the retry budget "
     "(--lock-retries)."),
    ("PrecheckTimedOut", _precheck_timed_out_on_a_never_analyzed_table,
     f"data precheck for sql/migrations/{EPIC5}/migration.sql:12 (rows of recommendations where score IS NULL) did "
     "not finish within 60000 ms on public.recommendations (size unknown: never analyzed); nothing was changed. "
     "Give it longer with --precheck-timeout-ms (deploy.yaml: prechecks.timeout_ms), or run the check yourself "
     "off-peak and waive it for this run with --waive-prechecks REASON."),
    # never_silent's test_a_precheck_behind_a_lock_is_retried_then_names_the_session_holding_it raises it for real
    # and pins the place, the table, the attempts and the holder; these pin the rest (the fix) and the other branch.
    ("PrecheckLocked", _precheck_locked_by_a_report,
     f"data precheck for sql/migrations/{EPIC5}/migration.sql:1 (rows of User where url IS NULL) could not read "
     '"User" in 21 attempts: another session holds a lock on it that blocks reads (lock_timeout each time, SQLSTATE '
     "55P03). Held by: pid 48213 application 'nightly-report' state idle in transaction transaction age 0:04:12 "
     'query: SELECT count(*) FROM "User". Nothing was changed. Run again when that work is done, raise '
     "--lock-retries, or end the session with SELECT pg_terminate_backend(<pid>)."),
    ("PrecheckLocked", _precheck_locked_by_sessions_gone,
     f"data precheck for sql/migrations/{EPIC5}/migration.sql:1 (rows of User where url IS NULL) could not read "
     '"User" in 21 attempts: another session holds a lock on it that blocks reads (lock_timeout each time, SQLSTATE '
     "55P03). Held by: sessions that had finished by the time they were looked up. Nothing was changed. Run again "
     "when that work is done, raise --lock-retries, or end the session with SELECT pg_terminate_backend(<pid>)."),
    # test_backup's real S3 failures pin the operation, the object and the cleanup; this pins the fix after them.
    ("S3TransferFailed", _manifest_upload_refused,
     "backup manifest: PutObject on s3://own-backups/nightly/staging/americano_staging/20261206T020000Z_r1"
     ".manifest.json failed with AccessDenied: Access Denied.\nThe dump was deleted: without its manifest it would "
     "never count as a backup. Check that the S3 endpoint is reachable and that the credentials may read and write "
     "bucket 'own-backups', then try again."),
    ("SymlinkOutsideBundle", _symlink_outside_a_named_bundle,
     f"sql/migrations/{EPIC5}: is a symbolic link to /srv/shared/{EPIC5}, outside the bundle's folder. Copy the "
     "migration into the bundle; or, if the link is deliberate (a shared folder of migrations), allow it with "
     "bundles: {main: {path: …, allow_symlinks: true}}, which the release records."),
]


@pytest.mark.parametrize("name, build, message", DIRECT,
                         ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(DIRECT)])
def test_each_message_no_other_test_pins_reads_in_full(name: str, build: Callable[[], BaseException],
                                                        message: str) -> None:
    error = build()
    assert type(error).__name__ == name
    assert str(error) == message


# --- pins elsewhere: class name -> the test that pins its message ---------------------------------

PINNED_ELSEWHERE: dict[str, str] = {
    # backfill
    "BackfillSpecError": "tests/unit/test_backfill_spec.py::"
                         "test_a_backfill_that_cannot_run_as_written_is_refused_naming_the_file_and_the_fix",
    "BackfillRefused": "tests/integration/test_backfill.py::"
                       "test_an_operator_pauses_a_running_backfill_which_then_refuses_to_run_until_resumed",
    "BackfillBusy": "tests/integration/test_backfill.py::test_a_second_runner_is_refused_naming_the_session_that_runs_it",
    "BackfillNotConverging": "tests/integration/test_backfill.py::"
                             "test_a_set_that_leaves_rows_selected_stops_naming_a_key_and_keeps_nothing_of_that_batch",
    "BackfillLocked": "tests/integration/test_backfill.py::"
                      "test_rows_held_through_every_attempt_stop_the_backfill_with_its_progress_kept",
    "BackfillStopped": "tests/integration/test_pipeline_deploy.py::test_a_backfill_runs_between_expand_and_"
                       "contract_and_an_operators_pause_stops_the_run_before_the_contract",
    "BackfillNotFound": "tests/e2e/test_ui_page.py::"
                        "test_a_pause_from_the_page_needs_edit_rights_and_the_pages_header_and_is_audited",
    "ContractRefused": "tests/integration/test_backfill.py::"
                       "test_a_migration_after_a_backfill_is_refused_until_its_rows_are_done",
    # health
    "HealthGateRefused": "tests/integration/test_health_gate.py::"
                         "test_a_role_without_pg_read_all_stats_is_refused_naming_the_grant_with_nothing_changed",
    "HealthGateTimedOut": "tests/integration/test_health_gate.py::"
                          "test_the_maximum_wait_fails_the_step_before_it_starts_and_a_retry_resumes_there",
    "HealthGateWaiting": "tests/integration/test_health_gate.py::"
                         "test_a_deferring_caller_is_told_to_come_back_and_the_migration_is_left_resumable",
    # root
    "UsageError": "tests/unit/test_window.py::test_no_window_long_enough_is_an_error_naming_both_durations",
    # config
    "ConfigError": "tests/unit/test_config.py::test_a_missing_config_given_explicitly_is_an_error",
    "BundleNotDeclared": "tests/dags/test_dag_integrity.py::"
                         "test_a_bundle_that_is_not_a_declared_name_is_refused_listing_the_declared_ones",
    # pg
    "DatabaseError": "tests/unit/test_db.py::"
                     "test_an_unencoded_at_in_the_password_is_refused_before_libpq_can_echo_a_piece_of_it",
    # bundle
    "BundleError": "tests/unit/test_bundle.py::test_missing_migrations_folder_is_an_error_that_names_the_option",
    "MigrationFileError": "tests/unit/test_bundle.py::"
                          "test_byte_order_mark_is_an_error_instead_of_a_baffling_syntax_error",
    "SqlSyntaxError": "tests/unit/test_parse.py::"
                      "test_syntax_error_reports_file_line_column_the_line_and_postgres_message",
    "TransactionControlError": "tests/unit/test_parse.py::"
                               "test_transaction_control_with_no_safe_meaning_is_refused_at_its_line",
    "NotUtf8": "tests/unit/test_bundle.py::test_non_utf8_bytes_are_an_error_naming_the_line_column_and_byte",
    "SymlinkOutsideBundle":
        "tests/integration/test_refusals_fit_history.py::"
        "test_a_migration_folder_linked_from_outside_the_bundle_is_refused_with_its_path_and_target",
    # lint
    "LintBlocked": "tests/unit/test_plan_findings.py::test_lint_blocked_names_each_finding_with_file_line_rule_and_fix",
    # state
    "AdvisoryLockTimeout": "tests/integration/test_apply.py::"
                           "test_apply_times_out_on_the_migration_lock_naming_the_session_that_holds_it",
    "LedgerRowMissing": "tests/integration/test_never_silent.py::"
                        "test_a_migration_that_removes_its_own_ledger_row_indirectly_is_not_reported_applied",
    "LedgerBlocked": "tests/integration/test_apply.py::"
                     "test_one_byte_edit_after_apply_is_drift_and_apply_refuses_with_how_to_resolve",
    # plan
    "PendingMigrationInvalid":
        "tests/integration/test_refusals_fit_history.py::"
        "test_without_to_a_pending_copy_from_stdin_refuses_the_run_naming_the_file_and_the_to_that_goes_on",
    "PrecheckFailed":
        "tests/integration/test_fleet.py::"
        "test_a_member_with_orphan_rows_and_an_unreachable_one_fail_alone_and_a_second_run_does_only_the_rest",
    "PrecheckCouldNotRun": "tests/integration/test_never_silent.py::"
                           "test_a_precheck_whose_query_fails_on_the_rows_says_so_by_name",
    "PrecheckTimedOut": "tests/integration/test_never_silent.py::"
                        "test_a_precheck_that_times_out_names_the_check_the_table_and_the_setting",
    "PrismaSchemaMismatch": "tests/integration/test_prisma_schema.py::"
                            "test_a_field_the_migrations_do_not_create_makes_the_diff_name_it_and_preflight_stop",
    "PrismaCheckFailed": "tests/integration/test_prisma_schema.py::"
                         "test_a_migration_that_fails_on_the_shadow_database_is_a_failed_check",
    # engine
    "LockRetriesExhausted": "tests/integration/test_apply.py::"
                            "test_apply_gives_up_after_its_attempts_naming_the_holder_and_a_rerun_proceeds",
    "MigrationFailed": "tests/integration/test_apply.py::"
                       "test_failing_transactional_migration_leaves_nothing_but_a_rolled_back_row",
    "ResolveRefused": "tests/integration/test_resolve.py::test_rolled_back_is_refused_for_an_applied_migration",
    "RollbackRefused": "tests/integration/test_rollback.py::test_a_failed_migration_in_the_ledger_blocks_a_rollback",
    "NoDownMigration": "tests/integration/test_rollback.py::"
                       "test_a_migration_without_down_sql_is_refused_naming_the_file_expected",
    "NotApplied": "tests/integration/test_rollback.py::test_rolling_back_a_migration_that_is_not_applied_is_refused",
    "RollbackFailed": "tests/integration/test_rollback.py::"
                      "test_a_failing_down_statement_names_the_file_line_and_keeps_the_migration_applied",
    # audit
    "AuditError": "tests/integration/test_error_messages_real.py::"
                  "test_appending_inside_a_repeatable_read_transaction_is_refused_before_it_can_fork_the_chain",
    "AuditTableMissing": "tests/integration/test_audit.py::test_a_database_without_an_audit_trail_is_named",
    "AuditProtectionMissing": "tests/integration/test_audit.py::"
                              "test_appending_to_a_trail_whose_trigger_was_disabled_is_refused",
    "AuditSetupFailed": "tests/integration/test_error_messages_real.py::"
                        "test_a_role_without_create_on_the_database_is_told_how_to_get_the_audit_trail_created",
    "AuditPayloadInvalid": "tests/integration/test_audit.py::"
                           "test_a_payload_jsonb_refuses_is_reported_and_nothing_is_written",
    "AuditReadRefused": "tests/integration/test_audit.py::test_a_role_that_may_not_read_the_trail_is_told_the_grant",
    "AuditWriteRefused": "tests/integration/test_audit.py::"
                         "test_a_role_that_may_not_append_to_a_trail_an_admin_created_is_told_the_grants_not_to_create_it",
    # backups
    "BackupFailed": "tests/integration/test_backup.py::"
                    "test_a_second_backup_of_the_same_database_is_refused_while_one_runs",
    "PgDumpFailed": "tests/integration/test_backup.py::"
                    "test_pg_dump_killed_after_several_parts_leaves_no_object_and_no_upload",
    "S3TransferFailed": "tests/integration/test_backup.py::"
                        "test_s3_endpoint_killed_mid_upload_aborts_the_upload_once_it_is_back_and_a_retry_succeeds",
    "BucketCheckFailed": "tests/integration/test_backup.py::test_a_missing_bucket_is_named_with_how_to_create_it",
    "BackupNotFound": "tests/unit/test_readable_logs.py::"
                      "test_messages_name_the_schema_deployments_page_first_and_the_cli_for_runs_without_airflow",
    "BackupIncomplete": "tests/integration/test_backup.py::test_a_dump_without_its_manifest_is_incomplete_everywhere",
    "BackupVerificationFailed": "tests/integration/test_backup.py::"
                                "test_one_flipped_byte_fails_verification_and_restore_with_the_sha256_mismatch",
    "RestoreRefused": "tests/integration/test_backup.py::"
                      "test_restore_into_a_production_looking_database_needs_its_name_as_confirmation",
    "RestoreFromOtherSource":
        "tests/integration/test_restore_source.py::"
        "test_a_staging_rollback_given_a_production_backup_is_refused_naming_both_with_nothing_changed",
    "RestoreFailed": "tests/integration/test_backup.py::"
                     "test_restore_without_clean_into_a_database_that_has_the_tables_fails_and_changes_nothing",
    # ops
    "ReleaseMissing": "tests/integration/test_pipeline_rollback.py::"
                      "test_down_migrations_run_the_frozen_release_even_after_the_folder_s_down_sql_was_edited",
    "ReleaseTampered": "tests/integration/test_release.py::test_a_tampered_release_is_refused_and_nothing_is_changed",
    "ReleaseInvalid":
        "tests/integration/test_pipeline_deploy.py::"
        "test_the_release_part_stops_on_schemas_that_differ_or_nothing_pending_and_on_a_survey_of_another_release",
    "GateFailed": "tests/unit/test_gate.py::"
                  "test_gate_failed_names_the_failing_tests_and_says_production_was_not_touched",
    # pipeline
    "DeployVerificationFailed":
        "tests/integration/test_pipeline_deploy.py::"
        "test_production_verification_that_finds_lost_rows_or_a_missing_index_fails_naming_each_and_the_way_back",
    "ApproverRefused": "tests/dags/test_approval_policy.py::"
                       "test_with_approver_must_differ_the_trigger_user_cannot_approve_their_own_run",
    "ConfirmationMismatch": "tests/dags/test_rollback_dag_integrity.py::"
                            "test_a_wrong_confirmation_names_the_database_to_type",
    "NoBackupToRestore": "tests/integration/test_pipeline_rollback.py::"
                         "test_without_a_verified_backup_of_the_database_the_restore_is_refused_naming_the_way_out",
    "NothingToDeploy":
        "tests/integration/test_pipeline_deploy.py::"
        "test_the_release_part_stops_on_schemas_that_differ_or_nothing_pending_and_on_a_survey_of_another_release",
    "NothingToRehearse":
        "tests/integration/test_fleet.py::"
        "test_a_run_again_once_staging_is_at_the_bundle_uses_the_rehearsed_fleet_release_or_says_why_it_cannot",
    "ConnectionNotOnWorker": "tests/unit/test_errors.py::"
                             "test_a_connection_missing_on_the_worker_names_the_connection_the_queue_and_the_route",
}


# --- the meta-test ------------------------------------------------------------------------------

# A phrase: this many characters of a message's literal text, as the code writes it.
PHRASE = 20


def flat(text: str) -> str:
    """`text` as a test writes it: regex escapes undone, whitespace runs as one space."""
    return " ".join(re.sub(r"\\([^A-Za-z0-9])", r"\1", text).split())


def literal_parts(node: ast.AST) -> list[str]:
    """The literal text under `node`, one entry per run between placeholders ({…} of an f-string)."""
    return [sub.value for sub in ast.walk(node) if isinstance(sub, ast.Constant) and isinstance(sub.value, str)]


def phrases(texts: list[str]) -> set[str]:
    found: set[str] = set()
    for text in texts:
        text = flat(text)
        found.update(text[i:i + PHRASE] for i in range(len(text) - PHRASE + 1))
    return found


@cache
def error_classes() -> dict[str, tuple[str, ast.ClassDef]]:
    """Every SchemaDeployError subclass defined in an errors.py of the package: name -> (file, node)."""
    nodes: dict[str, tuple[str, ast.ClassDef]] = {}
    for path in [PACKAGE / "errors.py", *sorted(PACKAGE.glob("**/errors.py"))]:
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef):
                nodes.setdefault(node.name, (str(path.relative_to(REPO)), node))

    def descends(name: str) -> bool:
        seen = set()
        while name in nodes and name not in seen:
            seen.add(name)
            bases = [_name(b) for b in nodes[name][1].bases]
            if "SchemaDeployError" in bases:
                return True
            name = next((b for b in bases if b in nodes), "")
        return False

    return {name: found for name, found in nodes.items() if name != "SchemaDeployError" and descends(name)}


def _name(node: ast.AST) -> str | None:
    return node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None


def not_a_use(tree: ast.AST) -> set[int]:
    """ids of the nodes where naming a class does not raise it: except clauses, isinstance/issubclass,
    annotations, class bases, and `Class.attribute` reads."""
    skip: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            skip.append(node.type)
        elif isinstance(node, ast.Call) and _name(node.func) in ("isinstance", "issubclass") and len(node.args) > 1:
            skip.append(node.args[1])
        elif isinstance(node, ast.ClassDef):
            skip.extend(node.bases)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip.extend(a.annotation for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
                        if a.annotation is not None)
            skip.extend([node.returns] if node.returns is not None else [])
        elif isinstance(node, ast.AnnAssign):
            skip.append(node.annotation)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            skip.append(node.value)  # `Foo.exit_code` reads the class; `errors.Foo(...)` still builds it
    return {id(n) for s in skip for n in ast.walk(s)}


@cache
def package_uses() -> dict[str, list[tuple[str, int, ast.AST]]]:
    """Class name -> each place plugins/ and dags/ raise it: a `raise`, a call of the class (built to be
    raised or returned), or the class itself handed on (`cls = A if … else B`); with the innermost
    function (or module) around that place."""
    classes = error_classes()
    uses: dict[str, list[tuple[str, int, ast.AST]]] = {}
    for root in RAISED_IN:
        for path in sorted(root.rglob("*.py")):
            tree = ast.parse(path.read_text())
            skipped = not_a_use(tree)

            def visit(node: ast.AST, scope: ast.AST) -> None:
                for child in ast.iter_child_nodes(node):
                    inner = child if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)) else scope
                    name = _name(child)
                    if (name in classes and id(child) not in skipped
                            and isinstance(getattr(child, "ctx", None), ast.Load)):
                        uses.setdefault(name, []).append((str(path.relative_to(REPO)), child.lineno, scope))
                    visit(child, inner)
            visit(tree, tree)
    return uses


def raised_in_package() -> dict[str, list[str]]:
    return {name: [f"{file}:{line}" for file, line, _ in found] for name, found in package_uses().items()}


@cache
def message_words() -> dict[str, set[str]]:
    """Class name -> the phrases its message can contain: the literal text of its own body (not its
    docstring) and of each function that builds or raises it (where a generic class gets its words)."""
    classes = error_classes()
    words: dict[str, set[str]] = {}
    for name, (_, node) in classes.items():
        doc = ast.get_docstring(node, clean=False)
        texts = [t for t in literal_parts(node) if t != doc]
        for _, _, scope in package_uses().get(name, []):
            if not isinstance(scope, ast.Module):
                texts += literal_parts(scope)
            else:  # at module level: only the statement that names it
                texts += [t for stmt in scope.body for t in literal_parts(stmt)
                          if any(_name(n) == name for n in ast.walk(stmt))]
        words[name] = phrases(texts)
    return words


COMMON = 3


@cache
def said_by() -> dict[str, int]:
    """Phrase -> how many classes' messages can contain it."""
    count: dict[str, int] = {}
    for found in message_words().values():
        for phrase in found:
            count[phrase] = count.get(phrase, 0) + 1
    return count


@cache
def own_words() -> dict[str, set[str]]:
    """Class name -> the phrases of its message that no other class's message can contain."""
    return {name: {p for p in found if said_by()[p] == 1} for name, found in message_words().items()}


def source_of_test(ref: str) -> str | None:
    """The source of the test `tests/…/file.py::test_name` with its decorators (parametrized messages live
    there) and the module's constants and helpers it uses, directly or through each other (a message written
    once for several tests); None when there is no such test."""
    file, _, name = ref.partition("::")
    path = REPO / file
    if not (name.startswith("test_") and path.is_file()):
        return None
    text = path.read_text()
    lines = text.splitlines()
    module = ast.parse(text).body
    test = next((n for n in module if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name), None)
    if test is None:
        return None

    def defines(node: ast.stmt) -> set[str]:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("test_"):
            return {node.name}
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        return set()

    def source(node: ast.stmt) -> str:
        start = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
        return "\n".join(lines[start - 1:node.end_lineno])

    chosen, used = [test], {n.id for n in ast.walk(test) if isinstance(n, ast.Name)}
    while True:
        more = [n for n in module if n not in chosen and defines(n) & used]
        if not more:
            return "\n\n".join(source(n) for n in chosen)
        chosen += more
        used |= {n.id for m in more for n in ast.walk(m) if isinstance(n, ast.Name)}


def pins(ref: str, name: str) -> bool:
    """The test named by `ref` exists and states part of `name`'s message as literal text: a phrase that no
    other class's message can contain, or, when the test names the class, a phrase of its message that at
    most COMMON classes' messages can contain ("Nothing was changed." is in too many to count)."""
    source = source_of_test(ref)
    if source is None:
        return False
    tree = ast.parse(source)
    written = phrases(literal_parts(tree))
    if written & own_words()[name]:
        return True
    names_it = any(_name(node) == name for node in ast.walk(tree))
    return names_it and any(said_by()[phrase] <= COMMON for phrase in written & message_words()[name])


def test_every_error_class_raised_in_the_package_has_a_test_pinning_its_message() -> None:
    classes, raised = error_classes(), raised_in_package()
    # The walk finds what it must: a broken walk would pass with nothing to check.
    assert len(classes) >= 50 and {"UsageError", "DeployVerificationFailed", "UnaccountedBytes"} <= set(raised)
    direct = {name for name, _, _ in DIRECT}
    # Every name in the tables is a class of an errors.py (a renamed class leaves a stale entry).
    assert sorted((direct | set(PINNED_ELSEWHERE)) - set(classes)) == []

    unpinned = sorted(f"{name} ({classes[name][0]}; raised at {', '.join(raised[name][:3])})"
                      for name in raised if name not in direct and name not in PINNED_ELSEWHERE)
    assert unpinned == [], ("raised without a test pinning the message; add one to DIRECT in this file or name it "
                            "in PINNED_ELSEWHERE:\n" + "\n".join(unpinned))
    bad_refs = sorted(f"{name}: {ref}" for name, ref in PINNED_ELSEWHERE.items() if not pins(ref, name))
    assert bad_refs == [], ("PINNED_ELSEWHERE names a test that does not exist or does not state the class's "
                            "message (see `pins`):\n" + "\n".join(bad_refs))


def test_the_pin_check_refuses_a_test_that_only_checks_the_type_or_does_not_exist() -> None:
    # Type only: pytest.raises(LockRetriesExhausted) with no match, nothing asserted on its text.
    assert not pins("tests/integration/test_online.py::"
                    "test_an_interrupted_online_run_cannot_be_resumed_with_a_different_plan", "LockRetriesExhausted")
    # pytest.raises(MigrationFailed) with no match: the message it pins is RollbackRefused's, not MigrationFailed's.
    assert not pins("tests/integration/test_rollback.py::test_a_failed_migration_in_the_ledger_blocks_a_rollback",
                    "MigrationFailed")
    assert pins("tests/integration/test_rollback.py::test_a_failed_migration_in_the_ledger_blocks_a_rollback",
                "RollbackRefused")
    assert not pins("tests/unit/test_gate.py::test_no_such_test", "GateFailed")
    assert not pins("tests/unit/test_gate.py::GATE", "GateFailed")
    assert pins(PINNED_ELSEWHERE["GateFailed"], "GateFailed")
