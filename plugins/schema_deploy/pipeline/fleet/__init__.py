"""Fleets: one release to many databases (tenants, shards), in waves, free of any orchestrator.

    members (resolve_members) → waves (plan_waves) → per wave: window split → run_wave(deploy_member)
            → brake → [pause | approval after the canary] → … → fleet_record → keep_fleet_record

The release is frozen once (`preflight.fleet_preflight`) from staging's survey before the rehearsal:
its plans hold `staging` and `fleet` (FLEET_ROLE), and the fleet plan carries staging's pending set
and schema fingerprint before the change, so every member, on any worker and in any later run, is
checked against what was rehearsed. `members.deploy_member` does one member in process (reachable,
ledger, drift, prechecks, backup, apply, verification, audit), retrying transient errors a few
times; a member's failure is an outcome, never an exception, so the others of its wave go on.

Run apart (the DAG: one task per part), the steps hand each other typed values (`parts`: the frozen
members and wave plan, each part's outcomes and brakes, the waiting members' progress), and each
says how it ends (`verdicts`): the orchestrator maps its task states in and raises its own failure
or skip with the message given.

Modules, lowest first: `windows` (members' own maintenance windows) → `members` (who they are, one
member deployed) → `preflight` (the fleet's release) → `parts` (what travels between the steps run
apart, and joining it) → `verdicts` (how a step ends, the record's outcome) → `waves` (canary, sizes,
brake, running waves, whole or a part at a time) → `record` (the run's record). The names below are
the fleet pipeline's steps, as the Airflow glue and the benchmarks call them.
"""
from schema_deploy.pipeline.fleet.members import (FLEET_ROLE, TRIES, Member, catalog_rows, deploy_member, now_utc,
                                                  resolve_members)
from schema_deploy.pipeline.fleet.parts import (FleetMember, FleetMembers, FleetPart, WindowProgress, asks_approval,
                                                brakes_of, chosen, latest_outcomes, refound, unreached, window_start)
from schema_deploy.pipeline.fleet.preflight import fleet_preflight
from schema_deploy.pipeline.fleet.record import FleetRecordRef, fleet_record, keep_fleet_record, record_run
from schema_deploy.pipeline.fleet.verdicts import (Verdict, before_window, canary_body, part_verdict, record_outcome,
                                                   unreached_reason, windowed_verdict)
from schema_deploy.pipeline.fleet.waves import (FleetRun, brake, canary_first, freeze_members, halt_limit,
                                                not_attempted, plan_waves, run_fleet, run_part, run_wave, run_waves,
                                                run_windowed, window_step)
from schema_deploy.pipeline.fleet.windows import split_by_window

__all__ = ["FLEET_ROLE", "TRIES", "FleetMember", "FleetMembers", "FleetPart", "FleetRecordRef", "FleetRun", "Member",
           "Verdict", "WindowProgress", "asks_approval", "before_window", "brake", "brakes_of", "canary_body",
           "canary_first", "catalog_rows", "chosen", "deploy_member", "fleet_preflight", "fleet_record",
           "freeze_members", "halt_limit", "keep_fleet_record", "latest_outcomes", "not_attempted", "now_utc",
           "part_verdict", "plan_waves", "record_outcome", "record_run", "refound", "resolve_members", "run_fleet",
           "run_part", "run_wave", "run_waves", "run_windowed", "split_by_window", "unreached", "unreached_reason",
           "window_start", "window_step", "windowed_verdict"]
