"""The trigger forms' rules across fields, checked by each DAG's first task (no Airflow here).

Airflow's form validates each field alone and sends an empty optional field as None; these rules
are the pipeline's, so the first task (and any other caller) refuses a contradictory run at once,
naming the form's fields by title and name, and the defaults pass.
"""
from __future__ import annotations

import re

import pytest

from schema_deploy.config.settings import DeployConfig
from schema_deploy.errors import UsageError
from schema_deploy.pipeline import RunParams
from schema_deploy.pipeline.rollback import RollbackRequest, chosen_environment

CFG = DeployConfig(approval_manual=False)
ROLLBACK_DEFAULTS = {"environment": "staging", "method": "backup", "backup_uri": None, "steps": 1,
                     "confirm_database": None, "force": False, "bundle": "main"}


# --- deploy_schema (RunParams, checked by preflight_bundle) ------------------------------------------

def test_an_empty_reason_field_sent_as_none_is_no_reason_and_passes_while_the_window_is_kept() -> None:
    params = RunParams.from_mapping({"skip_window": False, "skip_window_reason": None, "lock_retries": None,
                                     "waive_prechecks": None})
    assert (params.skip_window_reason, params.lock_retries, params.waive_prechecks) == ("", None, "")
    params.check(CFG)


@pytest.mark.parametrize("reason", [None, "", "   "])
def test_skipping_the_window_without_a_reason_names_both_fields(reason) -> None:
    with pytest.raises(UsageError) as refused:
        RunParams.from_mapping({"skip_window": True, "skip_window_reason": reason}).check(CFG)
    assert str(refused.value) == (
        "'Skip the maintenance window' (skip_window) is on but 'Why skip the window' (skip_window_reason) is empty: "
        "say there why production may change outside the maintenance window (it is recorded), or turn skip_window "
        "off. Nothing was changed.")


def test_a_dry_run_that_skips_the_window_names_both_fields() -> None:
    with pytest.raises(UsageError) as refused:
        RunParams.from_mapping({"dry_run": True, "skip_window": True, "skip_window_reason": "x"}).check(CFG)
    assert str(refused.value) == ("'Dry run' (dry_run) leaves production untouched, so 'Skip the maintenance "
                                  "window' (skip_window) makes no sense with it; turn one of them off. Nothing was "
                                  "changed.")


def test_skipping_the_window_with_a_reason_passes() -> None:
    params = RunParams.from_mapping({"skip_window": True, "skip_window_reason": " outage fix "})
    params.check(CFG)
    assert params.skip_window and params.skip_window_reason.strip() == "outage fix"


# --- rollback_schema (RollbackRequest.check, by choose_environment and preflight) --------------------

def test_the_rollback_forms_defaults_are_a_staging_restore_of_the_newest_verified_backup() -> None:
    request = RollbackRequest.from_mapping(ROLLBACK_DEFAULTS)
    assert request == RollbackRequest(method="backup", backup_uri="", steps=1, confirm_database="", force=False)
    request.check(chosen_environment(ROLLBACK_DEFAULTS))  # an empty backup_uri: the newest verified backup


def test_from_mapping_reads_empty_fields_sent_as_none_as_empty() -> None:
    request = RollbackRequest.from_mapping({"method": None, "backup_uri": None, "steps": None,
                                            "confirm_database": None, "force": None})
    assert (request.method, request.backup_uri, request.steps, request.confirm_database, request.force) == (
        "backup", "", 1, "", False)


@pytest.mark.parametrize("confirm", [None, "", "  "])
def test_a_production_rollback_without_its_confirmation_is_refused_naming_the_field(confirm) -> None:
    params = {**ROLLBACK_DEFAULTS, "environment": "production", "confirm_database": confirm}
    with pytest.raises(UsageError) as refused:
        RollbackRequest.from_mapping(params).check(chosen_environment(params))
    assert str(refused.value) == (
        "'Confirm the database name' (confirm_database) is empty, but 'Environment' (environment) is production: a "
        "production rollback needs the production database's name typed there. Nothing was changed; trigger again "
        "with it.")


def test_a_production_rollback_with_a_confirmation_passes_the_form_check() -> None:
    # Its exact value is checked by preflight, which knows the production database (ConfirmationMismatch).
    RollbackRequest.from_mapping({**ROLLBACK_DEFAULTS, "environment": "production",
                                  "confirm_database": "shop"}).check("production")


def test_a_staging_rollback_needs_no_confirmation() -> None:
    RollbackRequest.from_mapping({**ROLLBACK_DEFAULTS, "confirm_database": None}).check("staging")


def test_a_backup_uri_given_with_down_migrations_is_refused_naming_both_fields() -> None:
    uri = "s3://schema-deploy-backups/backups/staging/shop/2026-01-01T000000Z.dump"
    params = {**ROLLBACK_DEFAULTS, "method": "down_migrations", "backup_uri": f" {uri} "}
    with pytest.raises(UsageError) as refused:
        RollbackRequest.from_mapping(params).check("staging")
    assert str(refused.value) == (
        f"'Backup URI' (backup_uri) is {uri!r}, but 'Method' (method) is down_migrations, which restores no backup. "
        "Nothing was changed; trigger again with backup_uri empty to run down migrations, or with method = backup "
        "to restore that backup.")
    RollbackRequest.from_mapping({**params, "backup_uri": None}).check("staging")  # down migrations, no URI: fine
    RollbackRequest.from_mapping({**params, "method": "backup"}).check("staging")  # that backup restored: fine


def test_a_method_the_form_does_not_offer_is_refused_with_the_choices() -> None:
    with pytest.raises(UsageError, match=re.escape("'Method' (method) is 'pitr', not one of backup, "
                                                   "down_migrations. Nothing was changed; trigger again with one "
                                                   "of them.")):
        RollbackRequest.from_mapping({**ROLLBACK_DEFAULTS, "method": "pitr"}).check("staging")
