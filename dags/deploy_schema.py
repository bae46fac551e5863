"""
### deploy_schema — apply a migration bundle to staging, then production, safely

**What it does**, one task per step, in this order, each on the Celery queue of the one database it
opens (deploy.yaml `queues:`; `default` = opens no database). Every task after `preflight_bundle`
works from the release (its short digest and URI are on the approval page, in Slack and the record):

| task | queue | what it does | on failure |
|---|---|---|---|
| `preflight_bundle` | default | checks the trigger form, reads and lints the declared bundle, freezes it in S3 as a release without plans; opens no database | changes nothing; not retried (bad input fails the same way twice) |
| `preflight_staging`, `preflight_production` | staging, production | from that release: the target's ledger, schema fingerprint and plan; production also lint errors its online plan does not fix, orphan/duplicate/NULL prechecks, table sizes | change no database; not retried |
| `preflight` | default | compares the two fingerprints (staging must match production before the change), stops with "nothing to deploy" when nothing is pending, freezes the release with both plans in S3; Slack hears it started | not retried |
| `backup_production` | production | pg_dump streamed to S3, verified (sha256, TOC, restore into a scratch database) | no partial object; retried |
| `apply_staging` | staging | the plan production will get; records rows and query timings before | resumes at the first unfinished step |
| `test_gate` | staging | deploy.yaml's gate commands with `DATABASE_URL`=staging (JUnit XML kept beside the backup), then verification of staging | production untouched; failing tests named in Slack |
| `production_requested` | default | stops a dry run here: production stays untouched | |
| `approval_needed` | default | approval when deploy.yaml's policy or the trigger form asks for it | |
| `approve_production` | default | Approve / Reject under "Required actions", showing plan, backup and gate, with an optional Reason field; records approver, time and reason | Reject skips production; the run ends successful (a decision, not a fault) |
| `wait_for_window` | default | deferred (triggerer, no worker slot) until a maintenance window is open with enough time left: staging's duration × size ratio × safety factor | |
| `apply_production` | production | the expand phase: the release up to the first migration that needs a declared backfill done (all of it when none does); online plan, lock retries with a blocker report per retry; before each online step the health gate (replica lag, WAL rate, …), deferred while it says wait | resumes after a crash, or at its step after a deferral |
| `backfill_production` | production | the backfills the expand phase stopped for (`backfill.yaml`): keyset batches within a WAL budget, the health gate between batches, deferred while it says wait; progress in the log, Slack and the page, which can pause it | goes on from its checkpoint after a crash, a retry or a deferral; paused or cancelled by an operator: fails, naming who, until resumed |
| `contract_production` | production | the rest of the release (`SET NOT NULL`, indexes, drops), each refused while its backfill has rows left; its value is production's whole result | resumes at the first unfinished step |
| `verify_production` | production | the plan's success criteria, each with its evidence: constraints validated, indexes valid and chosen by the planner, exact row counts unchanged, index sizes and query timings against the plan's expectations | |
| `audit_compose` | default | teardown (always runs): the run's record, computed once | the run's state stays the deployment's |
| `audit_staging`, `audit_production` | staging, production | teardowns: the record hash-chained into `schema_deploy.audit_events` of each database the run changed, and into production's when the approval decided on it (a rejection is in production's history, saying nothing changed there) | the run's state stays the deployment's |
| `audit_record` | default | teardown: the record kept beside the backup in S3, or under `audit/` when there is none (failed and nothing-to-do runs keep theirs too) | the run's state stays the deployment's |

Slack hears about every step.

**If it failed at 2 a.m.** — read the failed task's log; the first lines say what and
where. Every task is safe to clear and re-run:
* `preflight_*` changed nothing. Orphan rows, drift or a schema mismatch are named with the fix.
* "connection … is not defined on this worker (host, queue q)": the task ran on another
  environment's worker; fix the route (deploy.yaml `queues:`, the workers' `--queues`) as it says.
* `backup_production` leaves no partial object; re-running starts a clean backup.
* `apply_*` resumes at the first unfinished step (`_prisma_migrations.applied_steps_count`);
  a lock-retry failure names the blocking sessions — wait for them or end them, then clear.
* `backfill_production` goes on from its checkpoint (`schema_deploy.backfills`): a worker that died
  mid-batch loses only that batch, and the task's retry (2, like every task) resumes it; a deferral
  uses no retry. Paused or cancelled by an operator → the task fails naming who; resume it
  (`python -m schema_deploy backfill resume --name …`), then clear the task. It need not fit the
  maintenance window: it is throttled to its WAL budget and gated, so it runs on after the window.
* `test_gate` failed → production was not touched; the failing tests are in the log and Slack,
  the JUnit XML beside the backup in S3.
* `approve_production` rejected → production is skipped; nothing to undo. The run ends
  successful (a Reject is a decision, not a fault: no failure alarm); the page, Slack and the
  record say "rejected by X: reason" (the approval form's optional Reason field).

**Trigger form**: submits at its defaults (a deployment through the maintenance window, with
approval); dry run (staging only), online mode, approval, skipping the window (needs a reason,
recorded), lock retry budget; the empty fields are optional. Choices that contradict each other
(skipping the window without a reason, a dry run that skips the window) are refused by
`preflight_bundle`, the first task, before anything runs, naming the form's fields.
**Schedule**: manual, or `schedule.lead` in deploy.yaml starts a run that long before each
maintenance window (approval per `approval.scheduled_runs`).
Connections: `staging_db` (on staging's workers only), `production_db` (production's only),
`backup_s3` and `slack_deploys` (every worker); settings: deploy.yaml.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task, teardown

from schema_deploy_airflow import task_ids as ids
from schema_deploy_airflow.defaults import DEFAULT_ARGS, param
from schema_deploy_airflow.operators import (ApplyProductionOperator, ProductionApprovalOperator,
                                              WaitForWindowOperator)
from schema_deploy_airflow.steps import bundle_param, queue
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
        "dry_run": param(False, type="boolean", title="Dry run",
                         description="Preflight, backup and staging only; production is not touched."),
        "online": param(True, type="boolean", title="Online mode",
                        description="Rewrite lock-heavy statements (CONCURRENTLY, NOT VALID + VALIDATE)."),
        "require_approval": param(True, type="boolean", title="Require approval",
                                  description="Wait for a human Approve before production "
                                              "(deploy.yaml may make it mandatory)."),
        "skip_window": param(False, type="boolean", title="Skip the maintenance window",
                             description="Change production now; needs a reason below."),
        "skip_window_reason": param(None, type=["null", "string"], title="Why skip the window",
                                    description="Needed when skipping the window (the first task refuses the run "
                                                "without it); recorded in the log and the audit trail."),
        "lock_retries": param(None, type=["null", "integer"], minimum=0, maximum=100, title="Lock retry budget",
                              description="Retries after a lock timeout, per step; empty = deploy.yaml's lock.lock_retries."),
        "waive_prechecks": param(None, type=["null", "string"], title="Waive failing data prechecks (reason)",
                                 description="Empty: rows that would make a statement fail stop the run at preflight. "
                                             "A reason: they are logged as waived with it, and the audit record "
                                             "keeps both; the statement itself may still fail."),
    },
)
def deploy_schema():
    @task(task_id=ids.PREFLIGHT_BUNDLE, queue=queue(None),
          doc_md="Reads and lints the declared bundle, freezes it in S3 as a release without plans. Opens no database.")
    def preflight_bundle():
        from schema_deploy_airflow import steps

        return steps.preflight_bundle()

    @task(task_id=ids.PREFLIGHT_STAGING, queue=queue("staging"),
          doc_md="Staging's ledger, schema fingerprint and plan of the release (and the schema.prisma check when "
                 "configured). Changes nothing.")
    def preflight_staging(checked):
        from schema_deploy_airflow import steps

        return steps.preflight_target("staging", checked)

    @task(task_id=ids.PREFLIGHT_PRODUCTION, queue=queue("production"),
          doc_md="Production's ledger, schema fingerprint and plan; lint findings the plan leaves, data prechecks, "
                 "table sizes. Changes nothing.")
    def preflight_production(checked):
        from schema_deploy_airflow import steps

        return steps.preflight_target("production", checked)

    @task(task_id=ids.PREFLIGHT, queue=queue(None),
          doc_md="Both surveys: nothing to deploy (skip), schemas that differ (stop), else the release with both "
                 "plans frozen in S3 and Slack told. Opens no database.")
    def preflight(checked, staging_survey, production_survey):
        from schema_deploy_airflow import steps

        return steps.preflight(checked, staging_survey, production_survey)

    @task(task_id=ids.BACKUP_PRODUCTION, queue=queue("production"),
          doc_md="pg_dump of production streamed to S3 and verified.")
    def backup_production(summary):
        from schema_deploy_airflow import steps

        return steps.backup_production(summary)

    @task(task_id=ids.APPLY_STAGING, queue=queue("staging"),
          doc_md="Apply the release to staging (the plan production will get).")
    def apply_staging(summary, backup):
        from schema_deploy_airflow import steps

        return steps.apply_to("staging", summary)

    @task(task_id=ids.TEST_GATE, queue=queue("staging"),
          doc_md="Gate commands against staging, then verification of staging.")
    def test_gate(summary, backup, staged):
        from schema_deploy_airflow import steps

        return steps.test_gate(summary, backup, staged)

    @task.short_circuit(task_id=ids.PRODUCTION_REQUESTED, queue=queue(None),
                        doc_md="Stops here on a dry run: production stays untouched.")
    def production_requested(summary, gate, params=None):
        from schema_deploy_airflow import steps

        return steps.production_requested(summary, gate, bool(params["dry_run"]))

    @task.branch(task_id=ids.APPROVAL_NEEDED, queue=queue(None),
                 doc_md="Approval when deploy.yaml's policy or the trigger form asks for it.")
    def approval_needed(params=None, dag_run=None):
        from schema_deploy_airflow import steps

        return steps.approval_branch(params, str(dag_run.run_type))

    @task(task_id=ids.VERIFY_PRODUCTION, queue=queue("production"),
          doc_md="The plan's success criteria on production: checks, row counts, sizes, timings.")
    def verify_production(summary, backup, applied):
        from schema_deploy_airflow import steps

        return steps.verify_production(summary, backup, applied)

    checked = preflight_bundle()
    surveyed = [preflight_staging(checked), preflight_production(checked)]
    summary = preflight(checked, *surveyed)
    backup = backup_production(summary)
    staged = apply_staging(summary, backup)
    gated = test_gate(summary, backup, staged)
    requested = production_requested(summary, gated)
    branch = approval_needed()
    approve = ProductionApprovalOperator(task_id=ids.APPROVE_PRODUCTION, preflight=summary, backup=backup,
                                         gate=gated, retries=0, queue=queue(None),
                                         doc_md="Approve or reject the production change; Reject skips production.")
    window = WaitForWindowOperator(task_id=ids.WAIT_FOR_WINDOW, preflight=summary, staging=staged,
                                   trigger_rule="none_failed_min_one_success", queue=queue(None),
                                   doc_md="Deferred until a maintenance window is open and long enough.")
    requested >> branch >> [approve, window]
    approve >> window
    expanded = ApplyProductionOperator(task_id=ids.APPLY_PRODUCTION, preflight=summary, queue=queue("production"),
                                       doc_md="Apply the release to production up to the first migration that needs "
                                              "a backfill done (all of it when none does), with lock retries and "
                                              "blocker reports; deferred while the health gate says wait.")
    backfilled = ApplyProductionOperator(task_id=ids.BACKFILL_PRODUCTION, phase="backfill", preflight=summary,
                                         expanded=expanded.output, queue=queue("production"),
                                         doc_md="The backfills the expand phase stopped for: throttled batches from "
                                                "their checkpoints; deferred while the health gate says wait.")
    applied = ApplyProductionOperator(task_id=ids.CONTRACT_PRODUCTION, phase="contract", preflight=summary,
                                      expanded=expanded.output, backfilled=backfilled.output,
                                      queue=queue("production"),
                                      doc_md="The rest of the release (the contract migrations), each refused "
                                             "while its backfill has rows left.")
    window >> expanded
    verified = verify_production(summary, backup, applied.output)

    # The audit record: teardowns, so they run whatever happened, and the run's state stays the deployment's.
    @teardown
    @task(task_id=ids.AUDIT_COMPOSE, queue=queue(None),
          doc_md="The run's audit record, computed once (every copy carries these bytes). Opens no database.")
    def audit_compose():
        from schema_deploy_airflow import steps

        return steps.compose_audit()

    @teardown
    @task(task_id=ids.AUDIT_STAGING, queue=queue("staging"),
          doc_md="The record hash-chained into staging's schema_deploy.audit_events, when the run changed staging.")
    def audit_staging(composed):
        from schema_deploy_airflow import steps

        return steps.chain_audit("staging", composed)

    @teardown
    @task(task_id=ids.AUDIT_PRODUCTION, queue=queue("production"),
          doc_md="The record hash-chained into production's schema_deploy.audit_events, when the run changed "
                 "production or the approval decided on it (a rejection).")
    def audit_production(composed):
        from schema_deploy_airflow import steps

        return steps.chain_audit("production", composed)

    @teardown
    @task(task_id=ids.AUDIT_RECORD, queue=queue(None),
          doc_md="The record and its chain rows kept beside the backup in S3; the run's audit result. "
                 "Opens no database.")
    def audit_record(composed, staging_row, production_row):
        from schema_deploy_airflow import steps

        return steps.record_audit(composed, staging_row, production_row)

    composed = audit_compose()
    [checked, *surveyed, summary, backup, staged, gated, requested, branch, approve, window, expanded, backfilled,
     applied, verified] >> composed
    audit_record(composed, audit_staging(composed), audit_production(composed))


deploy_schema()
