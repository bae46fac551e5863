"""
### deploy_fleet — one release to every database of a fleet (tenants, shards), in waves

**What it does** (deploy.yaml `fleets:`), one task per step, in this order; queue `default` = opens no
database, `fleet` = the fleet's `queue:`:

| task | queue | what it does |
|---|---|---|
| `preflight_bundle` | default | checks the form (fleet, only_targets), reads and lints the bundle, freezes it in S3 as a release without plans |
| `preflight_staging` | staging | staging's ledger, schema fingerprint and plan of the release; changes nothing |
| `preflight` | default | the fleet's release: staging's plan frozen for staging and for every member, with staging's schema before the change; opens no database |
| `apply_staging` | staging | the rehearsal: the release applied to staging (**a dry run** changes nothing anywhere, staging included) |
| `test_gate` | staging | gate commands against staging, then verification of staging (a dry run: the gate does not run) |
| `fleet_members` | fleet | the members from the fleet's list, connection-id prefix or catalog, cut to only_targets; names and attributes only in XCom, never URLs; picks the canary among the members whose window is open |
| `canary` | fleet | wave 0 in one process (**a dry run** only checks each member, whatever its window: reachable, ledger, drift, prechecks; the brake only says where a real run would stop) |
| `approval_needed` | default | `approve_canary` when `waves.approve_after_canary`, else `waves` |
| `approve_canary` | default | Approve / Reject the waves after the canary (Airflow's `ApprovalOperator`); Reject: the other members are not attempted |
| `waves` | fleet | the other waves in one process, `parallel` members at a time; the brake (`halt_after`) after each wave, `pause` between |
| `windowed` | fleet | the members whose window was closed in their wave: deferred, no worker slot held, until it opens; then deployed, the brake decides, deferred again until nobody waits (a dry run: the verdict) |
| `fleet_record` | default | a teardown: the fleet record at `PREFIX/fleets/<fleet>/runs/<run id>/fleet.json` (every member's outcome, the waves, the brake's decisions) and one Slack summary |

Slack hears one message per wave (counts, failed members with their first error line, when the next
wave starts), never one per member.

**Queues**: the member tasks run on the queue of the *first* declared fleet (read when the DAG is
parsed); a fleet whose databases sit in another network needs that queue's workers to hold its
connections too. A prefix fleet's members are the `AIRFLOW_CONN_<PREFIX>*` environment variables of
the worker (a secrets backend cannot be listed: declare such members with `targets:` or a catalog).

**If it failed at 2 a.m.** — read the failed task's log, then `fleet_record`'s XCom or the record in S3:
* `preflight_*`, `apply_staging`, `test_gate`: no member was touched (as in deploy_schema).
* `fleet_members`: a connection is missing on the fleet's worker, or only_targets names a member the
  fleet does not have (the message lists its members).
* `canary` failed: the brake stops the run after a failed canary; every other member is listed as
  not attempted. Fix the canary (its error is in Slack and the log), then clear `canary`.
* `waves` failed: the failed members are named; the others of their waves went on, unless the brake
  (`halt_after`) halted the run. Members whose window was closed wait in `windowed` (deferred).
* `windowed` failed: a member failed once its window opened; clear `windowed` after fixing it.
  While it is deferred, the run shows running: its log says who waits and until when.
* **What a retry costs**: clearing `canary` or `waves` runs its wave(s) again in full: each member is
  surveyed again (a connection and a ledger read), members at the release already are `already`
  (nothing applied, no second audit row), the rest are deployed; a retry converges, it never applies
  twice. A failed member makes the task fail without an automatic retry (its steps were already
  retried 3 times in process); a lost worker is retried by Airflow the same way.

**Trigger form**: submits at its defaults (the first declared fleet, every member, in its windows);
fleet, bundle, dry run, only_targets (member names, comma-separated or a JSON list; empty = all),
skipping the members' windows (needs a reason), lock retry budget; the empty fields are optional.
`preflight_bundle`, the first task, refuses a fleet deploy.yaml does not declare, a malformed
only_targets, skipping the windows without a reason or in a dry run, before anything runs, naming
the form's fields.
"""
from __future__ import annotations

import pendulum
from airflow.sdk import dag, task, teardown

from schema_deploy_airflow import task_ids as ids
from schema_deploy_airflow.defaults import DEFAULT_ARGS, param
from schema_deploy_airflow.fleet_operators import CanaryApprovalOperator, FleetWindowOperator
from schema_deploy_airflow.fleet_steps import fleet_param, member_queue
from schema_deploy_airflow.steps import bundle_param, queue


def on_failure(context):
    from schema_deploy_airflow.callbacks import notify_failure

    notify_failure(context)


