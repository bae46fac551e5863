"""
### deploy_schema — apply a migration bundle to staging, then production, safely

**What it does**, one task per step: `preflight` (lint, both ledgers, staging and production
schemas must match, orphan/duplicate/NULL prechecks on production, the online plan) →
`backup_production` (pg_dump streamed to S3, verified by a restore into a scratch database) →
`apply_staging` → `test_gate` (the gate commands of deploy.yaml against staging, plus
verification) → `approve_production` (Approve / Reject under "Required actions"; who and when
is recorded) → `wait_for_window` (deferred until a maintenance window with time enough) →
`apply_production` → `verify_production` (the plan's success criteria, each with its evidence:
constraints validated, indexes valid and chosen by the planner, exact row counts unchanged,
index sizes and query timings against the plan's expectations) → `audit_record` (always runs:
the run's record, hash-chained into `schema_deploy.audit_events` of each database the run
changed, and kept beside the backup in S3). Slack hears about every step.

**If it failed at 2 a.m.** — read the failed task's log; the first lines say what and
where. Every task is safe to clear and re-run:
* `preflight` changed nothing. Orphan rows, drift or a schema mismatch are named with the fix.
* `backup_production` leaves no partial object; re-running starts a clean backup.
* `apply_*` resumes at the first unfinished step (`_prisma_migrations.applied_steps_count`);
  a lock-retry failure names the blocking sessions — wait for them or end them, then clear.
* `test_gate` failed → production was not touched; the failing tests are in the log and Slack,
  the JUnit XML beside the backup in S3.
* `approve_production` rejected → production is skipped; nothing to undo.

**Trigger form**: dry run (staging only), online mode, approval, skipping the window (needs a
reason, recorded), lock retry budget. **Schedule**: manual, or `schedule.lead` in deploy.yaml
starts a run that long before each maintenance window (approval per `approval.scheduled_runs`).
Connections: `staging_db`, `production_db`, `backup_s3`,
`slack_deploys`; settings: deploy.yaml.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task, teardown

from schema_deploy_airflow.defaults import DEFAULT_ARGS
from schema_deploy_airflow.operators import ProductionApprovalOperator, WaitForWindowOperator
from schema_deploy_airflow.steps import bundle_param
from schema_deploy_airflow.timetable import deploy_schedule


def on_failure(context):
    from schema_deploy_airflow.callbacks import notify_failure

    notify_failure(context)


@dag(
    dag_id="deploy_schema",
    schedule=deploy_schedule(),  # manual only, unless deploy.yaml sets schedule.lead
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["schema-deploy", "postgresql", "migrations"],
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure},
    params={
        "bundle": bundle_param(),  # the names deploy.yaml declares under bundles:, never a path
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Preflight, backup and staging only; production is not touched."),
        "online": Param(True, type="boolean", title="Online mode",
                        description="Rewrite lock-heavy statements (CONCURRENTLY, NOT VALID + VALIDATE)."),
        "require_approval": Param(True, type="boolean", title="Require approval",
                                  description="Wait for a human Approve before production "
                                              "(deploy.yaml may make it mandatory)."),
        "skip_window": Param(False, type="boolean", title="Skip the maintenance window",
                             description="Change production now; needs a reason below."),
        "skip_window_reason": Param("", type="string", title="Why skip the window",
                                    description="Recorded in the log and the audit trail."),
        "lock_retries": Param(None, type=["null", "integer"], minimum=0, maximum=100, title="Lock retry budget",
                              description="Retries after a lock timeout, per step; empty = deploy.yaml's lock.lock_retries."),
    },
)
def deploy_schema():
    @task(doc_md="Lint, ledgers, schema match, prechecks, plan; freezes the release in S3. Changes nothing.")
    def preflight():
        from schema_deploy_airflow import steps

        return steps.preflight()

    @task(doc_md="pg_dump of production streamed to S3 and verified.")
    def backup_production(summary):
        from schema_deploy_airflow import steps

        return steps.backup_production()

    @task(doc_md="Apply the release to staging (the plan production will get).")
    def apply_staging(summary, backup):
        from schema_deploy_airflow import steps

        return steps.apply_to("staging")

    @task(doc_md="Gate commands against staging, then verification of staging.")
    def test_gate(staged, backup):
        from schema_deploy_airflow import steps

        return steps.test_gate()

    @task.short_circuit(doc_md="Stops here on a dry run: production stays untouched.")
    def production_requested(gate, params=None):
        if params["dry_run"]:
            from schema_deploy_airflow.steps import notify, task_log

            notify("dry_run_done", {"staging": "migrated and verified", "production": "untouched"}, task_log())
        return not params["dry_run"]

    @task.branch(doc_md="Approval when deploy.yaml's policy or the trigger form asks for it.")
    def approval_needed(params=None, dag_run=None):
        from schema_deploy import config
        from schema_deploy_airflow.steps import approval_required

        needed = approval_required(params, str(dag_run.run_type), config.load())
        return "approve_production" if needed else "wait_for_window"

    approve = ProductionApprovalOperator(
        task_id="approve_production",
        preflight_task_id="preflight",
        backup_task_id="backup_production",
        gate_task_id="test_gate",
        retries=0,
        doc_md="Approve or reject the production change; Reject skips production.",
    )

    window = WaitForWindowOperator(
        task_id="wait_for_window",
        staging_task_id="apply_staging",
        preflight_task_id="preflight",
        trigger_rule="none_failed_min_one_success",
        doc_md="Deferred until a maintenance window is open and long enough.",
    )

    @task(doc_md="Apply the release to production, with lock retries and blocker reports.")
    def apply_production(summary):
        from schema_deploy_airflow import steps

        return steps.apply_to("production")

    @task(doc_md="The plan's success criteria on production: checks, row counts, sizes, timings.")
    def verify_production(applied, backup):
        from schema_deploy_airflow import steps

        return steps.verify_production()

    summary = preflight()
    backup = backup_production(summary)
    staged = apply_staging(summary, backup)
    gated = test_gate(staged, backup)
    requested = production_requested(gated)
    branch = approval_needed()
    requested >> branch >> [approve, window]
    approve >> window
    applied = apply_production(summary)
    window >> applied
    verified = verify_production(applied, backup)

    @teardown
    @task(doc_md="The run's audit record: hash-chained into each database it changed "
                 "(schema_deploy.audit_events) and kept beside the backup in S3. A teardown: it runs "
                 "whatever happened, and the run's state stays that of the deployment.")
    def audit_record():
        from schema_deploy_airflow import steps

        return steps.record_audit()

    [summary, backup, staged, gated, requested, branch, approve, window, applied, verified] >> audit_record()


deploy_schema()
