"""
### rollback_schema — put a database back: restore a backup, or run down migrations

**What it does**: `choose_environment` reads the form's `environment` and runs that
environment's task group (`staging.…` or `production.…`; task ids carry the group, e.g.
`production.rollback`); the other group is skipped whole, so nothing of it runs and its database
connection is never read. Inside the group, one task per step, in this order (queue `default` =
opens no database, `environment` = the group's environment's queue):

| task | queue | what it does |
|---|---|---|
| `choose_environment` | default | a branch on the form's `environment`: its group runs, the other is skipped whole; refuses contradicting form fields before anything runs |
| `check_environment` | default | this group is the form's environment (the group's setup, so its `audit_record` runs whatever happens after it) |
| `preflight` | environment | for production, `confirm_database` must be the production database's exact name — checked before anything else; then either the backup to restore — the one in `backup_uri`, or the newest complete and verified backup of that database; every candidate is listed in the log with size, rows, sha256 and verification — or the newest applied migrations to undo, with their `down.sql` parsed and planned, and the bundle frozen into a release in S3 (`releases/<sha256>.json`): the later tasks run that release's `down.sql`, never the folder's, and say in their log when the folder differs |
| `approval_needed` | default | production: yes; staging: no |
| `approve_rollback` | default | production only: Approve / Reject under "Required actions"; Reject stops here, nothing changed |
| `safety_backup` | environment | the current state, pg_dump streamed to S3 and verified: the way back from this rollback |
| `rollback` | environment | a streamed `pg_restore --clean` in one transaction, or the release's down migrations through the deploy engine with lock retries; the ledger marks them rolled back, so they are pending again |
| `verify_rollback` | environment | row counts equal the backup's manifest, or the undone migrations are pending; no INVALID index; the schema fingerprint recorded |
| `audit_record` | environment | the group's teardown: runs whatever happened once `check_environment` passed; kind `rollback` chained into `schema_deploy.audit_events` of the target when the rollback ran or a human decided on it (a rejection is in the target's chain, saying nothing changed), and a JSON document beside the safety backup in S3, or under `audit/` when there is none; Slack hears "rollback done", or "rejected by X: reason" |
| `audit_attempt` | default | the DAG's last teardown: when the run was refused before a group could record it, its record in S3, so every attempt leaves one |

Slack hears every step and failure. A Reject is a decision, not a fault: the run ends successful
(no failure alarm), and the page, Slack and the record say "rejected by X: reason".

**Where each task runs** (Celery queues from deploy.yaml `queues:`; `default` when unset): the
tasks that open the database — `preflight`, `safety_backup`, `rollback`, `verify_rollback`,
`audit_record` — run on the queue of their group's environment (`queues.staging`,
`queues.production`), on workers that hold only that environment's connection
(`staging_db` or `production_db`, plus `backup_s3` and `slack_deploys`).
`choose_environment`, `check_environment`, `approval_needed` and `approve_rollback` open no
database and run on `queues.default`. A database task that lands on a worker without its
connection fails at once, not retried, with `ConnectionNotOnWorker`: its message names the
connection, the worker, its queue and the queue to route to.

**If it failed at 2 a.m.** — read the failed task's log; its first lines say what and where.
* `choose_environment` or `check_environment` failed: the form's environment is not staging or
  production, its fields contradict each other (the message names them: production without
  confirm_database, a backup URI with down_migrations), or a task of the other group was cleared
  by hand; nothing ran. Trigger again with the fields the message names.
* `ConnectionNotOnWorker`: the task reached a worker without that database's connection;
  nothing changed. Fix the route or the worker's connections as the message says, then clear it.
* `RestoreFromOtherSource` (preflight, nothing changed): the backup was taken of another
  environment or database than the target; the message names both. Choose a backup of this
  database (or leave backup URI empty), or trigger with "Restore data from another environment
  or database" on if copying that data here is intended (it is recorded and announced in Slack).
* `preflight` changed nothing: a wrong `confirm_database`, no verified backup, no `down.sql`,
  or a failed migration in the ledger are each named with the fix. Trigger again.
* A release missing or altered in S3 stops the task, not retried, nothing changed: trigger again
  (its preflight freezes a new one).
* `safety_backup` changed nothing; clear it to retry.
* `rollback` from a backup is all or nothing (one transaction): on failure the target is as it
  was — clear to retry (other sessions connected? end them, or trigger with `force`).
  Down migrations commit step by step; clearing the task finishes the ones still applied
  (each statement of down.sql is guarded with IF EXISTS) and never undoes one more.
* `verify_rollback` failed → the rollback ran; compare with the log, and if needed restore the
  safety backup (its URI is in the `safety_backup` log) with this DAG.

**Trigger form** (submits at its defaults: staging, from its newest verified backup): environment,
method (`backup` | `down_migrations`), backup URI (method backup only; empty = newest verified
backup of that database), steps (down migrations to undo), confirm_database (production: its
name; needed there), force, allow_other_source (restore a backup of another environment or
database: recorded and announced in Slack; off, such a backup is refused), bundle (one of deploy.yaml's `bundles:`, by name: whose `down.sql`
runs). `choose_environment`, the first task, refuses before anything runs, naming the form's
fields: a production rollback with confirm_database empty, a backup URI with method
`down_migrations`. Connections: `staging_db`, `production_db`, `backup_s3`,
`slack_deploys`; settings: deploy.yaml.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import TaskGroup, dag, task

from schema_deploy_airflow import task_ids as ids
from schema_deploy_airflow.defaults import DEFAULT_ARGS, param
from schema_deploy_airflow.operators import RecordedApprovalOperator, reason_param
from schema_deploy_airflow.steps import bundle_param, queue

ENVIRONMENTS = ("staging", "production")  # one task group each; the group id is the environment
NO_DB = queue(None)


def on_failure(context):
    from schema_deploy_airflow.rollback_steps import notify_failure

    notify_failure(context)


@dag(
    dag_id="rollback_schema",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["schema-deploy", "postgresql", "rollback"],
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure},
    params={
        "environment": param("staging", type="string", enum=list(ENVIRONMENTS), title="Environment",
                             description="The database to roll back."),
        "method": param("backup", type="string", enum=["backup", "down_migrations"], title="Method",
                        description="Restore a backup (everything since it is replaced), or run the down.sql "
                                    "of the newest applied migrations."),
        "backup_uri": param(None, type=["null", "string"], title="Backup URI",
                            description="Method backup only: s3://…/X.dump; empty = the newest verified backup of "
                                        "that database (preflight lists them)."),
        "steps": param(1, type="integer", minimum=1, maximum=50, title="Down migrations to undo",
                       description="For down_migrations: how many applied migrations, newest first."),
        "confirm_database": param(None, type=["null", "string"], title="Confirm the database name",
                                  description="Production only (needed there): type the production database's "
                                              "name; leave empty for staging."),
        "force": param(False, type="boolean", title="Restore with other sessions connected",
                       description="A restore refuses a database with other sessions unless this is on."),
        "allow_other_source": param(False, type="boolean",
                                    title="Restore data from another environment or database",
                                    description="Method backup: a backup taken of another environment or database "
                                                "than the target (e.g. production's, into staging) is refused unless "
                                                "this is on. When on, it is restored, and the choice (who, from "
                                                "where to where) is recorded in the audit record and announced in "
                                                "Slack."),
        "bundle": bundle_param(),  # down_migrations: the declared bundle whose down.sql runs, never a path
    },
)
def rollback_schema():
    @task.branch(task_id=ids.CHOOSE_ENVIRONMENT, queue=NO_DB,
                 doc_md="The form's environment: its group runs, the other is skipped whole.")
    def choose_environment():
        from schema_deploy_airflow import rollback_steps

        return rollback_steps.choose_environment()

    @task(task_id=ids.CHECK_ENVIRONMENT, queue=NO_DB,
          doc_md="This group is the form's environment; the group's setup, so its audit_record runs only when "
                 "the group was chosen. Opens no database.")
    def check_environment():
        from schema_deploy_airflow import rollback_steps

        return rollback_steps.check_environment()

    @task(task_id=ids.ROLLBACK_PREFLIGHT,
          doc_md="Confirmation, then the backup to restore, or the down migrations planned and frozen into a "
                 "release in S3; Slack 'rollback started'. Changes nothing.")
    def preflight():
        from schema_deploy_airflow import rollback_steps

        return rollback_steps.preflight()

    @task.branch(task_id=ids.ROLLBACK_APPROVAL_NEEDED, queue=NO_DB,
                 doc_md="A production target needs a human Approve (preflight says); staging goes straight on.")
    def approval_needed(summary):
        from schema_deploy_airflow import rollback_steps

        return rollback_steps.after_preflight(summary)

    @task(task_id=ids.SAFETY_BACKUP, trigger_rule="none_failed_min_one_success",
          doc_md="pg_dump of the target as it is now, to S3, verified: the way back from this rollback.")
    def safety_backup(summary):
        from schema_deploy_airflow import rollback_steps

        return rollback_steps.safety_backup(summary)

    @task(task_id=ids.ROLLBACK,
          doc_md="Streamed restore of the chosen backup, or the release's down migrations with lock retries.")
    def rollback(summary, backup):
        from schema_deploy_airflow import rollback_steps

        return rollback_steps.run_rollback(summary)

    @task(task_id=ids.VERIFY_ROLLBACK,
          doc_md="Row counts against the manifest or the ledger's states, INVALID indexes, fingerprint.")
    def verify_rollback(summary, backup, done):
        from schema_deploy_airflow import rollback_steps

        return rollback_steps.verify(summary, backup)

    @task(task_id=ids.ROLLBACK_AUDIT_RECORD,
          doc_md="kind 'rollback' in the target's audit chain and a JSON record in S3; Slack 'rollback done'. "
                 "The group's teardown: it runs whatever happened after check_environment.")
    def audit_record():
        from schema_deploy_airflow import rollback_steps

        return rollback_steps.record()

    @task(task_id=ids.AUDIT_ATTEMPT, queue=NO_DB,
          doc_md="When the run was refused before a group could record it (choose_environment or "
                 "check_environment failed), its record in S3. Opens no database.")
    def audit_attempt():
        from schema_deploy_airflow import rollback_steps

        return rollback_steps.record_attempt()

    chosen = choose_environment()
    records = []
    for env in ENVIRONMENTS:
        with TaskGroup(env, default_args={"queue": queue(env)}, tooltip=f"Roll back {env}"):
            check = check_environment()
            summary = preflight()
            branch = approval_needed(summary)
            approve = RecordedApprovalOperator(  # ApprovalOperator keeping its answer for the record
                task_id=ids.APPROVE_ROLLBACK, plan=summary, queue=NO_DB,
                params=reason_param(),  # the responder's optional reason: in the record, on the page, in Slack
                retries=0, doc_md="Approve or reject the production rollback; Reject ends the run with nothing "
                                  "changed.")
            backup = safety_backup(summary)
            chosen >> check >> summary
            branch >> [approve, backup]
            approve >> backup
            done = rollback(summary, backup)
            verified = verify_rollback(summary, backup, done)
            recorded = audit_record().as_teardown(setups=check)
            [summary, branch, approve, backup, done, verified] >> recorded
            records.append(recorded)
    # No setup upstream, so it runs once everything before it is done, whatever their states.
    [chosen, *records] >> audit_attempt().as_teardown()


rollback_schema()