@dag(
    dag_id="deploy_fleet",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["schema-deploy", "postgresql", "migrations", "fleet"],
    default_args={**DEFAULT_ARGS, "on_failure_callback": on_failure},
    params={
        "fleet": fleet_param(),  # the names deploy.yaml declares under fleets:
        "bundle": bundle_param(),
        "dry_run": param(False, type="boolean", title="Dry run",
                         description="Check every member (reachable, ledger, drift, prechecks); change nothing, "
                                     "staging included."),
        "only_targets": param(None, type=["null", "string", "array"], items={"type": "string"},
                              title="Only these members",
                              description="Member names, comma-separated (or a JSON list); empty = the whole fleet."),
        "skip_window": param(False, type="boolean", title="Skip the members' maintenance windows",
                             description="Change every member now; needs a reason below."),
        "skip_window_reason": param(None, type=["null", "string"], title="Why skip the windows",
                                    description="Needed when skipping the windows (the first task refuses the run "
                                                "without it); recorded in the log and the fleet record."),
        "lock_retries": param(None, type=["null", "integer"], minimum=0, maximum=100, title="Lock retry budget",
                              description="Retries after a lock timeout, per step; empty = deploy.yaml's lock.lock_retries."),
        "waive_prechecks": param(None, type=["null", "string"], title="Waive failing data prechecks (reason)",
                                 description="Empty: rows that would make a statement fail stop the run at preflight. "
                                             "A reason: they are logged as waived with it, and the audit record "
                                             "keeps both; the statement itself may still fail."),
    },
)
def deploy_fleet():
    @task(task_id=ids.PREFLIGHT_BUNDLE, queue=queue(None),
          doc_md="Checks the form (fleet, only_targets), reads and lints the bundle, freezes it in S3 as a release "
                 "without plans. Opens no database.")
    def preflight_bundle():
        from schema_deploy_airflow import fleet_steps

        return fleet_steps.preflight_bundle()

    @task(task_id=ids.PREFLIGHT_STAGING, queue=queue("staging"),
          doc_md="Staging's ledger, schema fingerprint and plan of the release. Changes nothing.")
    def preflight_staging(checked):
        from schema_deploy_airflow import steps

        return steps.preflight_target("staging", checked)

    @task(task_id=ids.PREFLIGHT, queue=queue(None),
          doc_md="The fleet's release: staging's plan frozen for staging and every member, with staging's schema "
                 "before the change. Opens no database.")
    def preflight(checked, survey):
        from schema_deploy_airflow import fleet_steps

        return fleet_steps.fleet_release(checked, survey)

    @task(task_id=ids.APPLY_STAGING, queue=queue("staging"), doc_md="The rehearsal: the release applied to staging.")
    def apply_staging(summary):
        from schema_deploy_airflow import fleet_steps, steps

        return fleet_steps.unless_dry_run(lambda: steps.apply_to("staging", summary), "the release is not applied")

    @task(task_id=ids.TEST_GATE, queue=queue("staging"),
          doc_md="Gate commands against staging, then verification of staging.")
    def test_gate(summary, staged):
        from schema_deploy_airflow import fleet_steps, steps

        return fleet_steps.unless_dry_run(lambda: steps.test_gate(summary, None, staged), "the gate does not run")

    @task(task_id=ids.FLEET_MEMBERS, queue=member_queue(),
          doc_md="The fleet's members (list, prefix or catalog), cut to only_targets; names and attributes in XCom, "
                 "never URLs.")
    def fleet_members(summary):
        from schema_deploy_airflow import fleet_steps

        return fleet_steps.fleet_members(summary)

    # canary and waves return {fleet_run: their part}: with multiple_outputs, `part[FLEET_RUN_KEY]` of
    # one that never ran is None for windowed (all_done), not an error.
    @task(task_id=ids.CANARY, queue=member_queue(), multiple_outputs=True,
          doc_md="Wave 0, the canary, in one process (a dry run only checks).")
    def canary(summary, members):
        from schema_deploy_airflow import fleet_steps

        return fleet_steps.canary(summary, members)

    @task.branch(task_id=ids.FLEET_APPROVAL_NEEDED, queue=queue(None),
                 doc_md="approve_canary when waves.approve_after_canary, else waves.")
    def approval_needed(members):
        from schema_deploy_airflow import fleet_steps

        return fleet_steps.approval_needed(members)

    @task(task_id=ids.WAVES, queue=member_queue(), multiple_outputs=True, trigger_rule="none_failed_min_one_success",
          doc_md="The waves after the canary, in one process: brake after each, pause between.")
    def waves(summary, members, first):
        from schema_deploy_airflow import fleet_steps

        return fleet_steps.waves(summary, members, first)

    @teardown
    @task(task_id=ids.FLEET_RECORD, queue=queue(None),
          doc_md="The fleet record in S3 (every member's outcome) and one Slack summary. Opens no database.")
    def fleet_record(summary, members):
        from schema_deploy_airflow import fleet_steps

        return fleet_steps.fleet_record(summary, members)

    checked = preflight_bundle()
    summary = preflight(checked, preflight_staging(checked))
    staged = apply_staging(summary)
    gated = test_gate(summary, staged)
    members = fleet_members(summary)
    gated >> members  # the members are changed only after staging's rehearsal passed the gate
    first = canary(summary, members)
    branch = approval_needed(members)
    approve = CanaryApprovalOperator(task_id=ids.APPROVE_CANARY, canary=first[ids.FLEET_RUN_KEY], retries=0,
                                     queue=queue(None),
                                     doc_md="Approve or reject the waves after the canary; Reject: not attempted.")
    rest = waves(summary, members, first[ids.FLEET_RUN_KEY])
    windowed = FleetWindowOperator(task_id=ids.WINDOWED, summary=summary, members=members,
                                   canary=first[ids.FLEET_RUN_KEY], waves=rest[ids.FLEET_RUN_KEY],
                                   queue=member_queue(), trigger_rule="all_done",
                                   doc_md="The members whose window was closed in their wave: deferred until "
                                          "it opens, then deployed (the brake after each batch).")
    first >> branch >> [approve, rest]
    approve >> rest >> windowed
    [checked, summary, gated, members, first, branch, approve, rest, windowed] >> fleet_record(summary, members)


deploy_fleet()
