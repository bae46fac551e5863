"""Fleets: one release to many databases (tenants, shards), in waves, free of any orchestrator.

    members (resolve_members) → waves (plan_waves) → per wave: window split → run_wave(deploy_member)
            → brake → [pause | approval after the canary] → … → fleet_record → keep_fleet_record

The release is frozen once (`preflight.fleet_preflight`) from staging's survey before the rehearsal:
its plans hold `staging` and `fleet` (FLEET_ROLE), and the fleet plan carries staging's pending set
and schema fingerprint before the change, so every member, on any worker and in any later run, is
checked against what was rehearsed. `members.deploy_member` does one member in process (reachable,
ledger, drift, prechecks, backup, apply, verification, audit), retrying transient errors a few
times; a member's failure is an outcome, never an exception, so the others of its wave go on.

Modules, lowest first: `windows` (members' own maintenance windows) → `members` (who they are, one
member deployed) → `preflight` (the fleet's release) → `waves` (canary, sizes, brake, running waves)
→ `record` (the run's record). The names below are the fleet pipeline's steps, as the Airflow glue
and the benchmarks call them.
"""
from schema_deploy.pipeline.fleet.members import (FLEET_ROLE, TRIES, Member, catalog_rows, deploy_member, now_utc,
                                                  resolve_members)
from schema_deploy.pipeline.fleet.preflight import fleet_preflight
from schema_deploy.pipeline.fleet.record import fleet_record, keep_fleet_record
from schema_deploy.pipeline.fleet.waves import (FleetRun, brake, canary_first, halt_limit, not_attempted,
                                                plan_waves, run_fleet, run_wave, run_waves, run_windowed)
from schema_deploy.pipeline.fleet.windows import split_by_window

__all__ = ["FLEET_ROLE", "TRIES", "FleetRun", "Member", "brake", "canary_first", "catalog_rows", "deploy_member",
           "fleet_preflight", "fleet_record", "halt_limit", "keep_fleet_record", "not_attempted", "now_utc",
           "plan_waves", "resolve_members", "run_fleet", "run_wave", "run_waves", "run_windowed", "split_by_window"]
