"""
### deploy_schema — apply a migration bundle to staging, then production, safely

**What it does**, one task per step: `preflight` (lint, both ledgers, staging and production
schemas must match, orphan/duplicate/NULL prechecks on production, the online plan) →
`backup_production` (pg_dump streamed to S3, verified by a restore into a scratch database)
→ `apply_staging` → `test_gate` (the gate commands of deploy.yaml against staging, plus
verification) → `approve_production` (Approve / Reject in the UI's Required actions) →
`wait_for_window` (deferred until a maintenance window with time enough) →
`apply_production` → `verify_production`. Slack hears about every step.

**If it failed at 2 a.m.** — read the failed task's log; the first lines say what and
where. Every task is safe to clear and re-run:
* `preflight` changed nothing. Orphan rows, drift or a schema mismatch are named with the fix.
* `backup_production` leaves no partial object; re-running starts a clean backup.
* `apply_*` resumes at the first unfinished step (`_prisma_migrations.applied_steps_count`);
  a lock-retry failure names the blocking sessions — wait for them or end them, then clear.
* `test_gate` failed → production was not touched; the failing tests are in the log and Slack.

**Trigger form**: dry run (staging only), online mode, approval, skipping the window (needs a
reason, recorded), lock retry budget. Connections: `staging_db`, `production_db`, `backup_s3`,
`slack_deploys`; settings: deploy.yaml.
"""
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import Param, dag, task

from schema_deploy_airflow.operators import WaitForWindowOperator

DEFAULT_ARGS = {
    "owner": "platform-db",
    "retries": 2,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=10),
}


def on_failure(context):
    from schema_deploy_airflow.callbacks import notify_failure

    notify_failure(context)


@dag(
    dag_id="deploy_schema",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["schema-deploy", "postgresql", "migrations"],
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure},
    params={
        "migrations": Param("sql/migrations", type="string", title="Migrations folder",
                            description="Prisma layout or plain .sql files, relative to the project root."),
        "dry_run": Param(False, type="boolean", title="Dry run",
                         description="Preflight, backup and staging only; production is not touched."),
        "online": Param(True, type="boolean", title="Online mode",
                        description="Rewrite lock-heavy statements (CONCURRENTLY, NOT VALID + VALIDATE)."),
        "require_approval": Param(True, type="boolean", title="Require approval",
                                  description="Wait for a human Approve before production."),
        "skip_window": Param(False, type="boolean", title="Skip the maintenance window",
                             description="Change production now; needs a reason below."),
        "skip_window_reason": Param("", type="string", title="Why skip the window",
                                    description="Recorded in the log and the audit trail."),
        "lock_retries": Param(10, type="integer", minimum=0, maximum=100, title="Lock retry budget",
                              description="Retries after a lock timeout, per step."),
    },
)
def deploy_schema():
    @task(doc_md="Lint, ledgers, schema match, prechecks, plan. Changes nothing.")
    def preflight(params=None):
        from schema_deploy_airflow.steps import preflight as run, task_log

        return run(params, task_log())

    @task(doc_md="pg_dump of production streamed to S3 and verified.")
    def backup_production(summary, run_id=None):
        from schema_deploy_airflow.steps import backup_production as run, task_log

        return run(run_id, task_log())

    @task(doc_md="Apply the pending migrations to staging (same plan as production).")
    def apply_staging(backup, params=None):
        from schema_deploy_airflow.steps import apply_to, task_log

        return apply_to("staging", params, task_log())

    @task(doc_md="Gate commands against staging, then verification of staging.")
    def test_gate(staging, params=None):
        from schema_deploy_airflow.steps import run_gate, task_log, verify_target

        log = task_log()
        return {"gate": run_gate(params, log), "verification": verify_target("staging", params, log)}

    @task.short_circuit(doc_md="Stops here on a dry run: production stays untouched.")
    def production_requested(gate, params=None):
        if params["dry_run"]:
            from schema_deploy_airflow.steps import notify, task_log

            notify("dry_run_done", {"staging": "migrated and verified", "production": "untouched"}, task_log())
        return not params["dry_run"]

    @task.branch(doc_md="Approval when the trigger form (or the schedule policy) asks for it.")
    def approval_needed(params=None):
        return "approve_production" if params["require_approval"] else "wait_for_window"

    approve = ApprovalOperator(
        task_id="approve_production",
        subject="Apply {{ ti.xcom_pull(task_ids='preflight')['migrations'] | map(attribute='name') | join(', ') }} "
                "to production?",
        body="Plan: {{ ti.xcom_pull(task_ids='preflight') }}\n\nBackup: {{ ti.xcom_pull(task_ids='backup_production') }}"
             "\n\nGate: {{ ti.xcom_pull(task_ids='test_gate') }}",
        retries=0,
        doc_md="Approve or reject the production change; Reject skips production.",
    )

    window = WaitForWindowOperator(
        task_id="wait_for_window",
        staging_task_id="apply_staging",
        preflight_task_id="preflight",
        skip_window="{{ params.skip_window }}",
        skip_reason="{{ params.skip_window_reason }}",
        trigger_rule="none_failed_min_one_success",
        doc_md="Deferred until a maintenance window is open and long enough.",
    )

    @task(doc_md="Apply the same plan to production.")
    def apply_production(params=None):
        from schema_deploy_airflow.steps import apply_to, task_log

        return apply_to("production", params, task_log())

    @task(doc_md="Every expectation of the applied migrations, and sql/verify, on production.")
    def verify_production(applied, params=None):
        from schema_deploy_airflow.steps import notify, task_log, verify_target

        log = task_log()
        result = verify_target("production", params, log)
        notify("production_done", {"apply": f"{applied['seconds']} s", "verification": f"{result['checks']} checks ok"},
               log)
        return result

    summary = preflight()
    staged = apply_staging(backup_production(summary))
    requested = production_requested(test_gate(staged))
    branch = approval_needed()
    requested >> branch >> [approve, window]
    approve >> window
    verify_production(window >> apply_production())


deploy_schema()
