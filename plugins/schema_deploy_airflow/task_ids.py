"""Every task id and XCom key of the three DAGs, in one place.

A DAG file names its tasks by these constants; the glue that reads a run's results after the
fact (the audit composer, the fleet record, the failure callback's Slack thread) maps them to the
pipeline's step names. The ids are part of the product's surface: they are in the UI, in the audit
record's `tasks`, in the operators' runbooks, so renaming one is a breaking change.
"""
from __future__ import annotations

# --- deploy_schema (and deploy_fleet's first tasks, which share them) ---
PREFLIGHT_BUNDLE = "preflight_bundle"
PREFLIGHT_STAGING = "preflight_staging"
PREFLIGHT_PRODUCTION = "preflight_production"
PREFLIGHT = "preflight"
BACKUP_PRODUCTION = "backup_production"
APPLY_STAGING = "apply_staging"
TEST_GATE = "test_gate"
PRODUCTION_REQUESTED = "production_requested"
APPROVAL_NEEDED = "approval_needed"
APPROVE_PRODUCTION = "approve_production"
WAIT_FOR_WINDOW = "wait_for_window"
APPLY_PRODUCTION = "apply_production"  # the expand phase: up to the first migration that needs a backfill
BACKFILL_PRODUCTION = "backfill_production"
CONTRACT_PRODUCTION = "contract_production"  # the rest; its value is production's whole result
VERIFY_PRODUCTION = "verify_production"
AUDIT_COMPOSE = "audit_compose"
AUDIT_STAGING = "audit_staging"
AUDIT_PRODUCTION = "audit_production"
AUDIT_RECORD = "audit_record"

# deploy_schema's task id -> the pipeline's step name, for the audit record. The record's own tasks
# (audit_*) are not in it: they run after the steps they record.
DEPLOY_STEPS = {PREFLIGHT_BUNDLE: "preflight_bundle", PREFLIGHT_STAGING: "preflight_staging",
                PREFLIGHT_PRODUCTION: "preflight_production", PREFLIGHT: "preflight",
                BACKUP_PRODUCTION: "backup", APPLY_STAGING: "apply_staging", TEST_GATE: "gate",
                PRODUCTION_REQUESTED: "production_requested", APPROVAL_NEEDED: "approval_needed",
                APPROVE_PRODUCTION: "approval", WAIT_FOR_WINDOW: "window", APPLY_PRODUCTION: "apply_production",
                BACKFILL_PRODUCTION: "backfill_production", CONTRACT_PRODUCTION: "contract_production",
                VERIFY_PRODUCTION: "verification"}
# Each apply task -> the target it changes (the record is chained into those that ran).
APPLIES = {APPLY_STAGING: "staging", APPLY_PRODUCTION: "production", BACKFILL_PRODUCTION: "production",
           CONTRACT_PRODUCTION: "production"}
AUDIT_CHAINS = {"staging": AUDIT_STAGING, "production": AUDIT_PRODUCTION}

# XCom keys besides the return value.
APPROVAL_KEY = "approval"  # the production approval's decision, pushed before a Reject skips downstream
APPROVAL_ERROR_KEY = "approval_error"  # an approval that timed out or whose trigger failed
ANSWER_KEY = "answer"  # the rollback approval's raw answer (RecordedApprovalOperator)
WINDOW_WAIT_KEY = "window_wait"  # wait_for_window's own progress across its deferral
HEALTH_WAIT_KEY = "health_wait_since"  # a production phase's health waits: first start and reason, latest reason

# --- rollback_schema: tasks inside each environment's group ("staging.preflight", …) ---
CHOOSE_ENVIRONMENT = "choose_environment"
CHECK_ENVIRONMENT = "check_environment"
ROLLBACK_PREFLIGHT = "preflight"
ROLLBACK_APPROVAL_NEEDED = "approval_needed"
APPROVE_ROLLBACK = "approve_rollback"
SAFETY_BACKUP = "safety_backup"
ROLLBACK = "rollback"
VERIFY_ROLLBACK = "verify_rollback"
ROLLBACK_AUDIT_RECORD = "audit_record"
AUDIT_ATTEMPT = "audit_attempt"
# A group's task id -> the rollback pipeline's step name, for the audit record.
ROLLBACK_STEPS = {ROLLBACK_PREFLIGHT: "preflight", ROLLBACK_APPROVAL_NEEDED: "approval_needed",
                  APPROVE_ROLLBACK: "approval", SAFETY_BACKUP: "safety_backup", ROLLBACK: "rollback",
                  VERIFY_ROLLBACK: "verify"}

# --- deploy_fleet (its preflight tasks are deploy_schema's ids above) ---
FLEET_MEMBERS = "fleet_members"
CANARY = "canary"
FLEET_APPROVAL_NEEDED = "approval_needed"
APPROVE_CANARY = "approve_canary"
WAVES = "waves"
WINDOWED = "windowed"
FLEET_RECORD = "fleet_record"
FLEET_RUN_KEY = "fleet_run"  # canary's, waves' and windowed's outcomes, pushed before the task may fail
FLEET_WINDOW_KEY = "fleet_window"  # windowed's own progress, read again when it resumes after a deferral
